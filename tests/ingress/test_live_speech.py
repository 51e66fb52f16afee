"""Live text over a WebSocket (/v1/audio/speech/live): a real `websockets` client feeding words as an LLM does."""
import asyncio
import base64
import json
import time

from ray import serve
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
import httpx
import numpy as np
import pytest

from serve_app.config import IngressConfig
from serve_app.errors import InvalidRequest
from serve_app.ingress.live_protocol import parse_message
from serve_app.ingress.live_speech import AudioCredit, LiveJob, LiveSession
from serve_app.ingress.speech_validation import text_pieces
from serve_app.protocol import SynthesisOptions
from serve_app.text.live_text import LiveText
from serve_app.text.pieces import split_text
from serve_app.versions import V1_0

from conftest import deploy, project_app_config

KEY = "live-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WINDOW_S, MAX_CHARS, IDLE_S = 3.0, 2500, 0.5
# No commas, and no two sentences fit one piece: split_text cuts at every sentence end, as live text is cut.
SENTENCES = ["The quick brown fox jumps over the lazy dog and runs into the deep green forest.",
             "Every morning the baker opens his small shop before the sun rises over the hills.",
             "Some people like to drink hot tea with honey on a cold and rainy winter afternoon."]
TEXT = " ".join(SENTENCES)


def fed(text: str, deltas: list[str], first: int = 100, later: int = 150) -> list[str]:
    live = LiveText(first, later)
    return [piece for delta in deltas for piece in live.add(delta)] + live.take_all()


def words_of(text: str) -> list[str]:
    """The deltas of an LLM's token stream: each word with its leading space."""
    first, *rest = text.split(" ")
    return [first] + [" " + word for word in rest]


@pytest.mark.parametrize("text", [TEXT, "One. Two three four five six seven eight nine ten. " * 30,
                                  "Para one: still going\nPara two, with e.g. an abbreviation. " * 10,
                                  "x" * 400 + " tail", "Dr. Smith came. He said “Stop.” Then left.",
                                  "Say it, [Kokoro, yes](/kˈOkəɹO/), then stop. " * 8])
def test_live_text_loses_nothing_and_keeps_the_piece_limits(text):
    for deltas in (words_of(text), [text], [text[i:i + 7] for i in range(0, len(text), 7)]):
        pieces = fed(text, deltas)
        assert " ".join(pieces) == " ".join(text.split()) or "".join(pieces) == "".join(text.split())
        assert len(pieces[0]) <= 100 and all(0 < len(p) <= 150 and p == p.strip() for p in pieces)
        assert not any("\n" in p for p in pieces)


def test_an_inline_pronunciation_is_never_cut_while_it_arrives():
    text = "Well, [Kokoro, the model](/kˈOkəɹO/) speaks. Next one."
    pieces = fed(text, [text[i:i + 3] for i in range(0, len(text), 3)])
    assert pieces == ["Well,", "[Kokoro, the model](/kˈOkəɹO/) speaks.", "Next one."]


def test_text_longer_than_a_piece_is_cut_where_split_text_cuts_it():
    text = "word " * 30 + "and a sentence end. " + "more words " * 40
    assert fed(text, words_of(text)) == split_text(text)  # no boundary fits: split_text's forced cuts


def test_live_text_speaks_a_confirmed_boundary_before_the_rest_arrives():
    live = LiveText(100, 150)
    assert live.add("Well, I think") == ["Well,"]  # a first piece may end at a comma
    assert live.add(" so, yes. And") == ["I think so, yes."]  # later ones at a sentence end
    assert live.add(" then.") == [] and live.pending == "And then."  # not confirmed: "then. e.g." would go on
    assert live.add("\nNext") == ["And then."]  # a line break ends a paragraph
    assert live.take_all() == ["Next"] and live.pending == ""


@pytest.mark.parametrize("raw, param", [('{"type": "start", "speed": 9}', "speed"), ('{"type": "flush", "x": 1}', "x"),
                                        ('{"type": "nope"}', None), ("not json", None), (None, None)])
def test_a_bad_message_is_an_invalid_request(raw, param):
    with pytest.raises(InvalidRequest) as bad:
        parse_message(raw)
    assert bad.value.param == param and bad.value.code == "invalid_message"


