"""`python -m serve_app.download` against a fake Hugging Face hub (the one thing replaced).

The fake hub serves a tiny random-weight model of the real architecture, saved in each
release's published layout, and records what was asked of it. Verification goes through the
real strict loader with the tiny model's config (--config).
"""
from pathlib import Path
import os
import subprocess
import sys

from huggingface_hub.errors import LocalEntryNotFoundError
import pytest
import torch

from fake_hub import (
    V0_REPO,
    V0_WEIGHTS,
    V1_REPO,
    V1_WEIGHTS,
    files_under,
    v0_voice,
    v1_voice,
)
from serve_app.versions import V0_19, V1_0
from serve_app.weights import download
from serve_app.weights.download import DownloadError, download_version, main

pytestmark = pytest.mark.slow  # loads models or runs subprocesses: seconds a test

ROOT = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"


def test_downloads_both_releases_into_the_layout_and_verifies(hub, published, tmp_path, capsys):
    root = tmp_path / "models"
    assert main(["--model-root", str(root), *published.config_args()]) == 0

    expected_calls = {(V1_REPO, "main", V1_WEIGHTS)} | {(V1_REPO, "main", v1_voice(n)) for n in V1_0.voices}
    expected_calls |= {(V0_REPO, "main", V0_WEIGHTS)} | {(V0_REPO, "main", v0_voice(n)) for n in V0_19.voices}
    assert len(hub.calls) == len(set(hub.calls)) == len(expected_calls)
    assert set(hub.calls) == expected_calls

    layout = {"models/v1_0/kokoro-v1_0.pth": (V1_REPO, V1_WEIGHTS),
              "models/v0_19/kokoro-v0_19.pth": (V0_REPO, V0_WEIGHTS)}
    layout |= {f"voices/v1_0/{n}.pt": (V1_REPO, v1_voice(n)) for n in V1_0.voices}
    layout |= {f"voices/v0_19/{n}.pt": (V0_REPO, v0_voice(n)) for n in V0_19.voices}
    assert len(V1_0.voices) == 54 and len(V0_19.voices) == 11
    assert files_under(root) == set(layout)  # nothing else: no temporary files left behind
    for local, source in layout.items():
        assert (root / local).read_bytes() == published.files[source].read_bytes(), local
        assert not (root / local).is_symlink()
    umask = os.umask(0)
    os.umask(umask)
    assert (root / "models/v1_0/kokoro-v1_0.pth").stat().st_mode & 0o777 == 0o666 & ~umask

    out = capsys.readouterr().out
    assert f"v1.0: OK: {root / 'models/v1_0/kokoro-v1_0.pth'}" in out and "54 voice(s)" in out
    assert f"v0.19: OK: {root / 'models/v0_19/kokoro-v0_19.pth'}" in out and "11 voice(s)" in out


def test_one_version_and_voice_into_the_env_model_root(hub, published, tmp_path, monkeypatch):
    root = tmp_path / "from-env"
    monkeypatch.setenv("KOKORO_MODEL_ROOT", str(root))
    assert main(["--versions", "v1.0", "--voices", "af_heart", *published.config_args("v1.0")]) == 0
    assert hub.calls == [(V1_REPO, "main", V1_WEIGHTS), (V1_REPO, "main", "voices/af_heart.pt")]
    assert files_under(root) == {"models/v1_0/kokoro-v1_0.pth", "voices/v1_0/af_heart.pt"}


def test_repo_and_revision_overrides(hub, published, tmp_path):
    hub.publish_release(published, V0_REPO, SHA, as_repo="mirror/kokoro-legacy")
    root = tmp_path / "models"
    rc = main(["--model-root", str(root), "--versions", "v0.19", "--voices", "af", "bm_lewis",
               "--repo", "v0.19=mirror/kokoro-legacy", "--revision", f"v0.19={SHA}", *published.config_args("v0.19")])
    assert rc == 0
    assert hub.calls == [("mirror/kokoro-legacy", SHA, f) for f in (V0_WEIGHTS, v0_voice("af"), v0_voice("bm_lewis"))]
    assert files_under(root) == {"models/v0_19/kokoro-v0_19.pth", "voices/v0_19/af.pt", "voices/v0_19/bm_lewis.pt"}


