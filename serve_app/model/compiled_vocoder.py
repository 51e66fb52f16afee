"""The vocoder through `torch.compile`: fused at replica start, once for the piece lengths it will see.

Eager PyTorch runs the vocoder's many elementwise and normalisation passes between convolutions one
by one, each a trip through memory; inductor fuses them (1.5x a 130-token piece on 2 CPU cores, more
on longer ones). Compiling takes tens of seconds, so it happens before the replica reports ready, on
pieces of the shapes it will serve, with inductor's cache on disk for the next start.

Dynamic shapes cover every frame count in a range, not all of them. On the CPU, convolutions take
another backend below 20,480 input values (oneDNN above), so a lone piece of under ~40 frames (a few
words) needs a graph of its own; a batch's masked sums take another code path past 4,096 values, so
batches padded to under ~200 frames do too. Warm-up compiles the common shapes (serve_app.model.engine,
`speak_warm_up_shapes`); after it, the compiled code runs under the `eager_on_recompile` stance: a shape
no warm-up covered runs eagerly instead of compiling for a minute in the middle of a request. Nothing
compiles in service.
"""
from collections.abc import Callable
from pathlib import Path
import os
import time

from kokoro.istftnet import Decoder
from torch._dynamo.utils import counters
import torch

from ..logs import get_logger
from .batched_synthesis import Vocoder

logger = get_logger()

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_cache_dir(cache_dir: str | None) -> None:
    """Inductor's on-disk cache (compiled kernels, FX graphs) in `cache_dir`: a later start, or another
    replica on the same volume, loads what was compiled instead of compiling it again."""
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        os.environ[INDUCTOR_CACHE_ENV] = cache_dir  # inductor reads it at each lookup


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process."""
    return counters["stats"]["unique_graphs"]


class CompiledVocoder:
    """A `Vocoder` compiled with dynamic shapes; runs eagerly when compiling fails or for an unwarmed shape."""

    def __init__(self, decoder: Decoder, mode: str, cache_dir: str | None = None):
        self.mode = mode
        self.cache_dir = cache_dir
        self.eager = Vocoder(decoder)
        self.compiled = torch.compile(self.eager, mode=mode, dynamic=True)
        self.failure: Exception | None = None  # why compiling failed; the vocoder then stays eager
        self.seconds = 0.0  # how long warm-up (compiling) took
        self._warm = False
        self._graphs_when_warm = 0

    def warm_up(self, speak_warm_up_shapes: Callable[[], object]) -> float:
        """Compile by speaking the shapes the replica will serve; the seconds it took. A failure is logged
        and kept, never raised: the replica then serves eagerly."""
        started = time.perf_counter()
        try:
            use_cache_dir(self.cache_dir)
            speak_warm_up_shapes()
        except Exception as e:  # inductor needs a C++ compiler and a writable cache: either can be missing
            self.failure = e
            logger.error("COMPILE FAILED (mode %s): the vocoder runs eagerly, at about 2/3 of the compiled "
                         "speed: %s: %s", self.mode, type(e).__name__, e, exc_info=e)
        self._warm = True
        self._graphs_when_warm = compiled_graphs()
        self.seconds = time.perf_counter() - started
        return self.seconds

    def state(self) -> dict:
        """What a replica reports of its vocoder: compiled or not (a failure serves eagerly), in how long,
        and how many graphs were compiled after warm-up."""
        compiled = self._warm and self.failure is None
        return {"mode": self.mode, "compiled": compiled, "seconds": round(self.seconds, 1),
                "recompiles": self.recompiles() if compiled else 0}

    def recompiles(self) -> int:
        """Graphs compiled since warm-up (in this process): 0 unless a shape slipped past the stance."""
        return compiled_graphs() - self._graphs_when_warm

    def __call__(self, *inputs):
        if self.failure is not None:
            return self.eager(*inputs)
        if not self._warm:
            return self.compiled(*inputs)
        with torch.compiler.set_stance("eager_on_recompile"):
            return self.compiled(*inputs)
