"""The message event log: the events page with its filters, paging and export, one event's
detail, and the API's search and statistics."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...events import EventQuery
from .. import api_types as T
from ..api_types import api
from ..auth import Identity
from ..respond import error_response, render
from ..route import declared
from ..state import WebState
from ..ui import (
    ACTIONS,
    EXPORT_LIMIT,
    STATUSES,
    EventFilter,
    event_csv,
    human_bytes,
    parse_when,
)


def event_query(params: Any) -> EventQuery:
    """The event log query of the API's parameters (``/api/events``, ``/api/cluster/events``);
    raises ``ValueError`` on a bad one."""

    def number(name: str) -> float | None:
        value = params.get(name)
        return float(value) if value not in (None, "") else None

    def text(name: str) -> str | None:
        value = params.get(name)
        return str(value) if value else None

    hours = number("hours")
    return EventQuery(
        # The events page's grammar: 2h, 7d, a local date and time, or a Unix time.
        since=time.time() - hours * 3600 if hours else parse_when(params.get("since") or ""),
        until=parse_when(params.get("until") or ""),
        sender=text("sender"),
        recipient=text("recipient"),
        subject=text("subject"),
        action=text("action"),
        status=text("status"),
        message_id=text("message_id"),
        client_address=text("client"),
        limit=min(int(params.get("limit") or 100), 1000),
    )


@api(T.EVENTS, query=T.EventsQuery)
async def api_events(request: Request) -> Response:
    """Search the message event log: ``sender``, ``recipient``, ``subject``, ``status``,
    ``action``, ``message_id``, ``client``, ``since``/``until`` (``2h``, ``7d``,
    ``2026-12-06T14:30`` or a Unix time) or ``hours``."""
    state: WebState = request.state.web
    try:
        query = event_query(request.query_params)
    except ValueError as exc:
        return JSONResponse({"error": f"bad query: {exc}"}, status_code=400)
    events = await asyncio.to_thread(state.gateway.events.search, query)
    return Response(msgspec.json.encode(events), media_type="application/json")


def _stats(state: WebState, hours: int = 24) -> dict[str, Any]:
    now = time.time()
    events = state.gateway.events.search(EventQuery(since=now - hours * 3600, limit=1_000_000))
    by_hour: dict[int, Counter[str]] = {h: Counter() for h in range(hours)}
    for event in events:
        slot = int((now - event.time) // 3600)
        if 0 <= slot < hours:
            by_hour[hours - 1 - slot][str(event.action)] += 1
    return {
        "hours": hours,
        "messages": len(events),
        "actions": dict(Counter(str(e.action) for e in events)),
        "by_hour": [dict(by_hour[h]) for h in range(hours)],
    }


@api(T.Stats)
async def api_stats(request: Request) -> Response:
    """Messages and actions over the last 24 hours, by hour."""
    state: WebState = request.state.web
    return JSONResponse(await asyncio.to_thread(_stats, state))


async def events_page(request: Request) -> Response:
    """Filters for every indexed field, a page of results, and export links."""
    state: WebState = request.state.web
    wanted = EventFilter(request.query_params)
    page, per_page = wanted.page, wanted.per_page
    offset = (page - 1) * per_page
    query = wanted.query(offset + per_page + 1)
    found = await asyncio.to_thread(state.gateway.events.search, query)
    events = found[offset : offset + per_page]
    return render(
        request,
        "events.html",
        events=events,
        params=request.query_params,
        errors=wanted.errors,
        actions=ACTIONS,
        statuses=STATUSES,
        page=page,
        newer=wanted.link(page=page - 1) if page > 1 else None,
        older=wanted.link(page=page + 1) if len(found) > offset + per_page else None,
        export=wanted.link(page=None, per_page=None),
        first=offset + 1,
        time=time,
    )


async def events_export(request: Request) -> Response:
    """The events the filters match (up to 10,000, newest first) as a CSV or JSON download
    (``format=csv|json``)."""
    state: WebState = request.state.web
    wanted = EventFilter(request.query_params)
    shape = request.query_params.get("format", "csv")
    if shape not in ("csv", "json"):
        return error_response(request, 400, "format is csv or json")
    query = wanted.query(EXPORT_LIMIT)
    if wanted.errors:
        return error_response(request, 400, "; ".join(wanted.errors.values()))
    events = await asyncio.to_thread(state.gateway.events.search, query)
    identity: Identity = request.state.identity
    state.audit.write("events.export", identity.name, format=shape, records=len(events))
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    disposition = {"Content-Disposition": f'attachment; filename="events-{stamp}.{shape}"'}
    if shape == "json":
        body = msgspec.json.encode(events)
        return Response(body, media_type="application/json", headers=disposition)
    return Response(event_csv(events), media_type="text/csv; charset=utf-8", headers=disposition)


def _find_event(state: WebState, event_id: str, hint: str | None) -> Any:
    store = state.gateway.events.store
    try:
        moment = float(hint) if hint else None
    except ValueError:
        moment = None
    if moment is not None:
        # The list links carry the event's time: a walk of a two-second window.
        near = store.select(
            since=moment - 1, until=moment + 1, predicate=lambda e: e.id == event_id, limit=1
        )
        if near:
            return near[0]
    found = store.select(predicate=lambda e: e.id == event_id, limit=1)
    return found[0] if found else None


async def event_page(request: Request) -> Response:
    """One message event: envelope, verdict, every finding with its score, the detectors'
    timings and the SMTP reply sent (never the message's text)."""
    state: WebState = request.state.web
    event_id = request.path_params["event_id"][:200]
    event = await asyncio.to_thread(_find_event, state, event_id, request.query_params.get("t"))
    if event is None:
        return error_response(request, 404, f"no message event {event_id!r} (it may have aged out)")
    timings = sorted(event.timings_ms.items(), key=lambda item: -item[1])
    longest = max((ms for _, ms in timings), default=0.0) or 1.0
    return render(
        request,
        "event.html",
        e=event,
        timings=[(name, ms, 100.0 * ms / longest) for name, ms in timings],
        human_bytes=human_bytes,
        time=time,
    )


ROUTES = declared(
    events_page,
    events_export,
    event_page,
    api_events,
    api_stats,
)
