"""Pronunciation control: inline `[word](/phonemes/)`, custom lexicons, /v1/audio/phonemize, phoneme input."""
import json

import httpx
import pytest

from serve_app.config import IngressConfig
from serve_app.errors import InvalidRequest
from serve_app.ingress.speech_api import SpeechRequest
from serve_app.ingress.speech_validation import speech_job
from serve_app.model.v0_19_text import load_vocab, text_to_pieces
from serve_app.text.pieces import split_text
from serve_app.text.pronunciation import Lexicon, phonemize_runs, plain_text
from serve_app.versions import V0_19, V1_0

from conftest import deploy, project_app_config

V1_VOCAB = V1_0.packaged_config()["vocab"]
KOKORO = "kˈOkəɹO"         # in misaki's symbols (v1.0)
KOKORO_V019 = "kˈoʊkəɹoʊ"  # in espeak's, which v0.19 was trained on
INLINE = f"Say [Kokoro](/{KOKORO}/) and [New York](/nˈu jˈɔɹk/), please."


# --- the splitter and the inline form ---------------------------------------------------------

@pytest.mark.parametrize("limit", range(4, 60, 3))
def test_the_splitter_never_cuts_inside_an_inline_pronunciation(limit):
    pieces = split_text(INLINE, limit, limit)
    for link in (f"[Kokoro](/{KOKORO}/)", "[New York](/nˈu jˈɔɹk/)"):
        assert any(link in piece for piece in pieces), pieces
    assert "".join(pieces).replace(" ", "") == INLINE.replace(" ", "")


def test_inline_runs_keep_the_given_phonemes_and_spacing():
    spoken = phonemize_runs(INLINE + " [A](/ˈA/)[B](/bˈi/)", lambda text: text.upper())
    assert spoken == f"SAY {KOKORO} AND nˈu jˈɔɹk, PLEASE. ˈAbˈi"
    assert plain_text(INLINE) == "Say Kokoro and New York, please."
    assert phonemize_runs("No [stress](+2) feature here", lambda text: text) == "No stress feature here"


def test_v0_19_front_end_speaks_inline_phonemes():
    plain, = text_to_pieces("I love Kokoro, truly.", british=False)
    inline, = text_to_pieces(f"I love [Kokoro](/{KOKORO_V019}/), truly.", british=False)
    assert KOKORO_V019 not in plain and inline == plain.replace(plain.split()[2].rstrip(","), KOKORO_V019)


# --- lexicons ---------------------------------------------------------------------------------

def test_lexicon_rewrites_whole_words_by_case_rule():
    lexicon = Lexicon({"kokoro": KOKORO, "NASA": "nˈæsə", "New York": "nˈu jˈɔɹk"})
    text = "Kokoro, KOKORO and kokoros; nasa or NASA in New York, not new york. [Kokoro](/kˈO/)"
    assert lexicon.apply(text) == (
        f"[Kokoro](/{KOKORO}/), [KOKORO](/{KOKORO}/) and kokoros; nasa or [NASA](/nˈæsə/) in "
        "[New York](/nˈu jˈɔɹk/), not new york. [Kokoro](/kˈO/)")
    assert Lexicon().apply(text) == text


@pytest.mark.parametrize("suffix,writer", [(".json", json.dumps), (".yaml", lambda d: "\n".join(
    f"{k}: {v}" for k, v in d.items()))])
def test_lexicon_files_are_read_and_checked(tmp_path, suffix, writer):
    path = tmp_path / f"lexicon{suffix}"
    path.write_text(writer({"Kokoro": KOKORO, "misaki": "misˈɑki"}), "utf-8")
    assert Lexicon.read(path, V1_VOCAB, "v1.0").entries == {"Kokoro": KOKORO, "misaki": "misˈɑki"}
    path.write_text(writer({"Kokoro": "kˈO%7"}), "utf-8")
    with pytest.raises(ValueError, match="'Kokoro'.*v1.0.*% 7"):
        Lexicon.read(path, V1_VOCAB, "v1.0")


