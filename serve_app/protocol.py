"""What the ingress and the model replicas send each other. Torch-free: the ingress imports it.

The ingress validates a request once and sends each replica call a `SynthesisOptions` that is
already valid; replicas answer with `AudioChunk`s. Text is cut into *pieces* (one model call
each); a call yields *chunks* of audio.
"""
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 24000


@dataclass(frozen=True)
class VoiceBlend:
    """A voice, or a weighted mix of voice packs; weights are positive and sum to 1."""

    parts: tuple[tuple[str, float], ...]

    @classmethod
    def single(cls, name: str) -> "VoiceBlend":
        return cls(((name, 1.0),))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.parts]

    def __str__(self) -> str:
        if len(self.parts) == 1:
            return self.parts[0][0]
        return "+".join(f"{name}({weight:.3g})" for name, weight in self.parts)


@dataclass(frozen=True)
class SynthesisOptions:
    """How every piece of one request is spoken, validated by the ingress."""

    voice: VoiceBlend
    lang_code: str            # a code the version speaks (ModelVersion.languages)
    speed: float = 1.0
    seed: int | None = None   # the same seed gives the same audio (the vocoder draws noise)
    phonemes: bool = False    # the pieces are phonemes for the model as they are: no G2P
    request_id: str = "-"     # the HTTP request's id (serve_app.ingress.request_ids), for the replicas' logs


@dataclass
class Word:
    text: str
    start: float  # seconds from the start of its chunk
    end: float


@dataclass
class AudioChunk:
    audio: np.ndarray                      # float32 mono at SAMPLE_RATE
    words: list[Word] = field(default_factory=list)
    tokens: int = 0                        # phoneme tokens the model read for it, pads not counted
    last: bool = False                     # the piece's final chunk: the piece is whole once it arrives

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE
