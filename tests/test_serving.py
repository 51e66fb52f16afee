"""The service over real HTTP: real Ray Serve, the tiny releases loaded by the strict loader."""
import io

from kokoro import KModel, KPipeline
import av
import httpx
import numpy as np
import pytest
import soundfile
import torch

from serve_app.ingress.audio_encoding import to_int16
from serve_app.versions import V1_0

SPANISH = "Hola, buenos días. Esto es una prueba del servicio."
ENGLISH = "The quick brown fox jumps over the lazy dog."


def speech(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/audio/speech", json=body, timeout=120)


def pcm_samples(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, dtype="<i2")


def in_process_pcm(release, text: str, voice: str, lang_code: str, seed: int) -> np.ndarray:
    """What the bare kokoro package makes from the same files: its own loader, KPipeline, same seed."""
    model = KModel(repo_id=V1_0.hub_repo, config=release.configs["v1.0"],
                   model=str(V1_0.weights_path(release.root))).eval()
    pipeline = KPipeline(lang_code=lang_code, repo_id=V1_0.hub_repo, model=model)
    results = pipeline(text, voice=str(V1_0.voices_dir(release.root) / f"{voice}.pt"))
    audio = []
    while True:
        torch.manual_seed(seed)  # the service seeds before every chunk the same way
        result = next(results, None)
        if result is None:
            return to_int16(np.concatenate(audio))
        audio.append(result.audio.numpy())


def test_served_audio_equals_in_process_kpipeline(both_versions, release):
    served = pcm_samples(speech(both_versions, input=SPANISH, voice="ef_dora", response_format="pcm", seed=7))
    expected = in_process_pcm(release, SPANISH, "ef_dora", "e", seed=7)
    assert len(served) == len(expected) > 0
    # The replica runs torch on 1 thread, this process on 2: float sums differ in the last bit.
    assert np.abs(served.astype(np.int32) - expected).max() <= 1


def test_same_seed_same_audio_other_seed_other_audio(both_versions):
    first, again, other = (pcm_samples(speech(both_versions, input=ENGLISH, voice="af_heart",
                                              response_format="pcm", seed=s)) for s in (3, 3, 4))
    np.testing.assert_array_equal(first, again)
    assert len(first) == len(other) and not np.array_equal(first, other)


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_streamed_audio_decodes_with_plausible_duration(both_versions, fmt):
    response = speech(both_versions, input=ENGLISH, voice="af_heart", response_format=fmt)
    assert response.status_code == 200, response.text
    with av.open(io.BytesIO(response.content)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        rate = stream.rate
    # The tiny model predicts ~2 frames (50 ms) per phoneme; ~45 phonemes here.
    assert rate == 24000 and 1.0 < samples / rate < 6.0


def test_wav_stream_is_readable_by_soundfile(both_versions):
    response = speech(both_versions, input=ENGLISH, voice="bf_emma", response_format="wav")
    data, rate = soundfile.read(io.BytesIO(response.content), dtype="int16")
    assert rate == 24000 and data.ndim == 1 and len(data) > 24000


def test_audio_streams_in_several_parts(both_versions):
    text = " ".join([ENGLISH] * 8)  # several chunks of synthesis
    with httpx.stream("POST", f"{both_versions}/v1/audio/speech", timeout=120,
                      json={"input": text, "voice": "af_heart", "response_format": "pcm"}) as response:
        assert response.headers["content-type"] == "audio/pcm"
        parts = [part for part in response.iter_raw() if part]
    assert len(parts) >= 3


def test_non_streaming_response_has_content_length(both_versions):
    response = speech(both_versions, input=ENGLISH, voice="af_heart", response_format="wav", stream=False)
    assert int(response.headers["content-length"]) == len(response.content) > 44


@pytest.mark.parametrize("body, status, param, words", [
    ({"input": ENGLISH, "voice": "zz_nobody"}, 400, "voice", ["zz_nobody", "af_heart", "ef_dora"]),
    ({"input": ENGLISH, "voice": "af_heart", "lang_code": "q"}, 400, "lang_code", ["a (American English)"]),
    ({"input": ENGLISH, "voice": "af_heart", "lang_code": "j"}, 400, "lang_code", ["not installed"]),
    ({"input": ENGLISH, "voice": "af_heart", "response_format": "ogg"}, 400, "response_format", ["mp3"]),
    ({"input": ENGLISH, "voice": "af_heart", "speed": 10}, 400, "speed", ["4"]),
    ({"input": "", "voice": "af_heart"}, 400, "input", []),
    ({"input": "   \n  ", "voice": "af_heart"}, 400, "input", ["no text"]),
    ({"voice": "af_heart"}, 400, "input", ["Field required"]),
    ({"input": "x" * 10_001, "voice": "af_heart"}, 413, "input", ["10000"]),
    ({"input": ENGLISH, "model": "kokoro-v9"}, 400, "model", ["v0.19", "v1.0", "kokoro"]),
])
def test_bad_requests_get_openai_shaped_errors(both_versions, body, status, param, words):
    response = speech(both_versions, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    for word in words:
        assert word in error["message"]


def test_malformed_json_is_a_400(both_versions):
    response = httpx.post(f"{both_versions}/v1/audio/speech", content=b"{not json",
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 400 and "error" in response.json()


def test_service_stays_up_after_errors(both_versions):
    speech(both_versions, input=ENGLISH, voice="af_heart", lang_code="j")
    assert len(pcm_samples(speech(both_versions, input=ENGLISH, voice="af_heart", response_format="pcm"))) > 0