def test_files_in_place_are_kept_unless_forced(hub, published, tmp_path):
    root = tmp_path / "models"
    mine = V1_0.voices_dir(root) / "af_heart.pt"
    mine.parent.mkdir(parents=True)
    torch.save(torch.zeros(510, 1, 256), mine)
    own_bytes = mine.read_bytes()
    weights = root / "models/v1_0/kokoro-v1_0.pth"
    bella = root / "voices/v1_0/af_bella.pt"

    assert download_version(V1_0, root, V1_REPO, "main", ["af_heart", "af_bella"], force=False) == [weights, bella]
    assert [c[2] for c in hub.calls] == [V1_WEIGHTS, "voices/af_bella.pt"]
    assert mine.read_bytes() == own_bytes

    hub.calls.clear()
    assert download_version(V1_0, root, V1_REPO, "main", ["af_heart", "af_bella"], force=False) == []
    assert hub.calls == []

    assert download_version(V1_0, root, V1_REPO, "main", ["af_heart", "af_bella"], force=True) == [weights, mine, bella]
    assert [c[2] for c in hub.calls] == [V1_WEIGHTS, "voices/af_heart.pt", "voices/af_bella.pt"]
    assert mine.read_bytes() == published.files[V1_REPO, "voices/af_heart.pt"].read_bytes()


def _truncated(path: Path, out: Path) -> Path:
    out.write_bytes(path.read_bytes()[: 1 << 20])
    return out


@pytest.mark.parametrize("case", ["v1.0 truncated weights", "v0.19 v1.0-format weights", "v1.0 voice of v0.19 shape"])
def test_bad_release_file_fails_verification_naming_the_file(case, hub, published, tmp_path, capsys):
    """The bad files are published under a revision of their own, picked with --revision."""
    root = tmp_path / "models"
    if case == "v1.0 truncated weights":
        version, voice, bad_file = "v1.0", "af_heart", "models/v1_0/kokoro-v1_0.pth"
        hub.publish_release(published, V1_REPO, "bad")
        hub.publish(V1_REPO, "bad", V1_WEIGHTS, _truncated(published.files[V1_REPO, V1_WEIGHTS], tmp_path / "t.pth"))
        expected = "truncated or corrupt"
    elif case == "v0.19 v1.0-format weights":
        version, voice, bad_file = "v0.19", "af", "models/v0_19/kokoro-v0_19.pth"
        hub.publish_release(published, V0_REPO, "bad")
        hub.publish(V0_REPO, "bad", V0_WEIGHTS, published.files[V1_REPO, V1_WEIGHTS])
        expected = "no 'net' key"
    else:
        version, voice, bad_file = "v1.0", "af_heart", "voices/v1_0/af_heart.pt"
        hub.publish_release(published, V1_REPO, "bad")
        hub.publish(V1_REPO, "bad", "voices/af_heart.pt", published.files[V0_REPO, v0_voice("af")])
        expected = "(511, 1, 256)"

    rc = main(["--model-root", str(root), "--versions", version, "--voices", voice,
               "--revision", f"{version}=bad", *published.config_args(version)])
    out, err = capsys.readouterr()
    assert rc != 0
    assert f"error: {version}: verification failed" in err
    assert str(root / bad_file) in err and expected in err
    assert f"{version}: OK" not in out


@pytest.mark.parametrize("error", [
    LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub and we cannot find "
                            "the requested files in the local cache."),
    OSError("Connection reset by peer"),
])
def test_unreachable_hub_says_so_and_how_to_copy_by_hand(error, hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download.hub_constants, "HF_HUB_OFFLINE", False)
    hub.fail = lambda repo, filename: error
    root = tmp_path / "models"
    assert main(["--model-root", str(root)]) != 0
    err = capsys.readouterr().err
    # One try per version, not one per file: each would wait out the hub's retries.
    assert hub.calls == [(V1_REPO, "main", V1_WEIGHTS), (V0_REPO, "main", V0_WEIGHTS)]
    assert err.count("The Hugging Face hub is unreachable") == 2
    assert f"kokoro-v1_0.pth -> {root / 'models/v1_0/kokoro-v1_0.pth'}" in err
    assert f"v0.19/voices/<voice>.pt -> {root / 'voices/v0_19'}/<voice>.pt" in err
    assert "HF_HUB_OFFLINE" not in err
    assert files_under(root) == set()


