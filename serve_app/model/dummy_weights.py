"""Random weights of the real architecture, so the whole stack runs with no downloaded files.

The audio is noise. Durations are made realistic so that compute per character, and so load
tests and benchmarks, match the real model.
"""
import math
import zlib

from kokoro import KModel
import torch

from ..logs import get_logger
from ..versions import ModelVersion
from .loading import build_random_model

logger = get_logger()

# Real speech is about 3 duration frames (25 ms each) per phoneme; random weights give ~25.
FRAMES_PER_TOKEN = 3.0
MODEL_SEED = 0  # every replica builds the same model, so any replica gives the same audio


def make_dummy_model(version: ModelVersion, config: dict) -> KModel:
    logger.warning(
        "KOKORO %s IS RUNNING WITH DUMMY RANDOM WEIGHTS: it produces noise, not speech. "
        "Download the real weights with `python -m serve_app.download` and use weights=local.",
        version.name)
    with torch.random.fork_rng():
        torch.manual_seed(MODEL_SEED)
        model = build_random_model(config, version.hub_repo)
    set_realistic_durations(model)
    return model


def set_realistic_durations(model: KModel, frames_per_token: float = FRAMES_PER_TOKEN) -> None:
    # The predicted duration of a token is the sum over max_dur sigmoids of duration_proj's
    # outputs; a zero weight and a constant bias make that sum exactly frames_per_token.
    projection = model.predictor.duration_proj.linear_layer
    max_dur = projection.out_features
    if not 0 < frames_per_token < max_dur:
        raise ValueError(f"a model with max_dur {max_dur} predicts between 0 and {max_dur} frames per token")
    share = frames_per_token / max_dur
    with torch.no_grad():
        projection.weight.zero_()
        projection.bias.fill_(math.log(share / (1 - share)))


def dummy_voice_pack(name: str, version: ModelVersion) -> torch.Tensor:
    """A random pack, the same for a name on every replica and every start."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{version.name}/{name}".encode()))
    return 0.1 * torch.randn(version.voice_pack_rows, 1, 256, generator=generator)
