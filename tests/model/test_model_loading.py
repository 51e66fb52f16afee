"""The strict loader, the dummy weights and the voice library, in-process against the tiny releases.

Building a tiny model costs about a second and its file is ~230 MB, so models are built once per
module and the bad files are checked against an already built model through `load_weights_strict`
(what `load_model` runs after building); a failed load must leave that model untouched.
"""

from kokoro import KModel
import pytest
import torch

from serve_app.errors import InvalidRequest, ModelFileError
from serve_app.model.batched_synthesis import synthesize_batch
from serve_app.model.dummy_weights import dummy_voice_pack, make_dummy_model, set_realistic_durations
from serve_app.model.engine import Segment
from serve_app.model.kokoro_v0_19 import KokoroV019Wrapper
from serve_app.model.loading import MODULES, fold_weight_norm, kmodel_config, load_model, load_weights_strict
from serve_app.model.voices import VoiceLibrary
from serve_app.protocol import SynthesisOptions, VoiceBlend
from serve_app.versions import V0_19, V1_0

from tiny_release import published_state, tiny_config

pytestmark = pytest.mark.slow  # loads models or runs subprocesses: seconds a test

SAMPLES_PER_FRAME = 600  # 25 ms at 24 kHz
# Every symbol is in its version's vocab: one token each.
V1_PHONEMES = "hˈI."
V0_19_PHONEMES = "həlˈoʊ wˈɜːld."


def unprefixed(state: dict) -> dict:
    assert state and all(k.startswith("module.") for k in state)
    return {k[len("module."):]: v for k, v in state.items()}


def instance_norms(model: torch.nn.Module) -> dict[str, torch.nn.InstanceNorm1d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.InstanceNorm1d) and m.affine}


@pytest.fixture(scope="module")
def v1_model(release):
    return load_model(V1_0, tiny_config(V1_0), release.root)


@pytest.fixture(scope="module")
def v0_19_model(release):
    return load_model(V0_19, tiny_config(V0_19), release.root)


@pytest.fixture(scope="module")
def v1_published(v1_model):
    """The loaded model's weights as the v1.0 release stores them; tests copy what they change."""
    return published_state(v1_model, V1_0)


# --- loading the releases -----------------------------------------------------


def test_v1_release_loads_every_tensor(release, v1_model):
    saved = torch.load(V1_0.weights_path(release.root), weights_only=True)
    assert set(saved) == set(MODULES)
    for name in MODULES:
        expected = unprefixed(saved[name])
        loaded = getattr(v1_model, name).state_dict()
        assert set(loaded) == set(expected), name
        for key, tensor in expected.items():
            assert torch.equal(loaded[key], tensor), f"{name}.{key}"


def test_v0_19_release_loads_every_tensor_and_keeps_identity_norms(release, v0_19_model):
    saved = torch.load(V0_19.weights_path(release.root), weights_only=True)
    assert set(saved) == {"net"}
    assert set(saved["net"]) == set(MODULES)
    for name in MODULES:
        expected = unprefixed(saved["net"][name])
        module = getattr(v0_19_model, name)
        loaded = module.state_dict()
        norm_keys = {f"{n}.{p}" for n in instance_norms(module) for p in ("weight", "bias")}
        assert set(loaded) == set(expected) | norm_keys, name
        assert not norm_keys & set(expected)  # the release has none: they stay as initialised
        for key, tensor in expected.items():
            assert torch.equal(loaded[key], tensor), f"{name}.{key}"
    norms = instance_norms(v0_19_model)
    assert norms  # AdaIN layers exist, so the identity check below checks something
    for name, norm in norms.items():
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)), name
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias)), name


# --- bad files ----------------------------------------------------------------


def save_weights(version, root, checkpoint):
    path = version.weights_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def load_error(model, version, path) -> str:
    with pytest.raises(ModelFileError) as error:
        load_weights_strict(model, version, path)
    message = str(error.value)
    assert str(path) in message
    return message


def test_folded_weight_norm_gives_the_same_audio(release):
    model = load_model(V1_0, tiny_config(V1_0), release.root)
    pack = VoiceLibrary(V1_0, release.root).pack(VoiceBlend.single("af_heart"))
    style = pack[len(V1_PHONEMES) - 1]
    torch.manual_seed(3)
    before = model(V1_PHONEMES, style)
    assert any(name.endswith("weight_g") for name, _ in model.named_parameters())
    fold_weight_norm(model)
    assert not any(name.endswith(("weight_g", "weight_v")) for name, _ in model.named_parameters())
    torch.manual_seed(3)
    assert torch.equal(model(V1_PHONEMES, style), before)


def test_missing_weights_file(tmp_path):
    # Through load_model itself once: the file is checked no matter how the model was built.
    path = V1_0.weights_path(tmp_path)
    with pytest.raises(ModelFileError) as error:
        load_model(V1_0, tiny_config(V1_0), tmp_path)
    message = str(error.value)
    assert str(path) in message and "does not exist" in message
    assert "serve_app.download" in message and "dummy" in message


