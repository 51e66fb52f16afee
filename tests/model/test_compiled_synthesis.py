"""Compiled synthesis: the vocoder through torch.compile gives eager's audio, and compiles only at start.

Real kokoro networks with tiny random weights, compiled by inductor on the CPU; no Ray. The first
compile of a session takes a minute or more on 2 cores, so one warmed engine per version serves
every test here.
"""
from dataclasses import dataclass

from test_batched_synthesis import make_items, max_diff, tiny_model
from torch._dynamo.utils import counters
import pytest
import torch

from serve_app.config import BatchPolicy
from serve_app.model.batched_synthesis import synthesize_batch
from serve_app.model.compiled_vocoder import CompiledVocoder
from serve_app.model.kokoro_v0_19 import KokoroV019Wrapper
from serve_app.model.kokoro_v1 import KokoroV1Wrapper
from serve_app.model.voices import VoiceLibrary
from serve_app.versions import V0_19, V1_0

pytestmark = pytest.mark.slow

# Fused kernels sum in another order than eager's: over these tests the largest difference seen was
# 4e-6 on audio peaking at ~2 (-114 dB), the same size as batching's (ATOL in test_batched_synthesis),
# and far below one step of the 16-bit audio the service sends (3e-5). The source's phase, which would
# turn last-bit differences into audible ones, is computed eagerly outside the compiled code.
ATOL = 1e-4
# Token counts (with the pads) from a word to the model's whole context, and speeds from 0.5 to 2.
LENGTHS = (4, 9, 23, 60, 130, 257, 512)
SPEEDS = (1.0, 2.0, 0.5, 1.3, 0.8, 1.0, 1.1)
COMPARED = 5  # the first five lengths are compared with eager (the longest two only cost time)


@dataclass
class Warmed:
    engine: object
    vocoder: CompiledVocoder
    graphs: int  # graphs dynamo had compiled once the engine was warm


def unique_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def warmed(wrapper, version, seed: int) -> Warmed:
    model = tiny_model(version, seed=seed, fold=True)
    vocoder = CompiledVocoder(model.decoder, "default")
    engine = wrapper(model, VoiceLibrary(version, None), BatchPolicy(max_batch_size=4), vocoder)
    seconds = vocoder.warm_up(engine.speak_warm_up_shapes)
    assert vocoder.failure is None, vocoder.failure
    assert seconds > 0
    return Warmed(engine, vocoder, unique_graphs())


@pytest.fixture(scope="module")
def v1() -> Warmed:
    return warmed(KokoroV1Wrapper, V1_0, seed=1)


@pytest.fixture(scope="module")
def v0_19() -> Warmed:
    return warmed(KokoroV019Wrapper, V0_19, seed=5)


@pytest.fixture(params=["v1", "v0_19"])
def engine(request) -> Warmed:
    return request.getfixturevalue(request.param)


def test_warm_up_compiles_the_single_and_the_batched_graph(v1):
    # One graph for a lone item, one for a padded batch: both made before the first request.
    assert v1.graphs >= 2


def test_compiled_audio_equals_eager_single_and_batched(engine):
    model = engine.engine.model
    items = make_items(LENGTHS[:COMPARED], SPEEDS[:COMPARED], seeds=range(20, 20 + COMPARED))
    eager_alone = [synthesize_batch(model, [item])[0] for item in items]
    compiled_alone = [synthesize_batch(model, [item], engine.vocoder)[0] for item in items]
    for batch in (items[3:5], items[:4]):  # sizes 2 and 4, padded to different lengths
        eager = synthesize_batch(model, batch)
        for out, alone in zip(synthesize_batch(model, batch, engine.vocoder), eager):
            assert torch.equal(out.pred_dur, alone.pred_dur)
            assert max_diff(out.audio, alone.audio) < ATOL
    for eager, compiled in zip(eager_alone, compiled_alone):
        assert torch.equal(compiled.pred_dur, eager.pred_dur)
        assert max_diff(compiled.audio, eager.audio) < ATOL
        assert compiled.audio.abs().max() > 0.1  # audio, not silence that would match anything


def test_no_piece_length_speed_or_batch_size_compiles_in_service(engine):
    # After warm-up every shape runs compiled code or, outside what warm-up covered, eagerly: a
    # recompile would stall the replica's model thread for as long as the warm-up took.
    items = make_items(LENGTHS, SPEEDS, seeds=range(30, 37))
    for item in items:
        synthesize_batch(engine.engine.model, [item], engine.vocoder)
    for size in (2, 3, 4):
        synthesize_batch(engine.engine.model, items[:size], engine.vocoder)
    synthesize_batch(engine.engine.model, [items[4], items[4]], engine.vocoder)  # equal lengths: no padding
    assert unique_graphs() == engine.graphs
    assert engine.vocoder.recompiles() == 0


def test_pieces_of_a_few_words_and_more_run_compiled_alone_and_batched(engine):
    # Other shapes need other graphs and run eagerly (serve_app.model.compiled_vocoder): a lone piece of
    # under ~40 frames, a batch padded to under ~200. Every lone piece longer, and every batch padded to a
    # long piece (unequal or equal lengths), must run the warmed graphs.
    short, medium, long, longest = make_items(LENGTHS[3:], SPEEDS[3:], seeds=range(40, 44))
    with torch.compiler.set_stance("fail_on_recompile"):  # raises rather than run eagerly or compile
        for batch in ([short], [medium], [longest], [long, short], [longest, medium, long, short], [long, long]):
            synthesize_batch(engine.engine.model, batch, engine.vocoder.compiled)


def test_a_failed_compile_leaves_the_vocoder_eager(v1, tmp_path):
    # An unusable cache directory (here a file where the directory should be) fails the compile.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    model = v1.engine.model
    vocoder = CompiledVocoder(model.decoder, "default", cache_dir=str(blocker / "cache"))
    item = make_items((40,), (1.0,), seeds=(3,))
    vocoder.warm_up(lambda: synthesize_batch(model, item, vocoder))
    assert isinstance(vocoder.failure, OSError)
    assert torch.equal(synthesize_batch(model, item, vocoder)[0].audio, synthesize_batch(model, item)[0].audio)
