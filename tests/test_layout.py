"""The project's shape: a torch-free ingress, one home per version fact, a changelog that matches."""
from pathlib import Path
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


@pytest.mark.parametrize("module", ["serve_app.ingress", "serve_app.app"])
def test_the_ingress_and_the_app_builder_import_no_model_stack(module):
    # A fresh interpreter: this test process has torch loaded already. The app builder runs in
    # Serve's controller on every deploy: loading torch and kokoro there cost ~10 s a deploy.
    code = (f"import sys, {module}\n"
            f"print([m for m in {MODEL_STACK!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


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
