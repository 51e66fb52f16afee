"""A request checked once, in the ingress, with torch-free code: voices, blends, languages, models."""
import time

import pytest

from serve_app.config import IngressConfig
from serve_app.errors import QUOTED_CHARS, InputTooLong, InvalidRequest
from serve_app.protocol import VoiceBlend
from serve_app.speech_api import SpeechRequest
from serve_app.speech_validation import resolve_lang_code, resolve_version, speech_job, synthesis_options
from serve_app.versions import V0_19, V1_0
from serve_app.voice_spec import MAX_BLEND_PARTS, parse_voice

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


def test_long_and_hostile_voice_specs_are_quoted_short_and_parsed_fast():
    spec = "a" * 100_000 + "\ud800"
    started = time.perf_counter()
    error = error_of(parse_voice, spec, V1_0, V1_NAMES)
    assert time.perf_counter() - started < 0.5
    assert len(error.message) < 400 + len(", ".join(V1_NAMES)) and "..." in error.message
    error.message.encode("utf-8")  # printable: no lone surrogate reaches a JSON body
    blend_like = "(" * 50_000 + "1" + ")" * 50_000
    started = time.perf_counter()
    assert error_of(parse_voice, f"af_bella{blend_like}", V1_0, V1_NAMES).code == "invalid_voice"
    assert time.perf_counter() - started < 0.5
    assert len(error_of(parse_voice, "x" * 500, V1_0, V1_NAMES).message) < QUOTED_CHARS + 300


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
