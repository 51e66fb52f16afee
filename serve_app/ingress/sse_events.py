"""OpenAI's speech streaming events (`stream_format: "sse"`): audio chunks as `text/event-stream`.

Each event is one `data: {json}` line and a blank line, as OpenAI's OpenAPI description gives
them: `speech.audio.delta` with base64 of the encoded audio bytes (in `response_format`; the
deltas joined are the same file the plain response sends), then one `speech.audio.done` with
the usage. A failure after the first audio ends the stream with an `error` event instead of
the done event. This service counts usage exactly, in the model's own units:

- `input_tokens`: the phoneme tokens the model read (pads not counted), what
  `POST /v1/audio/phonemize` lists for the same text;
- `output_tokens`: the duration frames the model made, one per 600 samples (25 ms) of audio;
- `total_tokens`: their sum.
"""
from dataclasses import dataclass
from typing import AsyncIterator
import base64
import json

from ..errors import ServiceError
from ..protocol import AudioChunk
from .response_bodies import encoded_audio

MEDIA_TYPE = "text/event-stream"
FRAME_SAMPLES = 600  # KModel makes exactly this many samples per duration frame


@dataclass
class Usage:
    """What one request's model calls read and made, counted as its chunks go by."""

    input_tokens: int = 0
    output_tokens: int = 0

    async def counted(self, chunks: AsyncIterator[AudioChunk]) -> AsyncIterator[AudioChunk]:
        async for chunk in chunks:
            self.input_tokens += chunk.tokens
            self.output_tokens += len(chunk.audio) // FRAME_SAMPLES
            yield chunk

    def body(self) -> dict:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens}


def event(fields: dict) -> bytes:
    return f"data: {json.dumps(fields)}\n\n".encode()


async def speech_events(chunks: AsyncIterator[AudioChunk], fmt: str) -> AsyncIterator[bytes]:
    """The SSE body: a delta per piece of encoded audio (none empty), then the done event."""
    usage = Usage()
    try:
        async for data in encoded_audio(usage.counted(chunks), fmt):
            if data:
                yield event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    except ServiceError as e:
        # Failed after its first audio (serve_app.ingress.first_audio). OpenAI's description has no error
        # event for speech; this is the `error` event of its other streams, which the `openai`
        # client raises as an APIError. No done event follows.
        yield event({"type": "error", **e.body()})
        return
    yield event({"type": "speech.audio.done", "usage": usage.body()})
