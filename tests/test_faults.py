"""Faults: replicas dying mid-stream, pieces too slow, a stuck model thread, errors that leak nothing.

Two services in the session's Serve: the real one (2 tiny-model replicas, one of them killed
with SIGKILL while streams run), and the real ingress in front of a fake model that dies, or
stalls, on cue (the word DIEBEFORE, DIEAFTER, DIEATEND, STALL or HANGATEND in a
piece), so each path is hit for sure.
"""
from pathlib import Path
import asyncio
import base64
import json
import os
import signal
import sys
import threading
import time

from ray import cloudpickle, serve
from websockets.asyncio.client import connect
import httpx
import numpy as np
import pytest

from serve_app.config import BatchPolicy, IngressConfig
from serve_app.errors import ServiceError
from serve_app.ingress.first_audio import INTERRUPTED
from serve_app.ingress.http_errors import as_service_error
from serve_app.ingress.speech_ingress import SpeechIngress
from serve_app.model.model_thread import ModelThread
from serve_app.protocol import AudioChunk
from serve_app.versions import V1_0

from conftest import deploy, project_app_config

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # FakeModel runs in replicas, which lack tests/

SENTENCE = "Esta es una frase de prueba, con algunas palabras más para que dure un poco."
FAKE_PREFIX = "/fake"
STREAM_BOUND_S = 120  # every stream ends (complete or with the documented error) within this
PIECE_TIMEOUT_S = 6  # the fake service's bound on a piece's silence
KILLED_BOUND_S = 300  # the same with one replica of the real model left, on a loaded 2-core machine


@serve.deployment(name="FakeModel", num_replicas=2, ray_actor_options={"num_cpus": 0})
class FakeModel:
    """A model replica's interface, speaking 0.1 s of silence per piece; dies or stalls on cue.

    A cue file in `cues` makes the death happen once, on whichever replica reads it first.
    """

    def __init__(self, cues: str):
        self.cues = Path(cues)

    def voices(self) -> list[str]:
        return ["ef_dora"]

    def vocab(self) -> list[str]:
        return []  # only phoneme input is checked against it

    def pid(self) -> int:
        return os.getpid()

    def _once(self, cue: str, text: str) -> bool:
        if cue not in text:
            return False
        try:
            (self.cues / cue).unlink()
        except FileNotFoundError:
            return False
        return True

    async def forward(self, text: str, options, due: float | None = None):
        if "STALL" in text:
            await asyncio.sleep(60)
        if self._once("DIEBEFORE", text):
            os._exit(1)
        # One chunk, the piece's last, unless the piece is to die part-way through.
        yield AudioChunk(np.zeros(2400, np.float32), last="DIEAFTER" not in text)
        for cue in ("DIEAFTER", "DIEATEND"):
            if cue in text:
                await asyncio.sleep(0.5)  # the chunk reaches the ingress and the client first
                if self._once(cue, text):
                    os._exit(1)
        if "HANGATEND" in text:
            await asyncio.sleep(2 * PIECE_TIMEOUT_S)  # the call never closes within the piece's bound


def replica_pids(handle, calls: int = 24) -> set:
    """Each replica's pid that answered, and the errors of calls that reached a dead one."""
    async def ask():
        return await asyncio.gather(*[handle.pid.remote() for _ in range(calls)], return_exceptions=True)
    return set(asyncio.run(ask()))


def wait_for_replicas(handle, replicas: int = 2, dead: frozenset = frozenset()) -> set[int]:
    """Until `replicas` replicas answer and none is dead (a killed one replaced); their pids."""
    deadline = time.monotonic() + KILLED_BOUND_S
    while True:
        answers = replica_pids(handle)
        pids = {pid for pid in answers if isinstance(pid, int)} - dead
        if len(pids) >= replicas and pids == answers:
            return pids
        assert time.monotonic() < deadline, f"fewer than {replicas} live replicas: {answers}"
        time.sleep(1)


