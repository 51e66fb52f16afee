"""OpenAI's current speech API: SSE events, instructions, voice objects and newer names, checked
against OpenAI's OpenAPI description (tests/data/openai_speech_openapi.yaml) and the real client."""
from pathlib import Path
import asyncio
import base64
import json

from openai import OpenAI
from test_openai_api import decoded_samples
import httpx
import jsonschema
import numpy as np
import pytest
import yaml

from serve_app.config import IngressConfig
from serve_app.ingress.response_bodies import encoded_audio
from serve_app.ingress.speech_api import SpeechRequest
from serve_app.ingress.speech_validation import resolve_version, speech_job
from serve_app.ingress.sse_events import speech_events
from serve_app.protocol import AudioChunk
from serve_app.versions import OPENAI_VOICE_NAMES, VERSIONS

SPEC = yaml.safe_load((Path(__file__).parents[1] / "data" / "openai_speech_openapi.yaml").read_text())
TEXT = "Events carry the same audio as the plain stream does."


def validator(schema: str) -> jsonschema.Draft202012Validator:
    """A validator for one of the excerpt's schemas, its $refs resolved within the document."""
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{schema}", **SPEC})


def parse_events(lines) -> list[dict]:
    """`data: {json}` lines separated by blank ones, as OpenAI's description gives them."""
    lines = list(lines)
    assert all(line.startswith("data: ") for line in lines[0::2]) and not any(lines[1::2]), lines[:4]
    return [json.loads(line.removeprefix("data: ")) for line in lines[0::2]]


def check_events(events: list[dict]) -> bytes:
    """Every event valid per OpenAI's schemas (and nothing else in them); the joined audio."""
    *deltas, done = events
    for event in deltas:
        validator("SpeechAudioDeltaEvent").validate(event)
        assert set(event) == {"type", "audio"} and event["type"] == "speech.audio.delta"
    validator("SpeechAudioDoneEvent").validate(done)
    assert set(done) == {"type", "usage"} and done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    return b"".join(base64.b64decode(event["audio"]) for event in deltas)


# --- without Ray: the schema against the request model, the events from real encoders --------

def openai_bodies():
    """Request bodies valid per OpenAI's schema, one for each thing it allows that we serve."""
    yield from ({"model": "tts-1", "input": "Hi.", "voice": name} for name in OPENAI_VOICE_NAMES)
    yield {"model": "gpt-4o-mini-tts", "input": "Hi.", "voice": {"id": "af_bella"}, "instructions": "x" * 4096,
           "response_format": "opus", "speed": 0.25, "stream_format": "sse"}
    yield {"model": "gpt-4o-mini-tts-2025-12-15", "input": "Hi.", "voice": "marin", "stream_format": "audio",
           "response_format": "pcm", "speed": 4}


@pytest.mark.parametrize("body", list(openai_bodies()), ids=lambda body: f"{body['model']}-{body['voice']}")
def test_every_openai_valid_body_is_a_job_for_every_version(body):
    validator("CreateSpeechRequest").validate(body)
    request = SpeechRequest.model_validate(body)
    assert request.stream_format == body.get("stream_format", "audio")
    for version in VERSIONS.values():
        job = speech_job(request, version, version.voices, IngressConfig())
        assert job.options.voice.names[0] in version.voices


def test_the_schema_excerpt_refuses_what_openai_refuses():
    for bad in [{"model": "tts-1", "input": "Hi."}, {"model": "tts-1", "input": "Hi.", "voice": "ash", "seed": 1},
                {"model": "tts-1", "input": "Hi.", "voice": {"name": "ash"}},
                {"model": "tts-1", "input": "Hi.", "voice": "ash", "stream_format": "ndjson"}]:
        assert not validator("CreateSpeechRequest").is_valid(bad), bad


def test_voice_object_instructions_and_new_names():
    assert SpeechRequest(input="x", voice={"id": "af_bella"}).voice == "af_bella"
    assert resolve_version("gpt-4o-mini-tts", VERSIONS).name == "v1.0"
    marin = speech_job(SpeechRequest(input="x", voice="marin"), VERSIONS["v1.0"], VERSIONS["v1.0"].voices,
                       IngressConfig())
    assert marin.options.voice.names == ["af_heart"]
    for bad in [{"voice": {"id": "af_bella", "name": "x"}}, {"voice": {"id": 3}}, {"instructions": "x" * 4097}]:
        with pytest.raises(ValueError):
            SpeechRequest.model_validate({"input": "x", **bad})


