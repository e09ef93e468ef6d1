"""Bounds on what one request or connection may cost, and the browser-facing safety rules, applied before
the app reads a byte of the body: Host allow-list (DNS rebinding), same-origin writes (CSRF), the API key,
body size (declared or streamed) and a deadline for the body; security headers on every response.

The connection-level half (a deadline for a request's headers, so idle and slowloris connections are
closed) is ``uvicorn_options``, for whoever starts uvicorn.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HEADER_SECONDS = 10.0  # a connection must send a request's headers within this, from connect or the last answer
BODY_SECONDS = 60.0  # and its body within this, from the headers
# The page's own script, style and images (thumbnails, and blob: previews of a photo being searched by).
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")
# FastAPI's /docs and /redoc pages load their scripts from a CDN and start them with an inline script.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
            "font-src https://fonts.gstatic.com; img-src 'self' data: https:; worker-src blob:; "
            "frame-ancestors 'none'")
DOCS_PATHS = ("/docs", "/redoc")


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The Host names a server bound to ``bind`` answers: loopback names (plus ``extra``) when bound to
    loopback, so a web page cannot reach it through a DNS name of its own; any name otherwise, unless
    ``extra`` lists them."""
    extra = {h.lower() for h in extra}
    if bind in LOOPBACK_HOSTS or bind.startswith("127."):
        return LOOPBACK_HOSTS | {bind} | extra
    return LOOPBACK_HOSTS | extra if extra else None


def host_name(value: str) -> str:
    """``example.com:8000`` -> ``example.com``; ``[::1]:8000`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class Guard:
    """Pure ASGI middleware that refuses a request before its body is read: 400 for a Host outside
    ``hosts`` (None: any), 403 for a cross-site write, 401 for a keyed route without ``api_key``, 413 for a
    body over ``max_body(method, path)`` bytes (declared, or counted as it streams), 408 for a body slower
    than ``body_seconds``. Adds the security headers to every response."""

    def __init__(self, app: Any, *, api_key: str | None, keyed: Callable[[str, str], bool],
                 max_body: Callable[[str, str], int], hosts: frozenset[str] | None = None,
                 body_seconds: float = BODY_SECONDS) -> None:
        self.app = app
        self.api_key = api_key
        self.keyed = keyed
        self.max_body = max_body
        self.hosts = hosts
        self.body_seconds = body_seconds

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope["path"].startswith(DOCS_PATHS) else PAGE_CSP
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = _Body(pending="transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0")

        async def send_safe(message: dict) -> None:
            if message["type"] == "http.response.start":
                body.answered = True
                extra = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                         (b"referrer-policy", b"same-origin"), (b"content-security-policy", csp.encode())]
                if body.pending:  # answered before its body was read: close, rather than read the rest
                    extra.append((b"connection", b"close"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            limit = self.check(scope["method"], scope["path"], headers)
        except HTTPException as e:
            await _refuse(e, scope, receive, send_safe)
            return
        try:
            await self.app(scope, self.bounded(receive, limit, body), send_safe)
        except HTTPException as e:  # from bounded(), where the app let it through (e.g. a mounted app)
            if body.answered:
                raise
            await _refuse(e, scope, receive, send_safe)

    def check(self, method: str, path: str, headers: dict[str, str]) -> int:
        """The body limit for this request, or the HTTPException that refuses it."""
        if self.hosts is not None and host_name(headers.get("host", "")) not in self.hosts:
            raise HTTPException(400, "this server does not answer to that Host name (start it with "
                                     "--allowed-host NAME to allow one)")
        if method not in SAFE_METHODS and _cross_site(headers):
            raise HTTPException(403, "cross-site request refused: write from this server's own page or a "
                                     "non-browser client")
        if self.api_key is not None and self.keyed(method, path):
            given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not given or not hmac.compare_digest(given.encode(), self.api_key.encode()):
                raise HTTPException(401, "this endpoint needs the API key: send it as X-API-Key or "
                                         "Authorization: Bearer")
        limit = self.max_body(method, path)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise HTTPException(400, "bad Content-Length")
            if int(declared) > limit:
                raise HTTPException(413, f"the request body is over this endpoint's {_mb(limit)} limit")
        return limit

    def bounded(self, receive: Any, limit: int, body: _Body) -> Any:
        """``receive`` that counts body bytes against ``limit`` and waits for the body at most
        ``body_seconds`` in all; once the body is complete it passes messages through untouched."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_seconds
        received = 0

        async def receive_bounded() -> dict:
            nonlocal received
            if not body.pending:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {self.body_seconds:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body.pending = message.get("more_body", False)
                if received > limit:
                    body.pending = True
                    raise HTTPException(413, f"the request body is over this endpoint's {_mb(limit)} limit")
            else:
                body.pending = False
            return message

        return receive_bounded


@dataclass
class _Body:
    """Where a request's body stands: still (partly) unread, and whether the answer has started."""

    pending: bool
    answered: bool = False


def _cross_site(headers: dict[str, str]) -> bool:
    """Whether a browser says the request comes from another site's page (Sec-Fetch-Site), or its Origin
    differs from the Host it was sent to. Clients that send neither (curl, scripts) are not browsers."""
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    return origin.partition("://")[2].lower() != headers.get("host", "").lower()


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:g} MB"


async def _refuse(e: HTTPException, scope: dict, receive: Any, send: Any) -> None:
    await JSONResponse({"detail": e.detail}, e.status_code)(scope, receive, send)


class _HeaderDeadline:
    """Mixed into uvicorn's HTTP protocol: closes a connection that has not sent a complete request head
    within ``HEADER_SECONDS`` of connecting or of its last answer (uvicorn's keep-alive timer stops at the
    first byte, so a client sending one byte now and then, or nothing at all, is never closed)."""

    header_seconds = HEADER_SECONDS
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._busy():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing() and not self._busy():  # type: ignore[attr-defined]
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _busy(self) -> bool:
        cycle = self.cycle  # type: ignore[attr-defined]
        return cycle is not None and not cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_seconds, self._expire)  # type: ignore[attr-defined]

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self._busy():
            self.transport.close()  # type: ignore[attr-defined]


def uvicorn_options(header_seconds: float = HEADER_SECONDS) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config``: the HTTP protocol with a header deadline,
    and a short keep-alive."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - httptools not installed
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    protocol = type("DeadlineProtocol", (_HeaderDeadline, base), {"header_seconds": header_seconds})
    return {"http": protocol, "timeout_keep_alive": 5, "h11_max_incomplete_event_size": 16 * 1024}
