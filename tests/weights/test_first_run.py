"""`python -m serve_app.first_run`, the preflight of `make serve`, and what Serve does without weights.

The hub is the world outside: in-process tests use tests/fake_hub.py's `hub` (for the downloads)
and `probe` below (for the preflight's reachability check); the subprocess tests run the real
huggingface_hub client against a local socket that never answers.
"""
from pathlib import Path
from types import SimpleNamespace
import os
import socket
import subprocess
import sys
import time

from huggingface_hub.errors import LocalEntryNotFoundError
import httpx2
import pytest
import yaml

from fake_hub import (
    V0_REPO,
    V0_WEIGHTS,
    V1_REPO,
    V1_WEIGHTS,
    files_under,
    v1_voice,
)
from serve_app.versions import V0_19, V1_0
from serve_app.weights import download, first_run

from conftest import project_app_config

pytestmark = pytest.mark.slow  # loads models or runs subprocesses: seconds a test

ROOT = Path(__file__).resolve().parents[2]
FULL_LAYOUT = ({"models/v1_0/kokoro-v1_0.pth", "models/v0_19/kokoro-v0_19.pth"}
               | {f"voices/v1_0/{n}.pt" for n in V1_0.voices} | {f"voices/v0_19/{n}.pt" for n in V0_19.voices})
HUB_UNREACHABLE = LocalEntryNotFoundError(  # what hf_hub_download raises when it cannot reach the hub
    "An error happened while trying to locate the file on the Hub and we cannot find the requested files "
    "in the local cache. Please check your connection and try again or make sure your Internet connection is on.")


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    for var in ("KOKORO_WEIGHTS", "KOKORO_MODEL_ROOT", "KOKORO_API_KEY", "HF_HUB_ETAG_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(download.hub_constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def probe(monkeypatch):
    """Stands in for the preflight's one HEAD to the hub: records (url, timeout), raises `error`."""
    state = SimpleNamespace(calls=[], error=None)

    def head(url, timeout=None, **kwargs):
        state.calls.append((url, timeout))
        if state.error is not None:
            raise state.error

    monkeypatch.setattr(first_run, "get_hf_file_metadata", head)
    return state


def write_config(path: Path, **args) -> Path:
    """serve_config.yaml's application with these args, plus one application of another project."""
    other = {"name": "other", "route_prefix": "/other", "import_path": "elsewhere.app:build", "args": {"weights": "x"}}
    path.write_text(yaml.safe_dump({"applications": [project_app_config(**args), other]}))
    return path


def tiny_config(tmp_path, published, root, versions=("v1.0", "v0.19")) -> Path:
    configs = {"v1.0": str(published.v1_config), "v0.19": str(published.v0_config)}
    return write_config(tmp_path / "serve_config.yaml", model_root=str(root), weights="local",
                        versions=list(versions), configs={v: configs[v] for v in versions})


def one_error(err: str, root: Path) -> None:
    """The failure is one message that names both ways forward."""
    assert err.count("error:") == 1, err
    assert f"python -m serve_app.download --model-root {root} --versions" in err
    assert "copy the release files by hand" in err
    assert "KOKORO_WEIGHTS=dummy make serve" in err


@pytest.mark.parametrize("how", ["config", "env"])
def test_dummy_weights_need_nothing(how, hub, probe, tmp_path, monkeypatch):
    root = tmp_path / "models"
    if how == "env":
        monkeypatch.setenv("KOKORO_WEIGHTS", "dummy")
    config = write_config(tmp_path / "c.yaml", model_root=str(root), weights="dummy" if how == "config" else "local")
    assert first_run.main([str(config)]) == 0
    assert hub.calls == [] and probe.calls == []
    assert not root.exists()


def test_effective_config_carries_the_shells_overrides_to_a_running_cluster(tmp_path, monkeypatch):
    """Serve builds the app in a Ray worker with the cluster's environment and directory, not this shell's:
    the config `make serve` deploys carries the overrides (runtime_env wins over the cluster's environment)
    and the paths as resolved here."""
    from serve_app.config_check import validate_serve_config

    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path / "c.yaml", model_root="./models", weights="local")
    monkeypatch.setenv("KOKORO_WEIGHTS", "dummy")
    out = tmp_path / "build" / "serve_config.yaml"
    assert first_run.main([str(config), "--effective-config", str(out)]) == 0
    written = yaml.safe_load(out.read_text())
    validate_serve_config(written)
    (kokoro, other), (_, other_before) = written["applications"], yaml.safe_load(config.read_text())["applications"]
    assert kokoro["runtime_env"]["env_vars"] == {**project_app_config()["runtime_env"]["env_vars"],
                                                 "KOKORO_WEIGHTS": "dummy"}
    assert kokoro["args"]["weights"] == "dummy" and kokoro["args"]["model_root"] == str(tmp_path / "models")
    assert other == other_before  # another project's application is left alone

    monkeypatch.delenv("KOKORO_WEIGHTS")
    monkeypatch.setenv("KOKORO_MODEL_ROOT", "elsewhere")
    (kokoro, _) = first_run.effective_config(config)["applications"]
    assert kokoro["runtime_env"]["env_vars"]["KOKORO_MODEL_ROOT"] == str(tmp_path / "elsewhere")
    assert "KOKORO_WEIGHTS" not in kokoro["runtime_env"]["env_vars"] and kokoro["args"]["weights"] == "local"


