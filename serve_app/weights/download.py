"""Download the released Kokoro weights and voice packs from the Hugging Face hub, then check them.

    python -m serve_app.download [--model-root DIR] [--versions v1.0 v0.19] [--voices NAME ...]
        [--repo VERSION=OWNER/NAME] [--revision VERSION=REV] [--config VERSION=FILE.json] [--force]

Files land in the layout described in `serve_app.versions`. A file already there is kept
unless --force. Every version is then loaded through the service's own strict loader, so a
bad file fails here, not when a replica starts. Without hub access, copy the files by hand
into the layout and run this again: it then only verifies.
"""
from pathlib import Path
import argparse
import json
import os
import posixpath
import sys

from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from ..errors import ModelFileError
from ..versions import VERSIONS, ModelVersion

DEFAULT_MODEL_ROOT = "./kokoro-models"
NOT_ON_HUB = (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError)
COPY_CHUNK = 1 << 20


class DownloadError(Exception):
    """A file could not be fetched from the hub or written into the layout."""


def release_files(version: ModelVersion, root: Path, voices: list[str]) -> list[tuple[str, Path]]:
    """(path in the hub repo, path in the local layout) of the weights and of each voice."""
    files = [(posixpath.join(version.hub_prefix, version.weights_file), version.weights_path(root))]
    files += [(posixpath.join(version.hub_prefix, "voices", f"{name}.pt"), version.voices_dir(root) / f"{name}.pt")
              for name in voices]
    return files


def download_version(version: ModelVersion, root: Path, repo_id: str, revision: str,
                     voices: list[str], force: bool) -> list[Path]:
    """Fetch the weights and `voices` of `version` into the layout; returns the paths written.

    A file already in the layout is skipped unless `force`. Stops at the first failure.
    """
    written = []
    for filename, dest in release_files(version, Path(root), voices):
        if dest.exists() and not force:
            continue
        print(f"{version.name}: {repo_id}@{revision}: {filename} -> {dest}", flush=True)
        try:
            cached = hf_hub_download(repo_id=repo_id, filename=filename, revision=revision)
        except Exception as e:
            raise DownloadError(_hub_failure(version, Path(root), repo_id, revision, filename, e)) from e
        _copy_atomically(Path(cached), dest)
        written.append(dest)
    return written


def _copy_atomically(source: Path, dest: Path) -> None:
    # The download is complete in the hub's cache before this runs; the copy goes to a temporary
    # name beside `dest` (same file system) and is renamed over it only once complete, so `dest`
    # is never a partial file and an old `dest` survives any failure. The temporary name ends in
    # .part, so the service's `*.pt` voice listing never sees it.
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb") as src, open(tmp, "wb") as out:
            while chunk := src.read(COPY_CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except OSError as e:
        raise DownloadError(f"cannot write {dest} (from {source}): {e}") from e
    finally:
        tmp.unlink(missing_ok=True)  # already gone after a successful os.replace


def _hub_failure(version: ModelVersion, root: Path, repo_id: str, revision: str, filename: str,
                 error: Exception) -> str:
    what = (f"cannot download {filename} of Kokoro {version.name} from the Hugging Face hub repo "
            f"{repo_id} at revision {revision} ({type(error).__name__}: {error})")
    if isinstance(error, NOT_ON_HUB):
        return (f"{what}\nThe hub answered that it has no such repo, revision or file: check "
                f"--repo {version.name}=... and --revision {version.name}=... "
                f"(defaults {version.hub_repo} and {version.hub_revision}).")
    if hub_constants.is_offline_mode():
        cause = "HF_HUB_OFFLINE is set, so huggingface_hub did not contact the hub: unset it to download."
    else:
        cause = "The Hugging Face hub is unreachable from here."
    folder = f"{hub_constants.ENDPOINT}/{repo_id}/tree/{revision}/{version.hub_prefix}".rstrip("/")
    return (f"{what}\n{cause} "
            f"To install the release without it, download the files from {folder} on a machine "
            f"with access and copy them by hand into the layout:\n"
            f"  {posixpath.join(version.hub_prefix, version.weights_file)} -> {version.weights_path(root)}\n"
            f"  {posixpath.join(version.hub_prefix, 'voices', '<voice>.pt')} -> {version.voices_dir(root)}/<voice>.pt\n"
            f"then run this command again: files already in place are not downloaded, only verified.")


def verify_version(version: ModelVersion, root: Path, config: dict | None = None) -> None:
    """Load the weights strictly and every voice pack in the layout; raises ModelFileError.

    `config` replaces the packaged config of the version (for models other than the release).
    """
    from ..model.loading import load_model, load_voice_pack  # torch and kokoro: only when verifying

    model = load_model(version, version.packaged_config() if config is None else config, root)
    voices_dir = version.voices_dir(root)
    voices = sorted(voices_dir.glob("*.pt"))
    if not voices:
        raise ModelFileError(f"no {version.name} voices (*.pt) in {voices_dir}")
    for path in voices:
        load_voice_pack(path, version)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{version.name}: OK: {version.weights_path(root)} ({parameters / 1e6:.1f}M parameters), "
          f"{len(voices)} voice(s) in {voices_dir}", flush=True)


