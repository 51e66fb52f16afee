"""The model-side engines in-process, on real tiny models: KokoroV1Wrapper and KokoroV019Wrapper.

The vocoder's cost is per audio frame, so long texts run at speed 4 (the tiny v1.0 model: every
token one frame) or on a dummy model set to one frame a token (v0.19).
"""
import asyncio
import logging
import socket
import time

from kokoro import KPipeline
from kokoro.pipeline import LANG_CODES
from misaki.espeak import EspeakG2P
import numpy as np
import pytest
import torch

from serve_app.config import BatchPolicy
from serve_app.errors import InvalidRequest
from serve_app.ingress.speech_validation import synthesis_options
from serve_app.model.dummy_weights import make_dummy_model, set_realistic_durations
from serve_app.model.kokoro_v0_19 import KokoroV019Wrapper
from serve_app.model.kokoro_v1 import KokoroV1Wrapper, english_g2p_available
from serve_app.model.loading import load_model
from serve_app.model.v0_19_text import MAX_TOKENS, text_to_pieces, tokenize
from serve_app.model.voices import VoiceLibrary
from serve_app.protocol import AudioChunk
from serve_app.versions import V0_19, V1_0

from tiny_release import tiny_config

pytestmark = pytest.mark.slow  # loads models or runs subprocesses: seconds a test

SAMPLES_PER_FRAME = 600
SEED = 1234
# Two sentences, 404 characters: KPipeline's espeak path cuts at ~400 characters, so two chunks.
LONG = ("The old lighthouse keeper climbed the winding stairs every single evening, slowly counting each step "
        "and listening to the waves that broke against the black rocks below, long after the last ship had passed "
        "by. When the storm finally arrived at midnight, she lit the great lamp, wrapped herself in a heavy wool "
        "coat and watched the dark water until morning, when the sky turned pale, calm and quiet again.")
# About 520 v0.19 tokens: more than one model call's 510.
LONGER = LONG + " Then she slept through the whole bright day, and dreamed of gulls, of sails and of nothing at all."


async def collect(chunks) -> list:
    return [chunk async for chunk in chunks]


def run_all(chunks) -> list:
    return asyncio.run(collect(chunks))


def options(engine, voice: str, **fields):
    """What the ingress sends for a request to this engine's version (validated the same way)."""
    return synthesis_options(engine.voices.version, engine.voices.names(), voice, **fields)


def speak(engine, text: str, voice: str, **fields) -> list:
    return run_all(engine.forward(text, options(engine, voice, **fields)))


@pytest.fixture(scope="module")
def v1_model(release):
    return load_model(V1_0, tiny_config(V1_0), release.root)


@pytest.fixture(scope="module")
def v1_voices(release):
    return VoiceLibrary(V1_0, release.root)


@pytest.fixture
def wrapper(v1_model, v1_voices):
    """A fresh wrapper (empty pipeline cache) on the module's model, one item per model call."""
    return KokoroV1Wrapper(v1_model, v1_voices, BatchPolicy(max_batch_size=1))


# --- pipeline cache -------------------------------------------------------------


def test_one_model_shared_by_cached_pipelines(wrapper):
    american = wrapper.pipeline("a")
    assert wrapper.pipeline("a") is american
    british, spanish = wrapper.pipeline("b"), wrapper.pipeline("e")
    assert len({id(american), id(british), id(spanish)}) == 3
    for pipeline in (american, british, spanish):
        assert pipeline.model is wrapper.model
    assert wrapper.pipeline("e") is spanish


def test_requests_reuse_the_language_pipeline(wrapper):
    spanish = wrapper.pipeline("e")
    # lang_code aliases and the voice's first letter resolve to the same cached pipeline.
    speak(wrapper, "Hola.", "ef_dora")
    speak(wrapper, "Hola.", "af_heart", lang_code="es")
    assert wrapper.pipeline("e") is spanish
    assert set(wrapper._pipelines) == {"e"}


def test_a_worn_pipeline_is_rebuilt_and_speaks_the_same(wrapper):
    """The G2P's caches grow with every unseen word: a pipeline is replaced after a bounded number of pieces."""
    wrapper.pieces_per_pipeline = 3
    first = wrapper.pipeline("e")
    def hola() -> np.ndarray:
        return np.concatenate([chunk.audio for chunk in speak(wrapper, "Hola, amigo.", "ef_dora", seed=5)])

    spoken = [hola(), hola()]  # the first pipeline's uses 2 and 3
    rebuilt = wrapper.pipeline("e")
    assert rebuilt is not first and set(wrapper._pipelines) == {"e"}
    assert wrapper.pipeline("e") is rebuilt  # uses 1 and 2 of the new one
    assert np.array_equal(hola(), spoken[0]) and np.array_equal(*spoken)