@pytest.fixture(scope="module")
def fake_app(serve_url, tmp_path_factory):
    cues = tmp_path_factory.mktemp("cues")
    # Two pieces in flight, as served: a piece beside the dying one on its replica is sent again or,
    # when its last chunk had come, complete. Bounds above the retries' pauses (0.5 + 1 + 2 s), which
    # they include.
    config = IngressConfig(first_piece_chars=30, piece_chars=40, start_timeout_s=6, piece_timeout_s=PIECE_TIMEOUT_S,
                           pieces_in_flight=2)
    serve.run(SpeechIngress.bind({"v1.0": FakeModel.bind(str(cues))}, config), name="faults-fake",
              route_prefix=FAKE_PREFIX)
    yield f"{serve_url}{FAKE_PREFIX}", cues
    serve.delete("faults-fake")


@pytest.fixture
def fake(fake_app):
    """The fake service with both model replicas up (an earlier test may have killed one)."""
    wait_for_replicas(serve.get_deployment_handle("FakeModel", app_name="faults-fake"))
    return fake_app


def three_pieces(cue: str = "", where: int = 1) -> str:
    words = ["First piece here.", "Second piece says hello.", "Third piece is this one."]
    words[where] = words[where].replace("hello" if where == 1 else "piece", cue or "hello")
    return " ".join(words)


def speak(url: str, text: str, path: str = "/v1/audio/speech", **body) -> httpx.Response:
    return httpx.post(f"{url}{path}", timeout=STREAM_BOUND_S,
                      json={"input": text, "voice": "ef_dora", "response_format": "pcm", **body})


def test_a_piece_whose_replica_died_before_any_audio_goes_to_another(fake):
    url, cues = fake
    (cues / "DIEBEFORE").touch()
    response = speak(url, three_pieces("DIEBEFORE"))
    assert response.status_code == 200
    assert len(response.content) == 3 * 2400 * 2  # every piece's audio, once
    assert not (cues / "DIEBEFORE").exists()  # the death happened


def test_a_first_piece_whose_replica_died_is_retried_too(fake):
    url, cues = fake
    (cues / "DIEBEFORE").touch()
    response = speak(url, three_pieces("DIEBEFORE", where=0))
    assert response.status_code == 200 and len(response.content) == 3 * 2400 * 2


def test_a_replica_dying_after_a_pieces_last_chunk_leaves_the_stream_whole(fake):
    url, cues = fake
    (cues / "DIEATEND").touch()
    response = speak(url, three_pieces("DIEATEND"))  # a cut body would raise here
    assert response.status_code == 200
    assert len(response.content) == 3 * 2400 * 2  # every piece's audio, none twice
    # The death happened, just after the stream ended: the ingress does not wait for a piece's call to close.
    deadline = time.monotonic() + STREAM_BOUND_S
    while (cues / "DIEATEND").exists():
        assert time.monotonic() < deadline, "the replica never reached its death"
        time.sleep(0.1)


def test_a_replica_hanging_after_a_pieces_last_chunk_leaves_the_stream_whole(fake):
    url, _ = fake
    response = speak(url, three_pieces("HANGATEND"))  # a stream cut at the piece's timeout would raise here
    assert response.status_code == 200
    assert len(response.content) == 3 * 2400 * 2


def test_a_replica_dying_after_sending_audio_ends_the_audio_stream_early(fake):
    url, cues = fake
    (cues / "DIEAFTER").touch()
    received = bytearray()
    body = {"input": three_pieces("DIEAFTER"), "voice": "ef_dora", "response_format": "pcm"}
    # The chunked body never gets its end: the documented sign of a stream cut short.
    with pytest.raises(httpx.RemoteProtocolError), \
            httpx.stream("POST", f"{url}/v1/audio/speech", timeout=STREAM_BOUND_S, json=body) as response:
        assert response.status_code == 200
        for part in response.iter_raw():
            received += part
    assert 2400 * 2 <= len(received) < 3 * 2400 * 2  # the first piece's audio, not all three


