"""The dashboard and the stylesheet."""

from __future__ import annotations

import asyncio
import time
from importlib.resources import files
from typing import Any

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response

from ...cluster.console import redis_status
from ...events import EventQuery
from ..respond import render
from ..route import declared
from ..state import WebState
from ..ui import (
    ACTIONS,
    PERIODS,
    bar_chart,
    trends,
)


def _dashboard(state: WebState, period: str) -> dict[str, Any]:
    now = time.time()
    buckets, width, _ = PERIODS[period]
    query = EventQuery(since=now - buckets * width, limit=1_000_000)
    stats = trends(state.gateway.events.search(query), period, now)
    actions = tuple(a for a in ACTIONS if any(a in row for row in stats["by_bucket"]))
    stats["actions_chart"] = Markup(
        bar_chart(stats, stats["by_bucket"], actions or ("deliver",), "messages by action")
    )
    stats["kinds_chart"] = Markup(
        bar_chart(stats, stats["kinds"], ("virus", "spam"), "spam and virus messages")
    )
    stats["legend"] = actions
    stats["spool"] = len(state.gateway.spool.ids())
    stats["held"] = len(state.gateway.quarantine)
    stats["redis"] = redis_status(state.gateway)
    return stats


async def dashboard_page(request: Request) -> Response:
    """Trends over 24 hours, 7 or 30 days (``period``): messages by action, spam and
    viruses, top senders, viruses and rule hits, the spool and the quarantine, signatures."""
    state: WebState = request.state.web
    period = request.query_params.get("period", "24h")
    if period not in PERIODS:
        period = "24h"
    stats = await asyncio.to_thread(_dashboard, state, period)
    signatures = await asyncio.to_thread(state.signatures.get)
    return render(request, "dashboard.html", stats=stats, periods=PERIODS, signatures=signatures)


async def static_file(request: Request) -> Response:
    """The stylesheet (served locally: no CDN)."""
    name = request.path_params["name"]
    if name != "app.css":
        return Response("not found", status_code=404)
    css = files("mailwarden.web").joinpath("static", "app.css").read_text(encoding="utf-8")
    return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


ROUTES = declared(
    dashboard_page,
    static_file,
)