def test_files_copied_by_hand_are_verified_without_the_hub(hub, published, tmp_path, capsys):
    root = tmp_path / "models"
    by_hand = {"models/v1_0/kokoro-v1_0.pth": V1_WEIGHTS, "voices/v1_0/af_heart.pt": "voices/af_heart.pt"}
    for local, source in by_hand.items():
        (root / local).parent.mkdir(parents=True, exist_ok=True)
        (root / local).write_bytes(published.files[V1_REPO, source].read_bytes())
    hub.fail = lambda repo, filename: LocalEntryNotFoundError("no network")
    assert main(["--model-root", str(root), "--versions", "v1.0", "--voices", "af_heart",
                 *published.config_args("v1.0")]) == 0
    assert hub.calls == []
    out = capsys.readouterr().out
    assert "v1.0: 0 file(s) downloaded, 2 already in place" in out and "v1.0: OK" in out


def test_offline_mode_set_by_the_user_is_named(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(download.hub_constants, "HF_HUB_OFFLINE", True)
    hub.fail = lambda repo, filename: LocalEntryNotFoundError("not in the cache")
    assert main(["--model-root", str(tmp_path), "--versions", "v1.0"]) != 0
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in err and "unreachable" not in err


def test_unknown_repo_points_at_the_overrides(hub, tmp_path, capsys):
    rc = main(["--model-root", str(tmp_path / "models"), "--versions", "v1.0", "--repo", "v1.0=nobody/nothing"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "RepositoryNotFoundError" in err and "--repo v1.0=" in err and "unreachable" not in err
    assert files_under(tmp_path / "models") == set()


def test_hub_failure_midway_keeps_complete_files_only(hub, published, tmp_path):
    root = tmp_path / "models"
    bella = V1_0.voices_dir(root) / "af_bella.pt"
    bella.parent.mkdir(parents=True)
    bella.write_bytes(b"the old file")
    hub.fail = lambda repo, filename: OSError("connection dropped") if filename == "voices/af_bella.pt" else None

    with pytest.raises(DownloadError, match="voices/af_bella.pt"):
        download_version(V1_0, root, V1_REPO, "main", ["af_heart", "af_bella", "af_sky"], force=True)
    assert [c[2] for c in hub.calls] == [V1_WEIGHTS, "voices/af_heart.pt", "voices/af_bella.pt"]
    assert files_under(root) == {"models/v1_0/kokoro-v1_0.pth", "voices/v1_0/af_heart.pt", "voices/v1_0/af_bella.pt"}
    assert bella.read_bytes() == b"the old file"
    assert ((root / "voices/v1_0/af_heart.pt").read_bytes()
            == published.files[V1_REPO, "voices/af_heart.pt"].read_bytes())


def test_failed_write_leaves_no_temporary_file(hub, tmp_path):
    root = tmp_path / "models"
    blocked = V1_0.voices_dir(root) / "af_heart.pt"
    blocked.mkdir(parents=True)  # a folder where the file should go: the final rename fails
    with pytest.raises(DownloadError, match="cannot write .*af_heart.pt"):
        download_version(V1_0, root, V1_REPO, "main", ["af_heart"], force=True)
    assert sorted(p.name for p in blocked.parent.iterdir()) == ["af_heart.pt"]
    assert files_under(root) == {"models/v1_0/kokoro-v1_0.pth"}


@pytest.mark.parametrize("argv, message", [
    (["--voices", "af_heart"], "--voices names no v0.19 voice"),
    (["--versions", "v1.0", "--voices", "af_heart", "nobody"], "no selected version has voice(s) nobody"),
    (["--repo", "v2.0=someone/else"], "VERSION one of v1.0, v0.19"),
    (["--revision", "v1.0"], "expected VERSION=VALUE"),
    (["--versions", "v3"], "invalid choice: 'v3'"),
    (["--config", "v1.0=/does/not/exist.json"], "--config v1.0=/does/not/exist.json"),
])
def test_bad_arguments_are_refused_before_any_download(argv, message, hub, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model-root", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert hub.calls == []


def test_importing_the_loader_sets_nothing_and_keeps_the_hub_online():
    # Serving is offline through its runtime environment (serve_config.yaml, the image), not an import.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    code = ("import os, serve_app.weights.download, serve_app.model.loading\n"
            "from huggingface_hub import constants\n"
            "print(os.environ.get('HF_HUB_OFFLINE'), constants.is_offline_mode())")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "False"]


def test_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "serve_app.download", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in ("--model-root", "--versions", "--voices", "--repo", "--revision", "--config", "--force"):
        assert option in result.stdout