def test_truncated_weights_file(tmp_path, release, v1_model):
    data = V1_0.weights_path(release.root).read_bytes()
    path = V1_0.weights_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in load_error(v1_model, V1_0, path)


def test_weights_file_not_a_dict(tmp_path, v1_model):
    path = save_weights(V1_0, tmp_path, [torch.zeros(3)])
    assert "holds a list, not a dict" in load_error(v1_model, V1_0, path)


def test_renamed_tensor_names_missing_and_unknown_key_and_loads_nothing(tmp_path, v1_model, v1_published):
    encoder = dict(v1_published["bert_encoder"])
    encoder["module.bert_encoder_weight"] = encoder.pop("module.weight")
    # A tensor that does match, with a new value: it must not be loaded either.
    encoder["module.bias"] = encoder["module.bias"] + 1
    path = save_weights(V1_0, tmp_path, {**v1_published, "bert_encoder": encoder})
    before = v1_model.bert_encoder.bias.clone()

    message = load_error(v1_model, V1_0, path)
    assert "does not match the v1.0 model" in message
    assert "bert_encoder.weight missing" in message
    assert "bert_encoder.bert_encoder_weight not in the model" in message
    assert message.count(";") == 1  # exactly those two problems
    assert torch.equal(v1_model.bert_encoder.bias, before)


def test_wrong_shape_names_key_and_both_shapes(tmp_path, v1_model, v1_published):
    encoder = {**v1_published["bert_encoder"], "module.bias": torch.zeros(7)}
    path = save_weights(V1_0, tmp_path, {**v1_published, "bert_encoder": encoder})
    message = load_error(v1_model, V1_0, path)
    assert "bert_encoder.bias has shape (7,), the model needs (512,)" in message
    assert ";" not in message


def test_missing_module(tmp_path, v1_model, v1_published):
    checkpoint = {k: v for k, v in v1_published.items() if k != "decoder"}
    path = save_weights(V1_0, tmp_path, checkpoint)
    message = load_error(v1_model, V1_0, path)
    assert "module 'decoder' missing" in message
    assert ";" not in message


def test_v0_19_file_without_net_key(tmp_path, v0_19_model, v1_published):
    # A v1.0-layout file (the same modules, not nested under 'net') where v0.19 is expected.
    path = save_weights(V0_19, tmp_path, v1_published)
    message = load_error(v0_19_model, V0_19, path)
    assert "not a v0.19 checkpoint" in message and "'net'" in message


# --- v0.19 audio against kokoro's own modules -----------------------------------


def test_v0_19_audio_equals_kokoro_with_the_v0_19_style_row(tmp_path, release, v0_19_model):
    voices = VoiceLibrary(V0_19, release.root)
    pack = voices.pack(VoiceBlend.single("af"))
    engine = KokoroV019Wrapper(v0_19_model, voices)
    item = engine.item(Segment(V0_19_PHONEMES), pack, SynthesisOptions(VoiceBlend.single("af"), "a", 1.0, seed=11))
    audio = synthesize_batch(engine.model, [item])[0].audio.numpy()

    # kokoro's own loader on a v1-layout copy: 'net' unwrapped; missing norm weights stay at init.
    v1_layout = tmp_path / "v0_19_as_v1_layout.pth"
    torch.save(torch.load(V0_19.weights_path(release.root), weights_only=True)["net"], v1_layout)
    reference = KModel(repo_id=V0_19.hub_repo, config=kmodel_config(tiny_config(V0_19)), model=str(v1_layout)).eval()
    tokens = [reference.vocab[c] for c in V0_19_PHONEMES]
    assert len(tokens) == len(V0_19_PHONEMES)
    input_ids = torch.LongTensor([[0, *tokens, 0]])

    def reference_audio(row: int):
        torch.manual_seed(11)
        return reference.forward_with_tokens(input_ids, pack[row], 1.0)[0].numpy()

    expected = reference_audio(len(tokens))
    assert expected.shape == audio.shape and abs(expected).max() > 0
    assert torch.allclose(torch.from_numpy(audio), torch.from_numpy(expected), rtol=0, atol=1e-6)
    v1_row = reference_audio(len(tokens) - 1)  # v1.0's choice: this test catches an off-by-one
    assert v1_row.shape != audio.shape or not torch.allclose(
        torch.from_numpy(audio), torch.from_numpy(v1_row), rtol=0, atol=1e-3)


# --- dummy weights --------------------------------------------------------------


@pytest.fixture(scope="module")
def dummy_models():
    config = tiny_config(V1_0)
    return make_dummy_model(V1_0, config), make_dummy_model(V1_0, config)


def test_dummy_builds_are_identical(dummy_models):
    first, second = (m.state_dict() for m in dummy_models)
    assert set(first) == set(second)
    assert all(torch.equal(first[k], second[k]) for k in first)


def frames_per_token(model, phonemes: str, style) -> float:
    assert all(c in model.vocab for c in phonemes)
    audio = model(phonemes, style, 1.0)
    assert len(audio) % SAMPLES_PER_FRAME == 0
    return len(audio) / SAMPLES_PER_FRAME / (len(phonemes) + 2)  # + the two pad tokens