def test_bad_lang_code_lists_the_valid_codes(wrapper):
    with pytest.raises(InvalidRequest) as error:
        speak(wrapper, "Hello.", "af_heart", lang_code="xx")
    assert error.value.param == "lang_code" and error.value.code == "invalid_lang_code"
    assert "'xx'" in error.value.message
    for code, name in LANG_CODES.items():
        assert f"{code} ({name})" in error.value.message
    assert wrapper._pipelines == {}


def test_uninstalled_language_is_refused_and_not_cached(wrapper):
    # 'j' needs misaki[ja] (pyopenjtalk), which this project does not install.
    for _ in range(2):
        with pytest.raises(InvalidRequest) as error:
            speak(wrapper, "こんにちは", "af_heart", lang_code="j")
        assert error.value.code == "language_unavailable" and error.value.param == "lang_code"
        assert "'j' (Japanese) is not installed" in error.value.message
        assert "j" not in wrapper._pipelines


# --- English without spaCy's en_core_web_sm --------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Record (and refuse) every name lookup and connection attempt."""
    attempts = []

    def refuse(what):
        def refused(*args, **kwargs):
            attempts.append((what, args))
            raise OSError(f"test forbids network access: {what}{args}")
        return refused

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    return attempts


def test_english_falls_back_to_espeak_offline(wrapper, caplog, no_network, monkeypatch):
    if english_g2p_available():
        pytest.skip("en_core_web_sm is installed: misaki's own English G2P is used")
    monkeypatch.setattr(logging.getLogger("ray.serve"), "propagate", True)  # Ray may stop it at its own handler
    caplog.set_level(logging.WARNING, logger="ray.serve")
    start = time.monotonic()
    american, british = wrapper.pipeline("a"), wrapper.pipeline("b")
    assert time.monotonic() - start < 20  # a download attempt would retry for much longer
    assert no_network == []

    assert type(american.g2p) is EspeakG2P and american.g2p.language == "en-us"
    assert type(british.g2p) is EspeakG2P and british.g2p.language == "en-gb"
    assert american.model is wrapper.model and british.model is wrapper.model

    def warnings():
        return [r.getMessage() for r in caplog.records
                if r.name == "ray.serve" and r.levelno == logging.WARNING]

    # A record may reach the capture twice once Ray has set up its own handling of "ray.serve".
    assert len(set(warnings())) == 2 and all("en_core_web_sm" in w and "espeak" in w for w in warnings())
    assert any("English (a)" in w for w in warnings()) and any("English (b)" in w for w in warnings())
    captured = len(warnings())

    # Both work, and differ where the accents do.
    us, gb = american.g2p("Water.")[0], british.g2p("Water.")[0]
    assert us and gb and us != gb
    assert wrapper.pipeline("a") is american and len(warnings()) == captured  # cached: no second warning


# --- forward ---------------------------------------------------------------------


def reference_audio(pipeline: KPipeline, text: str, pack, speed: float = 1.0) -> list[np.ndarray]:
    """KPipeline in-process, seeded before every chunk like the service."""
    results = pipeline(text, voice=pack, speed=speed)
    audio = []
    while True:
        torch.manual_seed(SEED)
        result = next(results, None)
        if result is None:
            return audio
        audio.append(result.audio.numpy())


@pytest.mark.parametrize(("voice", "text", "g2p_language"), [
    ("af_heart", "Hello there.\nGood morning, world.", "en-us"),  # the espeak English fallback
    ("ef_dora", "Hola, amigo.\nBuenos días.", None),              # KPipeline's own Spanish
])
def test_forward_equals_kpipeline_with_the_same_seed(wrapper, voice, text, g2p_language):
    chunks = speak(wrapper, text, voice, seed=SEED)

    # English on this server is KPipeline's espeak branch with an English espeak G2P.
    reference = KPipeline(lang_code="e", repo_id=V1_0.hub_repo, model=wrapper.model)
    if g2p_language is not None:
        reference.g2p = EspeakG2P(language=g2p_language)
    expected = reference_audio(reference, text, wrapper.voices.pack(options(wrapper, voice).voice))

    assert len(expected) == 2  # one chunk per line
    assert all(isinstance(c, AudioChunk) and c.audio.dtype == np.float32 for c in chunks)
    assert [len(c.audio) for c in chunks] == [len(a) for a in expected]
    np.testing.assert_allclose(np.concatenate([c.audio for c in chunks]), np.concatenate(expected),
                               rtol=0, atol=1e-6)


