"""Word start/end times from the model's predicted durations."""
from ..protocol import SAMPLE_RATE, Word

FRAME_SECONDS = 600 / SAMPLE_RATE  # KModel makes exactly 600 samples per duration frame


def from_misaki_tokens(tokens) -> list[Word]:
    """misaki's English tokens carry times once KPipeline has joined them with the durations."""
    return [Word(t.text, t.start_ts, t.end_ts) for t in tokens
            if t.start_ts is not None and t.end_ts is not None]


def from_phoneme_words(text: str, phonemes: str, pred_dur, vocab: dict) -> list[Word]:
    """Times for front ends that keep one space-separated phoneme word per text word (espeak).

    Each vocab symbol of `phonemes` is one token with one predicted duration, after the leading
    pad token. Where the word counts differ (numbers read out as several words), nothing is
    guessed: no timings for that chunk.
    """
    words = text.split()
    durations = iter(pred_dur.tolist())
    cursor = next(durations)  # the leading pad token
    spans, start = [], None
    for symbol in phonemes:
        if symbol not in vocab:
            continue  # KModel drops it too
        if symbol == " " and start is not None:
            spans.append((start, cursor))
            start = None
        elif symbol != " " and start is None:
            start = cursor
        cursor += next(durations)
    if start is not None:
        spans.append((start, cursor))
    if len(spans) != len(words):
        return []
    return [Word(word, s * FRAME_SECONDS, e * FRAME_SECONDS) for word, (s, e) in zip(words, spans)]
