"""Shared fixtures: tiny model releases on disk, one Ray Serve instance per test session."""
import os

# The tests are the runtime environment of in-process models: nothing may reach the hub. Set
# before anything imports huggingface_hub, which reads it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import dataclass
from pathlib import Path
import copy
import socket

import pytest
import yaml

from fake_hub import FakeHub, Published, build_published, install_hub

from tiny_release import save_release

REPO_ROOT = Path(__file__).resolve().parent.parent
V1_VOICES = ["af_heart", "af_bella", "am_adam", "bf_emma", "ef_dora"]
V0_19_VOICES = ["af", "af_bella", "am_adam", "bf_emma"]


@dataclass(frozen=True)
class Release:
    root: Path
    configs: dict[str, str]  # version -> tiny config.json


@pytest.fixture(scope="session")
def release(tmp_path_factory) -> Release:
    from serve_app.versions import V0_19, V1_0

    root = tmp_path_factory.mktemp("kokoro-models")
    return Release(root, {
        "v1.0": str(save_release(V1_0, root, V1_VOICES, seed=1)),
        "v0.19": str(save_release(V0_19, root, V0_19_VOICES, seed=2)),
    })


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Published:
    """The releases the fake hub serves (tests/fake_hub.py)."""
    return build_published(tmp_path_factory.mktemp("hub-release"))


@pytest.fixture
def hub(tmp_path, published, monkeypatch) -> FakeHub:
    """The Hugging Face hub, faked: the one part of the world outside that tests replace."""
    return install_hub(tmp_path / "hub", published, monkeypatch)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


METRICS_PORT: list[int] = []  # the session Ray's metrics export port, once it runs


@pytest.fixture(scope="session")
def serve_url():
    """One Ray + Serve for the whole session (starting Ray costs seconds); tests deploy configs into it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Autoscaling tests need load metrics within a fraction of a second, not every 10 s.
    os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.2")
    # The proxy bounds client request ids as a deployment should (serve_app/ingress/request_ids.py).
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH",
                          "serve_app.ingress.request_ids:proxy_middlewares")
    from ray import serve
    import ray

    METRICS_PORT.append(free_port())  # Prometheus export of Ray's and the app's metrics (tests/test_metrics.py)
    ray.init(num_cpus=8, include_dashboard=False, object_store_memory=500 * 2**20, log_to_driver=False,
             _metrics_export_port=METRICS_PORT[0])
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def project_app_config(**args) -> dict:
    """serve_config.yaml's application, with its args replaced: tests run the shipped deployment settings."""
    config = yaml.safe_load((REPO_ROOT / "serve_config.yaml").read_text())
    app = copy.deepcopy(config["applications"][0])
    # The session's Ray counts 8 CPUs on a 2-core machine: `node` threads would oversubscribe it 4 times.
    # Compiling takes a minute a replica here: only the tests about it compile (tests/test_compiled_serving.py).
    app["args"] = {**app["args"], "cpu_threads": None, "compile": "off", **args}
    versions = app["args"]["versions"]
    from serve_app.versions import VERSIONS

    wanted = {"SpeechIngress"} | {VERSIONS[v].deployment for v in versions}
    app["deployments"] = [d for d in app["deployments"] if d["name"] in wanted]
    return app


def deploy(app: dict, timeout_s: int = 120) -> None:
    """Deploy an application config the way `serve deploy` and KubeRay do, and wait until it runs."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    client = _get_global_client()
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))
    client._wait_for_application_running(app["name"], timeout_s=timeout_s)


@pytest.fixture(scope="module")
def both_versions(serve_url, release) -> str:
    """Both versions served from the tiny local releases through the strict loader."""
    deploy(project_app_config(model_root=str(release.root), weights="local",
                              versions=["v1.0", "v0.19"], configs=release.configs))
    return serve_url


# Test modules that start Ray themselves (their own cluster or `serve run`), without `serve_url`.
OWN_RAY_MODULES = {"test_multinode.py", "test_serve_run_cli.py"}


def pytest_collection_modifyitems(items) -> None:
    """Mark every test `ray`, `slow` or `fast`, so `pytest -m fast` runs the quick tier without Ray.
    The tests without Ray run first: their failures show soonest, and the session's Ray (started by
    the first test that needs it, kept to the end) does not share the cores with them. Then the tests
    on `both_versions`, from every module, back to back: one deployment serves them all."""
    for item in items:
        if "serve_url" in getattr(item, "fixturenames", ()) or item.path.name in OWN_RAY_MODULES:
            item.add_marker(pytest.mark.ray)
        elif item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)
    items.sort(key=lambda item: (item.get_closest_marker("ray") is not None,  # stable: file order otherwise
                                 "both_versions" not in getattr(item, "fixturenames", ())))
