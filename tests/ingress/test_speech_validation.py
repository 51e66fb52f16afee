"""A request checked once, in the ingress, with torch-free code: voices, blends, languages, models."""
import time

from pydantic import ValidationError
import pytest

from serve_app.config import IngressConfig
from serve_app.errors import QUOTED_CHARS, InputTooLong, InvalidRequest
from serve_app.ingress.speech_api import MAX_SEED, SpeechRequest
from serve_app.ingress.speech_validation import (
    resolve_lang_code,
    resolve_version,
    speech_job,
    synthesis_options,
    text_pieces,
)
from serve_app.protocol import VoiceBlend
from serve_app.text.normalise import (
    DIGIT_PHONEMES,
    MAX_DIGIT_RUN,
    SYMBOL_PHONEMES,
    estimated_phonemes,
    is_speakable,
    normalise_text,
    within_budget,
)
from serve_app.text.pieces import split_text
from serve_app.text.voice_spec import MAX_BLEND_PARTS, MAX_VOICE_CHARS, parse_voice
from serve_app.versions import V0_19, V1_0

V1_NAMES = ["af_bella", "af_heart", "am_adam", "ef_dora", "af_nova"]


def error_of(call, *args, **kwargs) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as error:
        call(*args, **kwargs)
    return error.value


@pytest.mark.parametrize(("spec", "parts"), [
    ("af_bella", (("af_bella", 1.0),)),
    (" af_bella ( 2 ) + am_adam(1) ", (("af_bella", 2 / 3), ("am_adam", 1 / 3))),
    ("af_bella+am_adam", (("af_bella", 0.5), ("am_adam", 0.5))),
    ("nova+am_adam(3)", (("af_nova", 0.25), ("am_adam", 0.75))),  # OpenAI names map per version
])
def test_voice_specs(spec, parts):
    blend = parse_voice(spec, V1_0, V1_NAMES)
    assert blend == VoiceBlend(parts) and sum(w for _, w in blend.parts) == pytest.approx(1)


def test_same_blend_however_weighted():
    assert parse_voice("af_bella(4)+am_adam(2)", V1_0, V1_NAMES) == parse_voice("af_bella(2)+am_adam", V1_0, V1_NAMES)


@pytest.mark.parametrize(("spec", "code", "words"), [
    ("zz_nobody", "voice_not_found", "zz_nobody"),
    ("af_bella(0)+am_adam", "invalid_voice", "positive"),
    ("af_bella(-1)", "invalid_voice", "positive"),
    ("af_bella(nan)", "invalid_voice", "positive"),
    ("af_bella(1e400)", "invalid_voice", "below"),
    ("af_bella(x)", "invalid_voice", "weight"),
    ("af_bella(1", "invalid_voice", "not a voice"),
    ("af_bella(1)x", "invalid_voice", "not a voice"),
    ("af bella", "invalid_voice", "not a voice"),
    ("af_bella+", "invalid_voice", "not a voice"),
    ("af_bella+af_bella", "invalid_voice", "twice"),
    ("+".join(V1_NAMES), "invalid_voice", f"at most {MAX_BLEND_PARTS}"),
])
def test_bad_voice_specs_are_400s_saying_why(spec, code, words):
    error = error_of(parse_voice, spec, V1_0, V1_NAMES)
    assert (error.status, error.param, error.code) == (400, "voice", code) and words in error.message


def test_unknown_voice_lists_the_versions_voices():
    error = error_of(parse_voice, "af_heart", V0_19, ["af", "af_bella"])
    assert "v0.19" in error.message and "af, af_bella" in error.message


def test_long_and_hostile_voice_specs_are_refused_by_length_and_quoted_short():
    spec = "a" * 10_000_000 + "\ud800"
    started = time.perf_counter()
    error = error_of(parse_voice, spec, V1_0, V1_NAMES)
    assert time.perf_counter() - started < 1  # refused by its length, never scanned
    assert f"at most {MAX_VOICE_CHARS} characters" in error.message and len(error.message) < 200
    # Within the limit, what made a regex backtrack is one split and a partition per part.
    for hostile in ["af_bella" + "(" * 120 + "1" + ")" * 120, "(" * MAX_VOICE_CHARS, "+" * 3 + "(1" * 100,
                    "af_bella(" + "9" * 240 + ")", "af_\ud800"]:
        error = error_of(parse_voice, hostile, V1_0, V1_NAMES)
        assert error.code in ("invalid_voice", "voice_not_found") and len(error.message) < QUOTED_CHARS + 300
        error.message.encode("utf-8")  # printable: no lone surrogate reaches a JSON body


@pytest.mark.parametrize(("field", "value"), [
    ("seed", 2**63), ("seed", -1), ("speed", float("nan")), ("speed", float("inf")), ("speed", 4.5),
    ("voice", "a" * (MAX_VOICE_CHARS + 1)), ("model", "m" * 65), ("lang_code", "x" * 65), ("input", ""),
])
def test_every_field_is_bounded(field, value):
    with pytest.raises(ValidationError):
        SpeechRequest(**{"input": "Hi.", field: value})
    assert SpeechRequest(input="Hi.", seed=MAX_SEED).seed == 2**63 - 1


