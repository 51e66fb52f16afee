"""Text that arrives a few tokens at a time, cut into pieces as soon as their boundaries are known.

A language model's reply comes token by token; waiting for the whole of it would delay the first
audio by the whole reply. `LiveText` holds one utterance's unspoken text and hands out a piece as
soon as it ends at a boundary the text after it confirms (text_pieces' rules: sentence, then
clause, then comma). Text that outgrows a piece's limit is cut exactly where `split_text` would
cut it, so a text that arrives at boundaries split_text also picks is spoken in the same pieces
as the same text sent in one request.
"""
from .pieces import boundary_cut, split_text
from .pronunciation import LINK

# text_pieces' boundary ranks at which a piece is spoken without waiting for more text: an
# utterance's first piece at a comma already (first audio soon), later ones at a sentence end or
# ':'/';' (they have the audio before them to be made in).
FIRST_PIECE_BOUNDARY, LATER_PIECE_BOUNDARY = 2, 1


def _ends_line(text: str) -> bool:
    return text.splitlines() != [text]


def _collapse(text: str) -> str:
    """Whitespace collapsed as split_text collapses it, keeping one trailing space (a word has ended)."""
    collapsed = " ".join(text.split())
    return collapsed + " " if collapsed and text[-1].isspace() else collapsed


def _settled(text: str, limit: int) -> str:
    """The text before an inline pronunciation still arriving (`[word](/pho`), which no cut may split."""
    start = text.rfind("[")
    if start < 0 or len(text) - start > limit or any(m.start() <= start < m.end() for m in LINK.finditer(text)):
        return text
    return text[:start]


class LiveText:
    """One utterance's text as it arrives; each method returns the pieces it completes, in order."""

    def __init__(self, first_piece_chars: int, piece_chars: int):
        self._first, self._later = first_piece_chars, piece_chars
        self._open = ""  # the unfinished line after the last cut, whitespace collapsed
        self.pieces = 0  # cut from this utterance so far

    @property
    def pending(self) -> str:
        return self._open.strip()

    def _limit(self) -> int:
        return self._later if self.pieces else self._first

    def _split(self, text: str) -> list[str]:
        pieces = split_text(text, self._limit(), self._later)
        self.pieces += len(pieces)
        return pieces

    def add(self, delta: str) -> list[str]:
        lines = (self._open + delta).splitlines(keepends=True)
        open_line = lines.pop() if lines and not _ends_line(lines[-1]) else ""
        pieces = self._split("".join(lines))  # whole lines (paragraphs) are complete
        self._open = _collapse(open_line)
        while (cut := self._next_cut()) is not None:
            pieces.append(self._open[:cut])
            self._open = self._open[cut:].lstrip()
            self.pieces += 1
        return pieces

    def _next_cut(self) -> int | None:
        limit = self._limit()
        text = _settled(self._open, limit)
        if len(text.rstrip()) > limit + 1:  # split_text's cut no longer depends on what follows
            return len(split_text(text, limit, limit)[0])
        return boundary_cut(text, limit, LATER_PIECE_BOUNDARY if self.pieces else FIRST_PIECE_BOUNDARY)

    def take_all(self) -> list[str]:
        """Everything held, as pieces (a flush, or no new text for a while)."""
        pieces, self._open = self._split(self._open), ""
        return pieces
