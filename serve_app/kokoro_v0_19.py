"""Kokoro v0.19: the same network as v1.0 (kokoro's own KModel), its own vocab and espeak front end."""
from typing import AsyncIterator
import asyncio

from kokoro import KModel

from .errors import InvalidRequest
from .synthesis import AudioChunk, ModelThread
from .v0_19_text import text_to_chunks, tokenize, voice_is_british
from .voices import VoiceLibrary

# v0.19 speaks English only: en-us or en-gb, picked by the voice unless the request says.
LANG_CODES = {"a": False, "en-us": False, "b": True, "en-gb": True}  # code -> british


class KokoroV019Engine:
    def __init__(self, model: KModel, voices: VoiceLibrary):
        self.model = model
        self.voices = voices
        self._model_thread = ModelThread(release_memory=model.device.type == "cpu")

    @staticmethod
    def is_british(lang_code: str | None, voice: str) -> bool:
        if lang_code is None:
            return voice_is_british(voice)
        if lang_code.lower() not in LANG_CODES:
            raise InvalidRequest(f"v0.19 speaks English only: lang_code must be one of {', '.join(LANG_CODES)}",
                                 param="lang_code", code="invalid_lang_code")
        return LANG_CODES[lang_code.lower()]

    def synthesize(self, phonemes: str, pack, speed: float):
        # v0.19 picks the style row by token count (v1.0 by count - 1).
        style = pack[len(tokenize(phonemes))]
        return self.model(phonemes, style, speed).numpy()

    async def forward(self, text: str, voice: str, lang_code: str | None = None, speed: float = 1.0,
                      seed: int | None = None, deadline: float | None = None) -> AsyncIterator[AudioChunk]:
        pack = self.voices.pack(voice)
        chunks = await asyncio.to_thread(text_to_chunks, text, self.is_british(lang_code, voice))
        steps = (self.synthesize(phonemes, pack, speed) for phonemes in chunks)
        async for audio in self._model_thread.steps(steps, seed, deadline):
            yield AudioChunk(audio)
