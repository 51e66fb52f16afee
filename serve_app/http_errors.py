"""Every error a client can see, mapped to its status and OpenAI-shaped body in one place."""
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException

from .errors import InvalidRequest, NotFound, Overloaded, ServiceError
from .logs import get_logger

logger = get_logger()

RETRY_AFTER_S = 2


def as_service_error(e: BaseException) -> ServiceError:
    """Errors from model replicas arrive wrapped by Ray; unwrap what the client should see."""
    cause = e.cause if isinstance(e, RayTaskError) else e
    if isinstance(cause, ServiceError):
        return cause
    if isinstance(cause, BackPressureError):
        return Overloaded("the model replicas are saturated; retry shortly", code="overloaded")
    logger.exception("synthesis failed", exc_info=e)
    return ServiceError(f"synthesis failed: {type(cause).__name__}: {cause}")


async def _service_error(_: Request, e: ServiceError) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if isinstance(e, Overloaded) else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
    first = e.errors()[0]
    param = ".".join(str(p) for p in first["loc"] if p != "body") or None
    message = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}" for err in e.errors())
    return JSONResponse(InvalidRequest(message, param=param).body(), status_code=400)


async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
    error = NotFound(f"no route {request.method} {request.url.path}") if e.status_code == 404 else \
        ServiceError(str(e.detail))
    return JSONResponse(error.body(), status_code=e.status_code)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