def test_start_takes_the_speech_requests_options_and_their_forms():
    start = parse_message('{"type": "start", "voice": {"id": "af_bella"}, "speed": 1.5, "seed": 3}')
    assert (start.voice, start.speed, start.seed, start.response_format) == ("af_bella", 1.5, 3, "mp3")


def test_audio_past_the_window_waits_for_an_ack():
    async def run():
        credit = AudioCredit(window_s=3)
        await credit.take(0, 5)  # one message always goes when nothing is unacknowledged
        blocked = asyncio.create_task(credit.take(1, 1))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        credit.ack(0)
        await asyncio.wait_for(blocked, 1)
        await credit.take(2, 2)  # 1 + 2 s fit the window
    asyncio.run(run())


class ScriptedSocket:
    """A client that sends these messages, then waits; keeps what the server sends."""

    def __init__(self, messages: list[dict]):
        self._incoming = [{"type": "websocket.receive", "text": json.dumps(m)} for m in messages]
        self.sent, self.close_code = [], None

    async def receive(self) -> dict:
        if not self._incoming:
            await asyncio.Event().wait()  # no more messages: the client only listens
        return self._incoming.pop(0)

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int) -> None:
        self.close_code = code


def test_every_flush_is_answered_even_when_nothing_in_it_is_speakable():
    """Zero-width and format characters are dropped as they arrive: the utterance holds nothing, yet
    the client waiting for its end gets `utterance.done` (no audio, not even a wav header)."""
    ws = ScriptedSocket([{"type": "text", "text": "\u200b\u2060\ufeff\u00ad"}, {"type": "flush"},
                         {"type": "flush"}, {"type": "text", "text": "  \n "}, {"type": "flush"}, {"type": "close"}])
    job = LiveJob(V1_0, SynthesisOptions(voice="af_heart", lang_code="a"), "wav", [])

    async def run():  # no piece, so no model call and no metric
        await asyncio.wait_for(LiveSession(ws, None, job, IngressConfig(), None).run(), 10)
    asyncio.run(run())
    assert ws.sent == [{"type": "utterance.done", "utterance": n, "seconds": 0.0} for n in range(3)]
    assert ws.close_code == 1000


@pytest.fixture(scope="module")
def live_url(serve_url, release) -> str:
    app = project_app_config(model_root=str(release.root), weights="local", versions=["v1.0"],
                             configs={"v1.0": release.configs["v1.0"]}, api_key=KEY, live_idle_s=IDLE_S,
                             live_unacked_audio_s=WINDOW_S, max_input_chars=MAX_CHARS)
    model = next(d for d in app["deployments"] if d["name"] == V1_0.deployment)
    model.pop("autoscaling_config", None)
    model["num_replicas"] = 1  # one replica: its stats see every call
    deploy(app)
    return serve_url.replace("http://", "ws://") + "/v1/audio/speech/live"


async def model_stats() -> dict:
    """The counters of the one model replica (chunks made, calls cancelled)."""
    return await serve.get_deployment_handle(V1_0.deployment, app_name="kokoro").stats.remote()


class Listener:
    """Reads the server's messages in the background, acknowledging audio unless paused."""

    def __init__(self, ws):
        self.ws, self.messages, self.acking = ws, [], True
        self.first_audio_at: float | None = None
        self._task = asyncio.create_task(self._listen())

    async def _listen(self):
        async for raw in self.ws:
            message = json.loads(raw)
            self.messages.append(message)
            if message["type"] == "audio":
                self.first_audio_at = self.first_audio_at or time.monotonic()
                if self.acking:
                    try:
                        await self.ws.send(json.dumps({"type": "ack", "seq": message["seq"]}))
                    except ConnectionClosedOK:  # the test is done with the connection
                        return

    async def until(self, kind: str, timeout: float = 120, count: int = 1) -> dict:
        deadline = time.monotonic() + timeout
        while sum(m["type"] == kind for m in self.messages) < count:
            assert time.monotonic() < deadline, f"no {kind}: {[m['type'] for m in self.messages]}"
            assert not self._task.done(), self._task
            await asyncio.sleep(0.05)
        return [m for m in self.messages if m["type"] == kind][count - 1]

    def pcm(self, utterance: int) -> np.ndarray:
        data = b"".join(base64.b64decode(m["audio"]) for m in self.messages
                        if m["type"] == "audio" and m["utterance"] == utterance)
        return np.frombuffer(data, dtype="<i2").astype(np.int32)


