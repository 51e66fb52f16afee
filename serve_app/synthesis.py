"""What model replicas produce, and how blocking model work runs inside an async replica."""
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator, TypeVar
import asyncio
import threading

import numpy as np
import torch

SAMPLE_RATE = 24000

T = TypeVar("T")
_DONE = object()


@dataclass
class Word:
    text: str
    start: float  # seconds from the start of its chunk
    end: float


@dataclass
class AudioChunk:
    audio: np.ndarray                      # float32 mono at SAMPLE_RATE
    words: list[Word] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


async def steps_in_threads(steps: Iterator[T], model_lock: threading.Lock, seed: int | None) -> AsyncIterator[T]:
    """Advance a blocking generator one step at a time in a worker thread.

    The event loop stays free for other requests and health checks, and a cancelled request
    stops between steps (a sync generator would run on to its end). One step runs at a time
    per model: parallel forwards on one replica only fight for the same cores. With a seed,
    the torch RNG (the vocoder draws noise) is reset before every step, so audio is reproducible.
    """
    def step():
        with model_lock:
            if seed is not None:
                torch.manual_seed(seed)
            return next(steps, _DONE)

    while (item := await asyncio.to_thread(step)) is not _DONE:
        yield item
