"""Checking a speech request, once, in the ingress: replicas are sent only what is valid."""
from collections.abc import Collection
from dataclasses import dataclass, replace

from ..config import IngressConfig
from ..errors import InputTooLong, InvalidRequest, quote
from ..protocol import SynthesisOptions
from ..text.normalise import is_speakable, normalise_text, strip_invisible, within_budget
from ..text.phoneme_split import MAX_PHONEMES
from ..text.pieces import split_text
from ..text.pronunciation import check_inline, check_phonemes
from ..text.voice_spec import parse_voice
from ..versions import VERSIONS, ModelVersion
from .speech_api import MODEL_ALIASES, SpeechRequest


@dataclass(frozen=True)
class SpeechJob:
    """A valid request: the version to ask, the pieces of text in order, how to speak them."""

    version: ModelVersion
    pieces: list[str]
    options: SynthesisOptions


def served_model_ids(served: Collection[str]) -> list[str]:
    """The `model` names that select a deployed version."""
    return sorted(name for name, version in MODEL_ALIASES.items() if version in served)


def resolve_version(model: str, served: Collection[str]) -> ModelVersion:
    version = MODEL_ALIASES.get(model)
    if version not in served:
        raise InvalidRequest(f"model {quote(model)} is not served here; available: "
                             f"{', '.join(served_model_ids(served))}", param="model", code="model_not_found")
    return VERSIONS[version]


def resolve_lang_code(version: ModelVersion, requested: str | None, voice: str) -> str:
    code = version.lang_code(requested, voice)
    if code is None:
        codes = ", ".join(f"{c} ({language.name})" for c, language in version.languages.items())
        tags = ", ".join(language.tag for language in version.languages.values())
        raise InvalidRequest(f"unknown lang_code {quote(requested or voice[:1])}; {version.name} speaks "
                             f"{version.speaks}: {codes}; their tags ({tags}) work too",
                             param="lang_code", code="invalid_lang_code")
    return code


def synthesis_options(version: ModelVersion, voices: Collection[str], voice: str | None = None,
                      lang_code: str | None = None, speed: float = 1.0, seed: int | None = None) -> SynthesisOptions:
    """The options of a request for `version`, whose replicas hold `voices`."""
    blend = parse_voice(voice or version.default_voice, version, voices)
    return SynthesisOptions(blend, resolve_lang_code(version, lang_code, blend.names[0]), speed, seed)


def speech_job(body: SpeechRequest, version: ModelVersion, voices: Collection[str], config: IngressConfig,
               vocab: Collection[str] | None = None) -> SpeechJob:
    """The job of a request; phonemes (its input or inline pronunciations) are checked against
    `vocab`, the symbols the version's model has tokens for, when given."""
    if len(body.input) > config.max_input_chars:
        raise InputTooLong(f"input has {len(body.input)} characters; this server takes at most "
                           f"{config.max_input_chars} per request", param="input", code="input_too_long")
    options = synthesis_options(version, voices, body.voice, body.lang_code, body.speed, body.seed)
    phonemes = body.input_format == "phonemes"
    pieces = phoneme_pieces(body.input, config) if phonemes else text_pieces(body.input, config)
    for piece in pieces if vocab is not None else ():
        if phonemes:
            check_phonemes(piece, vocab, "input", version.name)
        else:
            check_inline(piece, vocab, version.name)
    return SpeechJob(version, pieces, replace(options, phonemes=phonemes))


def phoneme_pieces(phonemes: str, config: IngressConfig) -> list[str]:
    """Phoneme input cut like text: one symbol is one token, so a piece fits the model's context."""
    # Not NFC: it would fuse a letter and its combining mark (a + U+0303) into a symbol the vocab lacks.
    pieces = split_text(strip_invisible(phonemes), min(config.first_piece_chars, MAX_PHONEMES),
                        min(config.piece_chars, MAX_PHONEMES))
    if not pieces:
        raise InvalidRequest("input has no phonemes to speak", param="input", code="empty_input")
    return pieces


def text_pieces(text: str, config: IngressConfig) -> list[str]:
    """The pieces to synthesise: normalised text, cut by characters and by what it expands to."""
    text = normalise_text(text)
    if not is_speakable(text):
        raise InvalidRequest("input has no text to speak (letters, digits or symbols)", param="input",
                             code="empty_input")
    return budgeted_pieces(split_text(text, config.first_piece_chars, config.piece_chars),
                           config.first_piece_chars, config.piece_chars)


def budgeted_pieces(pieces: list[str], first_piece_chars: int, piece_chars: int) -> list[str]:
    """Pieces cut again by what they expand to, the first to `first_piece_chars`, the rest to `piece_chars`."""
    # A piece's budget of estimated phonemes is its character limit: plain text is about one a character.
    return within_budget(pieces, first_piece_chars, piece_chars, lambda piece, chars: split_text(piece, chars, chars))
