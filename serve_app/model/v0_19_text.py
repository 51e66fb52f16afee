"""Text front end of Kokoro v0.19: English text -> espeak-ng phonemes -> token ids.

v0.19 was trained on espeak-ng output (en-us for 'a' voices, en-gb for 'b'),
after its own English normalisation and a few fixes that map espeak symbols
onto the model's vocab. Feeding it anything else (e.g. misaki phonemes) changes
how it sounds, so this module reproduces that front end.

Every vocab symbol is one character and one token, so len(phonemes) is the
token count of a phonemize() result.
"""

from importlib import resources
import functools
import json
import re
import threading

from phonemizer.backend import EspeakBackend
from phonemizer.backend.espeak.wrapper import EspeakWrapper
import espeakng_loader

from ..text.phoneme_split import MAX_PHONEMES, split_phonemes
from ..text.pronunciation import phonemize_runs

MAX_TOKENS = MAX_PHONEMES  # every v0.19 symbol is one token
# Id 0: padding around the text, never a phoneme.
_PAD = "$"


@functools.cache
def load_vocab() -> dict[str, int]:
    """The v0.19 symbol -> id table (shared and cached: do not modify it)."""
    path = resources.files("serve_app").joinpath("configs/v0_19_vocab.json")
    return json.loads(path.read_text("utf-8"))


# --- English normalisation ----------------------------------------------------

_TITLES = {"Dr": "Doctor", "Mr": "Mister", "Mrs": "Mrs", "Ms": "Miss"}
# "Dr" is a title only before a name ("Elm Dr." is a street); Mr/Mrs/Ms with a
# dot are always titles. The dot goes so that it does not read as a sentence end.
_TITLE_RE = re.compile(r"\b(Dr|Mrs?|Ms)\.?(?= [A-Z])|\b(Mrs?|Ms)\.")
# Both sides of a range are digits: "5-10", "1984-1990" (not "-5" or "R2-D2").
_RANGE_RE = re.compile(r"(?<=\d)-(?=\d)")
# h:mm with nothing clock-like around it, so "10:30:15" and "3:2" are left alone.
_TIME_RE = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])")
# A standalone 1100-2099, optionally plural ("1990s"); not part of an amount,
# a longer number or a decimal.
_YEAR_RE = re.compile(r"(?<![\w$£.,:])(1[1-9]\d\d|20\d\d)(s?)\b(?![.,:]\d)")
_MONEY_RE = re.compile(
    r"([$£])(\d+(?:,\d{3})*)(\.\d+)?( (?:hundred|thousand|million|billion|trillion)\b)?"
)
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}\b)")
_DECIMAL_RE = re.compile(r"(\d*)\.(\d+)")
# espeak drops the "s" of most plural initialisms ("TVs" reads "TV"); spelled
# with hyphens and "'s" ("T-V's") every one comes out letter by letter plus "z".
# Single vowels are left out: "As", "Is", "Us" are words.
_PLURAL_INITIALISM_RE = re.compile(r"\b([A-Z]{2,}|[B-DF-HJ-NP-TV-Z])s\b")
# The inner dots of "U.S.A." or "e.g." would read as sentence ends.
_INITIALISM_DOT_RE = re.compile(r"(?<=\b[A-Za-z])\.(?=[A-Za-z]\b)")


def _title(m: re.Match) -> str:
    return _TITLES[m.group(1) or m.group(2)]


def _time(m: re.Match) -> str:
    h, mm = int(m.group(1)), int(m.group(2))
    if mm == 0:
        return f"{h} o'clock" if 1 <= h <= 12 else f"{h} hundred"
    return f"{h} oh {mm}" if mm < 10 else f"{h} {mm}"


def _year(m: re.Match) -> str:
    # Digit pairs, not words: espeak reads "19 84" as "nineteen eighty four",
    # which is what v0.19 heard in training.
    year, s = int(m.group(1)), m.group(2)
    if 2000 <= year <= 2009:
        return m.group()  # said "two thousand (and) five", which espeak does itself
    high, low = divmod(year, 100)
    if low == 0:
        return f"{high} hundred{s}"
    return f"{high} oh {low}{s}" if low < 10 else f"{high} {low}{s}"


def _money(m: re.Match) -> str:
    symbol, whole, frac, scale = m.groups()
    whole = whole.replace(",", "")
    if symbol == "$":
        unit, cent, cents = "dollar", "cent", "cents"
    else:
        unit, cent, cents = "pound", "penny", "pence"
    if scale or (frac and len(frac) > 3):
        # "$2.5 million", "$1.999": a plain number of units, read by the decimal rule.
        return f"{whole}{frac or ''}{scale or ''} {unit}s"
    n_cents = int(frac[1:].ljust(2, "0")) if frac else 0
    parts = []
    if int(whole) or not n_cents:
        parts.append(f"{whole} {unit}{'' if whole == '1' else 's'}")
    if n_cents:
        parts.append(f"{n_cents} {cent if n_cents == 1 else cents}")
    return " and ".join(parts)


