"""What model replicas produce, and how blocking model work runs inside an async replica."""
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator, TypeVar
from concurrent.futures import ThreadPoolExecutor
import asyncio

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


class ModelThread:
    """The one thread a replica runs its model on.

    The event loop stays free for other requests and health checks. One step runs at a time:
    parallel forwards on one replica only fight for the same cores. Steps run in the order they
    were asked for, and a step whose request was cancelled while it waited never runs. One
    long-lived thread also keeps the allocator from growing an arena per pool thread.
    """

    def __init__(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kokoro-model")

    async def steps(self, steps: Iterator[T], seed: int | None) -> AsyncIterator[T]:
        """Advance a blocking generator one step at a time on the model thread.

        A cancelled request stops between steps (a sync generator would run on to its end).
        With a seed, the torch RNG (the vocoder draws noise) is reset before every step,
        so audio is reproducible.
        """
        def step():
            if seed is not None:
                torch.manual_seed(seed)
            return next(steps, _DONE)

        loop = asyncio.get_running_loop()
        while (item := await loop.run_in_executor(self._executor, step)) is not _DONE:
            yield item
