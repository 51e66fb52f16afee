"""Streaming encoders for the OpenAI ``/v1/audio/speech`` response formats.

Kokoro produces 24 kHz mono float32 audio chunk by chunk. Each response gets one
``AudioEncoder`` (``make_encoder(fmt)``): ``encode(chunk)`` returns whatever bytes
the codec has produced so far, so the HTTP body can stream them, and ``finish()``
flushes the rest. Concatenating every returned ``bytes`` gives the whole file.

Every format sees the same int16 PCM (``to_int16``); the lossy codecs get it
converted to their own sample format by libswresample. Bitrates (mono speech):

- mp3:  libmp3lame, 64 kbit/s CBR, MPEG-2 Layer III at 24 kHz, no ID3/Xing tag.
- opus: libopus, 32 kbit/s VBR, 20 ms packets, encoded at 24 kHz (libopus takes
  it natively, so no resampling; decoders output 48 kHz). Ogg pages hold one
  packet each so nothing is held back in the muxer; that costs ~11 kbit/s of
  page headers.
- aac:  FFmpeg's native AAC-LC encoder, 64 kbit/s, in ADTS frames.
- flac: lossless, 16-bit.

The PyAV muxers write into a non-seekable sink, so they never seek back to patch
headers (no Xing frame, FLAC STREAMINFO with unknown length) and every byte they
emit is final. Encoders are not thread-safe; use each from one thread at a time.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from ..protocol import SAMPLE_RATE

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

_TIME_BASE = Fraction(1, SAMPLE_RATE)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float audio to 16-bit PCM, the one quantisation rule for every format.

    The input is flattened (mono), NaN becomes 0, values are clipped to [-1, 1],
    scaled by 32767 and rounded to the nearest integer (ties to even, ``np.rint``).
    So +-1.0 maps to +-32767 and -32768 is never produced.
    """
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    x = np.clip(np.nan_to_num(x, nan=0.0), -1.0, 1.0)
    return np.rint(x * 32767.0).astype(np.int16)


class AudioEncoder:
    """One per response: ``encode`` each chunk, then call ``finish`` once."""

    def encode(self, samples: np.ndarray) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        raise NotImplementedError


class PcmEncoder(AudioEncoder):
    """Raw s16le, optionally preceded by a fixed header (which is how WAV streams)."""

    def __init__(self, header: bytes = b"") -> None:
        self._header = header

    def encode(self, samples: np.ndarray) -> bytes:
        out = self._header + to_int16(samples).astype("<i2").tobytes()
        self._header = b""
        return out

    def finish(self) -> bytes:
        # A response with no audio at all still needs its header.
        out, self._header = self._header, b""
        return out


def _wav_header() -> bytes:
    """RIFF/WAVE header for 16-bit mono 24 kHz PCM of unknown length.

    The RIFF and data sizes are 0xFFFFFFFF, as streaming servers send them; ffmpeg
    and libsndfile then read the data up to the end of the stream.
    """
    unknown = (0xFFFFFFFF).to_bytes(4, "little")
    block_align = 2  # one channel of 2-byte samples
    fmt = (
        (1).to_bytes(2, "little")  # PCM
        + (1).to_bytes(2, "little")  # channels
        + SAMPLE_RATE.to_bytes(4, "little")
        + (SAMPLE_RATE * block_align).to_bytes(4, "little")  # byte rate
        + block_align.to_bytes(2, "little")
        + (16).to_bytes(2, "little")  # bits per sample
    )
    return b"RIFF" + unknown + b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + unknown


class _Sink:
    """Write-only file object: no seek/tell, so PyAV treats the output as a stream."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data) -> int:
        self._buf += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class PyAVEncoder(AudioEncoder):
    """A libav encoder + muxer writing into an in-memory sink drained on every call."""

    def __init__(
        self,
        container_format: str,
        codec: str,
        bit_rate: int | None = None,
        codec_options: dict[str, str] | None = None,
        container_options: dict[str, str] | None = None,
    ) -> None:
        self._sink = _Sink()
        self._container = av.open(
            self._sink,
            "w",
            format=container_format,
            # Hand every packet to the sink at once; with 0 the muxer fills a 32 KiB buffer first.
            container_options={"flush_packets": "1", **(container_options or {})},
        )
        self._stream = self._container.add_stream(codec, rate=SAMPLE_RATE, options=codec_options or {})
        self._stream.layout = "mono"
        if bit_rate:
            self._stream.bit_rate = bit_rate
        # Opens the codec (fixing frame_size and sample format) and writes the
        # container header, which the first encode() returns.
        self._container.start_encoding()
        ctx = self._stream.codec_context
        # Converts s16 to the codec's sample format and cuts exact frame_size
        # frames, keeping the remainder for the next call (frame_size 0: any size).
        self._resampler = av.AudioResampler(
            format=ctx.format, layout="mono", rate=ctx.sample_rate, frame_size=ctx.frame_size or None
        )
        self._pts = 0

    def encode(self, samples: np.ndarray) -> bytes:
        pcm = to_int16(samples)
        if pcm.size:
            frame = av.AudioFrame.from_ndarray(pcm[np.newaxis, :], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.time_base = _TIME_BASE
            frame.pts = self._pts
            self._pts += pcm.size
            self._encode_frames(self._resampler.resample(frame))
        return self._sink.take()

    def finish(self) -> bytes:
        self._encode_frames(self._resampler.resample(None))  # the short last frame
        self._encode_frames([None])  # drain the codec's lookahead
        self._container.close()  # trailer, if the format has one
        return self._sink.take()

    def _encode_frames(self, frames) -> None:
        for frame in frames:
            self._container.mux(self._stream.encode(frame))


def make_encoder(fmt: str) -> AudioEncoder:
    """A fresh streaming encoder for one of ``FORMATS``; ValueError otherwise."""
    if fmt == "pcm":
        return PcmEncoder()
    if fmt == "wav":
        return PcmEncoder(header=_wav_header())
    if fmt == "mp3":
        # No ID3v2 tag: a stream of bare MP3 frames, as internet radio sends.
        return PyAVEncoder("mp3", "libmp3lame", bit_rate=64_000, container_options={"id3v2_version": "0"})
    if fmt == "opus":
        return PyAVEncoder(
            "ogg",
            "libopus",
            bit_rate=32_000,
            codec_options={"frame_duration": "20"},
            container_options={"page_duration": "20000"},  # microseconds: one packet per page
        )
    if fmt == "aac":
        return PyAVEncoder("adts", "aac", bit_rate=64_000)
    if fmt == "flac":
        # No 8 KiB padding block: it only serves to rewrite metadata in place, which a stream cannot.
        return PyAVEncoder("flac", "flac", container_options={"metadata_header_padding": "0"})
    raise ValueError(f"unknown audio format {fmt!r}; expected one of {', '.join(FORMATS)}")
