"""One request's pieces sent to its model deployment, a few at a time, their audio taken in order.

Up to a window of calls run at once, so free replicas synthesise ahead while earlier audio
streams. Each call says when its audio is due, so replicas serve a new request's first piece
before pieces that other clients need only later.
"""
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator
import asyncio
import time

from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from .protocol import AudioChunk, SynthesisOptions

# Kokoro speaks about 15 characters a second at speed 1: how far ahead a piece's audio is due.
SPOKEN_CHARS_PER_S = 15
# A piece after the first that finds the replicas saturated waits for room: its stream has begun.
PIECE_RETRY_S, PIECE_RETRY_DEADLINE_S = 0.25, 120


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
    """The model calls of one request: at most `size` running, their audio yielded in order."""

    def __init__(self, model: DeploymentHandle, pieces: list[str], options: SynthesisOptions, size: int):
        self._model, self._options, self._size = model, options, size
        dues = due_times(pieces, time.time(), options.speed)
        self._waiting = deque(Piece(i, text, due) for i, (text, due) in enumerate(zip(pieces, dues)))
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
        """The audio of the oldest running piece; a later piece that finds the replicas
        saturated is sent again until it gets in (its stream has begun)."""
        running = self._running[0]
        deadline = time.monotonic() + PIECE_RETRY_DEADLINE_S
        while True:
            try:
                async for chunk in running.call:
                    yield chunk
                return
            except BackPressureError:  # raised before the call's first result, so nothing was yielded
                if running.piece.index == 0 or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(PIECE_RETRY_S)
                running.call = self._call(running.piece)