def test_a_replica_dying_after_sending_audio_ends_the_captioned_stream_with_an_error_line(fake):
    url, cues = fake
    (cues / "DIEAFTER").touch()
    response = speak(url, three_pieces("DIEAFTER"), path="/v1/audio/speech/captioned")
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert base64.b64decode(lines[0]["audio"])  # audio came first
    assert lines[-1] == {"error": {"message": INTERRUPTED, "type": "server_error", "param": None,
                                   "code": "stream_interrupted"}}
    assert not any(line.get("done") for line in lines)


def test_a_replica_dying_after_sending_audio_ends_the_sse_stream_with_an_error_event(fake):
    url, cues = fake
    (cues / "DIEAFTER").touch()
    response = speak(url, three_pieces("DIEAFTER"), stream_format="sse")
    assert response.status_code == 200
    events = [json.loads(line.removeprefix("data: ")) for line in response.text.splitlines() if line]
    assert events[0]["type"] == "speech.audio.delta" and base64.b64decode(events[0]["audio"])
    assert events[-1] == {"type": "error", "error": {"message": INTERRUPTED, "type": "server_error", "param": None,
                                                     "code": "stream_interrupted"}}
    assert not any(e["type"] == "speech.audio.done" for e in events)


def test_a_request_that_cannot_start_in_time_is_shed_with_503(fake):
    url, _ = fake
    started = time.monotonic()
    response = speak(url, three_pieces("STALL", where=0))
    assert time.monotonic() - started < 30  # the start bound (6 s), not the stalled model's 60 s
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "overloaded"


def test_a_later_piece_too_slow_ends_the_stream_instead_of_hanging(fake):
    url, _ = fake
    started = time.monotonic()
    response = speak(url, three_pieces("STALL"), path="/v1/audio/speech/captioned")
    assert time.monotonic() - started < 30
    assert json.loads(response.text.splitlines()[-1])["error"]["code"] == "stream_interrupted"


async def live_messages(url: str, text: str) -> list[dict]:
    """The live route's messages for one flushed utterance, until its end or its error."""
    async with connect(url.replace("http://", "ws://") + "/v1/audio/speech/live", open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "start", "voice": "ef_dora", "response_format": "pcm"}))
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "text", "text": text}))
        await ws.send(json.dumps({"type": "flush"}))
        messages = []
        while not messages or messages[-1]["type"] not in ("error", "utterance.done"):
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), STREAM_BOUND_S)))
            if messages[-1]["type"] == "audio":
                await ws.send(json.dumps({"type": "ack", "seq": messages[-1]["seq"]}))
        return messages


@pytest.mark.parametrize("where, code", [(0, "overloaded"), (1, "stream_interrupted")])
def test_a_live_piece_too_slow_ends_its_utterance_with_an_error_within_the_bound(fake, where, code):
    url, _ = fake
    started = time.monotonic()
    messages = asyncio.run(live_messages(url, three_pieces("STALL", where)))
    assert time.monotonic() - started < 30  # the fake's bounds (6 s each), not its 60 s stall
    assert [m["type"] for m in messages] == ["audio"] * where + ["error"]
    assert messages[-1]["error"]["code"] == code and messages[-1]["utterance"] == 0


def test_health_reports_the_fake_version_ready(fake):
    url, _ = fake
    response = httpx.get(f"{url}/health", timeout=30)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "versions": ["v1.0"], "ready": {"v1.0": True}}


def test_unexpected_failures_reach_clients_as_a_short_generic_message():
    leaked = RuntimeError("ActorID 5f3c... on node 10.0.0.7 at /tmp/ray/session_latest/logs/worker-1.err")
    error = as_service_error(leaked)
    assert type(error) is ServiceError and error.status == 500 and error.code == "synthesis_failed"
    assert "ActorID" not in error.message and "10.0.0.7" not in error.message and "/tmp" not in error.message


