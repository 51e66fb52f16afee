"""Cutting phoneme strings to the model's context, at the most natural boundary available."""
import re

# The model's context is 512 tokens, two of which are the pads around the text.
MAX_PHONEMES = 510

# Where a phoneme string may be cut, best first; each drops the space it cuts at.
_BREAKS = (
    re.compile(r'(?<=[.!?…]) |(?<=[.!?…]["»”]) '),  # sentence end
    re.compile(r'(?<=[,;:—]) |(?<=[,;:—]["»”]) '),  # clause or comma
    re.compile(" "),  # any word
)


def split_phonemes(ps: str, limit: int = MAX_PHONEMES, level: int = 0) -> list[str]:
    if len(ps) <= limit:
        return [ps]
    if level == len(_BREAKS):
        # A single "word" longer than the context: cut it rather than lose it.
        return [ps[i : i + limit] for i in range(0, len(ps), limit)]
    chunks: list[str] = []
    for piece in _BREAKS[level].split(ps):
        for part in split_phonemes(piece, limit, level + 1):
            # Greedy packing: join onto the last chunk while it fits.
            if chunks and len(chunks[-1]) + 1 + len(part) <= limit:
                chunks[-1] += " " + part
            else:
                chunks.append(part)
    return chunks