def test_batched_forward_equals_one_item_at_a_time(wrapper, v1_model, v1_voices):
    text = "Hello there.\nGood morning, world.\nA third line, a little longer than the others."
    batched = KokoroV1Wrapper(v1_model, v1_voices, BatchPolicy(max_batch_size=8))
    together, alone = speak(batched, text, "af_heart", seed=SEED), speak(wrapper, text, "af_heart", seed=SEED)
    assert dict(batched.model_thread.batch_sizes) == {3: 1} and dict(wrapper.model_thread.batch_sizes) == {1: 3}
    assert [len(c.audio) for c in together] == [len(c.audio) for c in alone]
    np.testing.assert_allclose(np.concatenate([c.audio for c in together]), np.concatenate([c.audio for c in alone]),
                               rtol=0, atol=1e-4)
    assert [w.text for c in together for w in c.words] == [w.text for c in alone for w in c.words]


def test_long_text_is_split_by_phonemes_and_fully_spoken(wrapper):
    text = " ".join([LONG] * 2)
    phonemes = EspeakG2P(language="en-us")(text)[0]
    tokens = sum(c in wrapper.model.vocab for c in phonemes)
    assert tokens > 510

    chunks = speak(wrapper, text, "af_heart", speed=4.0)
    # The tiny model's max_dur is 4 frames, so at speed 4 every token (pads included) lasts
    # exactly one frame: the audio length counts the tokens each chunk spoke.
    spoken = [len(c.audio) // SAMPLES_PER_FRAME - 2 for c in chunks]
    assert len(chunks) >= 2 and all(0 < n <= 510 for n in spoken)
    assert sum(spoken) == tokens - (len(chunks) - 1)  # all of it, less the spaces cut at
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]  # the piece is whole at its last


def test_forward_stops_between_chunks_when_closed(wrapper):
    async def first_chunk_then_close():
        chunks = wrapper.forward("Hi.\n" + LONG, options(wrapper, "af_heart", speed=4.0))  # a short chunk, two long
        first = await anext(chunks)
        await chunks.aclose()
        await asyncio.sleep(0.2)
        return first

    first = asyncio.run(first_chunk_then_close())  # returns once its worker threads are done
    assert len(first.audio) > 0
    # The model thread counts every batch it runs. The item it may already have taken when the
    # client left finishes; the third segment never runs.
    ran = sum(wrapper.model_thread.batch_sizes.values())
    speak(wrapper, "Hi.", "af_heart")  # queued behind whatever still runs: the thread is idle after it
    assert ran <= 2 and sum(wrapper.model_thread.batch_sizes.values()) == ran + 1


# --- v0.19 -----------------------------------------------------------------------


@pytest.mark.parametrize(("lang_code", "voice", "british"), [
    (None, "af", False), (None, "am_adam", False), (None, "bf_emma", True),
    ("a", "bf_emma", False), ("en-us", "bf_emma", False), ("b", "af", True), ("en-gb", "af", True),
    ("EN-GB", "af", True),
])
def test_v0_19_lang_code_rules(lang_code, voice, british):
    assert V0_19.lang_code(lang_code, voice) == ("b" if british else "a")


@pytest.fixture(scope="module")
def v0_19_engine():
    model = make_dummy_model(V0_19, tiny_config(V0_19))
    set_realistic_durations(model, 1.0)  # one frame a token: long texts stay cheap
    return KokoroV019Wrapper(model, VoiceLibrary(V0_19, None))


@pytest.mark.parametrize("lang_code", ["e", "es", "j"])
def test_v0_19_refuses_other_languages(v0_19_engine, lang_code):
    with pytest.raises(InvalidRequest) as error:
        speak(v0_19_engine, "Hola.", "af", lang_code=lang_code)
    assert error.value.param == "lang_code" and error.value.code == "invalid_lang_code"
    assert "English only" in error.value.message and "en-gb" in error.value.message


def test_v0_19_long_text_gives_chunks_within_the_context(v0_19_engine):
    chunks = text_to_pieces(LONGER, british=False)
    tokens = [len(tokenize(c)) for c in chunks]
    assert len(chunks) >= 2 and sum(tokens) > MAX_TOKENS
    assert all(0 < n <= MAX_TOKENS for n in tokens)

    audio = speak(v0_19_engine, LONGER, "af_bella", seed=SEED)
    assert all(isinstance(c, AudioChunk) for c in audio)
    # One chunk per phoneme chunk, each spoken whole: one frame a token, pads included.
    assert [len(c.audio) for c in audio] == [SAMPLES_PER_FRAME * (n + 2) for n in tokens]
