"""`make serve` as users run it: the shipped config, dummy weights, full-size models.

Its two steps, the preflight and `serve run` of the config the preflight writes, against a Ray
cluster started before them without the override, as on a workstation that runs Ray already. Serve
builds the app and runs the replicas in that cluster's workers, with its environment, not the shell's:
`KOKORO_WEIGHTS=dummy` reaches them only because the preflight's config carries it.
"""
from pathlib import Path
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import av
import httpx
import pytest

from test_multinode import _ray_start, _stop_processes  # a cluster of this module's own, stopped alone

from conftest import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
URL = "http://127.0.0.1:8000"  # serve_config.yaml's port


@pytest.fixture(scope="module")
def serve_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-run")
    log, effective = work / "serve.log", work / "serve_config.yaml"
    temp_dir = Path(tempfile.mkdtemp(prefix="ksr", dir="/tmp"))  # short: Ray puts unix sockets under it
    # Nothing of the session's Ray and no Kokoro override in the cluster; token auth off (test_multinode.py).
    cluster_env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "KOKORO_"))}
    cluster_env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    port, sessions, process = free_port(), [], None
    try:
        _ray_start(["--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
                    "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir), "--disable-usage-stats",
                    "--object-store-memory", str(100 * 2**20), "--min-worker-port", "0", "--max-worker-port", "0",
                    "--dashboard-agent-listen-port", str(free_port()), "--runtime-env-agent-port", "0",
                    "--ray-client-server-port", str(free_port())], cluster_env, temp_dir / "head.log", sessions)
        # Not compiled: two full-size replicas would compile for minutes here (tests/test_compiled_serving.py).
        shell = {**cluster_env, "KOKORO_WEIGHTS": "dummy", "KOKORO_COMPILE": "off", "RAY_ADDRESS": f"127.0.0.1:{port}"}
        preflight = subprocess.run([sys.executable, "-m", "serve_app.first_run", "serve_config.yaml",
                                    "--effective-config", str(effective)], cwd=REPO_ROOT, env=shell,
                                   capture_output=True, text=True, timeout=60)
        assert preflight.returncode == 0, preflight.stdout + preflight.stderr
        with open(log, "w") as out:
            process = subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", str(effective)],
                                       cwd=REPO_ROOT, env=shell, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        deadline = time.monotonic() + 240
        while not _healthy():
            assert process.poll() is None, f"serve run exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not up after 240 s:\n{log.read_text()[-3000:]}"
            time.sleep(2)
        yield log
    finally:
        if process is not None:
            os.killpg(process.pid, signal.SIGTERM)  # a background serve run ignores SIGINT
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        survivors = _stop_processes(sessions)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not survivors, f"processes of the test cluster still alive: {survivors}"


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
