"""The voice packs of one model version: files under the model root, or random dummies."""
from pathlib import Path
import logging
import threading

import torch

from .dummy_weights import dummy_voice_pack
from .errors import InvalidRequest, ModelFileError
from .model_loading import load_voice_pack
from .versions import ModelVersion

logger = logging.getLogger(__name__)


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
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self._names)

    def pack(self, name: str) -> torch.Tensor:
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
