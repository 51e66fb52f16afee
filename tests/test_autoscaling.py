"""Autoscaling under real HTTP load: the model deployment scales out, serves everything, scales back.

Runs in the session's Ray (conftest's `serve_url`, started with short autoscaling metric push
intervals) with the project's deployment settings, only the autoscaling delays shortened.
"""
from concurrent.futures import ThreadPoolExecutor, wait
import threading
import time

from ray import serve
import httpx
import pytest

from conftest import deploy, project_app_config

MODEL = "KokoroV1Model"
MAX_REPLICAS = 3
CLIENTS = 8
# One synthesis call of about 4 s of audio from the tiny model: seconds of CPU per request, so
# 8 clients sending back to back keep far more than target_ongoing_requests in flight.
# (Longer texts make the tiny model speak for minutes on this 2-core machine.)
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away."
LOAD_LIMIT_S = 60       # the load stops at the latest after this
HOLD_AFTER_SCALE_S = 4  # load kept on after the scale-out was seen, so the new replicas take traffic
DRAIN_LIMIT_S = 90      # for the requests in flight when the load stops
SCALE_DOWN_LIMIT_S = 30


@pytest.fixture(scope="module")
def autoscaling_app(serve_url, release):
    # Load shedding is not what this tests: on a busy CI machine a first piece may wait past the default.
    app = project_app_config(model_root=str(release.root), weights="local", versions=["v1.0"],
                             configs={"v1.0": release.configs["v1.0"]}, start_timeout_s=300)
    model = next(d for d in app["deployments"] if d["name"] == MODEL)
    model["autoscaling_config"] = {
        "min_replicas": 1, "max_replicas": MAX_REPLICAS, "target_ongoing_requests": 1,
        "upscale_delay_s": 0, "downscale_delay_s": 2, "look_back_period_s": 1,
    }
    deploy(app)
    yield app["name"], serve_url
    # The other modules deploy their own apps (deploying replaces all apps); free the replicas now.
    serve.delete(app["name"], _blocking=True)


def replica_states(app_name: str) -> dict[str, int]:
    deployment = serve.status().applications[app_name].deployments[MODEL]
    return {str(getattr(state, "value", state)): count for state, count in deployment.replica_states.items()}


def test_model_scales_out_under_load_and_back_in(autoscaling_app):
    app_name, url = autoscaling_app
    assert replica_states(app_name) == {"RUNNING": 1}

    stop = threading.Event()
    results: list[tuple[int, int, str]] = []  # (status, audio bytes, error text)

    def client() -> None:
        with httpx.Client(timeout=DRAIN_LIMIT_S) as http:
            while not stop.is_set():
                try:
                    r = http.post(f"{url}/v1/audio/speech",
                                  json={"input": TEXT, "voice": "af_heart", "response_format": "pcm"})
                    results.append((r.status_code, len(r.content), "" if r.status_code == 200 else r.text))
                except httpx.HTTPError as e:
                    results.append((-1, 0, repr(e)))

    counts: list[tuple[float, int]] = []
    timeline: list[tuple[float, dict]] = []  # replica states whenever they change
    started = time.monotonic()
    scaled_at = None
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client) for _ in range(CLIENTS)]
        try:
            while time.monotonic() - started < LOAD_LIMIT_S:
                states = replica_states(app_name)
                now = round(time.monotonic() - started, 1)
                if not timeline or timeline[-1][1] != states:
                    timeline.append((now, states))
                n = states.get("RUNNING", 0)
                counts.append((now, n))
                if n > 1 and scaled_at is None:
                    scaled_at = time.monotonic()
                if scaled_at is not None and time.monotonic() - scaled_at > HOLD_AFTER_SCALE_S:
                    break
                time.sleep(0.25)
        finally:
            stop.set()  # clients finish the request they are in and stop
        done, not_done = wait(futures, timeout=DRAIN_LIMIT_S)
        assert not not_done, f"requests still running {DRAIN_LIMIT_S} s after the load stopped"
        for f in done:
            f.result()
    load_s = time.monotonic() - started

    peak = max(n for _, n in counts)
    print(f"load {load_s:.1f} s, {len(results)} requests, replicas over time: {timeline}")
    assert 1 < peak <= MAX_REPLICAS, f"no scale-out within {LOAD_LIMIT_S} s: {timeline}"

    failures = [r for r in results if r[0] != 200 or r[1] == 0]
    assert not failures, failures[:3]
    assert len(results) >= CLIENTS
    # pcm is 16-bit mono at 24 kHz; this text is well over a second of speech even from the tiny model
    assert all(size % 2 == 0 and size > 2 * 24000 for _, size, _ in results)

    # No traffic: back to min_replicas within a bounded wait, and the extra replicas gone after it.
    idle_started = time.monotonic()
    deadline = idle_started + SCALE_DOWN_LIMIT_S
    while (states := replica_states(app_name)).get("RUNNING") != 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    scaled_in_s = time.monotonic() - idle_started
    assert states.get("RUNNING") == 1 and "STARTING" not in states, states
    deadline = time.monotonic() + SCALE_DOWN_LIMIT_S
    while (states := replica_states(app_name)) != {"RUNNING": 1} and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"1 replica RUNNING {scaled_in_s:.1f} s after the load stopped, "
          f"{states} after {time.monotonic() - idle_started:.1f} s")
    assert states == {"RUNNING": 1}

    # The one replica left still serves.
    r = httpx.post(f"{url}/v1/audio/speech", timeout=60,
                   json={"input": "Back to one replica.", "voice": "af_heart", "response_format": "pcm"})
    assert r.status_code == 200 and len(r.content) > 0
