"""Streaming encoders against the real libav/libsndfile decoders (no mocks)."""

import io

import av
import numpy as np
import pytest
import soundfile as sf

from serve_app.ingress.audio_encoding import (
    CONTENT_TYPES,
    FORMATS,
    SAMPLE_RATE,
    make_encoder,
    to_int16,
)

N = 36000  # 1.5 s
# Uneven chunk sizes, including empty and single-sample chunks; the last takes the rest.
CHUNKS = [0, 1, 239, 4000, 0, 1, 9000, 333, 7000]
# The demuxer for each format: short ADTS streams are too small for libav's format probe.
DEMUXER = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac", "wav": "wav"}

# Lossy codecs: decoded rate, codec frame in decoded samples, and the priming
# delay the decoder does not remove. A decoded stream holds the priming, then the
# input, then padding up to the end of the last frame:
#   0 <= decoded - (input + priming) < frame
LOSSY = {
    # MPEG-2 Layer III at 24 kHz has 576-sample frames (1152 is MPEG-1's, >= 32 kHz).
    # Without a LAME/Xing tag (impossible when streaming) nothing tells the decoder
    # to skip lame's 576-sample encoder delay plus the 529-sample decoder delay.
    "mp3": dict(rate=24000, frame=576, priming=1105),
    # ADTS cannot signal the encoder's 1024-sample priming, so decoders keep it.
    "aac": dict(rate=24000, frame=1024, priming=1024),
    # Ogg Opus carries pre-skip and the end granule, so libav trims both: the
    # decoded length is exact, at 48 kHz (20 ms = 960 samples).
    "opus": dict(rate=48000, frame=960, priming=0),
}


