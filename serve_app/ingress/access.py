"""Who may call the service: the API key, checked before a request's body is read, and the CORS policy.

A pure ASGI middleware, so one check covers every route, HTTP and WebSocket, including routes
added later and FastAPI's /docs and /openapi.json; only PUBLIC_PATHS are open. A refused
request is answered from its headers alone: a huge or malformed body is never read.

Serve freezes a copy of the FastAPI app when the ingress class is decorated, before its
config exists, so the ingress hands its policy over at replica start with `configure`
(one ingress per replica process). Until then every request is refused.
"""
from dataclasses import dataclass
import secrets

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import IngressConfig
from ..errors import ServiceError, Unauthorized
from .http_errors import ErrorResponse

# Open without a key: the load balancer's probe and the web page (it holds no secret; its user types the key).
PUBLIC_PATHS = frozenset({"/health", "/", "/web"})
WEBSOCKET_POLICY_VIOLATION = 1008


@dataclass(frozen=True)
class AccessPolicy:
    """The key every non-public request must carry (None: no key needed), and the origins CORS allows."""

    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: IngressConfig) -> "AccessPolicy":
        key = config.api_key.get_secret_value() if config.api_key is not None else None
        return cls(key, tuple(config.cors_origins))

    def admits(self, scope: Scope) -> bool:
        if self.api_key is None or route_path(scope) in PUBLIC_PATHS:
            return True
        headers = dict(scope["headers"])
        scheme, _, given = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        # The scheme word is case-insensitive (RFC 9110); the key is compared in constant time.
        return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), self.api_key.encode())


_policy: AccessPolicy | None = None


def configure(policy: AccessPolicy) -> None:
    """Set the policy of this process's ingress; called once, before it serves requests."""
    global _policy
    _policy = policy


def route_path(scope: Scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path


class AccessMiddleware:
    """CORS outermost (a browser's preflight carries no key), then the key check, then the app."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self._stack: ASGIApp | None = None

    def _built(self, policy: AccessPolicy) -> ASGIApp:
        if self._stack is None:
            self._stack = self._gate if not policy.cors_origins else CORSMiddleware(
                self._gate, allow_origins=list(policy.cors_origins), allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"], max_age=600)
        return self._stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
        elif _policy is None:
            await self._refuse(scope, receive, send, ServiceError("the access policy is not loaded yet"))
        else:
            await self._built(_policy)(scope, receive, send)

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _policy is not None and _policy.admits(scope):
            await self.app(scope, receive, send)
        else:
            error = Unauthorized("missing or wrong API key (Authorization: Bearer <key>)", code="invalid_api_key")
            await self._refuse(scope, receive, send, error)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, error: ServiceError) -> None:
        if scope["type"] == "websocket":
            # Closing before accept: the handshake is refused and no message is read.
            await send({"type": "websocket.close", "code": WEBSOCKET_POLICY_VIOLATION, "reason": error.message})
            return
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
        await ErrorResponse(error, headers)(scope, receive, send)