async def chunks_of(audio: list[np.ndarray], tokens: int):
    for samples in audio:
        yield AudioChunk(samples, tokens=tokens)


@pytest.mark.parametrize("fmt", ["pcm", "mp3", "flac"])
def test_events_carry_the_encoded_stream_and_exact_usage(fmt):
    rng = np.random.default_rng(0)
    audio = [rng.uniform(-0.5, 0.5, 600 * frames).astype(np.float32) for frames in (7, 40, 3)]

    async def collect(body):
        return [part async for part in body]
    events = asyncio.run(collect(speech_events(chunks_of(audio, 11), fmt)))
    plain = asyncio.run(collect(encoded_audio(chunks_of(audio, 11), fmt)))
    parsed = parse_events(b"".join(events).decode().split("\n")[:-1])
    assert check_events(parsed) == b"".join(plain)
    assert parsed[-1]["usage"] == {"input_tokens": 33, "output_tokens": 50, "total_tokens": 83}


# --- through Ray Serve and the real openai client ---------------------------------------------

def client(url: str, requests: list | None = None) -> OpenAI:
    """The openai client; `requests` collects the JSON bodies it sends."""
    hooks = {"request": [lambda request: requests.append(json.loads(request.content))]} if requests is not None else {}
    return OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=120,
                  http_client=httpx.Client(event_hooks=hooks, timeout=120))


def sse_speech(url: str, requests: list | None = None, **fields) -> tuple[str, list[dict]]:
    with client(url, requests).audio.speech.with_streaming_response.create(
            input=TEXT, stream_format="sse", **fields) as response:
        return response.headers["content-type"], parse_events(response.iter_lines())


@pytest.mark.parametrize("fmt", ["pcm", "mp3", "opus"])
def test_sse_events_from_the_openai_client_decode_to_the_plain_audio(both_versions, fmt):
    fields = {"model": "gpt-4o-mini-tts", "voice": "marin", "response_format": fmt}
    content_type, events = sse_speech(both_versions, **fields, extra_body={"seed": 3})
    assert content_type.startswith("text/event-stream")
    plain = client(both_versions).audio.speech.create(input=TEXT, **fields, extra_body={"seed": 3}).content
    joined = check_events(events)
    assert len(events) >= 2
    if fmt == "opus":  # an Ogg stream's serial number is random: compare the decoded audio
        assert decoded_samples(joined, fmt) == decoded_samples(plain, fmt)
    else:
        assert joined == plain


def test_sse_usage_counts_the_models_tokens_and_frames(both_versions):
    requests: list = []
    _, events = sse_speech(both_versions, requests, model="tts-1", voice={"id": "af_bella"},
                           response_format="pcm", instructions="Speak cheerfully.")
    validator("CreateSpeechRequest").validate(requests[0])  # what the client sent is OpenAI's shape
    samples = len(check_events(events)) // 2
    usage = events[-1]["usage"]
    phonemized = httpx.post(f"{both_versions}/v1/audio/phonemize", timeout=60,
                            json={"input": TEXT, "voice": "af_bella"}).json()
    assert usage["input_tokens"] == sum(len(ids) for ids in phonemized["tokens"]) > 0
    assert usage["output_tokens"] * 600 == samples


def test_instructions_are_accepted_and_change_nothing(both_versions):
    def pcm(**extra):
        return client(both_versions).audio.speech.create(model="tts-1", voice="shimmer", input=TEXT,
                                                         response_format="pcm", extra_body={"seed": 9}, **extra)
    assert pcm(instructions="Whisper, slowly.").content == pcm().content


def test_new_voice_names_and_the_object_form_pick_kokoro_voices(both_versions):
    def pcm(voice, model="kokoro"):
        return client(both_versions).audio.speech.create(model=model, voice=voice, input=TEXT,
                                                         response_format="pcm", extra_body={"seed": 4}).content
    assert pcm("marin") == pcm("af_heart") == pcm({"id": "af_heart"}, "gpt-4o-mini-tts")
    assert pcm("marin", "v0.19") == pcm("af_bella", "v0.19")
