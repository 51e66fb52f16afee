"""Holding a response until its first audio exists, so failures get a status code, not a broken 200.

A failure after the first audio cannot change the status any more: it becomes a
`stream_interrupted` error raised into the response body (the audio stream then ends early;
the captioned stream writes it as its last line), and its details go to the log.
"""
from collections.abc import Callable
from typing import AsyncIterator

from ..errors import ServiceError
from ..logs import get_logger
from ..protocol import AudioChunk
from .http_errors import as_service_error
from .request_ids import current_request_id

logger = get_logger()

INTERRUPTED = "the audio stream failed after part of it was sent; retry the request"


def interrupted(e: BaseException) -> ServiceError:
    logger.error("request %s: stream cut short after its first audio", current_request_id(), exc_info=e)
    return ServiceError(INTERRUPTED, code="stream_interrupted")


async def _prepend(first: AudioChunk | None, rest: AsyncIterator[AudioChunk],
                   on_interrupt: Callable[[], None]) -> AsyncIterator[AudioChunk]:
    if first is None:
        return
    yield first
    try:
        async for chunk in rest:
            yield chunk
    except Exception as e:
        on_interrupt()
        raise interrupted(e) from None  # no Ray internals chained to what the client may see


async def after_first_audio(chunks: AsyncIterator[AudioChunk],
                            on_interrupt: Callable[[], None] = lambda: None) -> AsyncIterator[AudioChunk]:
    """Wait for the first chunk (raising what the client should see if there is none), then all of them;
    `on_interrupt` hears of a failure after the first chunk."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except Exception as e:
        raise as_service_error(e) from e
    return _prepend(first, chunks, on_interrupt)
