"""The one thread a model replica runs its model on: most urgent work first, batched.

Every call of the replica hands its model work to this thread as items (one phoneme sequence
each). When the thread is free it takes the most urgent waiting items, earliest due first, up
to a maximum batch size (and optionally a maximum of total tokens), runs them as one batch and
hands each result back to its own caller. A new request's first piece, due now, goes ahead of
other streams' later pieces; a cancelled caller's item never runs; an item whose batch fails
is run again alone, so one bad item fails only its own request.

The event loop stays free for other requests and health checks. One long-lived thread also
keeps the allocator from growing an arena per thread.
"""
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
import asyncio
import ctypes
import heapq
import itertools
import threading
import time

from ..config import BatchPolicy


def _malloc_trim() -> Callable[[], None]:
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return lambda: None
    return lambda: trim(0)


# The vocoder's activations are tens of MB per piece; glibc keeps freed heap pages resident, so
# without a trim a replica's memory creeps up to its worst fragmentation (~0.3 GB more on CPU).
release_freed_memory = _malloc_trim()


@dataclass(order=True)
class _Waiting:
    place: tuple[float, int, int]  # (due, the stream's arrival, the item's index in its stream)
    item: Any = field(compare=False)
    tokens: int = field(compare=False)
    future: asyncio.Future = field(compare=False)

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        loop = self.future.get_loop()
        try:
            loop.call_soon_threadsafe(_settle, self.future, result, error)
        except RuntimeError:  # the caller's event loop is closed: nobody is waiting
            pass


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Stream:
    """One caller's items, in line behind the same place: its first arrival, then their order.

    Leaving the stream's context cancels whatever of it has not run yet.
    """

    def __init__(self, thread: "ModelThread", arrival: int):
        self._thread, self._arrival = thread, arrival
        self._futures: list[asyncio.Future] = []

    def submit(self, item: Any, due: float | None, tokens: int) -> asyncio.Future:
        """Queue `item` on the model thread; `due` (epoch seconds, None for now) orders it."""
        future = asyncio.get_running_loop().create_future()
        due = time.time() if due is None else due
        self._thread._put(_Waiting((due, self._arrival, len(self._futures)), item, tokens, future))
        self._futures.append(future)
        return future

    async def run(self, item: Any, due: float | None, tokens: int) -> Any:
        return await self.submit(item, due, tokens)

    def cancel(self) -> None:
        for future in self._futures:
            future.cancel()  # no-op once settled; a queued item is then skipped


class ModelThread:
    """The replica's model thread; `run_batch` maps a list of items to their results, in order."""

    def __init__(self, run_batch: Callable[[list], list], policy: BatchPolicy | None = None,
                 release_memory: bool = True):
        self._run_batch, self.policy = run_batch, policy or BatchPolicy(max_batch_size=1)
        self._release_memory = release_memory
        self._waiting: list[_Waiting] = []
        self._ready = threading.Condition()
        self._arrivals = itertools.count()
        self._open_streams = 0
        self._last_trim = time.monotonic()
        self.batch_sizes: Counter[int] = Counter()  # batches run, by size: for tests and metrics
        # Called after each batch with (size, seconds, results, items still waiting): the replica's metrics.
        self.on_batch: Callable[[int, float, list, int], None] | None = None
        self._busy_since: float | None = None  # monotonic start of the batch running now
        threading.Thread(target=self._serve, name="kokoro-model", daemon=True).start()

    @contextmanager
    def stream(self) -> Iterator[Stream]:
        with self._ready:
            self._open_streams += 1
        stream = Stream(self, next(self._arrivals))
        try:
            yield stream
        finally:
            stream.cancel()
            with self._ready:
                self._open_streams -= 1

    def _put(self, waiting: _Waiting) -> None:
        with self._ready:
            heapq.heappush(self._waiting, waiting)
            self._ready.notify()

    def busy_for(self) -> float:
        """Seconds the thread has spent on the batch it runs now (0 when idle): a health check's clue."""
        since = self._busy_since
        return 0.0 if since is None else time.monotonic() - since

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            self.batch_sizes[len(batch)] += 1  # before its results: a caller that has them sees it counted
            self._busy_since = started = time.monotonic()
            results = self._run(batch)
            self._busy_since = None
            if self.on_batch is not None:
                self.on_batch(len(batch), time.monotonic() - started, results, len(self._waiting))
            if self._release_memory:
                self._maybe_trim()

    def _next_batch(self) -> list[_Waiting]:
        with self._ready:
            while not self._live_waiting():
                self._ready.wait()
            if self.policy.wait_ms and len(self._waiting) < self._open_streams:
                # Other streams are between items: give them a moment to join this batch.
                deadline = time.monotonic() + self.policy.wait_ms / 1000
                while (len(self._waiting) < min(self._open_streams, self.policy.max_batch_size)
                       and (left := deadline - time.monotonic()) > 0):
                    self._ready.wait(left)
            return self._take()

    def _live_waiting(self) -> bool:
        while self._waiting and self._waiting[0].future.done():  # cancelled callers
            heapq.heappop(self._waiting)
        return bool(self._waiting)

    def _take(self) -> list[_Waiting]:
        """The most urgent live items that fit the policy's size and token limits."""
        batch, tokens, limit = [], 0, self.policy.max_batch_tokens
        while self._waiting and len(batch) < self.policy.max_batch_size:
            head = self._waiting[0]
            if batch and limit is not None and tokens + head.tokens > limit:
                break
            heapq.heappop(self._waiting)
            if not head.future.done():
                batch.append(head)
                tokens += head.tokens
        return batch

    def _run(self, batch: list[_Waiting]) -> list:
        """Run the batch and settle its callers; the results that were made."""
        try:
            results = self._run_batch([waiting.item for waiting in batch])
        except Exception as e:
            if len(batch) == 1:
                batch[0].settle(error=e)
                return []
            # find the item at fault: each alone, so the others still get their audio
            return [result for waiting in batch for result in self._run([waiting])]
        for waiting, result in zip(batch, results, strict=True):
            waiting.settle(result)
        return results

    def _maybe_trim(self) -> None:
        with self._ready:
            idle = not self._waiting
        now = time.monotonic()
        if idle or now - self._last_trim >= self.policy.trim_interval_s:
            release_freed_memory()
            self._last_trim = now
