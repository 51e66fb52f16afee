"""Holding a response until its first audio exists, so failures get a status code, not a broken 200."""
from typing import AsyncIterator

from .http_errors import as_service_error
from .protocol import AudioChunk


async def _prepend(first: AudioChunk | None, rest: AsyncIterator[AudioChunk]) -> AsyncIterator[AudioChunk]:
    if first is not None:
        yield first
        async for chunk in rest:
            yield chunk


async def after_first_audio(chunks: AsyncIterator[AudioChunk]) -> AsyncIterator[AudioChunk]:
    """Wait for the first chunk (raising what the client should see if there is none), then all of them."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except Exception as e:
        raise as_service_error(e) from e
    return _prepend(first, chunks)
