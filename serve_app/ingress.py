"""The HTTP front door: validates requests, routes them by model version, streams encoded audio.

Text is split into pieces (a small first one, so audio starts fast); each piece is one call
to the version's model deployment, a few in flight at once so idle replicas work ahead,
and audio goes out strictly in order. Each call says when its audio is due, so replicas
serve a new request's first piece before pieces that other clients need only later.
"""
from collections import deque
from typing import AsyncIterator, Callable
import asyncio
import base64
import json
import logging
import secrets
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException

from .audio_encoding import CONTENT_TYPES, make_encoder
from .errors import InputTooLong, InvalidRequest, NotFound, Overloaded, ServiceError, Unauthorized
from .speech_api import DEFAULT_VOICES, LANGUAGES, MODEL_ALIASES, SpeechRequest, kokoro_voice
from .synthesis import AudioChunk
from .text_chunks import CHUNK_CHARS, FIRST_CHUNK_CHARS, split_text
from .voices import parse_voice

logger = logging.getLogger("ray.serve")

RETRY_AFTER_S = 2
# A piece after the first that finds the replicas saturated waits for room: its stream has begun.
PIECE_RETRY_S, PIECE_RETRY_DEADLINE_S = 0.25, 120
# Kokoro speaks about 15 characters a second at speed 1: how far ahead a piece's audio is due.
SPOKEN_CHARS_PER_S = 15

app = FastAPI(title="Kokoro TTS", description="OpenAI-compatible text-to-speech on Ray Serve")


@app.exception_handler(ServiceError)
async def service_error(_: Request, e: ServiceError):
    headers = {"Retry-After": str(RETRY_AFTER_S)} if isinstance(e, Overloaded) else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


@app.exception_handler(RequestValidationError)
async def validation_error(_: Request, e: RequestValidationError):
    first = e.errors()[0]
    param = ".".join(str(p) for p in first["loc"] if p != "body") or None
    message = "; ".join(f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}" for err in e.errors())
    return JSONResponse(InvalidRequest(message, param=param).body(), status_code=400)


@app.exception_handler(HTTPException)
async def http_error(request: Request, e: HTTPException):
    error = NotFound(f"no route {request.method} {request.url.path}") if e.status_code == 404 else \
        ServiceError(str(e.detail))
    return JSONResponse(error.body(), status_code=e.status_code)


def as_service_error(e: BaseException) -> ServiceError:
    """Errors from model replicas arrive wrapped by Ray; unwrap what the client should see."""
    cause = e.cause if isinstance(e, RayTaskError) else e
    if isinstance(cause, ServiceError):
        return cause
    if isinstance(cause, BackPressureError):
        return Overloaded("the model replicas are saturated; retry shortly", code="overloaded")
    logger.exception("synthesis failed", exc_info=e)
    return ServiceError(f"synthesis failed: {type(cause).__name__}: {cause}")