def test_files_in_place_exit_at_once_without_loading_them(tmp_path):
    """Only looked for: these 'weights' are not even a checkpoint, and torch is never imported."""
    root = tmp_path / "models"
    for version in (V1_0, V0_19):
        version.weights_path(root).parent.mkdir(parents=True)
        version.weights_path(root).write_bytes(b"not loaded here")
        version.voices_dir(root).mkdir(parents=True)
        (version.voices_dir(root) / f"{version.voices[0]}.pt").write_bytes(b"nor this")
    config = write_config(tmp_path / "c.yaml", model_root=str(root), weights="local")
    code = ("import sys; from serve_app.weights.first_run import main; rc = main(sys.argv[1:]); "
            "print('torch imported:', 'torch' in sys.modules); sys.exit(rc)")
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}  # no hub, should it be asked
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code, str(config)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    assert "weights in place for v1.0, v0.19" in result.stdout
    assert "torch imported: False" in result.stdout


def test_missing_files_are_downloaded_into_the_layout_and_verified(hub, probe, published, tmp_path, capsys):
    root = tmp_path / "models"
    assert first_run.main([str(tiny_config(tmp_path, published, root))]) == 0

    assert probe.calls == [(f"https://huggingface.co/{V1_REPO}/resolve/main/{V1_WEIGHTS}", first_run.PROBE_TIMEOUT_S)]
    assert len(hub.calls) == len(set(hub.calls)) == 2 + len(V1_0.voices) + len(V0_19.voices)
    assert files_under(root) == FULL_LAYOUT
    assert (root / "models/v0_19/kokoro-v0_19.pth").read_bytes() == published.files[V0_REPO, V0_WEIGHTS].read_bytes()
    heart = published.files[V1_REPO, v1_voice("af_heart")]
    assert (root / "voices/v1_0/af_heart.pt").read_bytes() == heart.read_bytes()
    out = capsys.readouterr().out
    assert f"{V1_WEIGHTS} -> {root / 'models/v1_0/kokoro-v1_0.pth'}" in out  # which files, as they come
    assert "v1.0: OK" in out and "v0.19: OK" in out  # verified by the strict loader
    assert "v0.19: 12 file(s) downloaded and verified" in out

    hub.calls.clear()
    assert first_run.main([str(tiny_config(tmp_path, published, root))]) == 0  # then served offline
    assert hub.calls == [] and len(probe.calls) == 1


def test_only_what_is_missing_is_fetched(hub, probe, published, tmp_path):
    root = tmp_path / "models"
    V1_0.weights_path(root).parent.mkdir(parents=True)
    V1_0.weights_path(root).write_bytes(published.files[V1_REPO, V1_WEIGHTS].read_bytes())
    assert first_run.main([str(tiny_config(tmp_path, published, root, versions=["v1.0"]))]) == 0
    assert hub.calls == [(V1_REPO, "main", v1_voice(n)) for n in V1_0.voices]


