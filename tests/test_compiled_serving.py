"""Compiled synthesis through the service: a seeded request sounds the same compiled or not, batched or not.

Real Serve and HTTP, the tiny v1.0 release; the compiled replica compiles at start (a minute or more
on 2 cores when inductor's cache is cold), so this module deploys once each way.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from test_streaming import LONG_TEXT, model_stats, post, v1_app

from conftest import deploy

# Compiled audio is eager's within 1e-4 (tests/model/test_compiled_synthesis.py): at most 4 steps of 16 bits.
MAX_PCM_STEPS = 4
SEEDS = (5, 6, 7)


def pcm(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, dtype="<i2").astype(np.int32)


def same_sound(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) == len(b) and int(np.abs(a - b).max()) <= MAX_PCM_STEPS


def test_compiled_batched_replica_sounds_like_the_eager_one(serve_url, release):
    deploy(v1_app(release))  # eager, one piece at a time
    eager = {seed: pcm(post(serve_url, seed=seed)) for seed in SEEDS}
    assert all(np.abs(audio).max() > 1000 for audio in eager.values())  # sound, not silence

    deploy(v1_app(release, app_args={"compile": "default", "batching": {"max_batch_size": 4}}), timeout_s=900)
    compile_state = model_stats()["compile"]
    assert compile_state["mode"] == "default" and compile_state["compiled"], compile_state
    assert compile_state["seconds"] > 0

    assert same_sound(pcm(post(serve_url, seed=5)), eager[5])
    with ThreadPoolExecutor(len(SEEDS)) as pool:  # at once: the replica batches their pieces
        together = dict(zip(SEEDS, pool.map(lambda seed: pcm(post(serve_url, seed=seed)), SEEDS)))
    for seed in SEEDS:
        assert same_sound(together[seed], eager[seed]), seed
    assert sum(size * count for size, count in model_stats()["batches"].items() if int(size) > 1) > 0
    # Short and long texts, other speeds: all served by what was compiled at start.
    for text, speed in (("Hola.", 1.0), (LONG_TEXT, 0.5), (LONG_TEXT[:150], 2.0)):
        assert len(pcm(post(serve_url, text=text, speed=speed, seed=1))) > 0
    assert model_stats()["compile"]["recompiles"] == 0
