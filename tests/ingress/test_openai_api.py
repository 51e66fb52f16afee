"""OpenAI compatibility: the real `openai` client, every format, blends, listings, captions, errors."""
import base64
import io
import json

from openai import OpenAI
import av
import httpx
import pytest

from serve_app.ingress.audio_encoding import FORMATS

TEXT = "Streaming speech should start quickly and sound the same in every format."
# Decoded length = PCM length + the codec's fixed priming (not signalled in a streamed file),
# padded up to a whole frame: (priming, frame) in 24 kHz samples; opus decodes at 48 kHz.
CODEC_FRAMING = {"mp3": (1105, 576), "aac": (1024, 1024), "opus": (0, 960), "flac": (0, 1), "wav": (0, 1)}
CONTAINERS = {"mp3": "mp3", "aac": "aac", "opus": "ogg", "flac": "flac", "wav": "wav"}


def openai_client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def decoded_samples(data: bytes, fmt: str, cut: bool = False) -> tuple[int, int]:
    """(sample count, rate) of a file decoded by FFmpeg; a `cut` one may end inside a frame."""
    if fmt == "pcm":
        return len(data) // 2, 24000
    samples, rate = 0, None
    with av.open(io.BytesIO(data), format=CONTAINERS[fmt]) as container:
        try:
            for frame in container.decode(container.streams.audio[0]):
                samples, rate = samples + frame.samples, frame.sample_rate
        except av.error.InvalidDataError:
            if not cut:
                raise
    return samples, rate


@pytest.fixture(scope="module")
def pcm_length(both_versions) -> int:
    response = httpx.post(f"{both_versions}/v1/audio/speech", timeout=120,
                          json={"input": TEXT, "voice": "af_bella", "response_format": "pcm", "seed": 1})
    return len(response.content) // 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_openai_client_gets_every_format(both_versions, pcm_length, fmt):
    audio = openai_client(both_versions).audio.speech.create(
        model="tts-1", voice="shimmer", input=TEXT, response_format=fmt, extra_body={"seed": 1})
    samples, rate = decoded_samples(audio.content, fmt)
    if fmt == "pcm":
        assert samples == pcm_length
        return
    priming, frame = CODEC_FRAMING[fmt]
    scale = rate // 24000  # opus decodes at 48 kHz
    assert 0 <= samples / scale - (pcm_length + priming) < frame, (samples, pcm_length)


@pytest.mark.parametrize("fmt", FORMATS)
def test_streaming_response_arrives_in_chunks_and_each_prefix_decodes(both_versions, fmt):
    text = " ".join([TEXT] * 4)  # three pieces: the first alone, then two sentences, then one
    with openai_client(both_versions).audio.speech.with_streaming_response.create(
            model="kokoro", voice="af_heart", input=text, response_format=fmt) as response:
        assert response.headers["content-type"].startswith(
            {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
             "wav": "audio/wav", "pcm": "audio/pcm"}[fmt])
        parts = [part for part in response.iter_bytes() if part]
    assert len(parts) >= 2
    first_part_samples, _ = decoded_samples(parts[0], fmt, cut=True)  # a stream cut after its first chunk
    all_samples, _ = decoded_samples(b"".join(parts), fmt)
    assert 0 < first_part_samples < all_samples


def test_openai_voice_names_map_to_kokoro_voices(both_versions):
    def pcm(voice):
        return httpx.post(f"{both_versions}/v1/audio/speech", timeout=120, json={
            "input": TEXT, "voice": voice, "response_format": "pcm", "seed": 5}).content
    # The tiny release has af_bella: OpenAI's "shimmer" maps to it.
    assert pcm("shimmer") == pcm("af_bella")


def test_voice_blends(both_versions):
    def post(voice):
        return httpx.post(f"{both_versions}/v1/audio/speech", timeout=120, json={
            "input": TEXT, "voice": voice, "response_format": "pcm", "seed": 5})
    blend, bella, adam = (post(v).content for v in ("af_bella(2)+am_adam(1)", "af_bella", "am_adam"))
    assert len(blend) > 0 and blend != bella and blend != adam
    assert post("af_bella(2)+am_adam(1)").content == blend  # cached blend, same audio
    assert post("af_bella(4)+am_adam(2)").content == blend  # weights are normalised
    for bad, words in [("af_bella+zz_nobody", "zz_nobody"), ("af_bella(0)+am_adam", "positive"),
                       ("af_bella(x)", "weight"), ("af_bella+am_adam+bf_emma+af_heart+ef_dora", "at most")]:
        response = post(bad)
        assert response.status_code == 400 and words in response.json()["error"]["message"], response.text


def test_models_endpoint_lists_deployed_versions(both_versions):
    models = openai_client(both_versions).models.list()
    ids = {m.id for m in models.data}
    assert {"kokoro", "v1.0", "kokoro-v1.0", "v0.19", "kokoro-v0.19", "tts-1", "tts-1-hd"} <= ids


def test_voices_endpoint_lists_voices_per_version_with_language(both_versions):
    voices = httpx.get(f"{both_versions}/v1/audio/voices", timeout=30).json()["voices"]
    by_key = {(v["model"], v["id"]): v["language"] for v in voices}
    assert by_key[("v1.0", "af_heart")] == "en-us" and by_key[("v1.0", "ef_dora")] == "es"
    assert by_key[("v0.19", "bf_emma")] == "en-gb" and ("v0.19", "af_heart") not in by_key


def test_captioned_speech_streams_audio_and_word_times(both_versions):
    text = "One short sentence here. And then another short sentence follows it."
    with httpx.stream("POST", f"{both_versions}/v1/audio/speech/captioned", timeout=120, json={
            "input": text, "voice": "af_heart", "response_format": "pcm"}) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["done"] is True
    audio = b"".join(base64.b64decode(line["audio"]) for line in lines)
    duration = len(audio) / 2 / 24000
    words = [w for line in lines for w in line["words"]]
    assert [w["word"] for w in words] == text.split()
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(w["end"] > w["start"] for w in words)
    assert duration - 0.5 < words[-1]["end"] <= duration + 0.01


def test_unknown_route_is_an_openai_shaped_404(both_versions):
    response = httpx.get(f"{both_versions}/v1/nothing-here", timeout=30)
    assert response.status_code == 404 and response.json()["error"]["type"] == "invalid_request_error"


def test_openai_client_raises_its_own_error_type_for_bad_input(both_versions):
    import openai

    with pytest.raises(openai.BadRequestError) as error:
        openai_client(both_versions).audio.speech.create(model="kokoro", voice="nobody", input=TEXT)
    assert error.value.body["param"] == "voice"
    assert error.value.status_code == 400