async def opened(url: str, **options):
    ws = await connect(url, additional_headers=AUTH, open_timeout=60, max_size=2**24)
    await ws.send(json.dumps({"type": "start", "voice": "af_heart", "response_format": "pcm", **options}))
    ready = json.loads(await ws.recv())
    assert ready["type"] == "ready" and ready["sample_rate"] == 24000, ready
    return ws, Listener(ws)


async def send(ws, kind: str, **fields):
    await ws.send(json.dumps({"type": kind, **fields}))


def test_first_audio_arrives_before_the_last_word_is_sent(live_url):
    text = "Sure, here is the plan. " + TEXT  # the first piece is "Sure,"

    async def talk():
        ws, listener = await opened(live_url)
        async with ws:
            for word in words_of(text):  # an LLM at 5 words a second: 10 s in all
                await send(ws, "text", text=word)
                await asyncio.sleep(0.2)
            last_word_at = time.monotonic()
            await send(ws, "flush")
            done = await listener.until("utterance.done")
        return listener, last_word_at, done
    listener, last_word_at, done = asyncio.run(talk())
    assert listener.first_audio_at < last_word_at
    audio = [m for m in listener.messages if m["type"] == "audio"]
    words = [w for m in audio for w in m["words"]]
    assert [w["word"] for w in words] == text.split()  # word times come with the audio, in order
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and starts[0] >= 0 and words[-1]["end"] <= done["seconds"] + 0.01
    assert abs(len(listener.pcm(0)) / 24000 - done["seconds"]) < 0.01


def test_idle_text_is_spoken_without_a_flush(live_url):
    async def talk():
        ws, listener = await opened(live_url)
        async with ws:
            await send(ws, "text", text="Hold on")  # no boundary, no flush
            await listener.until("audio", timeout=60)
            assert not any(m["type"] == "utterance.done" for m in listener.messages)
            await send(ws, "close")
            await listener.until("utterance.done")
            await asyncio.wait_for(ws.wait_closed(), 60)
        return ws.close_code
    assert asyncio.run(talk()) == 1000


def one_request_pcm(url: str, text: str, seed: int) -> np.ndarray:
    http_url = url.replace("ws://", "http://").removesuffix("/v1/audio/speech/live")
    response = httpx.post(f"{http_url}/v1/audio/speech", headers=AUTH, timeout=120, json={
        "input": text, "voice": "af_heart", "response_format": "pcm", "seed": seed})
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, dtype="<i2").astype(np.int32)


def test_utterances_fed_live_sound_as_the_same_text_in_one_request(live_url):
    second = SENTENCES[2] + " " + SENTENCES[0]
    cut_up = [second[i:i + 7] for i in range(0, len(second), 7)]  # tokens that end mid-word
    assert fed(TEXT, words_of(TEXT)) == split_text(TEXT) and len(split_text(TEXT)) == 3
    assert fed(second, cut_up) == split_text(second) and len(split_text(second)) == 2

    async def talk():
        ws, listener = await opened(live_url, seed=7)
        async with ws:
            for word in words_of(TEXT):
                await send(ws, "text", text=word)
            await send(ws, "flush")
            for delta in cut_up:
                await send(ws, "text", text=delta)
            await send(ws, "flush")
            await listener.until("utterance.done", count=2)
        return listener
    listener = asyncio.run(talk())
    for utterance, text in enumerate([TEXT, second]):
        live, whole = listener.pcm(utterance), one_request_pcm(live_url, text, seed=7)
        assert len(live) == len(whole) > 0
        assert np.abs(live - whole).max() <= 1


def test_live_text_is_checked_as_a_request_is(live_url):
    digits = "1" * 90 + "."  # 90 characters, one piece, but ~900 phonemes: cut by what it expands to
    budgeted = text_pieces(digits, IngressConfig(max_input_chars=MAX_CHARS))
    assert len(budgeted) >= 4

    async def talk():
        ws, listener = await opened(live_url, seed=7)
        async with ws:
            await send(ws, "text", text="Say [this](/ðˈɪ7/) now.")  # 7 is no phoneme of the model
            await send(ws, "flush")
            await listener.until("error")
            for delta in ["Hel\u200blo", " wor\x07ld", "."]:  # a zero-width space and a bell
                await send(ws, "text", text=delta)
            await send(ws, "flush")
            await listener.until("utterance.done")
            before = await model_stats()
            await send(ws, "text", text=digits)
            await send(ws, "flush")
            await listener.until("utterance.done", count=2)
            return listener, (await model_stats())["chunks"] - before["chunks"]
    listener, made = asyncio.run(talk())
    error = next(m for m in listener.messages if m["type"] == "error")
    assert error["error"]["code"] == "invalid_phonemes" and error["utterance"] == 0
    assert not any(m["type"] == "audio" and m["utterance"] == 0 for m in listener.messages)
    live, whole = listener.pcm(1), one_request_pcm(live_url, "Hello world.", seed=7)
    assert len(live) == len(whole) > 0 and np.abs(live - whole).max() <= 1
    assert made >= len(budgeted)