def test_a_lexicon_that_is_no_mapping_is_a_config_error(tmp_path):
    for text in ["- a\n- b\n", "{word: 3}", "{'': x}", "{'Kokoro': ''}"]:
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ValueError, match="must map words"):
            Lexicon.read(tmp_path / "bad.yaml", V1_VOCAB, "v1.0")
    with pytest.raises(ValueError, match="cannot be read"):
        Lexicon.read(tmp_path / "missing.json", V1_VOCAB, "v1.0")


# --- checks in the ingress --------------------------------------------------------------------

def job(vocab=V1_VOCAB, version=V1_0, **fields):
    return speech_job(SpeechRequest(**fields), version, version.voices, IngressConfig(), vocab)


def refusal(*args, **fields) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as error:
        job(*args, **fields)
    assert error.value.param == "input" and error.value.code == "invalid_phonemes"
    return error.value


def test_unknown_symbols_are_a_400_naming_them():
    inline = refusal(input="Say [Kokoro](/kˈO%ɫ/) now.").message
    assert "'Kokoro'" in inline and inline.endswith("v1.0's phoneme vocabulary: % ɫ")
    assert refusal(input="hˈɛlO wˈɜɹɫd 7", input_format="phonemes").message.endswith("vocabulary: 7 ɫ")
    # ᵊ is one of v1.0's symbols, not v0.19's
    assert refusal(load_vocab(), V0_19, input="ɹˈiᵊli", input_format="phonemes").message.endswith(
        "v0.19's phoneme vocabulary: ᵊ")


def test_phoneme_input_becomes_pieces_within_the_models_context():
    phonemes = " ".join(["hˈɛlO wˈɜɹld,"] * 100)
    speech = job(input=phonemes, input_format="phonemes")
    assert speech.options.phonemes and " ".join(speech.pieces) == phonemes
    assert all(len(piece) <= 150 for piece in speech.pieces)
    assert not job(input=INLINE).options.phonemes



def test_phoneme_input_keeps_combining_marks_the_vocab_has():
    nasal = "a\u0303"  # a + combining tilde, two v1.0 symbols; NFC would make it U+00E3, which v1.0 lacks
    speech = job(input=f"sˈ{nasal}w \u200bpˈawlu", input_format="phonemes")
    assert speech.pieces == [f"sˈ{nasal}w pˈawlu"]  # invisible characters still go

# --- v1.0's front ends, in-process (kokoro and misaki loaded: seconds) ------------------------

@pytest.fixture(scope="module")
def v1_pipelines():
    """KPipelines without a model: misaki's English G2P and the espeak-ng fallback.

    spaCy's en_core_web_sm is not installable offline, so misaki's G2P gets spaCy's blank English
    (the real tokenizer, no tagger): enough to run misaki's own link handling and lexicon.
    """
    from kokoro import KPipeline
    from misaki import en
    import spacy

    from serve_app.model.kokoro_v1 import espeak_english_pipeline

    misaki = KPipeline(lang_code="e", repo_id="hexgrad/Kokoro-82M", model=False)
    g2p = object.__new__(en.G2P)
    g2p.version, g2p.british, g2p.nlp, g2p.fallback, g2p.unk = None, False, spacy.blank("en"), None, "❓"
    g2p.lexicon = en.Lexicon(False)
    misaki.g2p = g2p
    return misaki, espeak_english_pipeline("a", "hexgrad/Kokoro-82M", False)


@pytest.mark.slow
def test_misaki_english_speaks_inline_and_lexicon_phonemes(v1_pipelines):
    from serve_app.model.kokoro_v1 import misaki_segments

    misaki, _ = v1_pipelines
    plain, = misaki_segments(misaki, "I love Kokoro.")
    inline, = misaki_segments(misaki, f"I love [Kokoro](/{KOKORO}/).")
    lexicon, = misaki_segments(misaki, Lexicon({"kokoro": "kˈOkO"}).apply("I love kokoro."))
    assert KOKORO not in plain.phonemes and f"lˈʌv {KOKORO}" in inline.phonemes
    assert "lˈʌv kˈOkO" in lexicon.phonemes
    assert [t.text for t in inline.tokens][:3] == ["I", "love", "Kokoro"]


