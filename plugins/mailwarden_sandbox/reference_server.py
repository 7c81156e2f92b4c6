"""A small reference analysis server in the submit-and-poll shape the HTTP backend speaks.

For tests and for trying a setup: ``python -m mailwarden_sandbox.reference_server --port 8090``.
It "analyses" a file by looking for the EICAR test string or the test marker (score 10, else
1) and reports after ``--delay`` seconds; ``--hold`` keeps every task running until
``POST /control/finish`` (or ``--delay`` expires, if set). ``GET /control/tasks`` lists what was
submitted (sizes and SHA-256, never content), so tests can check what was sent and when.
It keeps everything in memory and is not meant to face a network.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import hashlib
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["main", "make_app"]

_BAD = (
    b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE",
    b"MAILWARDEN-TEST-MALWARE-MARKER",
)
_MAX_UPLOAD = 256 * 1024 * 1024


@dataclass
class _Task:
    id: int
    name: str
    size: int
    sha256: str
    score: float
    submitted: float
    finished: float | None = None


def _file_from_multipart(content_type: str, body: bytes) -> tuple[str, bytes] | None:
    # The stdlib MIME parser reads multipart/form-data well enough for one file field.
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return None
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return part.get_filename() or "file", payload
    return None


def make_app(delay: float = 0.0, hold: bool = False) -> Starlette:
    """The server's application: ``delay`` seconds per analysis; ``hold`` until released."""
    tasks: dict[int, _Task] = {}
    released = {"all": not hold}

    def done(task: _Task) -> bool:
        if task.finished is None and released["all"] and time.time() >= task.submitted + delay:
            task.finished = time.time()
        return task.finished is not None

    async def create(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > _MAX_UPLOAD:
            return JSONResponse({"error": "too large"}, status_code=413)
        found = _file_from_multipart(request.headers.get("content-type", ""), body)
        if found is None:
            return JSONResponse({"error": "multipart field 'file' missing"}, status_code=400)
        name, data = found
        task = _Task(
            id=len(tasks) + 1,
            name=name,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            score=10.0 if any(marker in data for marker in _BAD) else 1.0,
            submitted=time.time(),
        )
        tasks[task.id] = task
        return JSONResponse({"task_id": task.id})

    def lookup(request: Request) -> _Task | None:
        raw = request.path_params["task"]
        return tasks.get(int(raw)) if str(raw).isdigit() else None

    async def view(request: Request) -> JSONResponse:
        task = lookup(request)
        if task is None:
            return JSONResponse({"error": "no such task"}, status_code=404)
        status = "reported" if done(task) else "running"
        return JSONResponse({"task": {"id": task.id, "status": status}})

    async def report(request: Request) -> JSONResponse:
        task = lookup(request)
        if task is None or not done(task):
            return JSONResponse({"error": "no report yet"}, status_code=404)
        return JSONResponse({"info": {"id": task.id, "score": task.score}})

    async def finish(request: Request) -> JSONResponse:
        released["all"] = True
        return JSONResponse({"released": True})

    async def listing(request: Request) -> JSONResponse:
        return JSONResponse(
            [
                {
                    "id": t.id,
                    "name": t.name,
                    "size": t.size,
                    "sha256": t.sha256,
                    "submitted": t.submitted,
                    "finished": t.finished,
                }
                for t in tasks.values()
            ]
        )

    return Starlette(
        routes=[
            Route("/tasks/create/file", create, methods=["POST"]),
            Route("/tasks/view/{task}", view),
            Route("/tasks/report/{task}", report),
            Route("/control/finish", finish, methods=["POST"]),
            Route("/control/tasks", listing),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Run the reference server with uvicorn on 127.0.0.1."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per analysis")
    parser.add_argument("--hold", action="store_true", help="no report until /control/finish")
    args = parser.parse_args(argv)
    uvicorn.run(
        make_app(args.delay, args.hold), host=args.host, port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
