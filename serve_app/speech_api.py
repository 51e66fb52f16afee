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
    lang_code: str | None = None  # v1.0 only; default from the voice's first letter
    seed: int | None = Field(None, ge=0, description="same seed, same audio (the vocoder draws noise)")


def kokoro_voice(version: str, spec: str) -> str:
    """Map OpenAI names in a voice or blend to this version's voices: `nova+onyx(2)` works too."""
    aliases = OPENAI_VOICES[version]

    def rename(part: str) -> str:
        name, paren, weight = part.strip().partition("(")
        return aliases.get(name.strip(), name.strip()) + paren + weight

    return "+".join(rename(part) for part in spec.split("+"))


# OpenAI's voice names, mapped per version to the Kokoro voice closest in character.
OPENAI_VOICES = {
    "v1.0": {
        "alloy": "af_alloy", "ash": "am_adam", "ballad": "bm_george", "coral": "af_heart",
        "echo": "am_echo", "fable": "bm_fable", "nova": "af_nova", "onyx": "am_onyx",
        "sage": "af_sarah", "shimmer": "af_bella", "verse": "am_michael",
    },
    "v0.19": {
        "alloy": "af", "ash": "am_adam", "ballad": "bm_george", "coral": "af_nicole",
        "echo": "am_michael", "fable": "bm_lewis", "nova": "af_sky", "onyx": "am_adam",
        "sage": "af_sarah", "shimmer": "af_bella", "verse": "am_michael",
    },
}
DEFAULT_VOICES = {"v1.0": "af_heart", "v0.19": "af"}

# What each voice-name prefix speaks.
LANGUAGES = {
    "a": "en-us", "b": "en-gb", "e": "es", "f": "fr-fr", "h": "hi", "i": "it",
    "j": "ja", "p": "pt-br", "z": "zh",
}