@pytest.mark.slow
def test_espeak_front_end_speaks_inline_phonemes_and_times_the_words(v1_pipelines):
    from serve_app.model.kokoro_v1 import espeak_segments

    _, espeak = v1_pipelines
    plain, = espeak_segments(espeak, "I love Kokoro. Really.")
    inline, = espeak_segments(espeak, f"I love [Kokoro](/{KOKORO}/). Really.")
    assert KOKORO not in plain.phonemes
    assert inline.phonemes == plain.phonemes.replace(plain.phonemes.split()[2].rstrip("."), KOKORO)
    assert inline.text == plain.text == "I love Kokoro. Really."


# --- through Ray Serve: a deployment with lexicons --------------------------------------------

@pytest.fixture(scope="module")
def with_lexicons(serve_url, release, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("lexicons")
    (folder / "v1.json").write_text(json.dumps({"kokoro": "kˈOkO"}), "utf-8")
    (folder / "v019.yaml").write_text("kokoro: kˈoʊkoʊ\n", "utf-8")
    deploy(project_app_config(model_root=str(release.root), weights="local", versions=["v1.0", "v0.19"],
                              configs=release.configs,
                              lexicons={"v1.0": str(folder / "v1.json"), "v0.19": str(folder / "v019.yaml")}),
           timeout_s=300)  # the box is shared: starting two model replicas may take minutes
    return serve_url


def phonemize(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/phonemize", json=body, timeout=60)


def test_phonemize_shows_lexicon_and_inline_phonemes_with_their_tokens(with_lexicons):
    result = phonemize(with_lexicons, input="Kokoro speaks [clearly](/klˈɪɹli/).", voice="af_heart").json()
    assert result["model"] == "v1.0" and result["lang_code"] == "a"
    (phonemes,), (tokens,) = result["phonemes"], result["tokens"]
    assert phonemes.startswith("kˈOkO ") and "klˈɪɹli" in phonemes
    assert tokens == [V1_VOCAB[symbol] for symbol in phonemes]
    old = phonemize(with_lexicons, input="Kokoro speaks.", model="v0.19", voice="af").json()
    assert old["phonemes"][0].startswith("kˈoʊkoʊ ") and old["tokens"][0] == [load_vocab()[s] for s in
                                                                               old["phonemes"][0]]


def test_speech_from_phonemes_is_the_speech_of_their_text(with_lexicons):
    text = "A short line, spoken once."

    def pcm(**body):
        response = httpx.post(f"{with_lexicons}/v1/audio/speech", timeout=120, json={
            "voice": "af_bella", "response_format": "pcm", "seed": 2, **body})
        assert response.status_code == 200, response.text
        return response.content
    phonemes, = phonemize(with_lexicons, input=text, voice="af_bella").json()["phonemes"]
    assert pcm(input=phonemes, input_format="phonemes") == pcm(input=text)
    assert pcm(input="[Kokoro](/kˈOkO/) speaks.") == pcm(input="Kokoro speaks.")  # the lexicon's phonemes


def test_unknown_phonemes_are_refused_before_any_audio(with_lexicons):
    for body, named in [({"input": "hˈɛlO 7%", "input_format": "phonemes"}, ": % 7"),
                        ({"input": "Say [this](/ðˈɪ7/)."}, ": 7")]:
        response = httpx.post(f"{with_lexicons}/v1/audio/speech", timeout=60, json={"voice": "af_bella", **body})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_phonemes", response.text
        assert response.json()["error"]["message"].endswith(named)
    assert phonemize(with_lexicons, input="hˈɛlO 7", input_format="phonemes").status_code == 400
