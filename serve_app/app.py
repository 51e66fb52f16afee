"""The application builder that `serve_config.yaml` names: `serve_app.app:build_app`."""
from pathlib import Path
from typing import Literal
import logging
import os

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from .ingress import SpeechIngress
from .model_deployments import KokoroV019Model, KokoroV1Model, ModelSettings
from .text_chunks import CHUNK_CHARS, FIRST_CHUNK_CHARS
from .versions import DEFAULT_VERSION

logger = logging.getLogger("ray.serve")

MODEL_DEPLOYMENTS = {"v1.0": KokoroV1Model, "v0.19": KokoroV019Model}


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in serve_config.yaml's args is an error

    model_root: str = "./kokoro-models"
    weights: Literal["local", "dummy"] = "local"
    versions: list[str] = Field(default_factory=lambda: [DEFAULT_VERSION], min_length=1)
    # Per-version config.json to use instead of the packaged one (other architectures, tests).
    configs: dict[str, str] = Field(default_factory=dict)
    max_input_chars: int = Field(10_000, gt=0)
    chunks_in_flight: int = Field(2, ge=1)
    # Text is cut into chunks of at most these many characters, the first one small (text_chunks.py).
    first_chunk_chars: int = Field(FIRST_CHUNK_CHARS, gt=0)
    chunk_chars: int = Field(CHUNK_CHARS, gt=0)
    # When set, every /v1 request needs `Authorization: Bearer <key>`. Env KOKORO_API_KEY overrides.
    api_key: str | None = None


def resolve_args(args: dict) -> AppArgs:
    """Args from the config, with KOKORO_WEIGHTS and KOKORO_MODEL_ROOT taking precedence."""
    overrides = {key: os.environ[var] for key, var in
                 (("weights", "KOKORO_WEIGHTS"), ("model_root", "KOKORO_MODEL_ROOT"),
                                   ("api_key", "KOKORO_API_KEY")) if os.environ.get(var)}
    resolved = AppArgs.model_validate({**args, **overrides})
    unknown = [v for v in resolved.versions + list(resolved.configs) if v not in MODEL_DEPLOYMENTS]
    if unknown:
        raise ValueError(f"unknown model versions {unknown}; this build serves {sorted(MODEL_DEPLOYMENTS)}")
    # Replicas run in other processes and directories: pin relative paths to where serve started.
    resolved.model_root = str(Path(resolved.model_root).resolve())
    resolved.configs = {v: str(Path(p).resolve()) for v, p in resolved.configs.items()}
    return resolved


def build_app(args: dict) -> Application:
    resolved = resolve_args(args)
    logger.info("building Kokoro app: versions=%s weights=%s model_root=%s",
                resolved.versions, resolved.weights, resolved.model_root)
    models = {
        version: MODEL_DEPLOYMENTS[version].bind(ModelSettings(
            version=version, weights=resolved.weights, model_root=resolved.model_root,
            config_path=resolved.configs.get(version)))
        for version in resolved.versions
    }
    return SpeechIngress.bind(models, api_key=resolved.api_key, **resolved.model_dump(
        include={"max_input_chars", "chunks_in_flight", "first_chunk_chars", "chunk_chars"}))
