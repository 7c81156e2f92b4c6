"""The analysis servers the sandbox plugin talks to, behind one small interface.

A backend either answers at once (ICAP: the verdict comes with the reply) or takes the object
and gives a task id to poll (the submit-and-poll REST shape of Cuckoo and CAPE). Failures raise
:class:`BackendError`; they are never verdicts.
"""

from __future__ import annotations

from typing import Protocol

import httpx
import msgspec

from .icap import IcapClient, IcapError

__all__ = ["Backend", "BackendError", "HttpBackend", "IcapBackend", "ObjectVerdict"]


class BackendError(Exception):
    """The analysis server could not be reached or answered with an error."""


class ObjectVerdict(msgspec.Struct, kw_only=True):
    """What the server concluded about one object."""

    status: str  # clean, suspicious or malicious
    detail: str = ""  # the threat name or the score, for admins
    score: float | None = None


class Backend(Protocol):
    """One analysis server."""

    name: str

    async def submit(self, data: bytes, label: str) -> ObjectVerdict | str:
        """Send one object: its verdict, or a task id to :meth:`poll` later."""
        ...

    async def poll(self, task: str) -> ObjectVerdict | None:
        """The verdict of ``task``, or ``None`` while the analysis runs."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class IcapBackend:
    """ICAP RESPMOD (or REQMOD): synchronous, the verdict comes with the reply."""

    name = "icap"

    def __init__(self, url: str, method: str = "respmod", timeout: float = 10.0) -> None:
        self.client = IcapClient(url, timeout=timeout)
        self.method = method

    async def submit(self, data: bytes, label: str) -> ObjectVerdict | str:
        try:
            if self.method == "reqmod":
                response = await self.client.reqmod(data, label)
            else:
                response = await self.client.respmod(data, label)
            status = response.verdict
        except IcapError as exc:
            raise BackendError(str(exc)) from exc
        return ObjectVerdict(status=status, detail=response.threat or "")

    async def poll(self, task: str) -> ObjectVerdict | None:
        raise BackendError("ICAP answers at once; there is nothing to poll")

    async def close(self) -> None:
        return None


class HttpBackend:
    """Submit a file, get a task id, poll its status, read the report's score (0-10).

    The shape of Cuckoo's REST API: ``POST /tasks/create/file`` (multipart ``file``) ->
    ``{"task_id": N}``; ``GET /tasks/view/N`` -> ``{"task": {"status": ...}}`` until
    ``reported``; ``GET /tasks/report/N`` -> ``{"info": {"score": S}}``.
    """

    name = "http"

    def __init__(
        self,
        url: str,
        *,
        token: str = "",
        timeout: float = 10.0,
        malicious_score: float = 7.0,
        suspicious_score: float = 4.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.malicious_score = malicious_score
        self.suspicious_score = suspicious_score

    async def _json(self, method: str, path: str, **kwargs: object) -> dict[str, object]:
        try:
            response = await self.client.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise BackendError(f"{method} {path}: {exc!r}") from exc
        if response.status_code != 200:
            raise BackendError(f"{method} {path}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise BackendError(f"{method} {path}: not JSON") from exc
        if not isinstance(body, dict):
            raise BackendError(f"{method} {path}: unexpected answer")
        return body

    async def submit(self, data: bytes, label: str) -> ObjectVerdict | str:
        name = label.replace("/", "_")[:200] or "object"
        body = await self._json(
            "POST", "/tasks/create/file", files={"file": (name, data, "application/octet-stream")}
        )
        task = body.get("task_id")
        if not isinstance(task, int | str) or isinstance(task, bool):
            raise BackendError("submit answered without a task_id")
        return str(task)

    async def poll(self, task: str) -> ObjectVerdict | None:
        view = await self._json("GET", f"/tasks/view/{task}")
        state = view.get("task")
        status = state.get("status") if isinstance(state, dict) else None
        if status in ("failed_analysis", "failed_processing", "failed_reporting"):
            raise BackendError(f"task {task}: {status}")
        if status != "reported":
            return None
        report = await self._json("GET", f"/tasks/report/{task}")
        info = report.get("info")
        score = info.get("score") if isinstance(info, dict) else None
        if not isinstance(score, int | float) or isinstance(score, bool):
            raise BackendError(f"task {task}: report without a score")
        verdict = (
            "malicious"
            if score >= self.malicious_score
            else "suspicious"
            if score >= self.suspicious_score
            else "clean"
        )
        return ObjectVerdict(status=verdict, detail=f"score {score:g}", score=float(score))

    async def close(self) -> None:
        await self.client.aclose()
