"""The web routes of the one console (:mod:`mailwarden.cluster.console`) and the routes the
nodes of ``[cluster]`` answer each other on.

Two kinds of routes (both declared in :mod:`mailwarden.web.permissions`):

- ``/api/cluster/...`` and ``/cluster...`` for people, under the usual logins and permissions;
- ``/cluster/v1/...`` for the other nodes: public as far as logins go, refused unless signed
  with the cluster's secret by a node of ``[cluster] nodes`` (404 without ``[cluster]``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from ...cluster import mtls
from ...cluster.configpush import apply_pushed, config_version
from ...cluster.console import API as _API
from ...cluster.console import Console, NodeRefused, merged_rows
from ...cluster.signing import NODE
from ...errors import ConfigError
from ...quarantine import QuarantineBusy, QuarantineError, ReleaseFailed
from .. import api_types as T
from ..api_types import api
from ..respond import error_response, read_form, render
from ..route import declared
from ..state import WebState
from .events import event_query
from .quarantines import held_list

log = logging.getLogger(__name__)


def console(state: WebState) -> Console:
    """The console of this web worker (made with the web state, so a bad secret stops the
    start)."""
    return state.cluster_console


# -- what one node answers ------------------------------------------------------------------


async def _local_events(state: WebState, params: Any) -> list[dict[str, Any]]:
    events = await asyncio.to_thread(state.gateway.events.search, event_query(params))
    found: list[dict[str, Any]] = msgspec.to_builtins(events)
    return found


async def _local_held(state: WebState) -> list[dict[str, Any]]:
    return await asyncio.to_thread(held_list, state)


async def _local_release(state: WebState, held_id: str) -> str:
    return await state.gateway.release(held_id)


async def _local_delete(state: WebState, held_id: str) -> None:
    await asyncio.to_thread(state.gateway.quarantine.delete, held_id)


# -- routes for the other nodes (signed) ------------------------------------------------------


async def _signed(request: Request) -> Response | None:
    """The refusal of a request not from a node (unsigned, badly signed, without a client
    certificate of the cluster's CA naming a node), ``None`` for a good one."""
    state: WebState = request.state.web
    found = console(state)
    if not found.enabled:
        return JSONResponse({"error": "this node is in no [cluster]"}, status_code=404)
    why = None
    if found.mtls:
        why = _certificate_refusal(found, request)
    if why is None and found.signer is not None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        why = found.signer.check(request.method, target, request.headers, await request.body())
    if why is not None:
        log.warning("cluster request refused from %s: %s", request.client, why)
        return JSONResponse({"error": why}, status_code=401)
    return None


def _certificate_refusal(found: Console, request: Request) -> str | None:
    node = mtls.node_of(request.scope)
    if node is None:
        return "a client certificate signed by the cluster's CA ([cluster] tls_ca) is needed"
    if node not in found.known:
        return f"the client certificate names {node!r}, no node of [cluster] nodes"
    if request.headers.get(NODE, node) != node:
        return f"the client certificate names {node!r}, not the node the request says"
    return None


async def node_events(request: Request) -> Response:
    """This node's events, for the console of another node (signed)."""
    refused = await _signed(request)
    if refused is not None:
        return refused
    try:
        events = await _local_events(request.state.web, request.query_params)
    except ValueError as exc:
        return JSONResponse({"error": f"bad query: {exc}"}, status_code=400)
    return JSONResponse(events)


async def node_quarantine(request: Request) -> Response:
    """This node's held messages, for the console of another node (signed)."""
    refused = await _signed(request)
    return refused or JSONResponse(await _local_held(request.state.web))


async def _change_here(state: WebState, held_id: str, act: str) -> tuple[int, dict[str, Any]]:
    """Release or delete a message held on this node: the status and the answer."""
    try:
        if act == "release":
            return 200, {"released": await _local_release(state, held_id)}
        await _local_delete(state, held_id)
        return 200, {"deleted": held_id}
    except (QuarantineBusy, ReleaseFailed) as exc:
        return 409, {"error": str(exc)}
    except QuarantineError as exc:
        return 404, {"error": str(exc)}


async def _node_change(request: Request, act: str) -> Response:
    refused = await _signed(request)
    if refused is not None:
        return refused
    state: WebState = request.state.web
    held_id = request.path_params["held_id"]
    status, body = await _change_here(state, held_id, act)
    if status == 200:
        by = f"node:{request.headers.get(NODE) or mtls.node_of(request.scope)}"
        state.audit.write(f"quarantine.{act}", by, id=held_id)
    return JSONResponse(body, status_code=status)


async def node_release(request: Request) -> Response:
    """Release a message held here, asked by another node's console (signed)."""
    return await _node_change(request, "release")


async def node_delete(request: Request) -> Response:
    """Delete a message held here, asked by another node's console (signed)."""
    return await _node_change(request, "delete")


async def _local_config(state: WebState) -> list[dict[str, Any]]:
    source = state.gateway.config.source
    if not source:
        return [{"version": None}]
    text = await asyncio.to_thread(Path(source).read_text, encoding="utf-8")
    return [{"version": config_version(text)}]


async def node_config(request: Request) -> Response:
    """The version of this node's configuration, for the console (signed)."""
    refused = await _signed(request)
    return refused or JSONResponse(await _local_config(request.state.web))


async def node_config_push(request: Request) -> Response:
    """Take the configuration the console node pushed (signed): this node's local keys kept,
    validated, written, reloaded; the new version, or 422 naming the key and line."""
    refused = await _signed(request)
    if refused is not None:
        return refused
    state: WebState = request.state.web
    text = (await request.body()).decode("utf-8", "replace")
    try:
        version, changed = await asyncio.to_thread(apply_pushed, state.gateway, text)
    except ConfigError as exc:
        return JSONResponse({"error": str(exc)}, status_code=422)
    state.refresh()
    by = f"node:{request.headers.get(NODE) or mtls.node_of(request.scope)}"
    state.audit.write("config.pushed", by, version=version)
    log.warning(
        "configuration %s pushed by %s applied; at the next start: %s", version, by, changed
    )
    return JSONResponse({"version": version, "next_start": changed})


# -- the console (people) ---------------------------------------------------------------------


async def cluster_events(state: WebState, params: Any) -> dict[str, Any]:
    """Every node's events matching ``params`` (the events API's), newest first."""
    found = console(state)
    query = urlencode([(k, v) for k, v in params.multi_items()])
    target = f"{_API}/events" + (f"?{query}" if query else "")
    answers = await found.fan_out(target, lambda: _local_events(state, params))
    limit = min(int(params.get("limit") or 100), 1000)
    return {
        "nodes": [a.status() for a in answers],
        "events": merged_rows(answers, "time", limit),
    }


async def cluster_held(state: WebState) -> dict[str, Any]:
    """Every node's held messages, newest first."""
    answers = await console(state).fan_out(f"{_API}/quarantine", lambda: _local_held(state))
    return {"nodes": [a.status() for a in answers], "held": merged_rows(answers, "held_at", 10_000)}


async def _act(request: Request, act: str, node: str) -> tuple[int, dict[str, Any]]:
    """Release or delete ``held_id`` on the node named ``node`` (empty: this one)."""
    state: WebState = request.state.web
    found = console(state)
    held_id = request.path_params["held_id"]
    node = node or found.name
    identity = request.state.identity
    if node == found.name:
        status, result = await _change_here(state, held_id, act)
        if status != 200:
            return status, result
    elif node in found.peers:
        target = f"{_API}/quarantine/{held_id}/{act}"
        try:
            result = await found.ask(node, "POST", target)
        except NodeRefused as exc:
            return exc.status if exc.status in (404, 409) else 502, {"error": f"{node}: {exc}"}
        except (TimeoutError, httpx.HTTPError, OSError, ValueError) as exc:
            return 504, {"error": f"node {node} did not answer: {exc.__class__.__name__}"}
    else:
        return 404, {"error": f"no node {node!r} in [cluster] nodes"}
    state.audit.write(f"quarantine.{act}", identity.name, id=held_id, node=node)
    return 200, {**result, "node": node}


async def cluster_config(state: WebState) -> dict[str, Any]:
    """The configuration version of every node (the same version: the same configuration)."""
    answers = await console(state).fan_out(f"{_API}/config", lambda: _local_config(state))
    return {
        "nodes": [
            {**a.status(), "version": a.items[0].get("version") if a.items else None}
            for a in answers
        ]
    }


@api(T.ClusterConfig)
async def api_cluster_config(request: Request) -> Response:
    """The configuration version of every node of ``[cluster]``."""
    return JSONResponse(await cluster_config(request.state.web))


@api(T.ClusterPush)
async def api_cluster_config_push(request: Request) -> Response:
    """Push this node's configuration file to every other node; each keeps its own
    ``LOCAL_KEYS``, validates, writes and reloads. Per node: its new version or the error."""
    state: WebState = request.state.web
    found = console(state)
    source = state.gateway.config.source
    if not source:
        return JSONResponse({"error": "this node runs on its embedded defaults"}, status_code=409)
    body = (await asyncio.to_thread(Path(source).read_text, encoding="utf-8")).encode()

    async def push(node: str) -> dict[str, Any]:
        try:
            answer = await found.ask(node, "POST", f"{_API}/config", body)
        except NodeRefused as exc:
            return {"name": node, "pushed": False, "error": str(exc)}
        except (TimeoutError, httpx.HTTPError, OSError, ValueError) as exc:
            return {"name": node, "pushed": False, "error": exc.__class__.__name__}
        return {"name": node, "pushed": True, **answer}

    results = await asyncio.gather(*(push(node) for node in sorted(found.peers)))
    version = config_version(body.decode())
    state.audit.write("config.push", request.state.identity.name, version=version)
    return JSONResponse({"version": version, "nodes": list(results)})


@api(T.ClusterEvents, query=T.EventsQuery)
async def api_cluster_events(request: Request) -> Response:
    """Events of every node of ``[cluster]`` (the ``/api/events`` query), each with its
    ``node``; ``nodes`` says which answered (``answered: false`` with the ``error``)."""
    try:
        body = await cluster_events(request.state.web, request.query_params)
    except ValueError as exc:
        return JSONResponse({"error": f"bad query: {exc}"}, status_code=400)
    return JSONResponse(body)


@api(T.ClusterHeldList)
async def api_cluster_quarantine(request: Request) -> Response:
    """Held messages of every node of ``[cluster]``, each with its ``node``; ``nodes`` says
    which answered."""
    return JSONResponse(await cluster_held(request.state.web))


@api(T.ClusterReleased, query=T.ClusterNodeQuery)
async def api_cluster_release(request: Request) -> Response:
    """Release a held message on the node that holds it (``?node=NAME``; default this one)."""
    status, body = await _act(request, "release", request.query_params.get("node", ""))
    return JSONResponse(body, status_code=status)


@api(T.ClusterDeleted, query=T.ClusterNodeQuery)
async def api_cluster_delete(request: Request) -> Response:
    """Delete a held message on the node that holds it (``?node=NAME``; default this one)."""
    status, body = await _act(request, "delete", request.query_params.get("node", ""))
    return JSONResponse(body, status_code=status)


async def cluster_page(request: Request) -> Response:
    """Every node's held messages (and, with the permission, latest events) on one page."""
    state: WebState = request.state.web
    held = await cluster_held(state)
    events = config = None
    if request.state.identity.may("events.messages.view"):
        events = await cluster_events(state, request.query_params)
    if request.state.identity.may("settings.view"):
        config = await cluster_config(state)
    return render(
        request,
        "cluster.html",
        held=held,
        events=events,
        config=config,
        notice=request.query_params.get("done", ""),
        time=time,
    )


async def cluster_release_form(request: Request) -> Response:
    """Release from the console page (the form names the node), then back to it."""
    node = (await read_form(request)).get("node", "")
    status, body = await _act(request, "release", node)
    if status != 200:
        return error_response(request, status, str(body.get("error")))
    note = json.dumps(body.get("released", ""))[:200]
    return RedirectResponse("/cluster?" + urlencode({"done": f"released: {note}"}), 303)


ROUTES = declared(
    cluster_page,
    cluster_release_form,
    api_cluster_events,
    api_cluster_quarantine,
    api_cluster_release,
    api_cluster_delete,
    api_cluster_config,
    api_cluster_config_push,
    node_config,
    node_config_push,
    node_events,
    node_quarantine,
    node_release,
    node_delete,
)