async def first_or_raise(chunks: AsyncIterator[AudioChunk]) -> AudioChunk | None:
    """Wait for the first audio before answering, so failures get a status code, not a broken 200."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None
    except Exception as e:
        raise as_service_error(e) from e


async def with_first(first: AudioChunk | None, rest: AsyncIterator[AudioChunk]) -> AsyncIterator[AudioChunk]:
    if first is not None:
        yield first
        async for chunk in rest:
            yield chunk


async def encoded_audio(chunks: AsyncIterator[AudioChunk], fmt: str) -> AsyncIterator[bytes]:
    encoder = make_encoder(fmt)
    async for chunk in chunks:
        # Codecs take milliseconds per chunk: keep them off the event loop.
        if data := await asyncio.to_thread(encoder.encode, chunk.audio):
            yield data
    yield encoder.finish()


async def captioned_lines(chunks: AsyncIterator[AudioChunk], fmt: str) -> AsyncIterator[bytes]:
    """NDJSON: per chunk, its encoded audio (base64) and its words, timed from the start of the speech."""
    encoder, offset = make_encoder(fmt), 0.0
    async for chunk in chunks:
        words = [{"word": w.text, "start": round(offset + w.start, 3), "end": round(offset + w.end, 3)}
                 for w in chunk.words]
        offset += chunk.seconds
        audio = await asyncio.to_thread(encoder.encode, chunk.audio)
        yield _json_line(audio=base64.b64encode(audio).decode(), words=words)
    yield _json_line(audio=base64.b64encode(encoder.finish()).decode(), words=[], done=True)


def _json_line(**fields) -> bytes:
    return (json.dumps(fields) + "\n").encode()


def due_times(pieces: list[str], start: float, speed: float) -> list[float]:
    """When a client playing audio as it arrives needs each piece: the first at once, each
    later one when the speech before it (estimated from its length) has played."""
    due, spoken = [], 0
    for piece in pieces:
        due.append(start + spoken / (SPOKEN_CHARS_PER_S * speed))
        spoken += len(piece) + 1
    return due


async def piece_audio(start_call: Callable[[], DeploymentResponseGenerator], call: DeploymentResponseGenerator,
                      retry_when_saturated: bool) -> AsyncIterator[AudioChunk]:
    deadline = time.monotonic() + PIECE_RETRY_DEADLINE_S
    while True:
        try:
            async for chunk in call:
                yield chunk
            return
        except BackPressureError:  # raised before the call's first result, so nothing was yielded
            if not retry_when_saturated or time.monotonic() > deadline:
                raise
            await asyncio.sleep(PIECE_RETRY_S)
            call = start_call()


# Helpers above must be defined before this class: serve.ingress pickles it when it is decorated.
@serve.deployment(name="SpeechIngress")
@serve.ingress(app)
class SpeechIngress:
    def __init__(self, models: dict[str, DeploymentHandle], max_input_chars: int = 10_000,
                 chunks_in_flight: int = 2, first_chunk_chars: int = FIRST_CHUNK_CHARS,
                 chunk_chars: int = CHUNK_CHARS, api_key: str | None = None):
        self.models = models
        self.max_input_chars = max_input_chars
        self.chunks_in_flight = chunks_in_flight
        self.chunk_limits = (first_chunk_chars, chunk_chars)
        self.api_key = api_key
        self._voices: dict[str, list[str]] = {}

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), self.api_key.encode()):
            raise Unauthorized("missing or wrong API key (Authorization: Bearer <key>)", code="invalid_api_key")

    def _version(self, model: str) -> str:
        version = MODEL_ALIASES.get(model)
        if version not in self.models:
            raise InvalidRequest(f"model '{model}' is not served here; available: {', '.join(self._model_ids())}",
                                 param="model", code="model_not_found")
        return version

    def _model_ids(self) -> list[str]:
        return sorted(name for name, version in MODEL_ALIASES.items() if version in self.models)

    async def _voice_names(self, version: str) -> list[str]:
        if version not in self._voices:
            self._voices[version] = await self.models[version].voices.remote()
        return self._voices[version]

    async def _voice(self, version: str, requested: str | None) -> str:
        voice = kokoro_voice(version, requested or DEFAULT_VOICES[version])
        names = await self._voice_names(version)
        for name, _ in parse_voice(voice):
            if name not in names:
                raise InvalidRequest(f"voice '{name}' does not exist for model {version}; "
                                     f"voices: {', '.join(names)}", param="voice", code="voice_not_found")
        return voice

    async def _speech_chunks(self, request: Request, body: SpeechRequest) -> AsyncIterator[AudioChunk]:
        """Validate, start synthesis and wait for its first audio; errors here get a status code."""
        self._authorize(request)
        if len(body.input) > self.max_input_chars:
            raise InputTooLong(f"input has {len(body.input)} characters; this server takes at most "
                               f"{self.max_input_chars} per request", param="input", code="input_too_long")
        version = self._version(body.model)
        voice = await self._voice(version, body.voice)
        pieces = split_text(body.input, *self.chunk_limits)
        if not pieces:
            raise InvalidRequest("input has no text to speak", param="input", code="empty_input")
        started = time.perf_counter()
        chunks = self._synthesize(self.models[version], pieces, voice=voice, lang_code=body.lang_code,
                                  speed=body.speed, seed=body.seed)
        first = await first_or_raise(chunks)
        logger.info("speech: model=%s voice=%s chars=%d pieces=%d format=%s first audio after %.3f s",
                    version, voice, len(body.input), len(pieces), body.response_format,
                    time.perf_counter() - started)
        return with_first(first, chunks)

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "versions": sorted(self.models)}

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> dict:
        self._authorize(request)
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "hexgrad",
             "version": MODEL_ALIASES[name]} for name in self._model_ids()]}

    @app.get("/v1/audio/voices")
    async def list_voices(self, request: Request) -> dict:
        self._authorize(request)
        return {"voices": [
            {"id": name, "model": version, "language": LANGUAGES.get(name[0], "en-us")}
            for version in sorted(self.models) for name in await self._voice_names(version)]}

    @app.post("/v1/audio/speech")
    async def speech(self, request: Request, body: SpeechRequest):
        chunks = await self._speech_chunks(request, body)
        audio = encoded_audio(chunks, body.response_format)
        media_type = CONTENT_TYPES[body.response_format]
        if body.stream:
            return StreamingResponse(audio, media_type=media_type)
        return Response(b"".join([part async for part in audio]), media_type=media_type)

    @app.post("/v1/audio/speech/captioned")
    async def captioned_speech(self, request: Request, body: SpeechRequest):
        chunks = await self._speech_chunks(request, body)
        return StreamingResponse(captioned_lines(chunks, body.response_format), media_type="application/x-ndjson")

    async def _synthesize(self, model: DeploymentHandle, pieces: list[str], **options) -> AsyncIterator[AudioChunk]:
        """Audio of every piece in order, with up to `chunks_in_flight` pieces synthesising at once."""
        remaining = iter(enumerate(zip(pieces, due_times(pieces, time.time(), options["speed"]))))
        in_flight = deque()

        def start_next() -> None:
            index, (piece, due) = next(remaining, (None, (None, None)))
            if piece is not None:
                start = lambda: model.forward.options(stream=True).remote(  # noqa: E731
                    piece, deadline=due, **options)
                in_flight.append((index, start, start()))

        for _ in range(self.chunks_in_flight):
            start_next()
        try:
            while in_flight:
                index, start, call = in_flight[0]
                async for chunk in piece_audio(start, call, retry_when_saturated=index > 0):
                    yield chunk
                in_flight.popleft()
                start_next()
        finally:
            for _, _, call in in_flight:  # client gone or failure: stop the work ahead of it
                call.cancel()
