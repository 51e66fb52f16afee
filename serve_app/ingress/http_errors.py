"""Every error a client can see, mapped to its status and OpenAI-shaped body in one place."""
import json
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException
from starlette.exceptions import HTTPException

from ..errors import (
    InputTooLong,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    ServiceError,
    Unauthorized,
    Unavailable,
)
from ..logs import get_logger
from ..versions import ModelVersion
from .health import deployment_statuses, running_replicas
from .request_ids import current_request_id

logger = get_logger()

RETRY_AFTER_S = 2
MAX_LISTED_ERRORS = 3  # a body with a thousand bad fields gets a short message, not a thousand lines
MAX_REASON_CHARS = 200  # of a failed version's start error, quoted to clients
# The exception's class that ends a traceback's last line (`serve_app.errors.ModelFileError: `): internals.
_EXCEPTION_CLASS = re.compile(r"^[\w.]*(?:Error|Exception): ")
# Statuses Starlette raises itself (routing, body parsing), typed as OpenAI types them.
_HTTP_ERRORS = {400: InvalidRequest, 401: Unauthorized, 404: NotFound, 405: MethodNotAllowed, 413: InputTooLong}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error's body, as OpenAI sends it."""

    error: ErrorDetail


_MEANINGS = {
    400: "Invalid request: a field, the model, a voice, the language or the text (the message says which).",
    401: "Missing or wrong API key (`Authorization: Bearer <key>`), when the server has one.",
    413: "More text than the server's max_input_chars.",
    503: ("The model replicas are saturated or too slow to start, or the model version is starting or failed "
          "to start: retry after `Retry-After` seconds."),
}


def error_responses(*statuses: int) -> dict:
    """OpenAPI `responses=` entries for the errors a route can answer with."""
    return {status: {"model": ErrorBody, "description": _MEANINGS[status]} for status in statuses}


class ErrorResponse(JSONResponse):
    """An error body in ASCII JSON: a lone surrogate from the request is escaped, not a failed encode."""

    def __init__(self, error: ServiceError, headers: dict[str, str] | None = None):
        super().__init__(error.body(), status_code=error.status, headers=headers)

    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def as_service_error(e: BaseException) -> ServiceError:
    """Errors from model replicas arrive wrapped by Ray; unwrap what the client should see."""
    cause = e.cause if isinstance(e, RayTaskError) else e
    if isinstance(cause, ServiceError):
        return cause
    if isinstance(cause, BackPressureError):
        return Overloaded("the model replicas are saturated; retry shortly", code="overloaded")
    if isinstance(cause, TimeoutError):  # a bounded call that found no replica free in time
        return Overloaded("the model replicas did not answer in time; retry shortly", code="overloaded")
    if isinstance(cause, DeploymentUnavailableError):  # Serve gave up starting the version's replicas
        return Unavailable("the model version failed to start; retry later", code="model_failed")
    # Ray's messages name actors, nodes and paths: the client gets a short one, the log the details.
    logger.error("request %s: synthesis failed", current_request_id(), exc_info=e)
    if isinstance(cause, (RayActorError, RayServeException)):  # its replica died (so did the retries'), or is gone
        return Overloaded("a model replica failed; retry shortly", code="replica_unavailable")
    return ServiceError(f"synthesis failed (request id {current_request_id()})", code="synthesis_failed")


async def explained(error: ServiceError, version: ModelVersion) -> ServiceError:
    """`error`, or when it is a 503 and the version has no running replica, why: its replicas are
    starting, or Serve gave up starting them (with their error)."""
    if not isinstance(error, Unavailable):
        return error
    overview = (await deployment_statuses()).get(version.deployment)
    if overview is None or running_replicas(overview):
        return error  # Serve does not say, or replicas run and are busy: the error says so
    if overview.status == "DEPLOY_FAILED":
        return Unavailable(f"model version {version.name} failed to start: {_start_error(overview.message)}",
                           code="model_failed")
    return Unavailable(f"model version {version.name} is not ready: its replicas are starting; retry shortly",
                       code="model_starting")


def _start_error(message: str) -> str:
    """The replicas' own error, the last line of Serve's failure message, without its class name."""
    lines = message.strip().splitlines() or ["see the server's logs"]
    return _EXCEPTION_CLASS.sub("", lines[-1])[:MAX_REASON_CHARS]


async def _service_error(_: Request, e: ServiceError) -> ErrorResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if isinstance(e, Unavailable) else None
    return ErrorResponse(e, headers)


def _where(loc: tuple) -> str:
    # The request field, as OpenAI's `param`: deeper parts of a loc name union members (`constrained-str`).
    fields = [str(p) for p in loc if p != "body"]
    return fields[0] if fields else "body"


async def _validation_error(_: Request, e: RequestValidationError) -> ErrorResponse:
    # Pydantic's messages name the rule broken, never the value sent: nothing of the input is echoed.
    errors = e.errors()
    message = "; ".join(f"{_where(err['loc'])}: {err['msg']}" for err in errors[:MAX_LISTED_ERRORS])
    if len(errors) > MAX_LISTED_ERRORS:
        message += f"; and {len(errors) - MAX_LISTED_ERRORS} more"
    param = _where(errors[0]["loc"]) if errors else None
    return ErrorResponse(InvalidRequest(message, param=None if param == "body" else param))


async def _http_error(request: Request, e: HTTPException) -> ErrorResponse:
    if e.status_code == 404:
        error = NotFound(f"no route {request.method} {request.url.path[:100]}")
    elif e.status_code == 405:
        error = MethodNotAllowed(f"method {request.method} is not allowed here", code="method_not_allowed")
    else:
        error = _HTTP_ERRORS.get(e.status_code, ServiceError)(str(e.detail)[:200])
        error.status = e.status_code  # the status Starlette chose, whatever class types the body
    return ErrorResponse(error, e.headers)  # keeps `Allow` on a 405


async def _unexpected_error(_: Request, e: Exception) -> ErrorResponse:
    # Still a JSON body; the details go to the log, not to the client.
    logger.error("unhandled error: %s", type(e).__name__, exc_info=e)
    return ErrorResponse(ServiceError("internal server error"))


def _openapi_without_422(app: FastAPI) -> None:
    """FastAPI documents a 422 for every body; this service answers invalid bodies with a 400."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            for operations in build()["paths"].values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
        return app.openapi_schema

    app.openapi = openapi


def install_error_handlers(app: FastAPI) -> None:
    _openapi_without_422(app)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
