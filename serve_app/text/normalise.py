"""Request text made safe to speak: normalised, stripped of what cannot be spoken, cut by what it expands to.

Torch-free: the ingress runs it once per request, before any piece reaches a replica.

Character limits alone do not bound a model call: a digit reads as up to ten phonemes
("1" * 30 is 300 of them) and a symbol as a word ("$" is "dollar"). So each piece is also
held to a budget of *estimated* phonemes equal to its character limit, counting a letter
as one, a digit as DIGIT_PHONEMES and a symbol as SYMBOL_PHONEMES; a piece over budget is
cut again, shorter. Long digit runs and runs of one repeated symbol get spaces first, so
those cuts fall between groups, not at arbitrary characters, and nothing is dropped.
"""
from collections.abc import Callable
import re
import unicodedata

# Kept although they are control characters: they separate words and paragraphs.
_WHITESPACE_CONTROLS = frozenset("\t\n\r\v\f")
# Unicode categories never spoken: controls, format characters (zero-width space and
# joiners, bidi overrides, soft hyphen, BOM), lone surrogates, private use, unassigned.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})

DIGIT_PHONEMES = 10   # "777" is "seven hundred seventy-seven": about ten phonemes a digit
SYMBOL_PHONEMES = 8   # "%" is "percent", "&" is "and"
DIGIT_GROUP = 3       # a run longer than MAX_DIGIT_RUN is read in groups of this many
MAX_DIGIT_RUN = 15    # up to a quadrillion reads as one number
MAX_SYMBOL_RUN = 4    # "$$$$" stays, "$$$$$$$$" is spaced into groups of this many

_DIGIT_RUN = re.compile(rf"\d{{{MAX_DIGIT_RUN + 1},}}")
_REPEAT_RUN = re.compile(rf"(.)\1{{{MAX_SYMBOL_RUN},}}")  # one pass: a run is matched whole, once


def _kept(char: str) -> bool:
    return char in _WHITESPACE_CONTROLS or unicodedata.category(char) not in _DROPPED_CATEGORIES


def _grouped(run: str, size: int) -> str:
    return " ".join(run[i : i + size] for i in range(0, len(run), size))


def _symbol_run_grouped(match: re.Match) -> str:
    # Symbols only: repeated letters or punctuation ("......", "zzzzz") read as they are.
    run = match.group()
    return _grouped(run, MAX_SYMBOL_RUN) if unicodedata.category(run[0])[0] == "S" else run


def strip_invisible(text: str) -> str:
    """Text without control, zero-width, private-use and unassigned characters (tab and newline kept)."""
    return "".join(filter(_kept, text))


def normalise_text(text: str) -> str:
    """NFC text without unspeakable characters, long digit and symbol runs spaced into groups."""
    text = unicodedata.normalize("NFC", strip_invisible(text))  # stripped first: NFC does not take lone surrogates
    text = _DIGIT_RUN.sub(lambda m: _grouped(m.group(), DIGIT_GROUP), text)
    return _REPEAT_RUN.sub(_symbol_run_grouped, text)


def is_speakable(text: str) -> bool:
    """Whether any letter, digit or symbol is left: punctuation and spaces alone make no sound."""
    return any(unicodedata.category(c)[0] in "LNS" for c in text)


def estimated_phonemes(text: str) -> int:
    """About how many phonemes text expands to, erring high for digits and symbols."""
    weights = {"N": DIGIT_PHONEMES, "S": SYMBOL_PHONEMES}
    return sum(weights.get(unicodedata.category(c)[0], 1) for c in text)


def within_budget(pieces: list[str], first_budget: int, budget: int,
                  split: Callable[[str, int], list[str]]) -> list[str]:
    """Pieces cut again until the first expands to at most first_budget estimated phonemes, the rest to budget.

    `split(text, chars)` cuts text into pieces of at most `chars` characters. A piece over
    budget is cut at the characters its budget affords on average and the parts checked
    again; each cut is shorter than the piece, so this ends, at worst at single characters.
    """
    done: list[str] = []
    todo = list(reversed(pieces))
    while todo:
        piece = todo.pop()
        allowed = budget if done else first_budget
        cost = estimated_phonemes(piece)
        if cost <= allowed or len(piece) == 1:
            done.append(piece)
            continue
        chars = max(1, min(len(piece) - 1, len(piece) * allowed // cost))
        todo.extend(reversed(split(piece, chars)))
    return done
