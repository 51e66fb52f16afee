"""One request's pieces sent to its model deployment, a few at a time, their audio taken in order.

Up to a window of calls run at once, so free replicas synthesise ahead while earlier audio
streams. Each call says when its audio is due, so replicas serve a new request's first piece
before pieces that other clients need only later.

Faults: a piece whose call fails before any of its audio (its replica died or is gone) is sent
again, and Serve routes it to a live replica; once some of a piece's audio went to the client
it cannot be sent again (the audio would repeat), and the failure ends the stream, unless the
piece's last chunk had come (only the end of its stream was lost: it is complete). A first
piece that makes no audio within `start_timeout_s` is shed (503: the replicas are too busy to
start it), a later one within `piece_timeout_s` ends the stream; nothing waits without bound.
"""
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import AsyncIterator
import asyncio
import time

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from ..errors import Overloaded
from ..logs import get_logger
from ..protocol import AudioChunk, SynthesisOptions

logger = get_logger()

# Kokoro speaks about 15 characters a second at speed 1: how far ahead a piece's audio is due.
SPOKEN_CHARS_PER_S = 15
# A piece after the first that finds the replicas saturated waits for room: its stream has begun.
PIECE_RETRY_S, PIECE_RETRY_DEADLINE_S = 0.25, 120
# A piece whose replica died before sending any audio is sent again this often, after pauses
# (doubling from REPLICA_RETRY_S) in which Serve's routers learn that the replica is gone: on a
# loaded machine that takes more than a second.
REPLICA_RETRIES, REPLICA_RETRY_S = 3, 0.5


class PieceTimedOut(Exception):
    """A later piece made no audio in time: its stream ends."""


@dataclass(frozen=True)
class Limits:
    """How long a request's pieces may take (IngressConfig's start_timeout_s and piece_timeout_s)."""
    start_s: float = 30
    piece_s: float = 120


def due_times(pieces: list[str], start: float, speed: float) -> list[float]:
    """When a client playing audio as it arrives needs each piece: the first at once, each
    later one when the speech before it (estimated from its length) has played."""
    due, spoken = [], 0
    for piece in pieces:
        due.append(start + spoken / (SPOKEN_CHARS_PER_S * speed))
        spoken += len(piece) + 1
    return due


@dataclass
class Piece:
    index: int    # its place in the request
    text: str
    due: float    # epoch seconds


@dataclass
class RunningPiece:
    piece: Piece
    call: DeploymentResponseGenerator


class InFlightWindow:
    """The model calls of one request: at most `size` running, their audio yielded in order.

    `on_reject(reason)` hears of every call turned away (full queue, timeout, replica gone).
    `first_index` is the first piece's place in its stream: a live session sends each piece on
    its own, and only the piece that opens an utterance is treated as the stream's start.
    """

    def __init__(self, model: DeploymentHandle, pieces: list[str], options: SynthesisOptions, size: int,
                 limits: Limits = Limits(), on_reject: Callable[[str], None] = lambda reason: None,
                 first_index: int = 0):
        self._model, self._options, self._size = model, options, size
        self._limits, self._on_reject = limits, on_reject
        dues = due_times(pieces, time.time(), options.speed)
        self._waiting = deque(Piece(i, text, due) for i, (text, due) in enumerate(zip(pieces, dues), first_index))
        self._running: deque[RunningPiece] = deque()

    def _call(self, piece: Piece) -> DeploymentResponseGenerator:
        return self._model.forward.options(stream=True).remote(piece.text, self._options, piece.due)

    def _fill(self) -> None:
        while self._waiting and len(self._running) < self._size:
            piece = self._waiting.popleft()
            self._running.append(RunningPiece(piece, self._call(piece)))

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        self._fill()
        try:
            while self._running:
                async for chunk in self._oldest_audio():
                    yield chunk
                self._running.popleft()
                self._fill()
        finally:
            for running in self._running:  # client gone or failure: stop the work ahead of it
                running.call.cancel()

    async def _oldest_audio(self) -> AsyncIterator[AudioChunk]:
        """The audio of the oldest running piece, sent again while none of it was yielded and it
        found the replicas saturated (a later piece: its stream has begun) or its replica gone."""
        running = self._running[0]
        first = running.piece.index == 0
        deadline = time.monotonic() + (self._limits.start_s if first else self._limits.piece_s)
        saturated_until, replica_retries = time.monotonic() + PIECE_RETRY_DEADLINE_S, REPLICA_RETRIES
        sent = False  # some of the piece's audio was yielded
        while True:
            try:
                async for chunk in _before(running.call, deadline, first):
                    sent = True
                    yield chunk
                    if chunk.last:  # the piece is whole: what its call does after (close, die, hang) is moot
                        return
                return
            except BackPressureError:  # raised before the call's first result, so nothing was yielded
                self._on_reject("queue_full")
                if first or time.monotonic() > saturated_until:
                    raise
                await asyncio.sleep(PIECE_RETRY_S)
            except RayActorError as e:
                self._on_reject("replica_gone")
                if sent or replica_retries == 0:
                    raise
                replica_retries -= 1
                logger.warning("request %s: piece %d lost its replica before any audio (%s); sending it again",
                               self._options.request_id, running.piece.index, type(e).__name__)
                await asyncio.sleep(REPLICA_RETRY_S * 2 ** (REPLICA_RETRIES - replica_retries - 1))
            except (Overloaded, PieceTimedOut):
                self._on_reject("timeout")
                raise
            running.call = self._call(running.piece)


async def _before(call: DeploymentResponseGenerator, deadline: float, first: bool) -> AsyncIterator[AudioChunk]:
    """The call's chunks while `deadline` (monotonic) holds; then the call is cancelled. A request
    whose first piece made no audio by then is shed."""
    started = False
    while True:
        try:
            chunk = await asyncio.wait_for(anext(call), max(0.0, deadline - time.monotonic()))
        except StopAsyncIteration:
            return
        except TimeoutError:
            call.cancel()
            if first and not started:
                raise Overloaded("the service is too busy to start this request now; retry shortly",
                                 code="overloaded") from None
            raise PieceTimedOut("a piece made no audio in time") from None
        started = True
        yield chunk
