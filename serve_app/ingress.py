"""The HTTP front door: validates requests, routes them by model version, streams encoded audio."""
from collections import deque
from typing import AsyncIterator
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from .audio_encoding import CONTENT_TYPES, make_encoder
from .errors import InputTooLong, InvalidRequest, Overloaded, ServiceError
from .speech_api import MODEL_ALIASES, SpeechRequest
from .synthesis import AudioChunk
from .text_chunks import split_text

logger = logging.getLogger("ray.serve")

DEFAULT_VOICES = {"v1.0": "af_heart", "v0.19": "af"}
RETRY_AFTER_S = 2

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


def as_service_error(e: BaseException) -> ServiceError:
    """Errors from model replicas arrive wrapped by Ray; unwrap what the client should see."""
    cause = e.cause if isinstance(e, RayTaskError) else e
    if isinstance(cause, ServiceError):
        return cause
    if isinstance(cause, BackPressureError):
        return Overloaded("the model replicas are saturated; retry shortly", code="overloaded")
    logger.exception("synthesis failed", exc_info=e)
    return ServiceError(f"synthesis failed: {type(cause).__name__}: {cause}")


async def _first_or_raise(chunks: AsyncIterator[AudioChunk]) -> AudioChunk | None:
    """Wait for the first audio before answering, so failures get a status code, not a broken 200."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None
    except Exception as e:
        raise as_service_error(e) from e


async def _encoded(first: AudioChunk | None, rest: AsyncIterator[AudioChunk], encoder) -> AsyncIterator[bytes]:
    if first is not None:
        yield encoder.encode(first.audio)
        async for chunk in rest:
            if data := encoder.encode(chunk.audio):
                yield data
    yield encoder.finish()


# Helpers above must be defined before this class: serve.ingress pickles it when it is decorated.
@serve.deployment(name="SpeechIngress")
@serve.ingress(app)
class SpeechIngress:
    def __init__(self, models: dict[str, DeploymentHandle], max_input_chars: int = 10_000,
                 chunks_in_flight: int = 2):
        self.models = models
        self.max_input_chars = max_input_chars
        self.chunks_in_flight = chunks_in_flight
        self._voices: dict[str, list[str]] = {}

    def _version(self, model: str) -> str:
        version = MODEL_ALIASES.get(model)
        if version not in self.models:
            available = sorted(name for name, v in MODEL_ALIASES.items() if v in self.models)
            raise InvalidRequest(f"model '{model}' is not served here; available: {', '.join(available)}",
                                 param="model", code="model_not_found")
        return version

    async def _voice_names(self, version: str) -> list[str]:
        if version not in self._voices:
            self._voices[version] = await self.models[version].voices.remote()
        return self._voices[version]

    async def _check_voice(self, version: str, voice: str | None) -> str:
        voice = voice or DEFAULT_VOICES[version]
        names = await self._voice_names(version)
        if voice not in names:
            raise InvalidRequest(f"voice '{voice}' does not exist for model {version}; voices: {', '.join(names)}",
                                 param="voice", code="voice_not_found")
        return voice

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "versions": sorted(self.models)}

    @app.post("/v1/audio/speech")
    async def speech(self, body: SpeechRequest):
        if len(body.input) > self.max_input_chars:
            raise InputTooLong(f"input has {len(body.input)} characters; this server takes at most "
                               f"{self.max_input_chars} per request", param="input", code="input_too_long")
        version = self._version(body.model)
        voice = await self._check_voice(version, body.voice)
        pieces = split_text(body.input)
        if not pieces:
            raise InvalidRequest("input has no text to speak", param="input", code="empty_input")
        started = time.perf_counter()
        chunks = self._synthesize(self.models[version], pieces, voice=voice, lang_code=body.lang_code,
                                  speed=body.speed, seed=body.seed)
        first = await _first_or_raise(chunks)
        logger.info("speech: model=%s voice=%s chars=%d pieces=%d format=%s first audio after %.3f s",
                    version, voice, len(body.input), len(pieces), body.response_format,
                    time.perf_counter() - started)
        audio = _encoded(first, chunks, make_encoder(body.response_format))
        media_type = CONTENT_TYPES[body.response_format]
        if body.stream:
            return StreamingResponse(audio, media_type=media_type)
        return Response(b"".join([part async for part in audio]), media_type=media_type)

    async def _synthesize(self, model: DeploymentHandle, pieces: list[str], **options) -> AsyncIterator[AudioChunk]:
        """Audio of every piece in order, with up to `chunks_in_flight` pieces synthesising at once."""
        remaining = iter(pieces)
        in_flight = deque()

        def start_next() -> None:
            piece = next(remaining, None)
            if piece is not None:
                in_flight.append(model.forward.options(stream=True).remote(piece, **options))

        for _ in range(self.chunks_in_flight):
            start_next()
        try:
            while in_flight:
                async for chunk in in_flight[0]:
                    yield chunk
                in_flight.popleft()
                start_next()
        finally:
            for call in in_flight:  # client gone or failure: stop the work ahead of it
                call.cancel()
