"""Pronunciation control: misaki's inline form `[Kokoro](/kˈOkəɹO/)`, phoneme checks, custom lexicons.

The inline form is misaki's markdown link with phonemes between slashes: the word in brackets
is spoken with exactly those phonemes. misaki's English G2P honours it natively; the espeak
front ends (v1.0's other languages, its English fallback, v0.19) go through `phonemize_runs`,
which phonemises the text around each link and puts the given phonemes in the link's place.
A lexicon (word -> phonemes, one per deployment) is applied by rewriting its words into that
inline form, so every front end follows it the same way.

Torch-free: the ingress checks inline phonemes against a version's vocab with it.
"""
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
import re

import yaml

from ..errors import InvalidRequest, quote

# misaki's LINK_REGEX (misaki.en): `[text](feature)`; a feature between slashes is phonemes.
LINK = re.compile(r"\[([^\]]+)\]\(([^\)]*)\)")
MAX_LISTED_SYMBOLS = 10  # an error names at most this many unknown symbols


@dataclass(frozen=True)
class Run:
    """A stretch of text: plain (`phonemes` None), or one link spoken as the phonemes it gives."""

    text: str
    phonemes: str | None = None
    spaced: bool = True  # whitespace separates it from the run before it


def given_phonemes(feature: str) -> str | None:
    """The phonemes a link's feature gives (`/kˈOkəɹO/`), or None for misaki's other features."""
    return feature[1:-1].strip() if len(feature) > 1 and feature[0] == feature[-1] == "/" else None


def runs(text: str) -> Iterator[Run]:
    """The text as plain runs and links; links with other misaki features become their plain text."""
    last, plain = 0, ""
    for m in LINK.finditer(text):
        plain += text[last:m.start()]
        last = m.end()
        phonemes = given_phonemes(m[2])
        if phonemes is None:  # a stress or number feature means nothing to espeak: keep the word
            plain += m[1]
            continue
        if plain.strip():
            yield Run(plain, spaced=plain[:1].isspace())
        yield Run(m[1], phonemes, spaced=m.start() == 0 or text[m.start() - 1].isspace())
        plain = ""
    if (plain := plain + text[last:]).strip():
        yield Run(plain, spaced=plain[:1].isspace())


def plain_text(text: str) -> str:
    """The text with every link replaced by its word: what is read and timed."""
    return LINK.sub(lambda m: m[1], text)


def phonemize_runs(text: str, g2p: Callable[[str], str]) -> str:
    """Phonemes of text with inline pronunciations: `g2p` on the plain runs, the given phonemes
    for the links, joined as the text spaces them."""
    out = ""
    for run in runs(text):
        phonemes = run.phonemes if run.phonemes is not None else g2p(run.text.strip()).strip()
        out += (" " if out and run.spaced else "") + phonemes
    return out


def unknown_symbols(phonemes: str, vocab: Collection[str]) -> list[str]:
    return sorted(set(phonemes) - set(vocab))


def check_phonemes(phonemes: str, vocab: Collection[str], what: str, model: str) -> None:
    """Refuse phonemes with symbols the model has no token for, naming a few of them."""
    unknown = unknown_symbols(phonemes, vocab)
    if unknown:
        listed = " ".join(unknown[:MAX_LISTED_SYMBOLS]) + (" ..." if len(unknown) > MAX_LISTED_SYMBOLS else "")
        raise InvalidRequest(f"{what} {quote(phonemes)} has symbols that are not in {model}'s phoneme "
                             f"vocabulary: {listed}", param="input", code="invalid_phonemes")


def check_inline(text: str, vocab: Collection[str], model: str) -> None:
    """Every inline pronunciation of a text must use only the model's symbols."""
    for m in LINK.finditer(text):
        if (phonemes := given_phonemes(m[2])) is not None:
            check_phonemes(phonemes, vocab, f"the pronunciation of {quote(m[1])},", model)


# --- custom lexicons ----------------------------------------------------------

class Lexicon:
    """A deployment's custom pronunciations: word -> phonemes, applied as inline forms."""

    def __init__(self, entries: dict[str, str] | None = None):
        self.entries = dict(entries or {})
        # One regex for every word, longest first; existing links match as themselves, so they stay.
        words = "|".join(re.escape(word) for word in sorted(self.entries, key=len, reverse=True))
        self._pattern = re.compile(rf"{LINK.pattern}|(?<!\w)({words})(?!\w)", re.IGNORECASE) if words else None

    @classmethod
    def read(cls, path: str | Path, vocab: Collection[str], model: str) -> "Lexicon":
        """A lexicon file (JSON or YAML: a mapping of word to phonemes), checked against the vocab.

        Raises ValueError naming the file and the problem: a bad lexicon is a config error.
        """
        try:
            entries = yaml.safe_load(Path(path).read_text("utf-8"))  # YAML is a superset of JSON
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"lexicon {path} cannot be read: {e}") from e
        if not isinstance(entries, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and k.strip() and v.strip() for k, v in entries.items()):
            raise ValueError(f"lexicon {path} must map words to phonemes (non-empty strings)")
        for word, phonemes in entries.items():
            if unknown := unknown_symbols(phonemes, vocab):
                raise ValueError(f"lexicon {path}: {word!r} -> {phonemes!r} has symbols not in {model}'s "
                                 f"phoneme vocabulary: {' '.join(unknown)}")
        return cls({word.strip(): phonemes.strip() for word, phonemes in entries.items()})

    def apply(self, text: str) -> str:
        """Lexicon words rewritten into the inline form. A word with capitals matches as written,
        a lowercase one in any case ("kokoro" matches "Kokoro" and "KOKORO")."""
        return text if self._pattern is None else self._pattern.sub(self._inline, text)

    def _inline(self, m: re.Match) -> str:
        word = m[3]
        if word is None:
            return m[0]  # already a link
        key = word if word in self.entries else word.lower()
        return f"[{word}](/{self.entries[key]}/)" if key in self.entries else word
