"""`serve run serve_config.yaml` as users run it: the shipped config, dummy weights, full-size models."""
from pathlib import Path
import io
import os
import signal
import subprocess
import time

import av
import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
URL = "http://127.0.0.1:8000"  # serve_config.yaml's port


@pytest.fixture(scope="module")
def serve_run(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-run") / "serve.log"
    # Its own fresh Ray cluster ("local"), never one another test or `ray start` left running.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(KOKORO_WEIGHTS="dummy", RAY_USAGE_STATS_ENABLED="0", RAY_ADDRESS="local")
    serve_bin = Path(os.sys.executable).parent / "serve"
    with open(log, "w") as out:
        process = subprocess.Popen([str(serve_bin), "run", "serve_config.yaml"], cwd=REPO_ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not _healthy():
            assert process.poll() is None, f"serve run exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not up after 240 s:\n{log.read_text()[-3000:]}"
            time.sleep(2)
        yield log
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # a background serve run ignores SIGINT
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _healthy() -> bool:
    try:
        return httpx.get(f"{URL}/health", timeout=2).json()["versions"] == ["v0.19", "v1.0"]
    except (httpx.HTTPError, ValueError, KeyError):
        return False


@pytest.mark.parametrize("model, voice", [("kokoro", "af_heart"), ("v0.19", "af_bella")])
def test_streams_decodable_audio_of_plausible_duration(serve_run, model, voice):
    text = "Hello from the shipped configuration. This is how long a sentence takes."
    with httpx.stream("POST", f"{URL}/v1/audio/speech", timeout=120,
                      json={"model": model, "input": text, "voice": voice}) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "audio/mpeg"
        data = b"".join(response.iter_bytes())
    with av.open(io.BytesIO(data)) as container:
        seconds = sum(f.samples for f in container.decode(audio=0)) / 24000
    # Dummy weights speak ~3 frames (75 ms) per phoneme, like real speech: ~13 characters a second.
    assert 3.0 < seconds < 9.0, seconds


def test_logs_say_loudly_that_the_weights_are_dummy(serve_run):
    assert "DUMMY RANDOM WEIGHTS" in serve_run.read_text()
