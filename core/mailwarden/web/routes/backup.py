"""The backup store: backed-up messages listed, shown, downloaded and released."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from .. import api_types as T
from ..api_types import api
from ..backups import BackupNotFound, backup_entry, backup_list, backup_raw, release_backup
from ..quarantine_views import send_on
from ..respond import download, error_response, render
from ..route import declared
from ..state import WebState


@api(T.BACKUPS)
async def api_backups(request: Request) -> Response:
    """Backed-up messages, newest first: metadata only."""
    state: WebState = request.state.web
    return JSONResponse(await asyncio.to_thread(backup_list, state.gateway))


@api(T.BACKUP)
async def api_backup(request: Request) -> Response:
    """One backup's metadata: time, reason, sender, recipients, subject, size, hash."""
    state: WebState = request.state.web
    try:
        view = await asyncio.to_thread(
            backup_entry, state.gateway, request.path_params["backup_id"]
        )
    except BackupNotFound as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    return JSONResponse(view)


@api(bytes)
async def api_backup_raw(request: Request) -> Response:
    """The backed-up message as a download (never shown inline)."""
    state: WebState = request.state.web
    backup_id = request.path_params["backup_id"]
    try:
        data = await asyncio.to_thread(backup_raw, state.gateway, backup_id)
    except BackupNotFound as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    return download(request, data, "backup-message.eml", "backup.download", id=backup_id)


async def _backup_release(request: Request) -> str | Response:
    return await send_on(
        request,
        "backup_id",
        "backup.release",
        lambda state, key: release_backup(state.gateway, key),
        BackupNotFound,
    )


@api(T.Released)
async def api_backup_release(request: Request) -> Response:
    """Send a backed-up copy to its recorded recipients (the copy stays in the backup)."""
    result = await _backup_release(request)
    return result if isinstance(result, Response) else JSONResponse({"released": result})


async def backup_page(request: Request) -> Response:
    """Backed-up messages."""
    state: WebState = request.state.web
    entries = await asyncio.to_thread(backup_list, state.gateway)
    return render(request, "backup.html", entries=entries, time=time)


async def backup_entry_page(request: Request) -> Response:
    """One backup's metadata, with release and download for backup.manage."""
    state: WebState = request.state.web
    try:
        entry = await asyncio.to_thread(
            backup_entry, state.gateway, request.path_params["backup_id"]
        )
    except BackupNotFound as exc:
        return error_response(request, 404, str(exc))
    return render(request, "backup_entry.html", entry=entry, time=time)


async def backup_release_form(request: Request) -> Response:
    """Release a backup from the page, then back to the list."""
    result = await _backup_release(request)
    return result if isinstance(result, Response) else RedirectResponse("/backup", 303)


ROUTES = declared(
    backup_page,
    backup_entry_page,
    backup_release_form,
    api_backups,
    api_backup,
    api_backup_raw,
    api_backup_release,
)
