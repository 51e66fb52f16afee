"""The HTTP front door: checks each request once, routes it to its version, streams the audio.

It imports configs, protocol types and torch-free helpers only, never a model: it runs on
CPU-only head nodes and asks for no CPU of its own.
"""
from typing import AsyncIterator
import secrets
import time

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from .audio_encoding import CONTENT_TYPES
from .config import IngressConfig
from .errors import Unauthorized
from .first_audio import after_first_audio
from .http_errors import install_error_handlers
from .logs import get_logger
from .piece_scheduling import InFlightWindow
from .protocol import AudioChunk
from .response_bodies import captioned_lines, encoded_audio
from .speech_api import MODEL_ALIASES, SpeechRequest
from .speech_validation import resolve_version, served_model_ids, speech_job
from .versions import VERSIONS, ModelVersion

logger = get_logger()

app = FastAPI(title="Kokoro TTS", description="OpenAI-compatible text-to-speech on Ray Serve")
install_error_handlers(app)


@serve.deployment(name="SpeechIngress")
@serve.ingress(app)
class SpeechIngress:
    """Validates, routes by model version and streams encoded audio; one per cluster is enough."""

    def __init__(self, models: dict[str, DeploymentHandle], config: IngressConfig):
        self.models = models
        self.config = config
        self._voices: dict[str, list[str]] = {}

    def _authorize(self, request: Request) -> None:
        if self.config.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), self.config.api_key.encode()):
            raise Unauthorized("missing or wrong API key (Authorization: Bearer <key>)", code="invalid_api_key")

    async def _voice_names(self, version: ModelVersion) -> list[str]:
        """The voices the version's replicas hold, asked once."""
        if version.name not in self._voices:
            self._voices[version.name] = await self.models[version.name].voices.remote()
        return self._voices[version.name]

    async def _speech_chunks(self, request: Request, body: SpeechRequest) -> AsyncIterator[AudioChunk]:
        """Validate, start synthesis and wait for its first audio; errors here get a status code."""
        self._authorize(request)
        version = resolve_version(body.model, self.models)
        job = speech_job(body, version, await self._voice_names(version), self.config)
        started = time.perf_counter()
        window = InFlightWindow(self.models[version.name], job.pieces, job.options, self.config.pieces_in_flight)
        chunks = await after_first_audio(window.chunks())
        logger.info("speech: model=%s voice=%s chars=%d pieces=%d format=%s first audio after %.3f s",
                    version.name, job.options.voice, len(body.input), len(job.pieces), body.response_format,
                    time.perf_counter() - started)
        return chunks

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "versions": sorted(self.models)}

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> dict:
        self._authorize(request)
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "hexgrad",
             "version": MODEL_ALIASES[name]} for name in served_model_ids(self.models)]}

    @app.get("/v1/audio/voices")
    async def list_voices(self, request: Request) -> dict:
        self._authorize(request)
        return {"voices": [
            {"id": name, "model": version, "language": VERSIONS[version].language_of(name).tag}
            for version in sorted(self.models) for name in await self._voice_names(VERSIONS[version])]}

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
