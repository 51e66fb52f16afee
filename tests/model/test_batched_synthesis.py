"""synthesize_batch: each item of a padded batch gives kokoro's own audio for it.

Real kokoro networks with random weights (tiny ones, and one full-size check); no Ray.
"""
from dataclasses import dataclass

import pytest
import torch

from serve_app.model.batched_synthesis import SynthesisItem, SynthesisOutput, synthesize_batch
from serve_app.model.dummy_weights import set_realistic_durations
from serve_app.model.loading import build_random_model, fold_weight_norm
from serve_app.versions import V0_19, V1_0

from tiny_release import tiny_config

pytestmark = pytest.mark.slow  # builds and runs several models: tens of seconds

# Audio peaks at ~2; batching changes only the order of float32 sums (max abs diff ~5e-6 seen).
ATOL = 1e-4
TOKEN_LENGTHS = (3, 17, 60, 150)  # with the two pads
SPEEDS = (1.0, 1.3, 0.8, 1.1)


@dataclass
class Case:
    model: torch.nn.Module
    items: list[SynthesisItem]
    batched: list[SynthesisOutput]
    kokoro: list[tuple[torch.Tensor, torch.Tensor]]  # (audio, pred_dur) of kokoro's seeded forward


def tiny_model(version, seed: int, fold: bool):
    torch.manual_seed(seed)
    model = build_random_model(tiny_config(version), version.hub_repo)
    with torch.no_grad():
        projection = model.predictor.duration_proj.linear_layer
        projection.weight.normal_(0, 0.5)  # durations that differ per token, as tiny_release makes them
        projection.bias.fill_(-3.0)  # mostly 1 or 2 frames a token: the vocoder's cost is per frame
        # F0 of up to ~200 Hz, mostly voiced as in speech: random weights give ~0 Hz, all unvoiced,
        # and the source's sines (which integrate F0 over the utterance) would go untested.
        model.predictor.F0_proj.weight.mul_(200)
        model.predictor.F0_proj.bias.fill_(100)
    return fold_weight_norm(model) if fold else model


def make_items(lengths, speeds, seeds) -> list[SynthesisItem]:
    generator = torch.Generator().manual_seed(sum(lengths))
    pad = torch.zeros(1, dtype=torch.long)
    return [SynthesisItem(torch.cat([pad, torch.randint(1, 178, (length - 2,), generator=generator), pad]),
                          0.1 * torch.randn(1, 256, generator=generator), speed, seed)
            for length, speed, seed in zip(lengths, speeds, seeds)]


def kokoro_seeded(model, item: SynthesisItem) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(item.seed)
    audio, pred_dur = model.forward_with_tokens(item.input_ids[None], item.ref_s, item.speed)
    return audio.squeeze(), pred_dur


def make_case(model) -> Case:
    items = make_items(TOKEN_LENGTHS, SPEEDS, seeds=(11, 12, 13, 14))
    return Case(model, items, synthesize_batch(model, items), [kokoro_seeded(model, item) for item in items])


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def v1_case() -> Case:
    return make_case(tiny_model(V1_0, seed=1, fold=True))  # the service folds weight norm


@pytest.fixture(scope="module")
def v0_19_case() -> Case:
    return make_case(tiny_model(V0_19, seed=5, fold=False))


@pytest.fixture(params=["v1_case", "v0_19_case"])
def case(request) -> Case:
    return request.getfixturevalue(request.param)


def test_each_item_of_a_batch_equals_kokoro(case):
    for item, out, (audio, pred_dur) in zip(case.items, case.batched, case.kokoro):
        assert out.pred_dur.dtype == torch.long and torch.equal(out.pred_dur, pred_dur)
        assert len(out.pred_dur) == len(item.input_ids)
        assert out.audio.dtype == torch.float32 and out.audio.device.type == "cpu"
        assert len(out.audio) == 600 * pred_dur.sum()
        assert max_diff(out.audio, audio) < ATOL
    assert len({len(out.audio) for out in case.batched}) == len(case.items)  # the batch was padded


def test_an_item_alone_is_exactly_kokoro(case):
    # Nothing is padded and the noise is drawn as kokoro draws it: the very same audio.
    for item, (audio, pred_dur) in zip(case.items[:3], case.kokoro):  # the short ones: the same code path
        alone = synthesize_batch(case.model, [item])[0]
        assert torch.equal(alone.pred_dur, pred_dur)
        assert torch.equal(alone.audio, audio)


def test_order_and_company_do_not_matter(v1_case):
    order = (2, 0, 1)  # without the longest item, so padded to another length
    reordered = synthesize_batch(v1_case.model, [v1_case.items[i] for i in order])
    for i, out in zip(order, reordered):
        assert torch.equal(out.pred_dur, v1_case.batched[i].pred_dur)
        assert max_diff(out.audio, v1_case.batched[i].audio) < ATOL


def test_unseeded_items_get_fresh_noise_from_the_global_rng(v1_case):
    items = make_items((12, 5), (1.0, 1.2), seeds=(None, None))
    first, second = synthesize_batch(v1_case.model, items), synthesize_batch(v1_case.model, items)
    for a, b in zip(first, second):
        assert torch.equal(a.pred_dur, b.pred_dur)
        assert max_diff(a.audio, b.audio) > 1e-3
    torch.manual_seed(5)
    again = synthesize_batch(v1_case.model, items)
    torch.manual_seed(5)
    assert all(torch.equal(a.audio, b.audio) for a, b in zip(again, synthesize_batch(v1_case.model, items)))


def test_empty_batch():
    assert synthesize_batch(None, []) == []


def test_full_size_model():
    torch.manual_seed(0)
    model = fold_weight_norm(build_random_model(V1_0.packaged_config(), V1_0.hub_repo))
    set_realistic_durations(model)  # 3 frames a token keeps the full vocoder quick
    items = make_items((5, 9, 16), (1.0, 0.9, 1.2), seeds=(1, 2, 3))
    for item, out in zip(items, synthesize_batch(model, items)):
        audio, pred_dur = kokoro_seeded(model, item)
        assert torch.equal(out.pred_dur, pred_dur)
        assert max_diff(out.audio, audio) < ATOL
