"""Errors that reach clients, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

QUOTED_CHARS = 40  # error messages quote at most this much of what a client sent


def quote(text: str) -> str:
    """A short, printable excerpt of client input for an error message."""
    excerpt = text[:QUOTED_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")
    return f"'{excerpt}'" if len(text) <= QUOTED_CHARS else f"'{excerpt}...'"


class ServiceError(Exception):
    """An error a client sees: its HTTP status, OpenAI's error type, the message, param and code."""

    status = 500
    type = "server_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        # All arguments go to Exception so the error survives pickling across Ray actors.
        super().__init__(message, param, code)
        self.message, self.param, self.code = message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(ServiceError):
    status, type = 400, "invalid_request_error"


class Unauthorized(ServiceError):
    status, type = 401, "invalid_request_error"


class NotFound(ServiceError):
    status, type = 404, "invalid_request_error"


class MethodNotAllowed(ServiceError):
    status, type = 405, "invalid_request_error"


class InputTooLong(ServiceError):
    status, type = 413, "invalid_request_error"


class Unavailable(ServiceError):
    """503 with Retry-After: nothing can serve the request now (a model version starting or failed)."""
    status, type = 503, "server_error"


class Overloaded(Unavailable):
    type = "server_overloaded"


class ModelFileError(RuntimeError):
    """A weight, voice or config file is missing, unreadable or does not match the model."""
