"""The replica's model thread: earliest due first, batched, cancelled work never runs."""
import asyncio
import threading
import time

import pytest

from serve_app.config import BatchPolicy
from serve_app.model.model_thread import ModelThread


class Model:
    """Runs batches of named items, logging each batch; `gate` holds the first batch back."""

    def __init__(self):
        self.batches: list[list[str]] = []
        self.gate = threading.Event()

    def __call__(self, items: list[str]) -> list[str]:
        if not self.batches:
            assert self.gate.wait(10)
        self.batches.append(list(items))
        if any(item.startswith("bad") for item in items):
            raise ValueError(f"bad item in {items}")
        return [f"audio of {item}" for item in items]


def thread_of(model: Model, **policy) -> ModelThread:
    return ModelThread(model, BatchPolicy(**{"max_batch_size": 1, **policy}), release_memory=False)


async def speak(thread: ModelThread, name: str, due: float | None, count: int = 2, tokens: int = 10) -> list[str]:
    """A stream of `count` items, queued at once like a piece's segments."""
    with thread.stream() as stream:
        results = [stream.submit(f"{name} {i}", due, tokens) for i in range(count)]
        return [await result for result in results]


async def queue_behind_busy(thread: ModelThread, model: Model, calls, **kwargs) -> list[asyncio.Task]:
    """Occupy the thread, then start `calls` (name, due) in this order, each queued before the next."""
    tasks = [asyncio.create_task(speak(thread, "busy", 0, count=1))]
    for name, due in calls:
        await asyncio.sleep(0.05)
        tasks.append(asyncio.create_task(speak(thread, name, due, **kwargs)))
    await asyncio.sleep(0.05)
    return tasks


def run_queued(calls: list[tuple[str, float | None]], **policy) -> list[list[str]]:
    """The batches run after a busy one, with `calls` queued behind it."""
    model = Model()
    thread = thread_of(model, **policy)

    async def main():
        tasks = await queue_behind_busy(thread, model, calls)
        model.gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert model.batches[0] == ["busy 0"]
    return model.batches[1:]


def test_items_run_earliest_due_first_then_in_arrival_order():
    now = time.time()
    batches = run_queued([("later", now + 30), ("first", now), ("same due", now + 30), ("soon", now + 5)])
    # A stream's items keep its place in line: "later" arrived before "same due".
    assert [b[0] for b in batches] == ["first 0", "first 1", "soon 0", "soon 1", "later 0", "later 1",
                                       "same due 0", "same due 1"]


def test_items_without_due_are_due_now():
    batches = run_queued([("ahead", time.time() + 60), ("now", None)])
    assert [b[0] for b in batches] == ["now 0", "now 1", "ahead 0", "ahead 1"]


def test_waiting_items_run_together_most_urgent_first():
    now = time.time()
    calls = [(f"s{i}", now + i) for i in range(6)]
    batches = run_queued(calls, max_batch_size=4)
    assert batches[0] == ["s0 0", "s0 1", "s1 0", "s1 1"]  # a stream's items share its place
    assert all(len(b) <= 4 for b in batches)
    assert sorted(item for b in batches for item in b) == sorted(f"s{i} {j}" for i in range(6) for j in range(2))


def test_a_batch_holds_at_most_max_batch_tokens_but_a_long_item_still_runs():
    now = time.time()
    model = Model()
    thread = thread_of(model, max_batch_size=8, max_batch_tokens=25)

    async def main():
        tasks = [asyncio.create_task(speak(thread, "busy", 0, count=1))]
        await asyncio.sleep(0.05)
        tasks += [asyncio.create_task(speak(thread, f"s{i}", now + i, count=1, tokens=10)) for i in range(3)]
        tasks.append(asyncio.create_task(speak(thread, "long", now + 9, count=1, tokens=100)))
        await asyncio.sleep(0.05)
        model.gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert model.batches[1:] == [["s0 0", "s1 0"], ["s2 0"], ["long 0"]]
    assert results[-1] == ["audio of long 0"]


def test_cancelled_caller_runs_nothing_more():
    model = Model()
    thread = thread_of(model, max_batch_size=4)

    async def main():
        tasks = await queue_behind_busy(thread, model, [("gone", time.time())])
        tasks[1].cancel()
        await asyncio.sleep(0.05)  # the cancellation reaches the item
        model.gate.set()
        await tasks[0]
        return await speak(thread, "next", None)  # the thread still serves others

    assert asyncio.run(main()) == ["audio of next 0", "audio of next 1"]
    assert model.batches == [["busy 0"], ["next 0", "next 1"]]


def test_a_failing_item_fails_only_its_own_caller():
    model = Model()
    thread = thread_of(model, max_batch_size=4)

    async def main():
        tasks = await queue_behind_busy(thread, model, [("good", None), ("bad", None)], count=1)
        model.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    busy, good, bad = asyncio.run(main())
    assert good == ["audio of good 0"]
    assert isinstance(bad, ValueError) and "bad 0" in str(bad)
    assert model.batches[1] == ["good 0", "bad 0"]  # tried together, then each alone
    assert model.batches[2:] == [["good 0"], ["bad 0"]]


def test_the_wait_window_gathers_other_open_streams_but_never_taxes_a_lone_one():
    model = Model()
    model.gate.set()
    thread = thread_of(model, max_batch_size=4, wait_ms=1000)

    async def lone() -> float:
        started = time.monotonic()
        await speak(thread, "lone", None, count=1)
        return time.monotonic() - started

    assert asyncio.run(lone()) < 0.5  # inside the 1 s window: nobody else could join

    async def two_streams():
        with thread.stream() as other:
            first = asyncio.create_task(speak(thread, "early", None, count=1))
            await asyncio.sleep(0.2)  # the other stream is between items meanwhile
            return await asyncio.gather(first, other.run("late 0", None, 10))

    assert asyncio.run(two_streams()) == [["audio of early 0"], "audio of late 0"]
    assert model.batches[-1] == ["early 0", "late 0"]


def test_batch_sizes_are_counted():
    model = Model()
    model.gate.set()
    thread = thread_of(model)
    asyncio.run(speak(thread, "a", None, count=3))
    assert dict(thread.batch_sizes) == {1: 3}


def test_pieces_are_due_when_the_speech_before_them_has_played():
    from serve_app.ingress.piece_scheduling import SPOKEN_CHARS_PER_S, due_times

    pieces = ["a" * 29, "b" * 59, "c" * 10]  # 30 and 60 characters with their joining spaces
    assert due_times(pieces, start=100.0, speed=1.0) == pytest.approx(
        [100.0, 100.0 + 30 / SPOKEN_CHARS_PER_S, 100.0 + 90 / SPOKEN_CHARS_PER_S])
    # Twice as fast, due twice as soon.
    assert due_times(pieces, start=0.0, speed=2.0)[2] == pytest.approx(45 / SPOKEN_CHARS_PER_S)