def test_cancel_stops_the_work_in_flight_and_the_connection_goes_on(live_url):
    long_text = " ".join(SENTENCES * 8)
    pieces = len(split_text(long_text))

    async def talk():
        ws, listener = await opened(live_url)
        async with ws:
            before = await model_stats()
            await send(ws, "text", text=long_text)
            await send(ws, "flush")
            await listener.until("audio")
            await send(ws, "cancel")
            cancelled = await listener.until("cancelled")
            await asyncio.sleep(2)
            after = await model_stats()
            await asyncio.sleep(2)
            later = await model_stats()
            audio_before_cancel = len([m for m in listener.messages if m["type"] == "audio"])
            await send(ws, "text", text="Back again.")  # barge-in over: the next utterance is spoken
            await send(ws, "flush")
            done = await listener.until("utterance.done")
        return before, after, later, cancelled, done, audio_before_cancel
    before, after, later, cancelled, done, audio_count = asyncio.run(talk())
    made = after["chunks"] - before["chunks"]
    assert made < pieces / 2, (made, pieces)
    assert later["chunks"] == after["chunks"]  # nothing keeps running for the cancelled speech
    assert after["cancelled"] > before["cancelled"]
    assert cancelled["utterance"] == 0 and done["utterance"] == 1 and done["seconds"] > 0
    assert audio_count < pieces


def test_a_reader_that_stops_stops_the_synthesis_and_the_text_it_takes(live_url):
    paragraph = " ".join(SENTENCES * 3)  # ~750 characters, 9 pieces

    async def talk():
        ws, listener = await opened(live_url)
        listener.acking = False  # reads, but acknowledges nothing: a client that does not play the audio
        async with ws:
            before = await model_stats()
            for _ in range(6):  # 4,500 characters against a hold of 2,500
                await send(ws, "text", text=paragraph)
                await send(ws, "flush")
            await listener.until("error", timeout=30)
            await asyncio.sleep(8)
            stalled = await model_stats()
            audio = [m for m in listener.messages if m["type"] == "audio"]
            listener.acking = True
            await send(ws, "ack", seq=audio[-1]["seq"])
            await listener.until("audio", count=len(audio) + 1)  # acknowledged: the speech goes on
        return before, stalled, audio, listener.messages
    before, stalled, audio, messages = asyncio.run(talk())
    errors = [m["error"] for m in messages if m["type"] == "error"]
    assert errors and all(e["code"] == "input_too_long" for e in errors)
    made = stalled["chunks"] - before["chunks"]
    assert made <= len(audio) + 3, (made, len(audio))  # the sent ones, one held, the next piece's
    assert made < 3 * len(split_text(paragraph))  # far from the pieces it was given
    held_seconds = sum(len(base64.b64decode(m["audio"])) / 2 / 24000 for m in audio)
    longest = max(len(base64.b64decode(m["audio"])) / 2 / 24000 for m in audio)
    assert held_seconds <= WINDOW_S + longest


def test_bad_start_is_an_error_and_a_wrong_key_is_refused(live_url):
    async def talk():
        async with connect(live_url, additional_headers=AUTH, open_timeout=60) as ws:
            await send(ws, "start", voice="zz_nobody")
            error = json.loads(await ws.recv())
            await asyncio.wait_for(ws.wait_closed(), 30)
            return error, ws.close_code
    error, code = asyncio.run(talk())
    assert error["type"] == "error" and error["error"]["param"] == "voice" and code == 1008

    async def intrude():
        async with connect(live_url, additional_headers={"Authorization": "Bearer wrong"}, open_timeout=60):
            pass
    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(intrude())
    assert refused.value.response.status_code == 403