def test_unreachable_hub_stops_at_once_naming_both_ways_forward(hub, probe, published, tmp_path, capsys):
    probe.error = httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")
    root = tmp_path / "models"
    started = time.monotonic()
    assert first_run.main([str(tiny_config(tmp_path, published, root))]) == first_run.EXIT_NOT_READY == 2
    assert time.monotonic() - started < 5
    assert hub.calls == []  # no download tried: huggingface_hub would retry for a long while
    out, err = capsys.readouterr()
    one_error(err, root)
    assert "--versions v1.0 v0.19" in err
    assert "https://huggingface.co cannot be reached (ConnectError: [Errno -3]" in err
    assert str(V0_19.weights_path(root)) in err and f"{V1_0.voices_dir(root)}/<voice>.pt" in err
    assert files_under(root) == set()


@pytest.mark.parametrize("error", [HUB_UNREACHABLE, OSError("Connection reset by peer")])
def test_hub_lost_before_the_files_stops_with_one_message(error, hub, probe, published, tmp_path, capsys):
    hub.fail = lambda repo, filename: error
    root = tmp_path / "models"
    started = time.monotonic()
    assert first_run.main([str(tiny_config(tmp_path, published, root))]) == 2
    assert time.monotonic() - started < 5
    assert hub.calls == [(V1_REPO, "main", V1_WEIGHTS)]
    err = capsys.readouterr().err
    one_error(err, root)
    assert f"cannot download {V1_WEIGHTS} of Kokoro v1.0" in err and type(error).__name__ in err
    assert files_under(root) == set()


def test_a_bad_downloaded_file_fails_verification(hub, probe, published, tmp_path, capsys):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(published.files[V1_REPO, V1_WEIGHTS].read_bytes()[: 1 << 16])
    hub.publish(V1_REPO, "main", V1_WEIGHTS, truncated)
    root = tmp_path / "models"
    assert first_run.main([str(tiny_config(tmp_path, published, root, versions=["v1.0"]))]) == 2
    err = capsys.readouterr().err
    one_error(err, root)
    assert "v1.0 files in" in err and "fail verification" in err and "truncated or corrupt" in err


def test_real_client_against_a_hub_that_never_answers(tmp_path):
    """The real huggingface_hub: connects, then waits for an answer that never comes."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes connections; nobody ever reads or answers
    root = tmp_path / "models"
    config = write_config(tmp_path / "c.yaml", model_root=str(root), weights="local")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "KOKORO_WEIGHTS", "KOKORO_MODEL_ROOT")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{silent.getsockname()[1]}", HF_HOME=str(tmp_path / "hf"),
               HF_HUB_ETAG_TIMEOUT="2")
    started = time.monotonic()
    with silent:
        result = subprocess.run([sys.executable, "-m", "serve_app.first_run", str(config)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert 2 <= elapsed < 15, elapsed
    one_error(result.stderr, root)
    assert "cannot be reached" in result.stderr
    assert files_under(root) == set()


def test_model_without_weights_is_a_failed_deployment_not_a_retry_loop(serve_url, tmp_path):
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from serve_app.model_deployments import KokoroV1Model

    assert KokoroV1Model._deployment_config.max_constructor_retry_count == 3
    app = project_app_config(model_root=str(tmp_path / "empty"), weights="local", versions=["v1.0"])
    app.update(name="no-weights", route_prefix="/no-weights")
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))
    try:
        deadline = time.monotonic() + 120
        while (status := serve.status().applications.get(app["name"])) is None or status.status != "DEPLOY_FAILED":
            assert time.monotonic() < deadline, f"not DEPLOY_FAILED after 120 s: {status}"
            time.sleep(1)
        model = status.deployments.get("KokoroV1Model")
        assert model is not None and model.status == "DEPLOY_FAILED", status
        assert "failed to start 3 times in a row" in model.message
        assert "does not exist" in model.message and str(V1_0.weights_path(tmp_path / "empty")) in model.message
        time.sleep(3)
        assert serve.status().applications[app["name"]].status == "DEPLOY_FAILED"  # and it stays so
    finally:
        serve.delete(app["name"])
