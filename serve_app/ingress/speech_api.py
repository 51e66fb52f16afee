"""The HTTP request shapes of OpenAI's speech API, plus this service's extensions."""
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..text.voice_spec import MAX_VOICE_CHARS
from ..versions import DEFAULT_VERSION, VERSIONS
from .audio_encoding import FORMATS

AudioFormat = Literal[FORMATS]  # type: ignore[valid-type]

MAX_NAME_CHARS = 64  # `model` and `lang_code`: every valid one is far shorter
MAX_SEED = 2**63 - 1
MAX_INSTRUCTIONS_CHARS = 4096  # OpenAI's limit

# What the `model` field may say, mapped to a version. OpenAI's model names select the default.
MODEL_ALIASES = {
    "kokoro": DEFAULT_VERSION, "tts-1": DEFAULT_VERSION, "tts-1-hd": DEFAULT_VERSION,
    "gpt-4o-mini-tts": DEFAULT_VERSION, "gpt-4o-mini-tts-2025-12-15": DEFAULT_VERSION,
    **{name: name for name in VERSIONS},
    **{f"kokoro-{name}": name for name in VERSIONS},
}


class VoiceId(BaseModel):
    """OpenAI's object form of `voice`, `{"id": "..."}`; read as the name it holds."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=MAX_VOICE_CHARS)


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients may send fields newer than these

    model: str = Field("kokoro", max_length=MAX_NAME_CHARS)
    input: str = Field(min_length=1)  # its limit is the server's max_input_chars (a 413)
    # None: the version's default voice. The object form is normalised to its name once, here.
    voice: Annotated[str, Field(max_length=MAX_VOICE_CHARS)] | VoiceId | None = None
    # Accepted for OpenAI clients and ignored: Kokoro has no instruction-following (README).
    instructions: str | None = Field(None, max_length=MAX_INSTRUCTIONS_CHARS)
    stream_format: Literal["audio", "sse"] = "audio"  # sse: OpenAI's speech.audio.* events (sse_events)
    input_format: Literal["text", "phonemes"] = "text"  # phonemes: the model's symbols, spoken as given
    response_format: AudioFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0, allow_inf_nan=False)
    stream: bool = True           # False: the whole file in one response, with Content-Length
    lang_code: str | None = Field(None, max_length=MAX_NAME_CHARS)  # default from the voice's first letter
    # torch.Generator.manual_seed takes [0, 2**64); one range every client language's int64 holds.
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same seed, same audio (the vocoder draws noise)")

    @field_validator("voice")
    @classmethod
    def _voice_name(cls, voice: "str | VoiceId | None") -> str | None:
        return voice.id if isinstance(voice, VoiceId) else voice