def _per_version(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not value or name not in VERSIONS:
        raise argparse.ArgumentTypeError(
            f"expected VERSION=VALUE with VERSION one of {', '.join(VERSIONS)}, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.download",
        description="Download the Kokoro release files from the Hugging Face hub into the model root and verify them.")
    parser.add_argument("--model-root", type=Path, default=None,
                        help=f"where the files go (default: $KOKORO_MODEL_ROOT, else {DEFAULT_MODEL_ROOT})")
    parser.add_argument("--versions", nargs="+", choices=list(VERSIONS), default=list(VERSIONS),
                        help="model versions to fetch (default: all)")
    parser.add_argument("--voices", nargs="+", metavar="NAME", default=None,
                        help="voices to fetch, each for every selected version that has it "
                             "(default: all voices of each release)")
    parser.add_argument("--repo", type=_per_version, action="append", default=[], metavar="VERSION=OWNER/NAME",
                        help="hub repo of a version (defaults: " +
                             ", ".join(f"{v.name}={v.hub_repo}" for v in VERSIONS.values()) + ")")
    parser.add_argument("--revision", type=_per_version, action="append", default=[], metavar="VERSION=REV",
                        help="branch, tag or commit of a version's repo (default: " +
                             ", ".join(f"{v.name}={v.hub_revision}" for v in VERSIONS.values()) + ")")
    parser.add_argument("--config", type=_per_version, action="append", default=[], metavar="VERSION=FILE.json",
                        help="model config to verify a version's weights against (default: the packaged one)")
    parser.add_argument("--force", action="store_true", help="download files that are already in place again")
    return parser


def _select_voices(parser: argparse.ArgumentParser, versions: list[ModelVersion],
                   requested: list[str] | None) -> dict[str, list[str]]:
    if requested is None:
        return {v.name: list(v.voices) for v in versions}
    requested = list(dict.fromkeys(requested))
    unknown = [name for name in requested if not any(name in v.voices for v in versions)]
    if unknown:
        parser.error(f"no selected version has voice(s) {', '.join(unknown)}")
    chosen = {v.name: [name for name in requested if name in v.voices] for v in versions}
    for v in versions:
        if not chosen[v.name]:
            parser.error(f"--voices names no {v.name} voice; leave {v.name} out with --versions or add one of: "
                         f"{', '.join(v.voices)}")
    return chosen


def _read_configs(parser: argparse.ArgumentParser, pairs: list[tuple[str, str]]) -> dict[str, dict]:
    configs = {}
    for name, path in pairs:
        try:
            configs[name] = json.loads(Path(path).read_text("utf-8"))
        except (OSError, ValueError) as e:
            parser.error(f"--config {name}={path}: {e}")
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    root = args.model_root or Path(os.environ.get("KOKORO_MODEL_ROOT") or DEFAULT_MODEL_ROOT)
    versions = [VERSIONS[name] for name in dict.fromkeys(args.versions)]
    voices = _select_voices(parser, versions, args.voices)
    configs = _read_configs(parser, args.config)
    repos, revisions = dict(args.repo), dict(args.revision)

    failures, complete = [], []
    for version in versions:
        repo_id = repos.get(version.name, version.hub_repo)
        revision = revisions.get(version.name, version.hub_revision)
        try:
            written = download_version(version, root, repo_id, revision, voices[version.name], args.force)
        except DownloadError as e:
            failures.append(f"{version.name}: {e}")
            continue
        present = 1 + len(voices[version.name]) - len(written)
        print(f"{version.name}: {len(written)} file(s) downloaded, {present} already in place", flush=True)
        complete.append(version)
    for version in complete:
        try:
            verify_version(version, root, configs.get(version.name))
        except ModelFileError as e:
            failures.append(f"{version.name}: verification failed: {e}")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0

