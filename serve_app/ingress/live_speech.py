"""Live speech over one WebSocket: text deltas in, each piece's audio out as soon as it is made, in order.

A connection is a `LiveSession`: after `start` it reads client messages, cuts the text into pieces
as boundaries appear (serve_app.text.live_text) and hands them to its `Speaker`, which keeps up to
`pieces_in_flight` model calls running and sends their audio in order, one utterance (the text
between flushes) after another, each with its own encoder and word times from its start.

Bounds: the text taken but not yet spoken is at most `max_input_chars` (more is refused with an
error); the audio sent but not yet acknowledged by the client is at most `live_unacked_audio_s`
(Serve's proxy buffers what a replica sends without limit, so the client's `ack`s are the only
sign of a slow reader); once that window is full the speaker stops taking model output, and
at most `pieces_in_flight` pieces of audio wait in the ingress. `cancel` stops the calls in flight.
"""
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from functools import partial
import asyncio
import json
import secrets
import time

from fastapi import WebSocket
from ray.serve.handle import DeploymentHandle

from ..config import IngressConfig
from ..errors import InputTooLong, InvalidRequest, ServiceError
from ..logs import get_logger
from ..metrics import IngressMetrics
from ..protocol import SAMPLE_RATE, AudioChunk, SynthesisOptions
from ..text.live_text import LiveText
from ..text.normalise import normalise_text
from ..text.pronunciation import check_inline
from ..versions import ModelVersion
from .audio_encoding import AudioEncoder, make_encoder
from .first_audio import interrupted
from .http_errors import as_service_error
from .live_protocol import Ack, Cancel, Close, Flush, Start, Text, audio_message, error_message, parse_message
from .piece_scheduling import InFlightWindow, Limits
from .response_bodies import timed_words
from .speech_validation import budgeted_pieces, resolve_version, synthesis_options

logger = get_logger()

# A fact a version's replicas hold, `voices` or `vocab` (the ingress asks them once).
ReplicaFacts = Callable[[ModelVersion, str], Awaitable[list[str]]]


@dataclass
class Spoken:
    """What the speaker is asked for, in order: a piece of an utterance, or (text None) its end."""

    utterance: int
    index: int = 0                        # the piece's place in its utterance
    text: str | None = None
    audio: asyncio.Queue | None = None    # its chunks as they are made, then None (or the error)
    call: asyncio.Task | None = None      # what fills `audio`


class AudioCredit:
    """Audio sent and not yet acknowledged, in seconds, kept under a window."""

    def __init__(self, window_s: float):
        self._window = window_s
        self._unacked: deque[tuple[int, float]] = deque()  # (seq, seconds)
        self._acked = asyncio.Event()

    async def take(self, seq: int, seconds: float) -> None:
        """Wait until audio message `seq` fits the window (one always does when none is unacknowledged)."""
        while self._unacked and sum(s for _, s in self._unacked) + seconds > self._window:
            self._acked.clear()
            await self._acked.wait()
        self._unacked.append((seq, seconds))

    def ack(self, seq: int) -> None:
        while self._unacked and self._unacked[0][0] <= seq:
            self._unacked.popleft()
        self._acked.set()


class Speaker:
    """Pieces to audio messages: up to `size` model calls running, audio sent in order."""

    def __init__(self, session: "LiveSession", size: int):
        self._session, self._slots = session, asyncio.Semaphore(size)
        self._asked: asyncio.Queue[Spoken] = asyncio.Queue()
        self._started: asyncio.Queue[Spoken] = asyncio.Queue()
        self._calls: set[asyncio.Task] = set()
        self.unspoken_chars = 0  # text asked for and not yet sent as audio
        self.tasks = [asyncio.create_task(self._start_pieces()), asyncio.create_task(self._send_audio())]

    def ask(self, item: Spoken) -> None:
        self.unspoken_chars += len(item.text or "")
        self._asked.put_nowait(item)

    async def drained(self) -> None:
        await self._asked.join()

    def stop(self) -> None:
        for task in [*self.tasks, *self._calls]:
            task.cancel()

    async def _start_pieces(self) -> None:
        while True:
            item = await self._asked.get()
            if item.text is not None:
                await self._slots.acquire()  # released once its audio is sent
                item.audio = asyncio.Queue(maxsize=1)  # a stalled sender stalls the reading of the call
                item.call = asyncio.create_task(self._session.synthesise(item))
                self._calls.add(item.call)
                item.call.add_done_callback(self._calls.discard)
            await self._started.put(item)

    async def _send_audio(self) -> None:
        failed = -1  # an utterance whose piece failed: the rest of it is dropped
        while True:
            item = await self._started.get()
            try:
                if item.utterance != failed:
                    await self._session.speak(item)
                elif item.call is not None:
                    item.call.cancel()
            except ServiceError as e:
                failed = item.utterance
                await self._session.send({**error_message(e), "utterance": item.utterance})
            finally:
                self.unspoken_chars -= len(item.text or "")
                if item.audio is not None:
                    self._slots.release()
                self._asked.task_done()


