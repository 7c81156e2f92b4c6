"""What the route handlers answer with: pages, errors (JSON under ``/api/``), cookies and
the short-lived notice of what the last act did."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from .auth import Identity
from .state import WebState

SESSION_COOKIE = "mw_session"


# The login form's anti-CSRF nonce, set when the form is shown and sent back with it only.
LOGIN_COOKIE = "mw_login"


def peer(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def read_form(request: Request) -> dict[str, str]:
    # URL-encoded forms only (no uploads here), parsed without an extra dependency; the body
    # is capped by the route's max_body.
    body = (await request.body()).decode("utf-8", "replace")
    return {key: values[0] for key, values in parse_qs(body, keep_blank_values=True).items()}


def error_response(request: Request, status: int, message: str) -> Response:
    if wants_json(request):
        return JSONResponse({"error": message}, status_code=status)
    state: WebState = request.state.web
    page = state.templates.get_template("error.html").render(
        status=status, message=message, identity=request.state.identity
    )
    return HTMLResponse(page, status_code=status)


def render(request: Request, template: str, **context: Any) -> HTMLResponse:
    state: WebState = request.state.web
    identity: Identity | None = request.state.identity
    csrf = state.auth.csrf_token(identity) if identity is not None else ""
    body = state.templates.get_template(template).render(identity=identity, csrf=csrf, **context)
    return HTMLResponse(body)


def set_cookie(
    state: WebState, response: Response, name: str, value: str, path: str = "/"
) -> Response:
    response.set_cookie(
        name,
        value,
        max_age=int(state.auth.session_seconds),
        httponly=True,
        secure=state.secure_cookies,
        samesite="strict",
        path=path,
    )
    return response


NOTICE_COOKIE = "mw_notice"


_NOTICES = {
    "release": "Released {n}.",
    "release-as-ham": "Released {n} and learned {them} as not spam.",
    "delete": "Deleted {n}.",
    "delete-as-spam": "Learned {n} as spam and deleted {them}.",
}


async def form_lists(request: Request) -> dict[str, list[str]]:
    body = (await request.body()).decode("utf-8", "replace")
    return parse_qs(body, keep_blank_values=True)


def with_notice(
    request: Request, response: Response, act: str, done: int, failed: int = 0
) -> Response:
    """``response`` (a redirect) carrying what was done to the next page in a short-lived
    cookie: codes and counts only, so no text of a request is ever shown back."""
    response.set_cookie(
        NOTICE_COOKIE,
        f"{act}.{done}.{failed}",
        max_age=60,
        httponly=True,
        samesite="strict",
        secure=request.state.web.secure_cookies,
        path="/",
    )
    return response


def _notice(request: Request) -> tuple[str, str]:
    """The notice and error of the last act (from its cookie), ``("", "")`` when none."""
    raw = request.cookies.get(NOTICE_COOKIE, "")
    act, _, counts = raw.partition(".")
    done_text, _, failed_text = counts.partition(".")
    if act not in _NOTICES or not done_text.isdigit() or not failed_text.isdigit():
        return "", ""
    done, failed = int(done_text), int(failed_text)
    words = f"{done} message" + ("" if done == 1 else "s")
    notice = _NOTICES[act].format(n=words, them="it" if done == 1 else "them") if done else ""
    error = (
        f"{failed} message{'' if failed == 1 else 's'} could not be changed "
        "(see the application log)"
        if failed
        else ""
    )
    return notice, error


def render_with_notice(request: Request, template: str, **context: Any) -> Response:
    notice, error = _notice(request)
    page = render(request, template, notice=notice, error=error, **context)
    if request.cookies.get(NOTICE_COOKIE):
        page.delete_cookie(NOTICE_COOKIE, path="/")
    return page


def download(request: Request, data: bytes, filename: str, act: str, **fields: object) -> Response:
    """A kept message as a download (never shown inline), its fetching audited as ``act``."""
    state: WebState = request.state.web
    identity: Identity = request.state.identity
    state.audit.write(act, identity.name, **fields)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
