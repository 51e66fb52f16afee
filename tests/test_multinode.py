"""A real two-node Ray cluster on this machine, deployed the way KubeRay deploys: `serve deploy`.

The head is started like the RayService's head (num-gpus 0, the head-only `kokoro_ingress`
resource, both read from deploy/make_rayservice.py); a worker declares GPUs it does not have.
The config is serve_config.yaml with deploy/gpu_overrides.yaml merged (what the manifest embeds),
pointed at the tiny releases. Checked: model replicas land on the GPU node, the ingress on the
head, and requests to both versions are served (torch sees no CUDA there, so the models run on CPU).

This cluster is separate from the session's Ray: everything against it runs in subprocesses
with its addresses given explicitly, in its own --temp-dir (so `ray.init()` elsewhere on the
machine does not find it), and teardown kills only the processes it started; never `ray stop`,
which would stop every Ray on the machine.
"""
from dataclasses import dataclass
from pathlib import Path
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import pytest
import yaml

from serve_app.config_check import validate_serve_config
from serve_app.versions import VERSIONS

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
APP = "kokoro"
INGRESS = "SpeechIngress"
MODELS = {name: (version.deployment, version.default_voice) for name, version in VERSIONS.items()}
WORKER_GPUS = 2
START_TIMEOUT_S = 90
DEPLOY_TIMEOUT_S = 150


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_rayservice", ROOT / "deploy" / "make_rayservice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


# --- processes of this cluster only --------------------------------------------------------

def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id) of every live process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
            if fields[0] != "Z":
                table[int(entry)] = (int(fields[1]), int(fields[3]))
    return table


def _cluster_pids(sessions: list[int]) -> set[int]:
    """Every live process in the given sessions, and all their descendants.

    Ray's daemons and workers stay in the session of the `ray start` that made them (workers
    get process groups of their own), also after their parent died and init adopted them."""
    table = _proc_table()
    pids = {pid for pid, (_, sid) in table.items() if sid in sessions}
    grown = True
    while grown:
        children = {pid for pid, (ppid, _) in table.items() if ppid in pids} - pids
        pids |= children
        grown = bool(children)
    pids.discard(os.getpid())
    return pids


def _kill(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stop_processes(sessions: list[int], grace_s: float = 8) -> set[int]:
    """SIGTERM this cluster's processes, SIGKILL whatever is left after grace_s; returns survivors."""
    pids = _cluster_pids(sessions)
    _kill(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (alive := pids & _proc_table().keys()) and time.monotonic() < deadline:
        time.sleep(0.25)
    _kill(alive | _cluster_pids(sessions), signal.SIGKILL)
    time.sleep(0.5)
    return (pids | _cluster_pids(sessions)) & _proc_table().keys()


# --- the cluster -------------------------------------------------------------------------

@dataclass
class Cluster:
    temp_dir: Path
    gcs_address: str
    dashboard: str       # http://127.0.0.1:<port>, where `serve deploy` and the state API go
    env: dict[str, str]  # environment for CLI calls against this cluster

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / args[0]), *args[1:]], env=self.env, capture_output=True,
                              text=True, timeout=timeout, cwd=self.temp_dir)


