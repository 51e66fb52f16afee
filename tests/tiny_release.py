"""Tiny random-weight Kokoro releases of the real architecture, saved in the published file layouts.

The smallest model kokoro's code accepts (see NOTES): 1-layer networks, a 32-wide ALBERT and one
vocoder resblock kernel. It builds in about a second and speaks a sentence in under a second.
"""
from pathlib import Path
import json

import torch

from serve_app.model.loading import MODULES, _instance_norm_keys, build_random_model
from serve_app.versions import V1_0, ModelVersion

TINY_PLBERT = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
               "max_position_embeddings": 512, "num_hidden_layers": 1, "dropout": 0.1}


def tiny_config(version: ModelVersion) -> dict:
    config = version.packaged_config()
    vocoder_key = "istftnet" if version is V1_0 else "decoder"
    config.update(n_layer=1, max_dur=4, plbert=TINY_PLBERT)
    config[vocoder_key] = {**config[vocoder_key], "resblock_kernel_sizes": [3],
                           "resblock_dilation_sizes": [[1, 3, 5]]}
    return config


def published_state(model, version: ModelVersion) -> dict:
    """The model's weights the way the release files store them."""
    modules = {}
    for name in MODULES:
        module = getattr(model, name)
        skipped = set() if version.norm_affine_saved else _instance_norm_keys(module)
        modules[name] = {f"module.{k}": v.clone() for k, v in module.state_dict().items() if k not in skipped}
    return modules if version.checkpoint_key is None else {version.checkpoint_key: modules}


def save_release(version: ModelVersion, root: Path, voices: list[str], seed: int) -> Path:
    """Write weights and voices under `root` in the project's layout; return the config's path."""
    config = tiny_config(version)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_random_model(config, version.hub_repo)
        # Random weights predict every token the same long duration; vary them so timings mean something.
        with torch.no_grad():
            model.predictor.duration_proj.linear_layer.weight.normal_(0, 0.5)
        packs = {name: 0.1 * torch.randn(version.voice_pack_rows, 1, 256) for name in voices}
    version.weights_path(root).parent.mkdir(parents=True, exist_ok=True)
    torch.save(published_state(model, version), version.weights_path(root))
    version.voices_dir(root).mkdir(parents=True, exist_ok=True)
    for name, pack in packs.items():
        torch.save(pack, version.voices_dir(root) / f"{name}.pt")
    config_path = Path(root) / f"config_{version.slug}.json"
    config_path.write_text(json.dumps(config))
    return config_path
