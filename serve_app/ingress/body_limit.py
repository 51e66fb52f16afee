"""A cap on request body size, so no client makes the ingress hold megabytes before validation runs.

`max_input_chars` bounds the text, but only after FastAPI has read and parsed the whole body.
This middleware refuses a body whose Content-Length is over the cap at once (413, nothing read),
and stops a chunked body as soon as what arrived passes it.
"""
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InputTooLong
from .http_errors import ErrorResponse

# Room for the longest `input` (10,000 characters, each up to 12 bytes as JSON escapes of a surrogate
# pair) and `instructions` (4,096), many times over; far below what would strain a replica.
MAX_BODY_BYTES = 1 << 20


TOO_LARGE = f"request body over {MAX_BODY_BYTES} bytes"


class BodyLimit:
    """Answers 413 for HTTP bodies over MAX_BODY_BYTES, by their Content-Length or as they stream in."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            await ErrorResponse(InputTooLong(TOO_LARGE, code="body_too_large"))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:  # a chunked body with no length: stop reading it
                raise HTTPException(413, TOO_LARGE)  # FastAPI passes this on to the error handlers
            return message

        await self.app(scope, counted, send)
