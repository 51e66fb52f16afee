"""The preflight of `make serve`: a first `serve run` either serves, or never starts.

    python -m serve_app.first_run serve_config.yaml

Reads the args of every application in the config that builds this project's app, resolved as
the app resolves them (env KOKORO_WEIGHTS and KOKORO_MODEL_ROOT override). With dummy weights,
or with every served version's weights file and voices in the layout, there is nothing to do:
it exits 0 at once (the files are not loaded here; the replicas load them strictly). Otherwise
it downloads the missing files from the Hugging Face hub with serve_app.weights.download, verifies
them, and exits 0, so that `serve run` then serves them offline. When the hub cannot be
reached, or a download or its verification fails, it stops with exit code 2 and one message
naming the ways forward: the download command (or copying the files by hand), or dummy weights.

With --effective-config PATH it then writes the config `serve run` is to deploy: the given one with,
for each such application, the args as resolved here (overrides applied, absolute paths) and the
KOKORO_WEIGHTS and KOKORO_MODEL_ROOT set in this shell carried in its runtime_env (effective_config).

Before downloading it sends the hub one HEAD with a short timeout (HF_HUB_ETAG_TIMEOUT, else
5 s) and no retries: huggingface_hub itself retries an unreachable hub with backoff before it
gives up (23 s for a refused connection, minutes for a hub that never answers).
"""
from pathlib import Path
from typing import NamedTuple
import argparse
import json
import os
import shlex
import sys

from huggingface_hub import constants as hub_constants
from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError
import yaml

from ..config import ENV_OVERRIDES, resolve_args
from ..errors import ModelFileError
from ..versions import VERSIONS, ModelVersion
from .download import DownloadError, download_version, release_files, verify_version

APP_IMPORT_PATH = "serve_app.app:build_app"
PROBE_TIMEOUT_S = 5.0
EXIT_NOT_READY = 2


class NotReady(Exception):
    """Weights to serve are missing and cannot be put in place now."""


class Wanted(NamedTuple):
    """One version served from local files."""

    root: Path
    version: ModelVersion
    config_path: str | None  # the config.json the app uses instead of the packaged one


def read_config(config_file: Path) -> dict:
    return yaml.safe_load(Path(config_file).read_text("utf-8")) or {}


def kokoro_apps(config: dict) -> list[dict]:
    """The config's applications that build this project's app."""
    return [app for app in config.get("applications") or [] if app.get("import_path") == APP_IMPORT_PATH]


def served_from_files(config_file: Path) -> list[Wanted]:
    """Every version the config's Kokoro applications serve from local files (not dummy)."""
    wanted = {}
    for app in kokoro_apps(read_config(config_file)):
        args = resolve_args(app.get("args") or {})
        if args.weights == "dummy":
            print(f"first run: application {app.get('name')!r} uses dummy weights: nothing to fetch", flush=True)
            continue
        for name in args.versions:
            wanted.setdefault((Path(args.model_root), name), args.configs.get(name))
    return [Wanted(root, VERSIONS[name], path) for (root, name), path in wanted.items()]


def effective_config(config_file: Path) -> dict:
    """The config to deploy: each Kokoro application with its args as resolved here (this shell's
    overrides applied, paths absolute; the API key left out), and the overrides set in this shell
    (KOKORO_WEIGHTS, KOKORO_MODEL_ROOT: config.ENV_OVERRIDES), as resolved, in its runtime_env.

    Serve builds the app, and runs its replicas, in Ray workers that have the raylet's environment
    and working directory plus the application's runtime_env. A cluster that `serve run` starts
    inherits this shell; one started before it has neither this shell's variables nor its directory.
    runtime_env's env_vars also win over the raylet's own (a KubeRay pod's KOKORO_WEIGHTS)."""
    config = read_config(config_file)
    set_here = {key: var for key, var in ENV_OVERRIDES.items() if os.environ.get(var)}
    for app in kokoro_apps(config):
        args = app.get("args") or {}
        # Never write a key from the environment into a file that Serve shows (`serve config`).
        pinned = resolve_args(args).model_dump(include=(set(args) | set(ENV_OVERRIDES)) - {"api_key"})
        app["args"] = {**args, **pinned}
        if set_here:
            env_vars = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
            env_vars.update({var: str(pinned[key]) for key, var in set_here.items()})
    return config


def write_effective_config(config_file: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Written by `python -m serve_app.first_run {config_file} --effective-config {path}`: {config_file}\n"
              f"# with this shell's Kokoro overrides carried and paths made absolute. Edit {config_file}, not this.\n")
    path.write_text(header + yaml.safe_dump(effective_config(config_file), sort_keys=False), "utf-8")
    print(f"first run: {path}: {config_file} as Serve is to deploy it", flush=True)


