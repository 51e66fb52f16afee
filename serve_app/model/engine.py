"""What both versions' wrappers share: from a piece's phoneme segments to its audio chunks.

A wrapper's front end turns a piece of text into segments (at most 510 phonemes each); each
segment becomes one item for the replica's model thread, which batches items across
requests (`serve_app.model.batched_synthesis`).
"""
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, AsyncIterator, TypeVar
import asyncio

from kokoro import KModel
import torch

from ..config import BatchPolicy
from ..protocol import AudioChunk, SynthesisOptions, VoiceBlend, Word
from ..text.phoneme_split import split_phonemes
from ..text.pronunciation import Lexicon
from .batched_synthesis import SynthesisItem, SynthesisOutput, Vocoder, synthesize_batch
from .model_thread import ModelThread
from .voices import VoiceLibrary

# The model's context is 512 tokens, two of which are the pads around the text.
MAX_TOKENS = 510
# A warm-up piece: as long as a typical first piece, so its frames fall in the range most pieces do.
WARM_UP_TOKENS = 100

T = TypeVar("T")


@dataclass
class Segment:
    """Phonemes for one model call, with what its words are timed from."""

    phonemes: str
    text: str = ""                                   # the words it speaks ('' when they cannot be aligned)
    tokens: list[Any] | None = field(default=None)   # misaki's English tokens, when its G2P made them


class KokoroEngine:
    """A model version in a replica: voice packs, the batching model thread, audio per piece."""

    def __init__(self, model: KModel, voices: VoiceLibrary, batching: BatchPolicy | None = None,
                 vocoder: Callable | None = None):
        self.model = model
        self.voices = voices
        policy = (batching or BatchPolicy()).for_device(model.device.type)
        # The decoder's network: kokoro's modules eagerly, or compiled (serve_app.model.compiled_vocoder).
        vocoder = Vocoder(model.decoder) if vocoder is None else vocoder  # made once, not per batch
        self._run_batch = partial(synthesize_batch, model, vocoder=vocoder)
        self.model_thread = ModelThread(self._run_batch, policy, release_memory=model.device.type == "cpu")
        # espeak-ng and misaki are not thread-safe: the front end runs on one thread of its own,
        # beside the model thread, so requests' G2P never interleave.
        self._front_end = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kokoro-g2p")
        self.lexicon = Lexicon()  # the deployment's custom pronunciations, if it has any

    def speak_warm_up_shapes(self) -> None:
        """Speak, once each, batches of the shapes the model thread will run: one item, and when it
        batches, two (every batch of several items runs one masked code path, whatever its size).
        Compiled code is compiled here, before the replica reports ready, not in a client's request."""
        batches = [[WARM_UP_TOKENS]]
        if self.model_thread.policy.max_batch_size > 1:  # padded to a long piece: see compiled_vocoder
            batches.append([2 * WARM_UP_TOKENS, WARM_UP_TOKENS])
        pack = self.voices.pack(VoiceBlend.single(self.voices.names()[0]))
        symbols = torch.tensor(sorted(self.model.vocab.values()))
        generator = torch.Generator().manual_seed(0)
        pad = torch.zeros(1, dtype=torch.long)
        for lengths in batches:
            tokens = [symbols[torch.randint(len(symbols), (n,), generator=generator)] for n in lengths]
            self._run_batch([SynthesisItem(torch.cat([pad, ids, pad]), pack[len(ids)], seed=0) for ids in tokens])

    async def in_front_end(self, work: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._front_end, partial(work, *args))

    async def segments(self, text: str, options: SynthesisOptions) -> list[Segment]:
        """The front end: a piece of text (inline pronunciations allowed) as phoneme segments, in order."""
        raise NotImplementedError

    async def piece_segments(self, piece: str, options: SynthesisOptions) -> list[Segment]:
        """A piece's segments: phonemes as given, or text through the lexicon and the front end."""
        if options.phonemes:
            return [Segment(phonemes) for phonemes in split_phonemes(piece)]
        return await self.segments(self.lexicon.apply(piece), options)

    async def phonemize(self, piece: str, options: SynthesisOptions) -> list[tuple[str, list[int]]]:
        """What the model is given for a piece: per segment, its phonemes and their token ids."""
        segments = await self.piece_segments(piece, options)
        return [(self.model_phonemes(s.phonemes), self.token_ids(s.phonemes)) for s in segments]

    def style_row(self, phonemes: str, token_count: int) -> int:
        """Which row of the voice pack styles a segment."""
        raise NotImplementedError

    def words(self, segment: Segment, pred_dur: torch.Tensor) -> list[Word]:
        return []

    def model_phonemes(self, phonemes: str) -> str:
        """The phonemes the model reads: symbols it has no id for are dropped, the rest cut to its context."""
        return "".join(p for p in phonemes if p in self.model.vocab)[:MAX_TOKENS]

    def token_ids(self, phonemes: str) -> list[int]:
        """The model's ids for phonemes, without the pads."""
        return [self.model.vocab[p] for p in self.model_phonemes(phonemes)]

    def item(self, segment: Segment, pack: torch.Tensor, options: SynthesisOptions) -> SynthesisItem:
        ids = self.token_ids(segment.phonemes)
        return SynthesisItem(torch.tensor([0, *ids, 0]), pack[self.style_row(segment.phonemes, len(ids))],
                             options.speed, options.seed)

    async def forward(self, text: str, options: SynthesisOptions,
                      due: float | None = None) -> AsyncIterator[AudioChunk]:
        """Audio chunk by chunk, one per segment, as it is made; `due` (epoch seconds) is when
        the client needs it (see ModelThread)."""
        pack = self.voices.pack(options.voice)
        segments = await self.piece_segments(text, options)
        with self.model_thread.stream() as stream:  # leaving it cancels what has not run
            items = [self.item(segment, pack, options) for segment in segments]
            outputs = [stream.submit(item, due, len(item.input_ids)) for item in items]
            for number, (segment, output) in enumerate(zip(segments, outputs, strict=True), 1):
                made: SynthesisOutput = await output
                yield AudioChunk(made.audio.numpy(), self.words(segment, made.pred_dur), len(made.pred_dur) - 2,
                                 last=number == len(segments))
