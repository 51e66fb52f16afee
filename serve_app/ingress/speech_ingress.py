"""The HTTP front door: checks each request once, routes it to its version, streams the audio.

It imports configs, protocol types and torch-free helpers only, never a model: it runs on
CPU-only head nodes and asks for no CPU of its own.
"""
from dataclasses import replace
from functools import partial
from typing import Any, AsyncIterator
import asyncio
import time

from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from ..config import IngressConfig
from ..errors import ServiceError, Unavailable
from ..logs import get_logger
from ..metrics import IngressMetrics
from ..protocol import AudioChunk
from ..versions import VERSIONS, ModelVersion
from .access import AccessMiddleware, AccessPolicy, configure
from .audio_encoding import CONTENT_TYPES
from .body_limit import BodyLimit
from .first_audio import after_first_audio
from .health import versions_ready
from .http_errors import as_service_error, error_responses, explained, install_error_handlers
from .live_speech import serve_live_speech
from .piece_scheduling import InFlightWindow, Limits
from .playground import playground_page
from .request_ids import RequestIds, current_request_id
from .response_bodies import captioned_lines, encoded_audio
from .speech_api import MODEL_ALIASES, SpeechRequest
from .speech_validation import SpeechJob, resolve_version, served_model_ids, speech_job
from .sse_events import MEDIA_TYPE as SSE_MEDIA_TYPE
from .sse_events import speech_events

logger = get_logger()

app = FastAPI(title="Kokoro TTS", description="OpenAI-compatible text-to-speech on Ray Serve")
install_error_handlers(app)
app.add_middleware(BodyLimit)  # inside the key check: an unknown caller's body is never read
app.add_middleware(AccessMiddleware)  # the API key, before any body is read, for every route but public ones
app.add_middleware(RequestIds)  # added last, so outermost: every response, a 401 too, carries its request id
# What each route can answer besides its success, in the OpenAPI description (clients, fuzzing).
LISTING_ERRORS = error_responses(401)
VOICES_ERRORS = error_responses(401, 503)
SPEECH_ERRORS = error_responses(400, 401, 413, 503)
AUDIO_TYPES = {200: {"description": "The audio, in `response_format`, or its events (`stream_format: sse`)",
                     "content": {media_type: {} for media_type in sorted({*CONTENT_TYPES.values(), SSE_MEDIA_TYPE})}}}


