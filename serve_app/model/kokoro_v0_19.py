"""Kokoro v0.19: the same network as v1.0 (kokoro's own KModel), its own vocab and espeak front end."""

from ..protocol import SynthesisOptions
from .engine import KokoroEngine, Segment
from .v0_19_text import text_to_pieces

BRITISH = "b"  # v0.19's lang_codes: `a` en-us, `b` en-gb (serve_app.versions.V0_19)


class KokoroV019Wrapper(KokoroEngine):
    """Kokoro v0.19 in a replica: kokoro's KModel with v0.19's weights, vocab and espeak front end."""

    async def segments(self, text: str, options: SynthesisOptions) -> list[Segment]:
        pieces = await self.in_front_end(text_to_pieces, text, options.lang_code == BRITISH)
        return [Segment(phonemes) for phonemes in pieces]

    def style_row(self, phonemes: str, token_count: int) -> int:
        return token_count  # v0.19 picks the style row by token count (v1.0 by phonemes - 1)