@pytest.mark.parametrize(("text", "expected"), [
    ("Cafe\u0301 ok", "Caf\u00e9 ok"),                          # NFC
    ("zero\u200bwidth\u200d and\ufeff bom\u00ad", "zerowidth and bom"),
    ("bell\x07 nul\x00 esc\x1b[0m", "bell nul esc[0m"),
    ("lone \ud800 surrogate \ue000", "lone  surrogate "),        # private use goes too
    ("tabs\tand\nlines", "tabs\tand\nlines"),                   # whitespace stays for the splitter
    ("12345678901234567890", "123 456 789 012 345 678 90"),     # a run over MAX_DIGIT_RUN is grouped
    ("1" * MAX_DIGIT_RUN, "1" * MAX_DIGIT_RUN),                 # a quadrillion still reads as one number
    ("$$$$$$$$$$", "$$$$ $$$$ $$"), ("wait......!!!!!!", "wait......!!!!!!"),  # symbols only, not punctuation
])
def test_normalised_text(text, expected):
    assert normalise_text(text) == expected


@pytest.mark.parametrize(("text", "speakable"), [
    ("\u200b\u200d", False), ("...!?", False), (" \n\t", False), ("", False),
    ("a", True), ("7", True), ("$", True), ("\u4f60", True),
])
def test_speakable_means_a_letter_digit_or_symbol(text, speakable):
    assert is_speakable(normalise_text(text)) is speakable


def test_a_piece_is_bounded_by_what_it_expands_to_and_nothing_is_lost():
    config = IngressConfig(first_piece_chars=100, piece_chars=150)
    number = "1234567890" * 40
    pieces = text_pieces(f"Call {number} now. {'%' * 300} and {'9,' * 200}end.", config)
    assert [estimated_phonemes(p) <= (100 if i == 0 else 150) for i, p in enumerate(pieces)] == [True] * len(pieces)
    assert estimated_phonemes(pieces[0]) <= 100 and len(pieces[0]) < 20  # first audio stays fast
    joined = "".join(pieces).replace(" ", "")
    assert number in joined and "%" * 300 in joined and "9," * 200 in joined  # split, never truncated
    # Plain text is cut by characters, as before.
    plain = "One short sentence here. " * 20
    assert text_pieces(plain, config) == split_text(plain, 100, 150)


def test_budget_cutting_ends_even_at_single_characters():
    pieces = within_budget(["12345"], 5, 5, lambda text, chars: split_text(text, chars, chars))
    assert pieces == list("12345")  # each digit costs DIGIT_PHONEMES > 5: one a piece, kept
    assert DIGIT_PHONEMES > 5 and SYMBOL_PHONEMES > 5


def test_huge_hostile_text_is_normalised_and_cut_in_linear_time():
    config = IngressConfig()
    text = ("9" * 5_000 + "\u200b" * 2_000 + "\U0001f600" * 1_000 + "a" * 2_000)
    started = time.perf_counter()
    pieces = text_pieces(text, config)
    assert time.perf_counter() - started < 5 and len(pieces) > 100


@pytest.mark.parametrize(("version", "requested", "voice", "code"), [
    (V1_0, None, "ef_dora", "e"), (V1_0, "es", "af_heart", "e"), (V1_0, "A", "ef_dora", "a"),
    (V1_0, "en-gb", "af_heart", "b"), (V0_19, None, "bf_emma", "b"), (V0_19, "en-us", "bf_emma", "a"),
])
def test_lang_code_from_the_request_or_the_voice(version, requested, voice, code):
    assert resolve_lang_code(version, requested, voice) == code


@pytest.mark.parametrize(("version", "requested", "listed"), [
    (V1_0, "xx", ["a (American English)", "z (Mandarin Chinese)", "pt-br"]),
    (V0_19, "e", ["English only", "a (American English)", "en-gb"]),
])
def test_unknown_lang_code_names_the_valid_ones(version, requested, listed):
    error = error_of(resolve_lang_code, version, requested, "af")
    assert (error.param, error.code) == ("lang_code", "invalid_lang_code") and f"'{requested}'" in error.message
    assert all(words in error.message for words in listed)


def test_model_names_select_only_served_versions():
    assert resolve_version("tts-1", {"v1.0"}) is V1_0 and resolve_version("kokoro-v0.19", {"v0.19"}) is V0_19
    error = error_of(resolve_version, "kokoro", {"v0.19"})
    assert error.code == "model_not_found" and "available: kokoro-v0.19, v0.19" in error.message


def test_default_voice_and_options():
    options = synthesis_options(V0_19, ["af", "bf_emma"], None, None, 1.5, 7)
    assert (options.voice, options.lang_code, options.speed, options.seed) == (VoiceBlend.single("af"), "a", 1.5, 7)


def test_speech_job_cuts_pieces_and_enforces_limits():
    config = IngressConfig(max_input_chars=200, first_piece_chars=20, piece_chars=40)
    job = speech_job(SpeechRequest(input="One short sentence. " * 5, voice="am_adam"), V1_0, V1_NAMES, config)
    assert job.version is V1_0 and len(job.pieces) >= 3 and len(job.pieces[0]) <= 20
    with pytest.raises(InputTooLong):
        speech_job(SpeechRequest(input="x" * 201), V1_0, V1_NAMES, config)
    assert error_of(speech_job, SpeechRequest(input=" \n "), V1_0, V1_NAMES, config).code == "empty_input"
    assert error_of(speech_job, SpeechRequest(input="\u200b\x00"), V1_0, V1_NAMES, config).code == "empty_input"