def _ray_start(args: list[str], env: dict, log: Path, sessions: list[int]) -> None:
    # Own session: Ray's processes stay in it, and teardown kills that session. Output to a
    # file, not a pipe: the daemons inherit it and would keep a pipe open.
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "ray"), "start", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    sessions.append(proc.pid)
    started = time.monotonic()
    try:
        rc = proc.wait(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        rc = None
    assert rc == 0, f"ray start {' '.join(args)} -> {rc}:\n{log.read_text()[-3000:]}"
    print(f"ray start {args[0]} ... in {time.monotonic() - started:.1f} s")


def head_start_params() -> tuple[str, dict]:
    """num-gpus and custom resources of the RayService's head, as make_rayservice.py writes them."""
    head = gen.rayservice(gen.gpu_serve_config())["spec"]["rayClusterConfig"]["headGroupSpec"]
    resources = {name: float(amount) for name, amount in head.get("resources", {}).items()}
    return head["rayStartParams"]["num-gpus"], resources


@pytest.fixture(scope="module")
def cluster():
    # Short: Ray puts unix sockets under it (107-character limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="kmn", dir="/tmp"))
    port, dashboard_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "KOKORO_"))}  # nothing of the session's Ray, no arg overrides
    # Explicitly off: once any local `ray.init()` has written ~/.ray/auth_token, `ray start --head`
    # turns token auth on by itself, while `ray start --address` and the CLIs do not present the
    # token (the worker then fails with InvalidAuthToken).
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    common = ["--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir), "--disable-usage-stats",
              "--object-store-memory", str(100 * 2**20), "--min-worker-port", "0", "--max-worker-port", "0",
              "--dashboard-agent-listen-port", "{agent_port}", "--runtime-env-agent-port", "0"]
    head_gpus, head_resources = head_start_params()
    sessions: list[int] = []
    try:
        _ray_start(["--head", "--port", str(port), "--num-cpus", "2", "--num-gpus", head_gpus,
                    "--resources", json.dumps(head_resources), "--include-dashboard", "true",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
                    "--ray-client-server-port", str(free_port()),
                    *[a.format(agent_port=free_port()) for a in common]],
                   env, temp_dir / "head.log", sessions)
        gcs_address = f"127.0.0.1:{port}"
        _ray_start(["--address", gcs_address, "--num-cpus", "4", "--num-gpus", str(WORKER_GPUS),
                    "--include-log-monitor", "false", *[a.format(agent_port=free_port()) for a in common]],
                   env, temp_dir / "worker.log", sessions)
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        cli_env = {**env, "RAY_ADDRESS": gcs_address, "RAY_DASHBOARD_ADDRESS": dashboard}
        yield Cluster(temp_dir, gcs_address, dashboard, cli_env)
    finally:
        survivors = _stop_processes(sessions)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not survivors, f"processes of the test cluster still alive: {survivors}"


def serve_details(cluster: Cluster) -> dict:
    r = httpx.get(f"{cluster.dashboard}/api/serve/applications/", timeout=30)
    r.raise_for_status()
    return r.json()


@pytest.fixture(scope="module")
def deployed(cluster, release, tmp_path_factory):
    """The GPU serve config, pointed at the tiny releases, deployed with `serve deploy`."""
    config = gen.gpu_serve_config()  # serve_config.yaml + deploy/gpu_overrides.yaml
    http_port = free_port()
    config["http_options"] = {**config["http_options"], "host": "127.0.0.1", "port": http_port}
    (app,) = config["applications"]
    app["args"] = {**app["args"], "model_root": str(release.root), "weights": "local",
                   "versions": list(MODELS), "configs": release.configs, "compile": "off"}
    validate_serve_config(config)
    path = tmp_path_factory.mktemp("multinode") / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    started = time.monotonic()
    result = cluster.cli("serve", "deploy", str(path), "--address", cluster.dashboard)
    assert result.returncode == 0, result.stdout + result.stderr
    deadline = started + DEPLOY_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        status = serve_details(cluster).get("applications", {}).get(APP, {})
        if status.get("status") in ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY"):
            break
        time.sleep(1)
    assert status and status["status"] == "RUNNING", json.dumps(status, indent=1)[-4000:]
    print(f"serve deploy -> RUNNING in {time.monotonic() - started:.1f} s")
    return config, f"http://127.0.0.1:{http_port}"


def ray_nodes(cluster: Cluster) -> list[dict]:
    result = cluster.cli("ray", "list", "nodes", "--format", "json", "--address", cluster.dashboard)
    assert result.returncode == 0, result.stderr
    return [n for n in json.loads(result.stdout) if n["state"] == "ALIVE"]


