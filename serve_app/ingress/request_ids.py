"""Request ids: one per HTTP request, in its `X-Request-Id` response header and in every log line about it.

Serve's proxy already takes the client's `X-Request-Id` (or makes one), passes it to the
ingress as that request header, to the model replicas with every handle call (their log lines
carry it), and echoes it in the response. Two ASGI middlewares bound it:

- `RequestIds`, on the ingress app: reads the id (cleaned) into `current_request_id()` for the
  ingress's own logs and the model calls' `SynthesisOptions`; without a proxy in front (tests,
  in-process use) it also makes one and sets the response header.
- `proxy_middlewares`, for Serve's proxy (env `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=
  serve_app.ingress.request_ids:proxy_middlewares` where Ray starts): replaces an id that is too long
  or has odd characters with a fresh one before the proxy reads it, so the echoed header and
  the logs agree and stay bounded.
"""
from contextvars import ContextVar
import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
MAX_CHARS = 64
_CLEAN = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_CHARS}}}")

_current: ContextVar[str] = ContextVar("request_id", default="-")


def clean_request_id(given: str | None) -> str:
    """The client's id when it is short and plain (letters, digits, `._:-`), else a new one."""
    return given if given is not None and _CLEAN.fullmatch(given) else uuid.uuid4().hex


def current_request_id() -> str:
    """The id of the request being handled ('-' outside one)."""
    return _current.get()


class RequestIds:
    """Pure ASGI middleware of the ingress app: every request has an id, set before anything else runs."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = MutableHeaders(scope=scope).get(HEADER)
        request_id = clean_request_id(given)
        token = _current.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start" and given is None:  # no proxy in front to echo it
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)


class _CleanProxyIds:
    """Proxy-side: an unfit client id is replaced before Serve's own RequestIdMiddleware reads it."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = MutableHeaders(scope=scope)
            given = headers.get(HEADER)
            if given is not None and clean_request_id(given) != given:
                headers[HEADER] = clean_request_id(None)
        await self.app(scope, receive, send)


def proxy_middlewares() -> list[Middleware]:
    """Serve's HTTP proxy callback (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH)."""
    return [Middleware(_CleanProxyIds)]
