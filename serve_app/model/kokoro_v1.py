"""Kokoro v1.0: one `KModel` shared by a cache of `KPipeline`s (the front ends), one per language."""
from collections.abc import Callable
import re
import threading

from kokoro import KModel, KPipeline
from kokoro.pipeline import LANG_CODES
from misaki import espeak
import spacy

from ..config import BatchPolicy
from ..errors import InvalidRequest
from ..logs import get_logger
from ..protocol import SynthesisOptions, Word
from ..text.phoneme_split import split_phonemes
from ..text.pronunciation import phonemize_runs, plain_text
from ..text.word_timings import from_misaki_tokens, from_phoneme_words
from .engine import MAX_TOKENS, KokoroEngine, Segment
from .voices import VoiceLibrary

logger = get_logger()

SPACY_ENGLISH = "en_core_web_sm"
# misaki's English G2P keeps every string it has seen in spaCy's string store, which only grows:
# a language's pipeline is rebuilt after this many pieces (a rebuild takes about a second), which
# bounds it however many unseen words a long-lived replica is sent.
PIECES_PER_PIPELINE = 20_000
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


class KokoroV1Wrapper(KokoroEngine):
    """Kokoro v1.0 in a replica: one model, a front-end pipeline per language, batched synthesis."""

    def __init__(self, model: KModel, voices: VoiceLibrary, batching: BatchPolicy | None = None,
                 vocoder: Callable | None = None):
        super().__init__(model, voices, batching, vocoder)
        self._pipelines: dict[str, KPipeline] = {}
        self._pipeline_uses: dict[str, int] = {}
        self._pipelines_lock = threading.Lock()
        self.pieces_per_pipeline = PIECES_PER_PIPELINE

    def pipeline(self, lang_code: str) -> KPipeline:
        """The cached pipeline for a language, made on first use and again after `pieces_per_pipeline`
        uses; a failed one is not cached."""
        with self._pipelines_lock:
            if self._pipeline_uses.get(lang_code, 0) >= self.pieces_per_pipeline:
                del self._pipelines[lang_code]  # worn: its G2P's caches go with it
            if lang_code not in self._pipelines:
                self._pipelines[lang_code] = self._make_pipeline(lang_code)
                self._pipeline_uses[lang_code] = 0
            self._pipeline_uses[lang_code] += 1
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

    async def segments(self, text: str, options: SynthesisOptions) -> list[Segment]:
        pipeline = await self.in_front_end(self.pipeline, options.lang_code)
        # misaki's English G2P: KPipeline splits by phonemes; espeak front ends: split here.
        segments = misaki_segments if pipeline.lang_code in ESPEAK_ENGLISH else espeak_segments
        return await self.in_front_end(lambda: list(segments(pipeline, text)))

    def style_row(self, phonemes: str, token_count: int) -> int:
        return len(phonemes) - 1  # as KPipeline.infer picks it

    def words(self, segment: Segment, pred_dur) -> list[Word]:
        if segment.tokens is not None:
            KPipeline.join_timestamps(segment.tokens, pred_dur)
            return from_misaki_tokens(segment.tokens)
        return from_phoneme_words(segment.text, segment.phonemes, pred_dur, self.model.vocab)


def lines(text: str) -> list[str]:
    """KPipeline's own boundaries: each line is phonemised on its own."""
    return [line for line in LINE_BREAKS.split(text.strip()) if line.strip()]


def misaki_segments(pipeline: KPipeline, text: str):
    """misaki's English G2P, cut into segments the way KPipeline cuts it (en_tokenize)."""
    for line in lines(text):
        _, tokens = pipeline.g2p(line)
        for graphemes, phonemes, segment_tokens in pipeline.en_tokenize(tokens):
            if phonemes:
                yield Segment(phonemes[:MAX_TOKENS], graphemes, segment_tokens)


def espeak_segments(pipeline: KPipeline, text: str):
    """Segments of at most 510 phonemes from an espeak-ng G2P.

    KPipeline's espeak branch cuts text at ~400 characters and then truncates the phonemes
    to 510, dropping speech when text expands (numbers, symbols); cutting the phonemes instead
    loses nothing. Words follow their phoneme words, when the two counts agree. An inline
    pronunciation (`[word](/phonemes/)`) is spoken with its phonemes (see serve_app.text.pronunciation).
    """
    for line in lines(text):
        phonemes = phonemize_runs(line, lambda run: pipeline.g2p(run)[0])
        words = plain_text(line).split()
        aligned = len(words) == len(phonemes.split())
        for piece in split_phonemes(phonemes.strip()):
            count = len(piece.split())
            piece_words, words = words[:count], words[count:]
            yield Segment(piece, " ".join(piece_words) if aligned else "")
