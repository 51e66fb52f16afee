"""Build Kokoro models from local files, strictly: every tensor is checked, nothing is downloaded.

`KModel`'s own loader retries with `strict=False` and silently keeps random weights for
missing or misnamed tensors; this module verifies names and shapes of all five modules first
and fails with an error naming the file and what is wrong.
"""
from pathlib import Path
import io

from kokoro import KModel
import torch

from ..errors import ModelFileError
from ..logs import get_logger
from ..versions import ModelVersion

logger = get_logger()

MODULES = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")
PUBLISHED_PREFIX = "module."  # the published files were saved from DataParallel wrappers
MAX_LISTED_PROBLEMS = 8

# v0.19's config predates these keys; its ALBERT is the same as v1.0's (see NOTES).
V0_19_PLBERT = {
    "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 2048,
    "max_position_embeddings": 512, "num_hidden_layers": 12, "dropout": 0.1,
}
V0_19_TEXT_ENCODER_KERNEL_SIZE = 5


def kmodel_config(config: dict) -> dict:
    """The config in the shape `KModel` takes, from either version's published config."""
    if "istftnet" in config:
        return config
    from .v0_19_text import load_vocab  # v0.19 ships its vocab separately

    config = dict(config)
    vocoder = {k: v for k, v in config.pop("decoder").items() if k != "type"}
    return {
        "plbert": V0_19_PLBERT, "text_encoder_kernel_size": V0_19_TEXT_ENCODER_KERNEL_SIZE,
        "vocab": load_vocab(), **config, "istftnet": vocoder,
    }


def build_random_model(config: dict, repo_id: str) -> KModel:
    """The real architecture at its initial weights; reads no file and touches no network."""
    empty_checkpoint = io.BytesIO()
    torch.save({}, empty_checkpoint)
    empty_checkpoint.seek(0)
    # KModel always loads a checkpoint (downloading one if none is given); an empty one loads nothing.
    return KModel(repo_id=repo_id, config=kmodel_config(config), model=empty_checkpoint).eval()


def fold_weight_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Bake weight normalisation into plain weights, for inference.

    kokoro's convolutions keep `weight_g` and `weight_v` and recompute `weight` from them on
    every call; computing it once gives bit-identical audio with ~180 MB less memory.
    """
    for module in model.modules():
        if hasattr(module, "weight_g"):
            torch.nn.utils.remove_weight_norm(module)
    return model


def read_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"weights file {path} does not exist: run `python -m serve_app.download` "
            "or use the dummy weight source (KOKORO_WEIGHTS=dummy)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelFileError(
            f"weights file {path} cannot be read, it is truncated or corrupt "
            f"({type(e).__name__}: {e}); download it again") from e
    if not isinstance(checkpoint, dict):
        raise ModelFileError(f"weights file {path} holds a {type(checkpoint).__name__}, not a dict of modules")
    return checkpoint


def _strip_prefix(state: dict) -> dict:
    if state and all(k.startswith(PUBLISHED_PREFIX) for k in state):
        return {k[len(PUBLISHED_PREFIX):]: v for k, v in state.items()}
    return state


def _instance_norm_keys(module: torch.nn.Module) -> set[str]:
    return {f"{name}.{param}" for name, m in module.named_modules()
            if isinstance(m, torch.nn.InstanceNorm1d) for param, _ in m.named_parameters(recurse=False)}


def _non_persistent_buffers(module: torch.nn.Module) -> set[str]:
    # Older transformers saved ALBERT's position_ids; they are derived, so a file may carry them.
    return set(dict(module.named_buffers())) - set(module.state_dict())


def _module_problems(name: str, module: torch.nn.Module, state: dict, norm_affine_saved: bool) -> list[str]:
    expected = module.state_dict()
    may_be_missing = set() if norm_affine_saved else _instance_norm_keys(module)
    may_be_extra = _non_persistent_buffers(module)
    problems = [f"{name}.{k} missing" for k in expected if k not in state and k not in may_be_missing]
    problems += [f"{name}.{k} not in the model" for k in state if k not in expected and k not in may_be_extra]
    problems += [f"{name}.{k} has shape {tuple(state[k].shape)}, the model needs {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    return problems


def load_weights_strict(model: KModel, version: ModelVersion, path: Path) -> KModel:
    checkpoint = read_checkpoint(path)
    if version.checkpoint_key is not None:
        if version.checkpoint_key not in checkpoint:
            raise ModelFileError(f"{path} is not a {version.name} checkpoint: no '{version.checkpoint_key}' key")
        checkpoint = checkpoint[version.checkpoint_key]
    problems = [f"module '{m}' missing" for m in MODULES if m not in checkpoint]
    problems += [f"unknown module '{m}'" for m in checkpoint if m not in MODULES]
    problems += [f"module '{m}' holds a {type(checkpoint[m]).__name__}, not a state dict"
                 for m in MODULES if m in checkpoint and not isinstance(checkpoint[m], dict)]
    states = {m: _strip_prefix(checkpoint[m]) for m in MODULES if isinstance(checkpoint.get(m), dict)}
    for name, state in states.items():
        problems += _module_problems(name, getattr(model, name), state, version.norm_affine_saved)
    if problems:
        listed = "; ".join(problems[:MAX_LISTED_PROBLEMS])
        more = f" (and {len(problems) - MAX_LISTED_PROBLEMS} more)" if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise ModelFileError(f"{path} does not match the {version.name} model: {listed}{more}")
    for name, state in states.items():
        # strict=False only for what was verified above may be absent or extra.
        getattr(model, name).load_state_dict(state, strict=False)
    logger.info("loaded %s weights from %s", version.name, path)
    return model


def load_model(version: ModelVersion, config: dict, model_root: Path) -> KModel:
    model = build_random_model(config, version.hub_repo)
    return load_weights_strict(model, version, version.weights_path(model_root))


def load_voice_pack(path: Path, version: ModelVersion) -> torch.Tensor:
    try:
        pack = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelFileError(f"voice file {path} cannot be read ({type(e).__name__}: {e})") from e
    expected = (version.voice_pack_rows, 1, 256)
    if not isinstance(pack, torch.Tensor) or tuple(pack.shape) != expected:
        shape = tuple(pack.shape) if isinstance(pack, torch.Tensor) else type(pack).__name__
        raise ModelFileError(f"voice file {path} holds {shape}, a {version.name} voice pack is {expected}")
    return pack.float()
