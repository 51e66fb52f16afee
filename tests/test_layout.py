"""The project's shape: a torch-free ingress, one home per version fact, a changelog that matches."""
from pathlib import Path
import ast
import re
import subprocess
import sys

from kokoro.pipeline import ALIASES, LANG_CODES
import pytest
import tomllib

from serve_app.model_deployments import MODEL_DEPLOYMENTS
from serve_app.versions import OPENAI_VOICE_NAMES, V1_0, VERSIONS

ROOT = Path(__file__).resolve().parents[1]
MODEL_STACK = ("torch", "kokoro", "misaki", "transformers", "spacy")


@pytest.mark.parametrize("module", ["serve_app.ingress.speech_ingress", "serve_app.app"])
def test_the_ingress_and_the_app_builder_import_no_model_stack(module):
    # A fresh interpreter: this test process has torch loaded already. The app builder runs in
    # Serve's controller on every deploy: loading torch and kokoro there cost ~10 s a deploy.
    code = (f"import sys, {module}\n"
            f"print([m for m in {MODEL_STACK!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def imported_serve_app_modules(path: Path) -> set[str]:
    """The serve_app modules one file imports, relative imports resolved, lazy imports included."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            parts = list(package[:len(package) - node.level + 1]) if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("serve_app")}


SUBPACKAGES = {"ingress", "text", "model", "weights"}
# What each part may not import: arrows point down, toward the text front end and the shared core.
MAY_NOT_IMPORT = {
    "core": ("serve_app.ingress", "serve_app.model", "serve_app.weights"),
    "text": ("serve_app.ingress", "serve_app.model", "serve_app.weights"),
    "ingress": ("serve_app.model", "serve_app.weights"),
    "model": ("serve_app.ingress", "serve_app.weights"),
    "weights": ("serve_app.ingress",),
}
# The composition root (the app builder, the deployments) and the commands users type sit above every package.
ENTRY_MODULES = {"app.py", "model_deployments.py", "download.py", "first_run.py"}


def part_of(path: Path) -> str:
    relative = path.relative_to(ROOT / "serve_app").parts
    return relative[0] if len(relative) > 1 else "core"


@pytest.mark.parametrize("path", [p for p in sorted((ROOT / "serve_app").rglob("*.py"))
                                  if p.parent != ROOT / "serve_app" or p.name not in ENTRY_MODULES],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_tree(path):
    forbidden = MAY_NOT_IMPORT[part_of(path)]
    wrong = sorted(m for m in imported_serve_app_modules(path) if m.startswith(forbidden))
    assert wrong == [], f"{path.relative_to(ROOT)} ({part_of(path)}) imports {wrong}"


def test_the_import_check_sees_relative_and_lazy_imports():
    # The check above would pass vacuously if it resolved nothing: the deployments import the replica lazily.
    assert "serve_app.model.replica" in imported_serve_app_modules(ROOT / "serve_app" / "model_deployments.py")
    assert "serve_app.errors" in imported_serve_app_modules(ROOT / "serve_app" / "ingress" / "access.py")


def test_a_short_top_and_one_package_per_role():
    top = sorted(p.name for p in (ROOT / "serve_app").glob("*.py"))
    assert len(top) <= 14, top
    assert {p.name for p in (ROOT / "serve_app").iterdir() if (p / "__init__.py").exists()} == SUBPACKAGES


def test_changelog_starts_at_the_package_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    first = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert first is not None and first[1] == version


def test_v1_languages_are_kokoros():
    assert {code: language.name for code, language in V1_0.languages.items()} == LANG_CODES
    assert {language.tag: code for code, language in V1_0.languages.items()} == ALIASES


@pytest.mark.parametrize("version", VERSIONS.values(), ids=list(VERSIONS))
def test_version_facts_are_consistent(version):
    assert version.default_voice in version.voices
    assert set(version.openai_voices) == set(OPENAI_VOICE_NAMES)
    assert set(version.openai_voices.values()) <= set(version.voices)
    assert all(version.lang_code(None, voice) in version.languages for voice in version.voices)
    assert MODEL_DEPLOYMENTS[version.name].name == version.deployment
