"""Audio chunks turned into response bodies: encoded audio, or NDJSON captions with word times."""
from typing import AsyncIterator
import asyncio
import base64
import json

from ..errors import ServiceError
from ..protocol import AudioChunk
from .audio_encoding import make_encoder


async def encoded_audio(chunks: AsyncIterator[AudioChunk], fmt: str) -> AsyncIterator[bytes]:
    encoder = make_encoder(fmt)
    async for chunk in chunks:
        # Codecs take milliseconds per chunk: keep them off the event loop.
        if data := await asyncio.to_thread(encoder.encode, chunk.audio):
            yield data
    yield encoder.finish()


def timed_words(chunk: AudioChunk, offset: float) -> list[dict]:
    """A chunk's words as clients get them, timed from the start of the speech (`offset`: when the chunk starts)."""
    return [{"word": w.text, "start": round(offset + w.start, 3), "end": round(offset + w.end, 3)} for w in chunk.words]


async def captioned_lines(chunks: AsyncIterator[AudioChunk], fmt: str) -> AsyncIterator[bytes]:
    """NDJSON: per chunk, its encoded audio (base64) and its words, timed from the start of the speech."""
    encoder, offset = make_encoder(fmt), 0.0
    try:
        async for chunk in chunks:
            words = timed_words(chunk, offset)
            offset += chunk.seconds
            audio = await asyncio.to_thread(encoder.encode, chunk.audio)
            yield _json_line(audio=base64.b64encode(audio).decode(), words=words)
    except ServiceError as e:  # failed after its first audio (serve_app.ingress.first_audio): the last line says so
        yield _json_line(**e.body())
        return
    yield _json_line(audio=base64.b64encode(encoder.finish()).decode(), words=[], done=True)


def _json_line(**fields) -> bytes:
    return (json.dumps(fields) + "\n").encode()