def _decimal(m: re.Match) -> str:
    whole, digits = m.groups()
    return f"{whole} point {' '.join(digits)}".lstrip()


def _plural_initialism(m: re.Match) -> str:
    return "-".join(m.group(1)) + "'s"


def normalize_text(text: str) -> str:
    """Rewrite English text so that espeak reads it the way v0.19 expects."""
    text = text.replace("‘", "'").replace("’", "'")
    text = re.sub("[“”«»]", '"', text)
    # Guillemets then stand only for parentheses: "«" is in the vocab, "(" is not.
    text = text.replace("(", "«").replace(")", "»")
    text = " ".join(text.split())
    text = _TITLE_RE.sub(_title, text)
    # Order matters: ranges before years ("1984-1990"), times and years before
    # money and separators ("$1984" and "1,984" are amounts, not years).
    text = _RANGE_RE.sub(" to ", text)
    text = _TIME_RE.sub(_time, text)
    text = _YEAR_RE.sub(_year, text)
    text = _MONEY_RE.sub(_money, text)
    text = _THOUSANDS_RE.sub("", text)
    text = _DECIMAL_RE.sub(_decimal, text)
    text = _PLURAL_INITIALISM_RE.sub(_plural_initialism, text)
    text = _INITIALISM_DOT_RE.sub("-", text)
    return text.strip()


# --- espeak-ng ----------------------------------------------------------------

# espeak-ng has global state and phonemizer's backends are not thread-safe:
# one lock serialises creating and calling both backends.
_espeak_lock = threading.Lock()
_backends: dict[bool, EspeakBackend] = {}


def _espeak(text: str, british: bool) -> str:
    with _espeak_lock:
        if british not in _backends:
            # The espeakng_loader wheel ships the library and its data: no system espeak needed.
            EspeakWrapper.set_library(espeakng_loader.get_library_path())
            EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
            _backends[british] = EspeakBackend(
                language="en-gb" if british else "en-us",
                preserve_punctuation=True,
                with_stress=True,
                # Drop "(fr)"-style language-switch markers, whose letters would
                # otherwise leak into the phonemes.
                language_switch="remove-flags",
            )
        out = _backends[british].phonemize([text])
    return out[0] if out else ""


def _fix_espeak(ps: str, british: bool) -> str:
    """Map espeak's output onto the symbols v0.19 was trained on."""
    ps = ps.replace("ʲ", "j").replace("r", "ɹ").replace("x", "k").replace("ɬ", "l")
    # espeak runs numbers together: "900" -> "nˈaɪnhˈʌndɹɪd".
    ps = re.sub(r"(?<=\w)(?=hˈʌndɹɪd)", " ", ps)
    # A plural "s" espeak reads on its own ("90s" -> "nˈaɪnti z") belongs to its word.
    ps = re.sub(r' z(?=[\s;:,.!?¡¿—…"«»“”]|$)', "z", ps)
    if not british:
        # American flapped t in "ninety", but not in "nineteen" (nˈaɪntiːn).
        ps = re.sub(r"(?<=nˈaɪn)ti(?!ː)", "di", ps)
    return ps


def phonemize(text: str, british: bool) -> str:
    """Normalised, espeak-ng phonemised text, holding only v0.19 vocab symbols."""
    ps = _fix_espeak(_espeak(normalize_text(text), british), british)
    vocab = load_vocab()
    ps = "".join(c for c in ps if c in vocab and c != _PAD)
    # espeak leaves a trailing space; dropped symbols can leave runs of them.
    return " ".join(ps.split())


def tokenize(phonemes: str) -> list[int]:
    """Vocab ids of phonemes; unknown symbols (and the pad symbol) are dropped."""
    vocab = load_vocab()
    return [vocab[c] for c in phonemes if c in vocab and c != _PAD]


# --- pieces -------------------------------------------------------------------

def text_to_pieces(text: str, british: bool) -> list[str]:
    """Phoneme strings of at most MAX_TOKENS tokens each, covering all of text.

    The whole text is phonemised in one espeak call (as v0.19 did), then cut at
    sentence ends, else clause marks or commas, else spaces, else hard. Inline
    pronunciations (`[word](/phonemes/)`) split that call around them and keep their phonemes.
    """
    ps = phonemize_runs(text, lambda run: phonemize(run, british))
    return split_phonemes(ps) if ps else []
