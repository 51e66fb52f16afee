"""The HTTP request shapes of OpenAI's speech API, plus this service's extensions."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .audio_encoding import FORMATS
from .versions import DEFAULT_VERSION, VERSIONS

AudioFormat = Literal[FORMATS]  # type: ignore[valid-type]

# What the `model` field may say, mapped to a version. OpenAI's model names select the default.
MODEL_ALIASES = {
    "kokoro": DEFAULT_VERSION, "tts-1": DEFAULT_VERSION, "tts-1-hd": DEFAULT_VERSION,
    **{name: name for name in VERSIONS},
    **{f"kokoro-{name}": name for name in VERSIONS},
}


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (instructions)

    model: str = "kokoro"
    input: str = Field(min_length=1)
    voice: str | None = None      # None: the version's default voice
    response_format: AudioFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream: bool = True           # False: the whole file in one response, with Content-Length
    lang_code: str | None = None  # default from the voice's first letter
    seed: int | None = Field(None, ge=0, description="same seed, same audio (the vocoder draws noise)")