def test_dummy_model_speaks_three_frames_a_token(dummy_models):
    assert all(c in dummy_models[0].vocab for c in V1_PHONEMES)  # one token a symbol
    pack = dummy_voice_pack("af_heart", V1_0)
    torch.manual_seed(0)
    audio = dummy_models[0](V1_PHONEMES, pack[len(V1_PHONEMES) - 1], 1.0)
    # Every token, the two pads around the text included, lasts 3 frames of 600 samples.
    assert len(audio) == SAMPLES_PER_FRAME * 3 * (len(V1_PHONEMES) + 2)


def test_set_realistic_durations_five_frames_a_token():
    # The tiny config's max_dur (4) caps a token at 4 frames: this needs a wider duration head.
    config = {**tiny_config(V1_0), "max_dur": 8}
    model = make_dummy_model(V1_0, config)
    pack = dummy_voice_pack("am_adam", V1_0)
    torch.manual_seed(0)
    assert frames_per_token(model, V1_PHONEMES, pack[0]) == 3
    set_realistic_durations(model, 5.0)
    torch.manual_seed(0)
    assert frames_per_token(model, V1_PHONEMES, pack[0]) == 5


def test_dummy_voice_packs_are_deterministic_per_name():
    heart = dummy_voice_pack("af_heart", V1_0)
    assert heart.shape == (510, 1, 256) and heart.dtype == torch.float32
    assert torch.equal(heart, dummy_voice_pack("af_heart", V1_0))
    assert not torch.equal(heart, dummy_voice_pack("af_bella", V1_0))
    assert dummy_voice_pack("af_bella", V0_19).shape == (511, 1, 256)


# --- voice library --------------------------------------------------------------


def test_library_lists_the_voice_files_present(tmp_path):
    voices = V1_0.voices_dir(tmp_path)
    voices.mkdir(parents=True)
    for name in ("zz_custom", "af_heart"):
        torch.save(dummy_voice_pack(name, V1_0), voices / f"{name}.pt")
    (voices / "README.txt").write_text("not a voice")
    library = VoiceLibrary(V1_0, tmp_path)
    assert library.names() == ["af_heart", "zz_custom"]
    assert torch.equal(library.pack(VoiceBlend.single("zz_custom")), dummy_voice_pack("zz_custom", V1_0))


def test_release_libraries(release):
    from conftest import V0_19_VOICES, V1_VOICES

    v1 = VoiceLibrary(V1_0, release.root)
    assert v1.names() == sorted(V1_VOICES)
    saved = torch.load(V1_0.voices_dir(release.root) / "af_bella.pt", weights_only=True)
    assert torch.equal(v1.pack(VoiceBlend.single("af_bella")), saved)
    assert VoiceLibrary(V0_19, release.root).pack(VoiceBlend.single("af")).shape == (511, 1, 256)
    assert VoiceLibrary(V0_19, release.root).names() == sorted(V0_19_VOICES)


def test_unknown_voice_lists_the_names(release):
    library = VoiceLibrary(V1_0, release.root)
    with pytest.raises(InvalidRequest) as error:
        library.pack(VoiceBlend.single("af_nobody"))
    assert error.value.param == "voice" and error.value.code == "voice_not_found"
    assert "af_nobody" in error.value.message
    for name in library.names():
        assert name in error.value.message


def test_voice_file_with_the_wrong_shape(tmp_path):
    voices = V0_19.voices_dir(tmp_path)
    voices.mkdir(parents=True)
    torch.save(dummy_voice_pack("af", V1_0), voices / "af.pt")  # a v1.0 pack: 510 rows, not 511
    library = VoiceLibrary(V0_19, tmp_path)
    with pytest.raises(ModelFileError) as error:
        library.pack(VoiceBlend.single("af"))
    message = str(error.value)
    assert str(voices / "af.pt") in message
    assert "(510, 1, 256)" in message and "(511, 1, 256)" in message


def test_missing_or_empty_voice_folder(tmp_path):
    with pytest.raises(ModelFileError) as error:
        VoiceLibrary(V1_0, tmp_path)
    assert str(V1_0.voices_dir(tmp_path)) in str(error.value) and "does not exist" in str(error.value)
    V1_0.voices_dir(tmp_path).mkdir(parents=True)
    with pytest.raises(ModelFileError) as error:
        VoiceLibrary(V1_0, tmp_path)
    assert "no v1.0 voices" in str(error.value)


@pytest.mark.parametrize(("version", "expected"), [
    (V1_0, {"af_heart", "af_bella", "am_adam", "bf_emma"}),
    (V0_19, {"af", "af_bella", "am_adam", "bf_emma"}),
])
def test_dummy_library_lists_the_release_voices(version, expected):
    library = VoiceLibrary(version, None)
    assert expected <= set(library.names())
    assert library.names() == sorted(version.voices)
    name = sorted(expected)[0]
    assert torch.equal(library.pack(VoiceBlend.single(name)), dummy_voice_pack(name, version))
    with pytest.raises(InvalidRequest):
        library.pack(VoiceBlend.single("xx_nobody"))