def test_cluster_has_a_cpu_head_and_a_gpu_worker(cluster):
    nodes = ray_nodes(cluster)
    assert len(nodes) == 2
    (head,) = [n for n in nodes if n["is_head_node"]]
    (worker,) = [n for n in nodes if not n["is_head_node"]]
    assert head["resources_total"].get("GPU", 0) == 0 and head["resources_total"].get("kokoro_ingress", 0) >= 2
    assert worker["resources_total"]["GPU"] == WORKER_GPUS and "kokoro_ingress" not in worker["resources_total"]


def test_models_run_on_the_gpu_node_and_the_ingress_on_the_head(cluster, deployed):
    config, _ = deployed
    nodes = ray_nodes(cluster)
    head_id = next(n["node_id"] for n in nodes if n["is_head_node"])
    gpu_id = next(n["node_id"] for n in nodes if n["resources_total"].get("GPU", 0) > 0)
    details = serve_details(cluster)["applications"][APP]["deployments"]
    wanted = {d["name"]: d for d in config["applications"][0]["deployments"]}

    ingress = [r for r in details[INGRESS]["replicas"] if r["state"] == "RUNNING"]
    assert len(ingress) == wanted[INGRESS]["num_replicas"] == 2
    assert {r["node_id"] for r in ingress} == {head_id}
    for version, (name, _) in MODELS.items():
        assert wanted[name]["ray_actor_options"]["num_gpus"] > 0  # the overrides ask for a GPU share
        replicas = [r for r in details[name]["replicas"] if r["state"] == "RUNNING"]
        assert len(replicas) == wanted[name]["autoscaling_config"]["min_replicas"]
        assert {r["node_id"] for r in replicas} == {gpu_id}, (version, replicas)

    # Ray holds the GPU shares the model replicas asked for on the worker.
    actors = cluster.cli("ray", "list", "actors", "--detail", "--format", "json", "--limit", "1000",
                         "--filter", "state=ALIVE", "--address", cluster.dashboard)
    assert actors.returncode == 0, actors.stderr
    gpu_actors = [a for a in json.loads(actors.stdout) if a.get("required_resources", {}).get("GPU")]
    for name, _ in MODELS.values():
        (actor,) = [a for a in gpu_actors if a["class_name"].endswith(f":{name}")]
        assert actor["required_resources"]["GPU"] == wanted[name]["ray_actor_options"]["num_gpus"]
        assert actor["node_id"] == gpu_id
    assert len(gpu_actors) == len(MODELS)  # nothing else holds a GPU share (the ingress in particular)

    # proxy_location EveryNode: both nodes take HTTP traffic, as every pod behind KubeRay's serve service.
    proxies = serve_details(cluster)["proxies"]
    assert {p["node_id"] for p in proxies.values() if p["status"] == "HEALTHY"} == {head_id, gpu_id}


@pytest.mark.parametrize("version", list(MODELS))
def test_both_versions_serve_audio_from_the_gpu_node(deployed, version):
    _, url = deployed
    _, voice = MODELS[version]
    # New connections each time: the proxies of both nodes listen on the port (SO_REUSEPORT).
    for _ in range(2):
        r = httpx.post(f"{url}/v1/audio/speech", timeout=120,
                       json={"model": version, "input": "Hello from the GPU node.", "voice": voice,
                             "response_format": "pcm"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/pcm"
        assert len(r.content) > 2 * 24000 * 0.5 and len(r.content) % 2 == 0  # over half a second


def test_replica_logs_say_the_model_runs_on_cpu(cluster, deployed):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # what the replicas on this machine can use
    logs = [p for p in cluster.temp_dir.glob("session_*/logs/**/*")
            if p.is_file() and p.suffix in (".log", ".err", ".out")]
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    for version in MODELS:
        assert f"{version} replica ready on {device}" in text
