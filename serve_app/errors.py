"""Errors that reach clients, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""


class ServiceError(Exception):
    status = 500
    type = "server_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        # All arguments go to Exception so the error survives pickling across Ray actors.
        super().__init__(message, param, code)
        self.message, self.param, self.code = message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(ServiceError):
    status = 400
    type = "invalid_request_error"


class NotFound(ServiceError):
    status = 404
    type = "invalid_request_error"


class Overloaded(ServiceError):
    status = 503
    type = "server_overloaded"


class ModelFileError(RuntimeError):
    """A weight, voice or config file is missing, unreadable or does not match the model."""


class InputTooLong(ServiceError):
    status = 413
    type = "invalid_request_error"


class Unauthorized(ServiceError):
    status = 401
    type = "invalid_request_error"
