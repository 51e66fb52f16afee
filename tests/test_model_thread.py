"""The replica's model thread: earliest deadline first, cancelled work never runs."""
import asyncio
import threading
import time

import pytest

from serve_app.synthesis import ModelThread


def logged_steps(name: str, log: list, count: int = 2, gate: threading.Event | None = None):
    for i in range(count):
        if gate is not None:
            assert gate.wait(10)
        log.append(f"{name} {i}")
        yield i


async def collect(thread: ModelThread, steps, deadline: float | None) -> list:
    return [item async for item in thread.steps(steps, seed=None, deadline=deadline)]


async def start(thread: ModelThread, steps, deadline: float | None) -> asyncio.Task:
    task = asyncio.create_task(collect(thread, steps, deadline))
    await asyncio.sleep(0.05)  # queued before the next one
    return task


def run_queued(calls: list[tuple[str, float | None]], count: int = 2) -> list[str]:
    """Occupy the thread, queue `calls` (name, deadline) in this order, let all run: the step log."""
    thread, log, gate = ModelThread(), [], threading.Event()

    async def main():
        tasks = [await start(thread, logged_steps("busy", log, count=1, gate=gate), 0)]
        tasks += [await start(thread, logged_steps(name, log, count), deadline) for name, deadline in calls]
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert log[0] == "busy 0"
    return log[1:]


def test_calls_run_earliest_deadline_first_then_in_arrival_order():
    now = time.time()
    log = run_queued([("later", now + 30), ("first", now), ("same due", now + 30), ("soon", now + 5)])
    assert log == ["first 0", "first 1", "soon 0", "soon 1", "later 0", "later 1", "same due 0", "same due 1"]


def test_calls_without_deadline_are_due_now():
    assert run_queued([("ahead", time.time() + 60), ("now", None)]) == ["now 0", "now 1", "ahead 0", "ahead 1"]


def test_cancelled_call_runs_no_further_step():
    thread, log, gate = ModelThread(), [], threading.Event()

    async def main():
        busy = await start(thread, logged_steps("busy", log, count=1, gate=gate), 0)
        gone = await start(thread, logged_steps("gone", log), time.time())
        gone.cancel()
        await asyncio.sleep(0.05)  # the cancellation reaches the call
        gate.set()
        await busy
        return await collect(thread, logged_steps("next", log), None)  # the thread still serves others

    assert asyncio.run(main()) == [0, 1]
    assert log == ["busy 0", "next 0", "next 1"]


def test_a_failing_step_reaches_its_caller_and_the_thread_goes_on():
    thread = ModelThread()

    def failing():
        yield 1
        raise ValueError("bad text")

    async def main():
        with pytest.raises(ValueError, match="bad text"):
            await collect(thread, failing(), None)
        return await collect(thread, iter(["still serving"]), None)

    assert asyncio.run(main()) == ["still serving"]


def test_pieces_are_due_when_the_speech_before_them_has_played():
    from serve_app.ingress import SPOKEN_CHARS_PER_S, due_times

    pieces = ["a" * 29, "b" * 59, "c" * 10]  # 30 and 60 characters with their joining spaces
    assert due_times(pieces, start=100.0, speed=1.0) == pytest.approx(
        [100.0, 100.0 + 30 / SPOKEN_CHARS_PER_S, 100.0 + 90 / SPOKEN_CHARS_PER_S])
    # Twice as fast, due twice as soon.
    assert due_times(pieces, start=0.0, speed=2.0)[2] == pytest.approx(45 / SPOKEN_CHARS_PER_S)
