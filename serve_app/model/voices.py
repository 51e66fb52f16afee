"""The voice packs of one model version: files under the model root, or random dummies.

A blend (`serve_app.text.voice_spec`) is the weighted mean of its voices' packs.
"""
from collections import OrderedDict
from pathlib import Path
import threading

import torch

from ..errors import ModelFileError
from ..protocol import VoiceBlend
from ..text.voice_spec import voice_not_found
from ..versions import ModelVersion
from .dummy_weights import dummy_voice_pack
from .loading import load_voice_pack

CACHED_BLENDS = 64  # blends are cheap to recompute; bound the memory arbitrary weights could take


class VoiceLibrary:
    """The packs of a version's voices, loaded on first use, and a bounded cache of blends."""

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
        self._blends: OrderedDict[VoiceBlend, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self._names)

    def pack(self, blend: VoiceBlend) -> torch.Tensor:
        """The pack of a voice or a blend of voices."""
        if len(blend.parts) == 1:
            return self._single(blend.parts[0][0])
        with self._lock:
            if blend in self._blends:
                self._blends.move_to_end(blend)
                return self._blends[blend]
        mixed = sum(weight * self._single(name) for name, weight in blend.parts)
        with self._lock:
            self._blends[blend] = mixed
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
            raise voice_not_found(name, self.version, self._names)
        if self._dir is None:
            return dummy_voice_pack(name, self.version)
        path = self._dir / f"{name}.pt"
        if not path.is_file():
            raise ModelFileError(f"voice file {path} was removed after start-up")
        return load_voice_pack(path, self.version)