def test_a_stuck_model_thread_shows_in_busy_for():
    release = threading.Event()
    thread = ModelThread(lambda items: [release.wait(30)] * len(items), BatchPolicy(max_batch_size=1))

    async def submit():
        with thread.stream() as stream:
            future = stream.submit("item", None, 1)
            await asyncio.sleep(0.5)
            busy = thread.busy_for()
            release.set()
            await future
        return busy

    assert asyncio.run(submit()) >= 0.4  # what check_health compares with stuck_batch_s
    idle_by = time.monotonic() + 10  # the caller may hear its result a moment before the thread is done
    while thread.busy_for() and time.monotonic() < idle_by:
        time.sleep(0.01)
    assert thread.busy_for() == 0.0


# The real service: two tiny-model replicas, one killed while streams run.

@pytest.fixture(scope="module")
def two_replicas(serve_url, release) -> str:
    app = project_app_config(model_root=str(release.root), weights="local", versions=["v1.0"],
                             configs={"v1.0": release.configs["v1.0"]}, first_piece_chars=40, piece_chars=150)
    model = next(d for d in app["deployments"] if d["name"] == V1_0.deployment)
    model.pop("autoscaling_config")
    model["num_replicas"] = 2
    deploy(app, timeout_s=KILLED_BOUND_S)  # two replicas start at once on a loaded machine
    return serve_url


class Stream(threading.Thread):
    """One client reading a long stream, recording how it ended."""

    def __init__(self, url: str, path: str):
        super().__init__(daemon=True)
        self.url, self.path = url, path
        self.body, self.status, self.error = bytearray(), None, None
        self.started = threading.Event()

    def run(self) -> None:
        try:
            body = {"input": " ".join([SENTENCE] * 6), "voice": "ef_dora", "response_format": "pcm"}
            with httpx.stream("POST", f"{self.url}{self.path}", timeout=KILLED_BOUND_S, json=body) as response:
                self.status = response.status_code
                for part in response.iter_raw():
                    self.body += part
                    self.started.set()
        except httpx.HTTPError as e:
            self.error = e
        self.started.set()


def ended_as_documented(stream: Stream) -> bool:
    """Complete audio, or the documented end of a stream whose replica died mid-piece."""
    if stream.path.endswith("captioned"):
        last = json.loads(bytes(stream.body).splitlines()[-1])
        return last.get("done") is True or last.get("error", {}).get("code") == "stream_interrupted"
    if stream.error is not None:
        return isinstance(stream.error, httpx.RemoteProtocolError) and len(stream.body) > 0
    return len(stream.body) > 0 and len(stream.body) % 2 == 0


def test_killing_a_replica_mid_stream_ends_every_stream_as_documented_and_serve_recovers(two_replicas):
    url = two_replicas
    model = serve.get_deployment_handle(V1_0.deployment, app_name="kokoro")
    before = wait_for_replicas(model)
    streams = [Stream(url, "/v1/audio/speech") for _ in range(2)] + [Stream(url, "/v1/audio/speech/captioned")]
    for stream in streams:
        stream.start()
    assert all(stream.started.wait(STREAM_BOUND_S) for stream in streams)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    deadline = time.monotonic() + KILLED_BOUND_S
    for stream in streams:
        stream.join(max(0.0, deadline - time.monotonic()))
    assert not any(stream.is_alive() for stream in streams)  # nothing hangs
    assert all(stream.status == 200 and ended_as_documented(stream) for stream in streams), \
        [(s.status, s.error, len(s.body)) for s in streams]

    # New requests succeed at once: a piece sent to the dead replica goes to the live one.
    for _ in range(3):
        response = speak(url, SENTENCE)
        assert response.status_code == 200 and len(response.content) > 0

    wait_for_replicas(model, dead=frozenset({victim}))  # Serve replaced the killed replica
    assert httpx.get(f"{url}/health", timeout=30).json()["ready"] == {"v1.0": True}
