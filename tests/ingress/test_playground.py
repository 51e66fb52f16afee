"""The web playground in a real browser: Debian's headless Chromium, driven by Playwright, against the service.

One deploy (v1.0 of the tiny release, with an API key and a small input limit) and one browser per module.
`PLAYGROUND_SCREENSHOT=docs/playground.png` makes the speaking test save its screenshot there (the README's).
"""
from pathlib import Path
import io
import os
import re
import shutil
import subprocess

import av
import httpx
import pytest

from conftest import deploy, project_app_config

CHROMIUM = Path("/usr/bin/chromium")
# Headless audio: a fake output device whose clock runs, no gesture needed, nothing phoning home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic"]
API_KEY = "playground-test-key"
MAX_INPUT_CHARS = 300
# Two sentences, so two pieces: audio arrives (and plays) before the whole text is made.
# Words espeak keeps one to one (it joins some, "as it is"), so every word has its time.
TEXT = ("Each word lights up as you hear it, and the sound starts before the whole text is made. "
        "Pick a voice, or blend two, and press Speak.")
TIMEOUT_MS = 90_000  # generous: a loaded 2-core box


def chromium_path() -> str:
    """Debian's Chromium, installed when missing (CI runs `make test` as root on a fresh Debian machine)."""
    if not CHROMIUM.exists() and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            subprocess.run(command, env=env, capture_output=True, timeout=1200)
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing and `apt-get install -y chromium` could not install it (needs root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def service(serve_url, release) -> str:
    deploy(project_app_config(model_root=str(release.root), weights="local", versions=["v1.0"],
                              configs={"v1.0": release.configs["v1.0"]}, api_key=API_KEY,
                              max_input_chars=MAX_INPUT_CHARS))
    return serve_url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def type_key(page, key: str) -> None:
    page.fill("#api-key", key)
    page.locator("#api-key").blur()  # a changed input fires `change` as it loses focus


def open_page(browser, url: str, key: str | None = API_KEY):
    """A fresh browser profile on the playground; with a key, typed in as a person would."""
    page = browser.new_context(viewport={"width": 1000, "height": 900}).new_page()
    page.goto(f"{url}/")
    if key is not None:
        type_key(page, key)
        page.wait_for_function("() => document.querySelectorAll('#voice-list option').length > 0", timeout=TIMEOUT_MS)
    return page


def page_state(page) -> dict:
    return page.evaluate("({...playground, words: playground.words.map(({span, ...w}) => w)})")


@pytest.fixture(scope="module")
def spoken(browser, service, tmp_path_factory):
    """The page after speaking TEXT to the end in af_bella, mp3 chosen for the download; a screenshot on the way."""
    page = open_page(browser, service)
    page.fill("#text", TEXT)
    page.fill("#voice", "af_bella")
    page.select_option("#format", "mp3")
    page.click("#speak")
    # Mid-speech, some words heard and one being heard: the picture the README shows.
    page.wait_for_function("() => playground.highlighted.length >= 6", timeout=TIMEOUT_MS)
    screenshot = Path(os.environ.get("PLAYGROUND_SCREENSHOT") or tmp_path_factory.mktemp("shot") / "playground.png")
    page.screenshot(path=screenshot, full_page=True)
    page.wait_for_function("() => playground.played", timeout=TIMEOUT_MS)
    yield page, page_state(page), screenshot
    page.context.close()


def test_the_page_is_public_and_fetches_nothing_from_elsewhere(service):
    for path in ("/", "/web"):
        response = httpx.get(f"{service}{path}", timeout=30)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        assert "Kokoro TTS playground" in response.text
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", response.text)
        assert "default-src 'none'" in response.headers["content-security-policy"]
    # The API behind it does need the key.
    assert httpx.get(f"{service}/v1/audio/voices", timeout=30).status_code == 401


def test_the_key_is_asked_for_then_kept_in_the_browser(browser, service):
    page = open_page(browser, service, key=None)
    page.wait_for_selector("#error:not([hidden])", timeout=TIMEOUT_MS)
    assert "API key" in page.inner_text("#error") and "(401)" in page.inner_text("#error")
    type_key(page, API_KEY)
    page.wait_for_selector("#error", state="hidden", timeout=TIMEOUT_MS)
    assert page.inner_text("#model option:checked") == "v1.0 (default)"
    listed = page.eval_on_selector_all("#voice-list option", "options => options.map(o => o.value)")
    assert {"af_heart", "af_bella", "bf_emma"} <= set(listed) and page.input_value("#voice") == "af_heart"
    page.reload()
    assert page.input_value("#api-key") == API_KEY
    assert page.evaluate("localStorage.getItem('kokoro-playground-api-key')") == API_KEY
    page.context.close()


def test_audio_streams_in_and_the_timings_are_shown(spoken):
    page, state, _ = spoken
    assert state["error"] is None and state["done"]
    assert state["chunksReceived"] >= 2
    assert state["bytesReceived"] == 2 * round(state["totalSeconds"] * 24000) and state["totalSeconds"] > 1
    assert 0 < state["firstAudioSeconds"] <= state["madeSeconds"]
    assert page.inner_text("#first-audio") == f"{state['firstAudioSeconds']:.2f} s"
    assert page.inner_text("#duration") == f"{state['totalSeconds']:.2f} s"
    # Web Audio played all of it: its clock ran past the end of the speech.
    assert state["playedSeconds"] >= state["totalSeconds"]


def test_words_are_highlighted_in_order_as_they_are_heard(spoken):
    page, state, _ = spoken
    assert [w["word"] for w in state["words"]] == TEXT.split()
    highlighted = state["highlighted"]
    # Each index once, in order; a stalled frame may skip a short word, never reorder.
    assert highlighted == sorted(set(highlighted)) and len(highlighted) >= len(TEXT.split()) // 2
    classes = page.eval_on_selector_all("#read-along .word", "spans => spans.map(s => s.className)")
    assert len(classes) == len(TEXT.split()) and set(classes) <= {"word heard", "word now"}


def test_the_file_plays_in_the_media_element(spoken):
    page, state, _ = spoken
    replay = page.locator("#replay")
    replay.evaluate("audio => audio.play()")
    replay.evaluate("""(audio, ms) => new Promise((played, failed) => {
        audio.ontimeupdate = () => audio.currentTime > 0.3 && played();
        setTimeout(() => failed(new Error("the audio element did not play")), ms);
    })""", TIMEOUT_MS)
    assert not replay.evaluate("audio => audio.paused")
    assert replay.evaluate("audio => audio.readyState") >= 2
    assert abs(replay.evaluate("audio => audio.duration") - state["totalSeconds"]) < 0.01
    replay.evaluate("audio => audio.pause()")


def test_the_download_is_the_chosen_format_of_the_same_speech(spoken):
    page, state, _ = spoken
    assert page.inner_text("#download") == "Download .mp3"
    with page.expect_download(timeout=TIMEOUT_MS) as download:
        page.click("#download")
    assert download.value.suggested_filename == "speech.mp3"
    with av.open(io.BytesIO(Path(download.value.path()).read_bytes()), format="mp3") as container:
        samples = sum(frame.samples for frame in container.decode(container.streams.audio[0]))
    # The same seed, so the same length: the pcm heard plus mp3's priming (1105), padded to a frame (576).
    assert 0 <= samples - (state["totalSeconds"] * 24000 + 1105) < 576


def test_the_screenshot_shows_the_page(spoken):
    *_, screenshot = spoken
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("text", "voice", "expected"), [
    (TEXT, "nobody", "The service refused the request (400): "),
    ("x" * (MAX_INPUT_CHARS + 1), "af_heart", "The text is too long (413): "),
], ids=["bad-voice", "too-long"])
def test_api_errors_are_shown_as_messages(browser, service, text, voice, expected):
    page = open_page(browser, service)
    page.fill("#text", text)
    page.fill("#voice", voice)
    page.click("#speak")
    page.wait_for_selector("#error:not([hidden])", timeout=TIMEOUT_MS)
    message = page.inner_text("#error")
    assert message.startswith(expected) and ("'nobody'" in message if voice == "nobody" else "300" in message)
    assert page.is_enabled("#speak") and page.is_disabled("#stop")
    page.context.close()