@serve.deployment(name="SpeechIngress")
@serve.ingress(app)
class SpeechIngress:
    """Validates, routes by model version and streams encoded audio; one per cluster is enough."""

    def __init__(self, models: dict[str, DeploymentHandle], config: IngressConfig):
        self.models = models
        self.config = config
        self._asked: dict[tuple[str, str], list[str]] = {}
        self.metrics = IngressMetrics()
        configure(AccessPolicy.from_config(config))

    async def _call(self, version: ModelVersion, method: str, *args) -> Any:
        """A model call that makes no audio, bounded: a version with no running replica is a 503
        saying why after model_call_timeout_s, not a wait as long as the proxy's."""
        call = getattr(self.models[version.name], method).remote(*args)
        try:
            return await asyncio.wait_for(call, self.config.model_call_timeout_s)
        except Exception as e:
            if isinstance(e, TimeoutError):
                call.cancel()  # else it waits on for a replica
            # Never let Serve's errors escape: Serve answers them itself, in plain text naming its internals.
            raise await explained(as_service_error(e), version) from e

    async def _ask_once(self, version: ModelVersion, method: str) -> list[str]:
        """A fact the version's replicas hold (`voices`, `vocab`), asked once."""
        if (version.name, method) not in self._asked:
            self._asked[version.name, method] = await self._call(version, method)
        return self._asked[version.name, method]

    async def _voice_names(self, version: ModelVersion) -> list[str]:
        return await self._ask_once(version, "voices")

    async def _job(self, version: ModelVersion, body: SpeechRequest) -> SpeechJob:
        """The checked request; phonemes are checked against the symbols the model has tokens for."""
        return speech_job(body, version, await self._voice_names(version), self.config,
                          await self._ask_once(version, "vocab"))

    async def _speech_chunks(self, body: SpeechRequest) -> AsyncIterator[AudioChunk]:
        """Validate, start synthesis and wait for its first audio; errors here get a status code."""
        version = resolve_version(body.model, self.models)
        try:
            chunks = await self._first_audio(version, body)
        except ServiceError as e:
            self.metrics.request(version.name, body.response_format, e.status)
            raise
        self.metrics.request(version.name, body.response_format, 200)
        return chunks

    async def _first_audio(self, version: ModelVersion, body: SpeechRequest) -> AsyncIterator[AudioChunk]:
        job = await self._job(version, body)
        options = replace(job.options, request_id=current_request_id())
        started = time.perf_counter()
        window = InFlightWindow(self.models[version.name], job.pieces, options, self.config.pieces_in_flight,
                                Limits(self.config.start_timeout_s, self.config.piece_timeout_s),
                                on_reject=partial(self.metrics.reject, version.name))
        try:
            chunks = await after_first_audio(window.chunks(), partial(self.metrics.interrupt, version.name))
        except Unavailable as e:  # its first piece found no replica, or none free in time
            raise await explained(e, version) from e.__cause__  # the model call's own error, as before
        waited = time.perf_counter() - started
        self.metrics.first_audio.observe(waited, tags={"version": version.name})
        logger.info("request %s: model=%s voice=%s chars=%d pieces=%d format=%s first audio after %.3f s",
                    options.request_id, version.name, options.voice, len(body.input), len(job.pieces),
                    body.response_format, waited)
        return chunks

    @app.get("/", include_in_schema=False)
    @app.get("/web", include_in_schema=False)
    async def playground(self):
        """The web playground (serve_app/web/); public: the page holds no secret, the key is typed into it."""
        return playground_page()

    @app.get("/health", responses={503: {"description": "A version has no replica running; the body says which"}})
    async def health(self) -> JSONResponse:
        """200 when every version has a replica running, else 503; both say which are ready."""
        ready = await versions_ready(self.models)
        healthy = all(ready.values())
        return JSONResponse({"status": "ok" if healthy else "degraded", "versions": sorted(self.models),
                             "ready": ready}, status_code=200 if healthy else 503)

    @app.get("/v1/models", responses=LISTING_ERRORS)
    async def list_models(self) -> dict:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "hexgrad",
             "version": MODEL_ALIASES[name]} for name in served_model_ids(self.models)]}

    @app.get("/v1/audio/voices", responses=VOICES_ERRORS)
    async def list_voices(self) -> dict:
        return {"voices": [
            {"id": name, "model": version, "language": VERSIONS[version].language_of(name).tag}
            for version in sorted(self.models) for name in await self._voice_names(VERSIONS[version])]}

    @app.post("/v1/audio/speech", response_class=Response, responses={**AUDIO_TYPES, **SPEECH_ERRORS})
    async def speech(self, body: SpeechRequest):
        chunks = await self._speech_chunks(body)
        if body.stream_format == "sse":  # OpenAI's speech.audio.* events, always streamed
            return StreamingResponse(speech_events(chunks, body.response_format), media_type=SSE_MEDIA_TYPE)
        audio = encoded_audio(chunks, body.response_format)
        media_type = CONTENT_TYPES[body.response_format]
        if body.stream:
            return StreamingResponse(audio, media_type=media_type)
        return Response(b"".join([part async for part in audio]), media_type=media_type)

    @app.post("/v1/audio/speech/captioned", response_class=Response, responses={
        200: {"description": "NDJSON lines of audio and word times", "content": {"application/x-ndjson": {}}},
        **SPEECH_ERRORS})
    async def captioned_speech(self, body: SpeechRequest):
        chunks = await self._speech_chunks(body)
        return StreamingResponse(captioned_lines(chunks, body.response_format), media_type="application/x-ndjson")

    @app.websocket("/v1/audio/speech/live")
    async def live_speech(self, websocket: WebSocket) -> None:
        """Text deltas in, audio as each piece is ready out (live_speech.py); AccessMiddleware checks the key."""
        await serve_live_speech(websocket, self.models, self._ask_once, self.config, self.metrics)

    @app.post("/v1/audio/phonemize", responses=SPEECH_ERRORS)
    async def phonemize(self, body: SpeechRequest) -> dict:
        """What the speech body's text becomes for the model, one entry per model call: its phonemes and
        their token ids (pads not included). Only input, input_format, model, voice and lang_code matter."""
        job = await self._job(resolve_version(body.model, self.models), body)
        segments = await self._call(job.version, "phonemize", job.pieces, job.options)
        return {"model": job.version.name, "lang_code": job.options.lang_code,
                "phonemes": [phonemes for phonemes, _ in segments], "tokens": [ids for _, ids in segments]}