@dataclass(frozen=True)
class LiveJob:
    """A connection's checked `start`: what every piece of it is spoken with."""

    version: ModelVersion
    options: SynthesisOptions
    fmt: str
    vocab: list[str]  # the symbols inline pronunciations may use


class LiveSession:
    """One live connection, after `start`: its messages, utterances and audio."""

    def __init__(self, websocket: WebSocket, model: DeploymentHandle, job: LiveJob, config: IngressConfig,
                 metrics: IngressMetrics):
        self._ws, self._model, self._config, self._metrics = websocket, model, config, metrics
        self._version, self._options, self._fmt, self._vocab = job.version.name, job.options, job.fmt, job.vocab
        self._credit = AudioCredit(config.live_unacked_audio_s)
        self._utterance = 0
        self._text = self._new_text()
        self._speaker = Speaker(self, config.pieces_in_flight)
        self._seq = 0
        self._last_text = time.monotonic()
        self._encoder: tuple[int, AudioEncoder, float] | None = None  # (utterance, encoder, seconds sent)

    @property
    def utterances(self) -> int:
        return self._utterance

    def _new_text(self) -> LiveText:
        return LiveText(self._config.first_piece_chars, self._config.piece_chars)

    async def send(self, message: dict) -> None:
        await self._ws.send_text(json.dumps(message))

    async def run(self) -> None:
        """Messages until the client closes or goes; idle text is spoken after `live_idle_s`."""
        receiving, closing = asyncio.ensure_future(self._ws.receive()), None
        try:
            while True:
                waits = {receiving, *self._speaker.tasks, *([closing] if closing else [])}
                idle = None
                if self._text.pending:  # measured from the last text: acks keep coming meanwhile
                    idle = max(0.0, self._last_text + self._config.live_idle_s - time.monotonic())
                done, _ = await asyncio.wait(waits, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
                if closing in done:
                    await self._ws.close(1000)
                    return
                for task in done & set(self._speaker.tasks):
                    task.result()  # the speaker never ends by itself: raise what broke it
                if not done:
                    self._ask(self._text.take_all())
                elif receiving in done:
                    message = receiving.result()
                    if message["type"] == "websocket.disconnect":
                        return
                    receiving = asyncio.ensure_future(self._ws.receive())
                    if await self._handle(message.get("text"), closing is not None):
                        if closing is not None:
                            closing.cancel()
                        closing = asyncio.ensure_future(self._speaker.drained())  # this speaker's: cancel makes one
        finally:
            for task in (receiving, closing):
                if task is not None:
                    task.cancel()
            self._speaker.stop()

    async def _handle(self, raw: str | None, closing: bool) -> bool:
        """Act on one client message; True when the connection is to close once all is sent."""
        try:
            message = parse_message(raw)
        except InvalidRequest as e:
            await self.send(error_message(e))
            return False
        if isinstance(message, Text):
            await self._take_text(message.text)
        elif isinstance(message, Flush | Close):
            self._end_utterance(answered=isinstance(message, Flush))
        elif isinstance(message, Cancel):
            await self._cancel()
        elif isinstance(message, Ack):
            self._credit.ack(message.seq)
        else:  # Start
            await self.send(error_message(InvalidRequest("the connection has started already", code="invalid_message")))
        return isinstance(message, Close) or (closing and isinstance(message, Cancel))

    async def _take_text(self, text: str) -> None:
        self._last_text = time.monotonic()
        text = normalise_text(text)  # as a request's input is; a delta's boundaries stay where they were
        held = len(self._text.pending) + self._speaker.unspoken_chars
        if held + len(text) > self._config.max_input_chars:
            await self.send(error_message(InputTooLong(
                f"{held} characters are waiting to be spoken; this server holds at most "
                f"{self._config.max_input_chars}: send the rest once more audio has come", param="text",
                code="input_too_long")))
            return
        self._ask(self._text.add(text))

    def _ask(self, pieces: list[str]) -> None:
        first = self._text.pieces - len(pieces)
        limits = (self._config.first_piece_chars if first == 0 else self._config.piece_chars, self._config.piece_chars)
        for index, piece in enumerate(budgeted_pieces(pieces, *limits), first):
            self._speaker.ask(Spoken(self._utterance, index, piece))

    def _end_utterance(self, answered: bool) -> None:
        """Speak what is held and end the utterance. Every flush ends one, and is answered with its
        `utterance.done` even when nothing in it was speakable; a close ends only one that has text."""
        self._ask(self._text.take_all())
        if self._text.pieces or answered:
            self._speaker.ask(Spoken(self._utterance))
            self._utterance, self._text = self._utterance + 1, self._new_text()

    async def _cancel(self) -> None:
        """Barge-in: every piece not yet sent is dropped and its call cancelled."""
        self._speaker.stop()
        await asyncio.gather(*self._speaker.tasks, return_exceptions=True)
        self._speaker = Speaker(self, self._config.pieces_in_flight)
        self._credit = AudioCredit(self._config.live_unacked_audio_s)  # the client drops the cut audio
        begun = bool(self._text.pieces or self._text.pending)  # the utterance being written is cut too
        await self.send({"type": "cancelled", "utterance": self._utterance - (not begun)})
        self._utterance, self._text, self._encoder = self._utterance + begun, self._new_text(), None

    async def synthesise(self, item: Spoken) -> None:
        """One piece's audio into its queue, or the error that ended it."""
        window = InFlightWindow(self._model, [item.text], self._options, 1,
                                Limits(self._config.start_timeout_s, self._config.piece_timeout_s),
                                on_reject=partial(self._metrics.reject, self._version), first_index=item.index)
        timing_first_audio = time.perf_counter() if item.index == 0 else None  # an utterance's first audio
        try:
            check_inline(item.text, self._vocab, self._version)
            async with aclosing(window.chunks()) as chunks:  # closing it cancels the call
                async for chunk in chunks:
                    if timing_first_audio is not None:
                        self._metrics.first_audio.observe(time.perf_counter() - timing_first_audio,
                                                          tags={"version": self._version})
                        timing_first_audio = None
                    await item.audio.put(chunk)
            await item.audio.put(None)
        except InvalidRequest as e:
            await item.audio.put(e)
        except Exception as e:  # after an utterance's first piece its audio has begun: a cut, as over HTTP
            if item.index == 0:
                await item.audio.put(as_service_error(e))
            else:
                self._metrics.interrupt(self._version)
                await item.audio.put(interrupted(e))

    async def speak(self, item: Spoken) -> None:
        """Send one item's audio, in order: a piece's chunks, or the end of its utterance."""
        if item.text is None:
            await self._finish(item.utterance)
            return
        if self._encoder is None or self._encoder[0] != item.utterance:
            self._encoder = (item.utterance, make_encoder(self._fmt), 0.0)
        while (chunk := await item.audio.get()) is not None:
            if isinstance(chunk, ServiceError):
                raise chunk
            await self._send_chunk(chunk)

    async def _finish(self, utterance: int) -> None:
        """The end of an utterance: its stream's last bytes, then `utterance.done`. An utterance without
        pieces (a flush of nothing speakable) has no stream: no audio, not even a header, and 0 seconds."""
        seconds = 0.0
        if self._encoder is not None and self._encoder[0] == utterance:
            _, encoder, seconds = self._encoder
            if data := encoder.finish():
                await self._send_audio(utterance, data, [], 0.0)
        await self.send({"type": "utterance.done", "utterance": utterance, "seconds": round(seconds, 3)})

    async def _send_chunk(self, chunk: AudioChunk) -> None:
        utterance, encoder, offset = self._encoder
        self._encoder = (utterance, encoder, offset + chunk.seconds)
        data = await asyncio.to_thread(encoder.encode, chunk.audio)  # codecs take ms: off the event loop
        await self._send_audio(utterance, data, timed_words(chunk, offset), chunk.seconds)

    async def _send_audio(self, utterance: int, data: bytes, words: list[dict], seconds: float) -> None:
        seq, self._seq = self._seq, self._seq + 1
        await self._credit.take(seq, seconds)
        await self.send(audio_message(utterance, seq, data, words))


async def _live_job(raw: str | None, models: dict[str, DeploymentHandle], facts: ReplicaFacts) -> LiveJob:
    start = parse_message(raw)
    if not isinstance(start, Start):
        raise InvalidRequest("the first message must be `start`", param="type", code="invalid_message")
    version = resolve_version(start.model, models)
    options = synthesis_options(version, await facts(version, "voices"), start.voice, start.lang_code, start.speed,
                                start.seed)
    return LiveJob(version, replace(options, request_id=f"live-{secrets.token_hex(4)}"), start.response_format,
                   await facts(version, "vocab"))


async def serve_live_speech(websocket: WebSocket, models: dict[str, DeploymentHandle], facts: ReplicaFacts,
                            config: IngressConfig, metrics: IngressMetrics) -> None:
    """The WebSocket route: accept, read `start`, answer `ready`, then run the session.

    Counted in `kokoro_requests` as status 101 (the connection switched to speech) or the
    status of the error that refused its `start`."""
    await websocket.accept()
    first = await websocket.receive()
    if first["type"] == "websocket.disconnect":
        return
    try:
        job = await _live_job(first.get("text"), models, facts)
    except ServiceError as e:
        await websocket.send_text(json.dumps(error_message(e)))
        await websocket.close(1008)
        return
    metrics.request(job.version.name, job.fmt, 101)
    logger.info("live speech %s: voice=%s format=%s", job.options.request_id, job.options.voice, job.fmt)
    await websocket.send_text(json.dumps({
        "type": "ready", "model": job.version.name, "voice": str(job.options.voice), "response_format": job.fmt,
        "sample_rate": SAMPLE_RATE, "ack_window_s": config.live_unacked_audio_s}))
    session = LiveSession(websocket, models[job.version.name], job, config, metrics)
    try:
        await session.run()
    finally:
        logger.info("live speech %s: ended after %d utterances", job.options.request_id, session.utterances)
