"""A fake Hugging Face hub and the tiny releases it serves, for the downloader and the preflight.

The hub is the world outside: install_hub replaces huggingface_hub.hf_hub_download as
serve_app.weights.download calls it with a FakeHub serving a tiny random-weight model of the real
architecture, saved in each release's published layout, and recording what was asked of it.
Each test module makes its `published` (module scope: building costs seconds) and `hub`
fixtures from build_published and install_hub.
"""
from dataclasses import dataclass
from pathlib import Path
import json

from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
import httpx2
import torch

from serve_app.model.loading import build_random_model
from serve_app.versions import V0_19, V1_0
from serve_app.weights import download

MODULES = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")
TINY_PLBERT = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=512, num_hidden_layers=1, dropout=0.1)

# The published layouts, spelled out rather than derived from ModelVersion.
V1_REPO, V1_WEIGHTS = "hexgrad/Kokoro-82M", "kokoro-v1_0.pth"
V0_REPO, V0_WEIGHTS = "hexgrad/kLegacy", "v0.19/kokoro-v0_19.pth"


def v1_voice(name):
    return f"voices/{name}.pt"


def v0_voice(name):
    return f"v0.19/voices/{name}.pt"


@dataclass
class Published:
    """Files of both releases, built once: tiny weights, voice packs, the tiny configs."""
    files: dict          # (repo, hub filename) -> local file
    v1_config: Path
    v0_config: Path

    def config_args(self, *versions):
        paths = {"v1.0": self.v1_config, "v0.19": self.v0_config}
        return [a for v in versions or paths for a in ("--config", f"{v}={paths[v]}")]


def _norm_affine_keys(module):
    return {f"{n}.{p}" for n, m in module.named_modules() if isinstance(m, torch.nn.InstanceNorm1d)
            for p, _ in m.named_parameters(recurse=False)}


def build_published(built: Path) -> Published:
    """Both releases, tiny, saved into the folder `built` (what a `published` fixture returns)."""
    torch.manual_seed(0)
    files = {}

    v1 = V1_0.packaged_config()
    v1.update(n_layer=1, max_dur=4, plbert=TINY_PLBERT)
    v1["istftnet"] = {**v1["istftnet"], "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3, 5]]}
    model = build_random_model(v1, V1_REPO)
    state = {m: {f"module.{k}": t for k, t in getattr(model, m).state_dict().items()} for m in MODULES}
    torch.save(state, built / "v1.pth")
    files[V1_REPO, V1_WEIGHTS] = built / "v1.pth"

    # v0.19: the vocoder config is "decoder"; the file nests under 'net' without instance-norm affines.
    v0 = V0_19.packaged_config()
    v0.update(n_layer=1, max_dur=4, plbert=TINY_PLBERT)
    v0["decoder"] = {**v0["decoder"], "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3, 5]]}
    model = build_random_model(v0, V0_REPO)
    net = {}
    for m in MODULES:
        module = getattr(model, m)
        skip = _norm_affine_keys(module)
        net[m] = {f"module.{k}": t for k, t in module.state_dict().items() if k not in skip}
    assert any(_norm_affine_keys(getattr(model, m)) for m in MODULES)
    torch.save({"net": net}, built / "v0.pth")
    files[V0_REPO, V0_WEIGHTS] = built / "v0.pth"

    for repo, voice, names, rows in ((V1_REPO, v1_voice, V1_0.voices, 510), (V0_REPO, v0_voice, V0_19.voices, 511)):
        for name in names:
            path = built / repo.replace("/", "_") / f"{name}.pt"
            path.parent.mkdir(exist_ok=True)
            torch.save(torch.randn(rows, 1, 256), path)
            files[repo, voice(name)] = path

    (built / "v1.json").write_text(json.dumps(v1))
    (built / "v0.json").write_text(json.dumps(v0))
    return Published(files, built / "v1.json", built / "v0.json")


def _not_found(cls, url):
    return cls(f"404 Client Error for url: {url}", response=httpx2.Response(404, request=httpx2.Request("GET", url)))


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: trees[(repo, revision)] / filename."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.calls = []   # (repo_id, revision, filename)
        self.fail = None  # fail(repo_id, filename) -> exception to raise, or None

    def publish(self, repo, revision, filename, source: Path):
        path = self.folder / repo / revision / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        path.symlink_to(source)  # the real hub cache also hands out symlinks

    def publish_release(self, published, repo, revision, as_repo=None):
        for (r, filename), source in published.files.items():
            if r == repo:
                self.publish(as_repo or repo, revision, filename, source)

    def __call__(self, repo_id, filename, *, revision=None, **kwargs):
        self.calls.append((repo_id, revision, filename))
        if self.fail and (error := self.fail(repo_id, filename)):
            raise error
        url = f"https://huggingface.co/{repo_id}/resolve/{revision}/{filename}"
        if not (self.folder / repo_id).is_dir():
            raise _not_found(RepositoryNotFoundError, url)
        tree = self.folder / repo_id / (revision or "main")
        if not tree.is_dir():
            raise _not_found(RevisionNotFoundError, url)
        if not (tree / filename).is_file():
            raise _not_found(RemoteEntryNotFoundError, url)
        return str(tree / filename)


def install_hub(folder: Path, published: Published, monkeypatch) -> FakeHub:
    """A fake hub in `folder` serving both releases at main, in place of hf_hub_download (a `hub` fixture)."""
    fake = FakeHub(folder)
    fake.publish_release(published, V1_REPO, "main")
    fake.publish_release(published, V0_REPO, "main")
    monkeypatch.setattr(download, "hf_hub_download", fake)
    return fake


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} if root.exists() else set()