def missing_paths(item: Wanted) -> list[str]:
    """The weights file, and the voice packs if there is none, where absent. Only looked for,
    not loaded: the replicas verify the files strictly, and loading costs seconds."""
    version, root = item.version, item.root
    paths = [] if version.weights_path(root).is_file() else [str(version.weights_path(root))]
    voices = version.voices_dir(root)
    return paths if voices.is_dir() and any(voices.glob("*.pt")) else paths + [f"{voices}/<voice>.pt"]


def probe_hub(version: ModelVersion) -> None:
    """One HEAD of the version's weights file, short timeout, no retries; NotReady if unreachable."""
    filename = release_files(version, Path("."), [])[0][0]
    url = hf_hub_url(version.hub_repo, filename, revision=version.hub_revision)
    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or PROBE_TIMEOUT_S)
    try:
        get_hf_file_metadata(url, timeout=timeout)
    except HfHubHTTPError:
        return  # the hub answered; the download says precisely what it refused
    except Exception as e:
        if hub_constants.is_offline_mode():
            raise NotReady("HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it for this step") from e
        raise NotReady(f"the Hugging Face hub at {hub_constants.ENDPOINT} cannot be reached "
                       f"({type(e).__name__}: {e})") from e


def _read_config(version: ModelVersion, path: str | None) -> dict | None:
    if path is None:
        return None  # the packaged config
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise NotReady(f"model config {path} for {version.name} cannot be read: {e}") from e


def fetch(item: Wanted) -> None:
    """Download what is missing of one version into the layout, then verify it; NotReady if not."""
    version, root = item.version, item.root
    print(f"first run: fetching Kokoro {version.name} into {root}: {version.weights_file} and "
          f"{len(version.voices)} voices from {version.hub_repo}@{version.hub_revision}", flush=True)
    try:
        written = download_version(version, root, version.hub_repo, version.hub_revision,
                                   list(version.voices), force=False)
        verify_version(version, root, _read_config(version, item.config_path))
    except DownloadError as e:
        raise NotReady(str(e).splitlines()[0]) from e
    except ModelFileError as e:
        raise NotReady(f"the {version.name} files in {root} fail verification: {e}") from e
    print(f"first run: {version.name}: {len(written)} file(s) downloaded and verified", flush=True)


def not_ready_message(reason: str, missing: list[Wanted]) -> str:
    """The one message of a failed preflight: what is missing, why, and both ways forward."""
    missing = [item for item in missing if missing_paths(item)] or missing  # a bad file is not missing
    by_root = {}
    for item in missing:
        by_root.setdefault(item.root, []).append(item.version.name)
    absent = [path for item in missing for path in missing_paths(item)]
    lines = ["error: `serve run` would not start: Kokoro weights are missing and cannot be fetched now.",
             f"  why: {reason}"]
    lines += ["  missing:", *(f"    {path}" for path in absent)] if absent else []
    lines.append("Either fetch the real weights where the Hugging Face hub is reachable:")
    lines += [f"    .venv/bin/python -m serve_app.download --model-root {shlex.quote(str(root))} "
              f"--versions {' '.join(names)}" for root, names in by_root.items()]
    lines += ["  (or copy the release files by hand into that layout: README.md, \"Weights\"),",
              "  then `make serve` again;",
              "or serve random weights, whose audio is noise:",
              "    KOKORO_WEIGHTS=dummy make serve"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app.first_run", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, nargs="?", default=Path("serve_config.yaml"),
                        help="the Serve config `serve run` is given (default: serve_config.yaml)")
    parser.add_argument("--effective-config", type=Path, metavar="PATH", help=(
        "once the weights are in place, write here the config for `serve run`: this one carrying the "
        "shell's KOKORO_WEIGHTS and KOKORO_MODEL_ROOT, which a Ray cluster started before would not see"))
    args = parser.parse_args(argv)
    try:
        wanted = served_from_files(args.config)
    except (OSError, ValueError, yaml.YAMLError) as e:  # pydantic's ValidationError is a ValueError
        print(f"error: {args.config}: {e}", file=sys.stderr)
        return 1
    missing = [item for item in wanted if missing_paths(item)]
    if missing:
        try:
            probe_hub(missing[0].version)
            for item in missing:
                fetch(item)
        except NotReady as e:
            print(not_ready_message(str(e), missing), file=sys.stderr, flush=True)
            return EXIT_NOT_READY
    elif wanted:
        print(f"first run: weights in place for {', '.join(i.version.name for i in wanted)}", flush=True)
    if args.effective_config:
        write_effective_config(args.config, args.effective_config)
    return 0

