"""The soak benchmark's arithmetic and request mix (bench/soak.py); the run itself is a benchmark."""
import random

from bench.soak import FORMATS, GROWTH_LIMIT, VOICES, Soak, growth, idle_growth, request_body


def soak_of(series: dict[int, list[int]], warmup_samples: int = 0) -> Soak:
    soak = Soak()
    length = len(next(iter(series.values())))
    soak.samples = [(float(t), t - warmup_samples, {pid: sizes[t] for pid, sizes in series.items()})
                    for t in range(length)]
    return soak


def test_memory_that_only_swings_with_the_work_does_not_grow():
    swinging = [1000 + (300 if t % 5 == 0 else 0) for t in range(200)]
    assert abs(growth(soak_of({1: swinging}), 0)[1][-1]) < 0.01


def test_a_leak_shows_as_growth_beyond_the_limit_and_warm_up_is_left_out():
    warming = [500 + 5 * t for t in range(100)]  # start-up growth: not counted
    leaking = [1000 + 2 * t for t in range(200)]  # ~+20% over the run
    result = growth(soak_of({7: warming + leaking}, warmup_samples=100), 0)
    assert result[7][-1] > GROWTH_LIMIT
    assert result[7][0] >= 1000  # the floor after warm-up, not during it


def test_the_mix_covers_formats_and_voices_and_some_clients_leave():
    rng = random.Random(7)
    plan = [request_body(rng, "kokoro") for _ in range(300)]
    assert {body["response_format"] for body, _ in plan} == set(FORMATS)
    assert {body["voice"] for body, _ in plan} == set(VOICES)
    assert 10 < sum(leave for _, leave in plan) < 100
    assert len({body["input"] for body, _ in plan}) > 200  # made-up words: the G2P keeps meeting new ones


def test_idle_growth_compares_each_surviving_replica_idle_after_warm_up_and_at_the_end():
    soak = Soak(idle=[{1: 1000, 2: 1000, 3: 900}, {1: 1060, 2: 1050}, {1: 1040, 2: 1100, 4: 700}])
    growth_by_pid = idle_growth(soak)
    assert set(growth_by_pid) == {1, 2}  # 3 was replaced, 4 is its replacement: neither is judged
    assert growth_by_pid[1] < GROWTH_LIMIT < growth_by_pid[2]  # first reading to last, not the highest
