"""Split request text into pieces for synthesis, one model call per piece.

The ingress sends pieces to replicas concurrently and streams the audio back in
order, so a short first piece gets the first audio out fast while the pieces
after it are synthesised.

Cuts are made only at spaces (or, for a word longer than the limit, hard at the
limit), so joining the pieces with single spaces gives back the text with its
whitespace normalised. Boundaries are preferred in the order Kokoro's own
KPipeline.waterfall_last uses: sentence end, then clause mark, then comma/dash.
Packing is greedy: each piece takes everything up to the last best boundary
that fits. So a piece is only short when the text forces it (a short paragraph,
or a short sentence followed by one that does not fit); such a piece is still a
whole sentence, which is the natural unit for prosody anyway.
"""
from .pronunciation import LINK

# English speech runs at about 15 characters a second, so a 100-character
# first piece is at most about 7 s of audio: usually one opening clause or
# sentence, made in a few seconds even on one CPU core.
FIRST_PIECE_CHARS = 100
# Later pieces stay short too (about 10 s of audio), under the model's
# 510-phoneme limit with room for numbers and symbols that expand. On a CPU,
# short pieces are made faster per second of audio than long ones (the
# vocoder's working set stays small: 1.34 against 1.00 audio s/s for 400
# characters, `make bench-pieces`), keep a replica's memory low, and bound how
# long another request's urgent piece waits for the one in progress. On a GPU a
# call's fixed cost weighs more, so larger pieces may pay there (`piece_chars`;
# not measured).
PIECE_CHARS = 150

# Kokoro's waterfall, strongest boundary first: sentence, clause, comma/dash.
_WATERFALL = (set("!.?…"), set(":;"), set(",—"))
_PLAIN_SPACE = len(_WATERFALL)
# Closing quotes and brackets after a mark stay with it ('He said “Stop.” Then').
_CLOSERS = "\"')]}”’»"


def normalize_whitespace(text: str) -> str:
    """Collapse whitespace within lines to single spaces; lines become paragraphs.

    Blank lines are dropped, so paragraphs are joined by exactly one newline.
    """
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _rank(text: str, space: int) -> int:
    """Boundary strength of cutting at text[space] (a space); lower is better."""
    mark = text[:space].rstrip(_CLOSERS)[-1:]
    # A lowercase word after a sentence mark ("e.g. the", "and so... on") means
    # it did not end a sentence. Abbreviations before capitals ("Dr. Smith")
    # still count as sentence ends; a cut there only costs a short pause.
    if mark in _WATERFALL[0] and text[space + 1 : space + 2].islower():
        return _PLAIN_SPACE
    return next((r for r, marks in enumerate(_WATERFALL) if mark in marks), _PLAIN_SPACE)


def _links(text: str, limit: int) -> list[tuple[int, int]]:
    """Spans of the inline pronunciations (`[word](/phonemes/)`) that start within the limit."""
    spans = []
    for m in LINK.finditer(text):
        if m.start() > limit:
            break
        spans.append(m.span())
    return spans


def _free_spaces(text: str, limit: int, links: list[tuple[int, int]]) -> list[int]:
    """The spaces a piece of at most limit characters may end at: none inside an inline pronunciation."""
    # A space at index limit still leaves a piece of exactly limit characters.
    return [i for i, c in enumerate(text[: limit + 1]) if c == " " and not any(start < i < end for start, end in links)]


def _cut(text: str, limit: int) -> int:
    """Where to cut text, which is longer than limit, so that text[:cut] fits.

    Never inside an inline pronunciation: one that a hard cut would split goes whole into the
    piece it starts in when it starts the text (so that piece may exceed the limit), else to the next.
    """
    links = _links(text, limit)
    spaces = _free_spaces(text, limit, links)
    if not spaces:  # one word longer than the limit: cut it hard
        return next((start or end for start, end in links if start < limit < end), limit)
    return min(spaces, key=lambda i: (_rank(text, i), -i))


def split_text(
    text: str,
    first_piece_chars: int = FIRST_PIECE_CHARS,
    piece_chars: int = PIECE_CHARS,
) -> list[str]:
    """Split text into non-empty, stripped pieces, in order, none spanning a newline.

    The first piece has at most first_piece_chars characters, later ones at
    most piece_chars. " ".join(pieces) == " ".join(text.split()), except that
    a word longer than the limit is cut into pieces with no space between them.
    """
    if first_piece_chars < 1 or piece_chars < 1:
        raise ValueError("piece limits must be at least 1 character")
    pieces: list[str] = []
    for para in normalize_whitespace(text).split("\n"):
        while para:
            limit = piece_chars if pieces else first_piece_chars
            cut = len(para) if len(para) <= limit else _cut(para, limit)
            pieces.append(para[:cut])
            para = para[cut:].lstrip()
    return pieces


def boundary_cut(text: str, limit: int, weakest: int) -> int | None:
    """Where text that is still arriving can be cut now: the space in text[:limit + 1] that split_text
    would prefer, among those at a boundary of rank <= weakest (0 sentence, 1 clause, 2 comma/dash) that
    the text after them already confirms (the next character has arrived); None when there is none."""
    spaces = _free_spaces(text, limit, _links(text, limit))
    ranked = [(_rank(text, i), -i) for i in spaces if i + 1 < len(text)]
    rank, cut = min(ranked, default=(_PLAIN_SPACE, 0))
    return -cut if rank <= weakest else None
