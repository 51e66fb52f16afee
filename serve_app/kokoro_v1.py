"""Kokoro v1.0: one `KModel` shared by a cache of `KPipeline`s, one per language."""
from typing import AsyncIterator
import asyncio
import logging
import re
import threading

from kokoro import KModel, KPipeline
from kokoro.pipeline import ALIASES, LANG_CODES
from misaki import espeak
import spacy

from .errors import InvalidRequest
from .phoneme_split import split_phonemes
from .synthesis import AudioChunk, ModelThread, Word
from .voices import VoiceLibrary
from .word_timings import from_misaki_tokens, from_phoneme_words

logger = logging.getLogger("ray.serve")  # the logger Serve routes to replica logs

SPACY_ENGLISH = "en_core_web_sm"
ESPEAK_ENGLISH = {"a": "en-us", "b": "en-gb"}
LINE_BREAKS = re.compile(r"\n+")


def english_g2p_available() -> bool:
    return spacy.util.is_package(SPACY_ENGLISH)


def espeak_english_pipeline(lang_code: str, repo_id: str, model: KModel) -> KPipeline:
    """English through espeak-ng, for when spaCy's English model is not installed.

    misaki's English G2P would download that model (and fail offline). KPipeline's espeak
    branch (any non-English code) phonemises whole sentences with `self.g2p`, so that branch
    with an English espeak G2P is an offline English pipeline.
    """
    pipeline = KPipeline(lang_code="e", repo_id=repo_id, model=model)
    pipeline.g2p = espeak.EspeakG2P(language=ESPEAK_ENGLISH[lang_code])
    return pipeline


class KokoroV1Wrapper:
    def __init__(self, model: KModel, voices: VoiceLibrary):
        self.model = model
        self.voices = voices
        self._pipelines: dict[str, KPipeline] = {}
        self._pipelines_lock = threading.Lock()
        self._model_thread = ModelThread(release_memory=model.device.type == "cpu")

    @staticmethod
    def resolve_lang_code(lang_code: str | None, voice: str) -> str:
        # v1.0 voice names start with their language code: af_heart is American English.
        code = (lang_code or voice[:1]).lower()
        code = ALIASES.get(code, code)
        if code not in LANG_CODES:
            valid = ", ".join(f"{c} ({name})" for c, name in LANG_CODES.items())
            raise InvalidRequest(f"unknown lang_code '{lang_code or code}'; valid codes: {valid}",
                                 param="lang_code", code="invalid_lang_code")
        return code

    def pipeline(self, lang_code: str) -> KPipeline:
        """The cached pipeline for a language, made on first use; a failed one is not cached."""
        with self._pipelines_lock:
            if lang_code not in self._pipelines:
                self._pipelines[lang_code] = self._make_pipeline(lang_code)
            return self._pipelines[lang_code]

    def _make_pipeline(self, lang_code: str) -> KPipeline:
        repo_id = self.model.repo_id
        if lang_code in ESPEAK_ENGLISH and not english_g2p_available():
            logger.warning("spaCy model %s is not installed: English (%s) uses the espeak-ng G2P, "
                           "which is less accurate; pip install it for misaki's English G2P",
                           SPACY_ENGLISH, lang_code)
            return espeak_english_pipeline(lang_code, repo_id, self.model)
        try:
            return KPipeline(lang_code=lang_code, repo_id=repo_id, model=self.model)
        except ImportError as e:
            raise InvalidRequest(f"language '{lang_code}' ({LANG_CODES[lang_code]}) is not installed "
                                 f"on this server: {e}", param="lang_code", code="language_unavailable") from e

    async def forward(self, text: str, voice: str, lang_code: str | None = None, speed: float = 1.0,
                      seed: int | None = None, deadline: float | None = None) -> AsyncIterator[AudioChunk]:
        """Yield audio chunk by chunk, as it is made; text too long for one call is split.

        `deadline` (epoch seconds) is when the client needs this audio: see ModelThread.
        """
        pack = self.voices.pack(voice)
        pipeline = await asyncio.to_thread(self.pipeline, self.resolve_lang_code(lang_code, voice))
        if pipeline.lang_code in ESPEAK_ENGLISH:  # misaki's English G2P: KPipeline splits by phonemes
            steps = ((r, r.graphemes) for r in pipeline(text, voice=pack, speed=speed))
        else:
            steps = espeak_steps(pipeline, text, pack, speed)
        async for result, words in self._model_thread.steps(steps, seed, deadline):
            if result.audio is not None:
                yield AudioChunk(result.audio.numpy(), self.words_of(result, words))

    def words_of(self, result: KPipeline.Result, text: str) -> list[Word]:
        if result.tokens is not None:
            return from_misaki_tokens(result.tokens)
        return from_phoneme_words(text, result.phonemes, result.pred_dur, self.model.vocab)


def espeak_steps(pipeline: KPipeline, text: str, pack, speed: float):
    """(result, its words) per piece of at most 510 phonemes.

    KPipeline's espeak branch cuts text at ~400 characters and then truncates the phonemes
    to 510, dropping speech when text expands (numbers, symbols); cutting the phonemes instead
    loses nothing. Words follow their phoneme words, when the two counts agree.
    """
    for line in LINE_BREAKS.split(text.strip()):  # KPipeline's boundaries too
        if not line.strip():
            continue
        phonemes, _ = pipeline.g2p(line)
        words = line.split()
        aligned = len(words) == len(phonemes.split())
        for piece in split_phonemes(phonemes.strip()):
            count = len(piece.split())
            piece_words, words = words[:count], words[count:]
            for result in pipeline.generate_from_tokens(piece, voice=pack, speed=speed):
                yield result, " ".join(piece_words) if aligned else ""
