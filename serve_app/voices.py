"""The voice packs of one model version: files under the model root, or random dummies.

A voice may be a blend, `af_bella(2)+af_sky(1)`: the weighted mean of the packs, weights
normalised; `af_bella+af_sky` weighs them equally.
"""
from collections import OrderedDict
from pathlib import Path
import re
import threading

import torch

from .dummy_weights import dummy_voice_pack
from .errors import InvalidRequest, ModelFileError
from .model_loading import load_voice_pack
from .versions import ModelVersion


MAX_BLEND_PARTS = 4
CACHED_BLENDS = 64  # blends are cheap to recompute; bound the memory arbitrary weights could take
_BLEND_PART = re.compile(r"\s*([A-Za-z0-9_]+)\s*(?:\(\s*([0-9]*\.?[0-9]+)\s*\))?\s*")


def parse_voice(spec: str) -> list[tuple[str, float]]:
    """`a(2)+b(1)` -> [('a', 2/3), ('b', 1/3)]; a plain name -> [(name, 1.0)]."""
    parts = spec.split("+")
    if len(parts) > MAX_BLEND_PARTS:
        raise InvalidRequest(f"a voice blend has at most {MAX_BLEND_PARTS} parts, got {len(parts)}",
                             param="voice", code="invalid_voice")
    blend = []
    for part in parts:
        match = _BLEND_PART.fullmatch(part)
        if match is None:
            raise InvalidRequest(f"'{part.strip()}' is not a voice or voice(weight) in '{spec}'",
                                 param="voice", code="invalid_voice")
        weight = float(match[2]) if match[2] else 1.0
        if weight <= 0:
            raise InvalidRequest(f"voice weights must be positive: '{part.strip()}'", param="voice", code="invalid_voice")
        blend.append((match[1], weight))
    names = [name for name, _ in blend]
    if len(set(names)) != len(names):
        raise InvalidRequest(f"voice '{spec}' names a voice twice", param="voice", code="invalid_voice")
    total = sum(weight for _, weight in blend)
    return [(name, weight / total) for name, weight in blend]


class VoiceLibrary:
    def __init__(self, version: ModelVersion, model_root: Path | None):
        """`model_root=None` gives the dummy voices of the release's voice names."""
        self.version = version
        self._dir = None if model_root is None else version.voices_dir(model_root)
        if self._dir is None:
            self._names = sorted(version.voices)
        elif not self._dir.is_dir():
            raise ModelFileError(f"voice folder {self._dir} does not exist: run `python -m serve_app.download`")
        else:
            self._names = sorted(p.stem for p in self._dir.glob("*.pt"))
        if not self._names:
            raise ModelFileError(f"no {version.name} voices (*.pt) in {self._dir}")
        self._packs: dict[str, torch.Tensor] = {}
        self._blends: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self._names)

    def pack(self, spec: str) -> torch.Tensor:
        """The pack of a voice or a blend of voices."""
        blend = parse_voice(spec)
        if len(blend) == 1:
            return self._single(blend[0][0])
        with self._lock:
            if spec in self._blends:
                self._blends.move_to_end(spec)
                return self._blends[spec]
        mixed = sum(weight * self._single(name) for name, weight in blend)
        with self._lock:
            self._blends[spec] = mixed
            if len(self._blends) > CACHED_BLENDS:
                self._blends.popitem(last=False)
        return mixed

    def _single(self, name: str) -> torch.Tensor:
        with self._lock:
            if name not in self._packs:
                self._packs[name] = self._load(name)
            return self._packs[name]

    def _load(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise InvalidRequest(
                f"voice '{name}' does not exist for model {self.version.name}; "
                f"voices: {', '.join(self._names)}", param="voice", code="voice_not_found")
        if self._dir is None:
            return dummy_voice_pack(name, self.version)
        path = self._dir / f"{name}.pt"
        if not path.is_file():
            raise ModelFileError(f"voice file {path} was removed after start-up")
        return load_voice_pack(path, self.version)
