"""Start the service for the benchmark (`serve run` with dummy weights) and stop it afterwards."""
from pathlib import Path
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import yaml


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def check_port_free(url: str) -> None:
    if answers(url):
        raise RuntimeError(f"a service already answers at {url}; stop it, or benchmark it with --no-start-service")


def config_for_versions(config_path: str, versions: list[str]) -> dict:
    """The Serve config with only `versions` loaded: the app's `versions` arg, and no deployment
    settings for the other versions' model deployments (Serve rejects settings for absent ones)."""
    from serve_app.versions import VERSIONS

    unknown = set(versions) - set(VERSIONS)
    if unknown or not versions:
        raise ValueError(f"versions {sorted(unknown) or versions} unknown; this build serves {sorted(VERSIONS)}")
    dropped = {version.deployment for name, version in VERSIONS.items() if name not in versions}
    config = yaml.safe_load(Path(config_path).read_text())
    for app in config["applications"]:
        if app.get("import_path") == "serve_app.app:build_app":
            app["args"] = {**app.get("args", {}), "versions": list(versions)}
            app["deployments"] = [d for d in app.get("deployments", []) if d["name"] not in dropped]
    return config


def with_model_settings(config: dict, max_batch_size: int | None = None, replicas: int | None = None,
                        cpus: float | None = None, cpu_threads: int | str | None = None,
                        compile: str | None = None, compile_cache_dir: str | None = None) -> dict:
    """The config with the model replicas' batch size, count, CPUs, torch threads, vocoder compile
    mode or inductor cache replaced (None: as configured)."""
    from serve_app.versions import VERSIONS

    models = {version.deployment for version in VERSIONS.values()}
    for app in config["applications"]:
        if app.get("import_path") != "serve_app.app:build_app":
            continue
        if max_batch_size is not None:
            batching = app.setdefault("args", {}).setdefault("batching", {})
            batching["max_batch_size"] = max_batch_size
        for arg, value in (("cpu_threads", cpu_threads), ("compile", compile),
                           ("compile_cache_dir", compile_cache_dir)):
            if value is not None:
                app.setdefault("args", {})[arg] = value
        for deployment in app.get("deployments", []):
            if deployment["name"] not in models:
                continue
            if replicas is not None:
                deployment.pop("autoscaling_config", None)
                deployment["num_replicas"] = replicas
            if cpus is not None:
                deployment.setdefault("ray_actor_options", {})["num_cpus"] = cpus
    return config


def model_replicas(config: dict) -> int:
    """How many model replicas the config starts (an autoscaled deployment: its minimum, at least 1)."""
    from serve_app.versions import VERSIONS

    models = {version.deployment for version in VERSIONS.values()}
    count = 0
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            if deployment["name"] in models:
                replicas = deployment.get("num_replicas")
                if not isinstance(replicas, int):
                    replicas = max(1, (deployment.get("autoscaling_config") or {}).get("min_replicas", 1))
                count += replicas
    return count


# A model replica's last start-up line (serve_app/model/replica.py): its vocoder compiled, or eager.
READY_LINE = re.compile(r"replica ready on \S+ with .*, vocoder (?:compiled \(([\w-]+)\) in ([\d.]+) s|eager)")


def replica_vocoders(log_text: str) -> list[float | None]:
    """Per model replica start in a `serve run` log, in order: its compile seconds, or None (eager)."""
    return [float(m.group(2)) if m.group(1) else None for m in READY_LINE.finditer(log_text)]


class ServeProcess:
    """`serve run` of `config` (a dict) with KOKORO_WEIGHTS=dummy in its own process group, on a
    fresh local Ray; `env` sets (or, with None, removes) more of its environment variables.

    The config decides the port: `url` must point at it. Stopping: SIGINT to `serve run` (it
    shuts Serve down and its Ray with it), then SIGTERM and SIGKILL to the whole group.
    `up_s`: seconds from starting `serve run` until /health answered 200.
    """

    def __init__(self, config: dict, url: str, log_path: Path, startup_timeout_s: float = 600,
                 env: dict[str, str | None] | None = None):
        check_port_free(url)
        self.config_path = log_path.with_suffix(".yaml")
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.url, self.log_path, self.startup_timeout_s = url, log_path, startup_timeout_s
        self.env = env or {}
        self.process: subprocess.Popen | None = None
        self.started: float | None = None  # time.monotonic() when `serve run` started
        self.up_s: float | None = None

    def __enter__(self) -> "ServeProcess":
        serve_cli = Path(sys.executable).with_name("serve")
        # RAY_DEDUP_LOGS=0: every replica's start-up lines reach the log (replica_vocoders counts them).
        env = {**os.environ, "KOKORO_WEIGHTS": "dummy", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_DEDUP_LOGS": "0", **self.env}
        env = {key: value for key, value in env.items() if value is not None}
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(serve_cli) if serve_cli.exists() else "serve", "run", "--address", "local", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        self.up_s = time.monotonic() - self.started
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while not answers(self.url):
            if self.process.poll() is not None:
                raise RuntimeError(f"`serve run` exited with {self.process.returncode}; see {self.log_path}:\n"
                                   + self.log_tail())
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer from {self.url}/health after {self.startup_timeout_s} s; "
                                   f"see {self.log_path}")
            time.sleep(0.5)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def vocoders(self, expected: int = 1, wait_s: float = 15) -> list[float | None]:
        """replica_vocoders of this start's log, once `expected` replicas have logged their start (Ray
        forwards replicas' lines to `serve run` within a second or so) or after wait_s."""
        deadline = time.monotonic() + wait_s
        while len(found := replica_vocoders(self.log_path.read_text(errors="replace"))) < expected \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        return found

    def stop(self) -> None:
        if self.process is None:
            return
        group = self.process.pid  # start_new_session: the group's id is the leader's pid
        steps = [(lambda: self.process.send_signal(signal.SIGINT), 60),
                 (lambda: os.killpg(group, signal.SIGTERM), 15),
                 (lambda: os.killpg(group, signal.SIGKILL), 5)]
        for send, wait_s in steps:
            try:
                send()
            except ProcessLookupError:
                pass
            if _group_gone(group, self.process, wait_s):
                break
        self.process = None


def _group_gone(group: int, leader: subprocess.Popen, wait_s: float) -> bool:
    """Wait up to wait_s for the leader and then every process of its group to exit."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if leader.poll() is not None:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return True
        time.sleep(0.5)
    return False