def sweep(n: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A 0.5-amplitude chirp from 200 Hz rising 2 kHz/s, sampled at any rate.

    It is band-limited far below 12 kHz, so the same formula at 48 kHz is the
    exact reference for audio that a codec decodes at 48 kHz.
    """
    t = np.arange(n) / rate
    return (0.5 * np.sin(2 * np.pi * (200 * t + 1000 * t**2))).astype(np.float32)


def chunked(signal: np.ndarray, sizes=CHUNKS):
    bounds = np.cumsum([0, *sizes])
    return [signal[a:b] for a, b in zip(bounds, bounds[1:])] + [signal[bounds[-1] :]]


def encode(fmt: str, chunks) -> tuple[list[bytes], bytes]:
    """(bytes returned by each encode call, bytes returned by finish)."""
    encoder = make_encoder(fmt)
    return [encoder.encode(chunk) for chunk in chunks], encoder.finish()


def decode(fmt: str, data: bytes) -> tuple[np.ndarray, int, int]:
    """(mono samples as the decoder outputs them, sample rate, channels) via libav."""
    with av.open(io.BytesIO(data), format=DEMUXER[fmt]) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        ctx = stream.codec_context
        return np.concatenate(frames), ctx.sample_rate, ctx.layout.nb_channels


def best_lag(decoded: np.ndarray, reference: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The delay of ``reference`` inside ``decoded`` and their correlation there."""
    padded = np.pad(decoded, (0, max_lag))  # a late start runs into silence, not off the end
    lag = int(np.argmax(np.correlate(padded, reference, "valid")[:max_lag]))
    return lag, float(np.corrcoef(padded[lag : lag + len(reference)], reference)[0, 1])


@pytest.fixture(scope="module")
def signal() -> np.ndarray:
    # A little noise so that rounding in the int16 conversion is exercised.
    noise = np.random.default_rng(0).normal(0, 0.01, N).astype(np.float32)
    return sweep(N) + noise


def test_to_int16_clips_scales_and_rounds_to_nearest():
    x = np.array([-2.0, -1.0, -0.5, 0.5 / 32767, 1.5 / 32767, 0.0, 0.5, 1.0, 3.0, np.nan], np.float32)
    expected = [-32767, -32767, -16384, 0, 2, 0, 16384, 32767, 32767, 0]  # ties go to even
    out = to_int16(x)
    assert out.dtype == np.int16
    assert out.tolist() == expected


def test_to_int16_flattens_mono_input():
    assert to_int16(np.full((3, 1), 0.25)).tolist() == [8192] * 3


def test_content_types_cover_every_format():
    assert set(CONTENT_TYPES) == set(FORMATS)
    assert CONTENT_TYPES == {
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "wav": "audio/wav",
        "pcm": "audio/pcm",
    }


@pytest.mark.parametrize("fmt", ["ogg", "MP3", "", "s16le"])
def test_unknown_format_is_rejected(fmt):
    with pytest.raises(ValueError):
        make_encoder(fmt)


def test_pcm_is_raw_s16le_of_to_int16(signal):
    outputs, tail = encode("pcm", chunked(signal))
    # Nothing is held back: each call returns exactly its own samples.
    assert [len(b) for b in outputs] == [2 * len(c) for c in chunked(signal)]
    assert tail == b""
    decoded = np.frombuffer(b"".join(outputs), dtype="<i2")
    np.testing.assert_array_equal(decoded, to_int16(signal))


def test_wav_streaming_header_and_exact_samples(signal):
    outputs, tail = encode("wav", chunked(signal))
    data = b"".join(outputs) + tail
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert data[4:8] == b"\xff\xff\xff\xff"  # RIFF size: unknown
    assert data[36:40] == b"data" and data[40:44] == b"\xff\xff\xff\xff"  # data size: unknown
    assert outputs[0] == data[:44]  # the header goes out with the first (empty) chunk

    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == SAMPLE_RATE and samples.ndim == 1
    np.testing.assert_array_equal(samples, to_int16(signal))

    decoded, rate, channels = decode("wav", data)
    assert (rate, channels) == (SAMPLE_RATE, 1)
    np.testing.assert_array_equal(decoded, to_int16(signal))


def test_flac_is_lossless(signal):
    outputs, tail = encode("flac", chunked(signal))
    assert len(b"".join(outputs)) > len(tail)  # most of it streams before finish()
    decoded, rate, channels = decode("flac", b"".join(outputs) + tail)
    assert (rate, channels) == (SAMPLE_RATE, 1)
    np.testing.assert_array_equal(decoded, to_int16(signal))


@pytest.mark.parametrize("fmt", sorted(LOSSY))
def test_lossy_codec_length_rate_and_content(fmt, signal):
    spec = LOSSY[fmt]
    outputs, tail = encode(fmt, chunked(signal))
    assert len(b"".join(outputs)) > len(tail)  # most of it streams before finish()

    decoded, rate, channels = decode(fmt, b"".join(outputs) + tail)
    assert (rate, channels) == (spec["rate"], 1)
    expected = N * rate // SAMPLE_RATE + spec["priming"]
    assert 0 <= len(decoded) - expected < spec["frame"]

    # It is the input audio, delayed by exactly the stated priming.
    lag, corr = best_lag(decoded, sweep(N * rate // SAMPLE_RATE, rate), max_lag=spec["priming"] + spec["frame"])
    assert lag == spec["priming"]
    assert corr > 0.9


# The most input (24 kHz samples) that one encode() call can leave unplayable for a
# client holding only the bytes returned so far: a partial frame plus codec lookahead.
HELD_BACK = {
    "pcm": 0,
    "wav": 0,
    "flac": 2304,  # one block (96 ms), FFmpeg's block size at 24 kHz
    "opus": 3 * 480,  # the partial 20 ms frame, libopus lookahead, one frame queued in libav
    "aac": 3 * 1024,  # the partial frame and the encoder's two frames of lookahead
    "mp3": 6 * 576,  # lame's ~5 frames of lookahead, plus the decoder's 529-sample delay
}


@pytest.mark.parametrize("first", [7777, 12000])
@pytest.mark.parametrize("fmt", FORMATS)
def test_stream_cut_after_first_bytes_decodes(fmt, first):
    """A client that has only the first call's bytes can already play all but a little of it."""
    first_chunk = sweep(first)  # the order of one synthesised sentence fragment
    encoder = make_encoder(fmt)
    head = encoder.encode(first_chunk)
    encoder.encode(sweep(12000))  # the stream goes on; the client just has not got it yet

    if fmt == "pcm":
        decoded, rate = np.frombuffer(head, dtype="<i2"), SAMPLE_RATE
    else:
        decoded, rate, _ = decode(fmt, head)
    if fmt in LOSSY:
        audio = decoded[LOSSY[fmt]["priming"] :]
        assert np.corrcoef(audio, sweep(len(audio), rate))[0, 1] > 0.9
    else:
        audio = decoded
        np.testing.assert_array_equal(audio, to_int16(first_chunk)[: len(audio)])
    assert 0 <= first - len(audio) * SAMPLE_RATE // rate <= HELD_BACK[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
def test_finish_without_audio(fmt):
    data = make_encoder(fmt).finish()
    if fmt == "wav":
        samples, rate = sf.read(io.BytesIO(data), dtype="int16")
        assert len(samples) == 0 and rate == SAMPLE_RATE
    elif fmt in ("opus", "flac"):
        assert 0 < len(data) < 200  # just the stream headers, no FLAC padding block
    else:
        assert data == b""
