"""Kokoro v0.19 text front end, against the real espeak-ng shipped by espeakng_loader."""

from concurrent.futures import ThreadPoolExecutor
import re

import pytest

from serve_app.model.v0_19_text import (
    MAX_TOKENS,
    load_vocab,
    normalize_text,
    phonemize,
    text_to_pieces,
    tokenize,
)
from serve_app.versions import V0_19


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # years: digit pairs, which espeak reads "nineteen eighty four"
        ("In 1984 we left.", "In 19 84 we left."),
        ("the 1990s", "the 19 90s"),
        ("1900 and 1905", "19 hundred and 19 oh 5"),
        ("2010 and 1066", "20 10 and 1066"),
        ("2005 and the 2000s", "2005 and the 2000s"),
        ("19840 and 1984.5", "19840 and 1984 point 5"),
        # clock times
        ("at 3:05", "at 3 oh 5"),
        ("at 12:00", "at 12 o'clock"),
        ("at 9:45", "at 9 45"),
        ("at 14:00", "at 14 hundred"),
        ("10:30:15 and 3:2", "10:30:15 and 3:2"),
        # money
        ("$5", "5 dollars"),
        ("$1", "1 dollar"),
        ("$5.50", "5 dollars and 50 cents"),
        ("$1.01", "1 dollar and 1 cent"),
        ("$0.99", "99 cents"),
        ("$3.5", "3 dollars and 50 cents"),
        ("$2.00", "2 dollars"),
        ("£3.50", "3 pounds and 50 pence"),
        ("£1.01", "1 pound and 1 penny"),
        ("£0.01", "1 penny"),
        ("$1,500,000", "1500000 dollars"),
        ("$2.5 million", "2 point 5 million dollars"),
        ("$1984", "1984 dollars"),
        ("costs $5, then", "costs 5 dollars, then"),
        # decimals
        ("pi is 3.14", "pi is 3 point 1 4"),
        ("just .5", "just point 5"),
        # ranges
        ("pages 10-20", "pages 10 to 20"),
        ("1984-1990", "19 84 to 19 90"),
        ("9:00-17:00", "9 o'clock to 17 hundred"),
        ("-5 and R2-D2", "-5 and R2-D2"),
        # titles
        ("Dr. Jones", "Doctor Jones"),
        ("Mr. Smith", "Mister Smith"),
        ("Mrs. Smith", "Mrs Smith"),
        ("Ms. Smith", "Miss Smith"),
        ("Mr. and Mrs. Brown", "Mister and Mrs Brown"),
        ("Ms Smith", "Miss Smith"),
        ("Elm Dr. is here", "Elm Dr. is here"),
        # thousands separators
        ("1,000,000 people", "1000000 people"),
        ("1,984 people", "1984 people"),
        ("1,2,3", "1,2,3"),
        # quotes and parentheses
        ("‘Hi’ “there”", "'Hi' \"there\""),
        ("«q» (aside)", '"q" «aside»'),
        # initialisms
        ("TVs and DVDs", "T-V's and D-V-D's"),
        ("Ps and Qs", "P's and Q's"),
        ("As I said, Is it?", "As I said, Is it?"),
        ("U.S.A. e.g.", "U-S-A. e-g."),
        # whitespace
        ("  a\n\tb  ", "a b"),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


def test_load_vocab():
    vocab = load_vocab()
    assert vocab is load_vocab()
    assert len(vocab) == 177 and vocab["$"] == 0 and vocab["ɹ"] == 123 and vocab["ᵻ"] == 177
    assert all(len(symbol) == 1 for symbol in vocab)


def test_us_and_gb_differ():
    assert phonemize("tomato", british=False) == "təmˈeɪɾoʊ"
    assert phonemize("tomato", british=True) == "təmˈɑːtəʊ"
    assert phonemize("car", british=False) == "kˈɑːɹ"
    assert phonemize("car", british=True) == "kˈɑː"


def test_punctuation_and_stress_kept():
    assert phonemize('Yes? No; "a" (b), c!', british=False) == 'jˈɛs? nˈoʊ; "ˈeɪ" «bˈiː», sˈiː!'


def test_years_read_as_pairs():
    assert phonemize("1984", british=True) == "nˈaɪntiːn ˈeɪti fˈɔː"


@pytest.mark.parametrize(
    ("text", "gone", "british", "expected"),
    [
        ("Kyrgyz", "r", False, "kˈɜːɹɡɪz"),  # espeak's trilled r
        ("Bologna", "ʲ", False, "bəlˈoʊnjə"),
        ("Bach", "x", True, "bˈɑːk"),
        ("Llandudno", "ɬ", True, "landˈʌdnəʊ"),
    ],
)
def test_espeak_symbols_mapped(text, gone, british, expected):
    assert phonemize(text, british) == expected
    assert gone not in phonemize(text, not british)


def test_space_before_hundred():
    # espeak alone gives "nˈaɪnhˈʌndɹɪd"
    assert phonemize("900", british=False) == "nˈaɪn hˈʌndɹɪd"


def test_lone_z_joined():
    # espeak alone gives "ðə nˈaɪnti z"
    assert phonemize("the 90s.", british=True) == "ðə nˈaɪntiz."


def test_ninety_flapped_in_us_only():
    assert phonemize("ninety", british=False) == "nˈaɪndi"
    assert phonemize("ninety", british=True) == "nˈaɪnti"
    assert phonemize("the 1990s", british=False) == "ðə nˈaɪntiːn nˈaɪndiz"


def test_only_vocab_symbols():
    text = "Straße, Bach’s loch in Kyrgyz; naïve café (1984) at 3:05 for $9.99! 中文 🙂 ¿Qué?"
    vocab = load_vocab()
    for british in (False, True):
        ps = phonemize(text, british)
        assert ps and set(ps) <= set(vocab) - {"$"}
        assert len(tokenize(ps)) == len(ps)


def test_concurrent_calls_match_serial():
    # espeak is not thread-safe: without the module's lock these come out garbled.
    jobs = [(f"Line {i} of {1900 + i}, and ninety cats.", i % 2 == 0) for i in range(200)]
    serial = [phonemize(text, british) for text, british in jobs]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda job: phonemize(*job), jobs)) == serial


def test_tokenize():
    vocab = load_vocab()
    assert tokenize("hˈɛloʊ") == [vocab[c] for c in "hˈɛloʊ"]
    assert tokenize("a\n-€$b") == [vocab["a"], vocab["b"]]  # unknowns and the pad dropped
    assert tokenize("") == []


_SENTENCES = [
    "The committee met on Tuesday to review the proposal in detail.",
    "Nobody expected the budget of $12,500.75 to be approved without questions!",
    "Was the deadline of 1998 realistic, given everything that happened?",
    "She walked along the river, past the old mill and the quiet church.",
    "Dr. Brown said the results, although preliminary, were encouraging.",
    "At 4:30 the lights went out; everyone waited in silence for an hour.",
]


def _words(ps: str) -> str:
    return re.sub(r"[^\w]", "", ps)


def test_long_text_chunked_at_sentence_ends():
    text = " ".join(_SENTENCES * 12)
    assert len(text) > 4000
    ps = phonemize(text, british=False)
    chunks = text_to_pieces(text, british=False)
    assert len(chunks) >= len(ps) // MAX_TOKENS + 1
    assert all(0 < len(tokenize(c)) <= MAX_TOKENS for c in chunks)
    assert all(c.endswith((".", "!", "?")) for c in chunks)
    # nothing lost or added: chunks join back into the whole text's phonemes
    assert " ".join(chunks) == ps
    assert _words(phonemize(_SENTENCES[1], False)) in _words("".join(chunks))


def test_long_sentence_split_at_commas():
    text = ", ".join(["the rain fell softly on the roof of the house"] * 40) + "."
    chunks = text_to_pieces(text, british=True)
    assert len(chunks) > 1
    assert all(len(tokenize(c)) <= MAX_TOKENS for c in chunks)
    assert all(c.endswith(",") for c in chunks[:-1])
    assert " ".join(chunks) == phonemize(text, british=True)


def test_text_without_punctuation():
    text = " ".join(["many words go by without any punctuation at all"] * 60)
    chunks = text_to_pieces(text, british=False)
    assert len(chunks) > 1
    assert all(0 < len(tokenize(c)) <= MAX_TOKENS for c in chunks)
    assert " ".join(chunks) == phonemize(text, british=False)


def test_overlong_word_cut_hard():
    # Hyphenated letters phonemise to one space-free run of ~1000 symbols.
    text = "-".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ" * 10)
    ps = phonemize(text, british=False)
    assert " " not in ps and len(ps) > 2 * MAX_TOKENS
    chunks = text_to_pieces(text, british=False)
    assert [len(c) for c in chunks[:-1]] == [MAX_TOKENS] * (len(chunks) - 1)
    assert "".join(chunks) == ps


def test_short_text_is_one_chunk():
    assert text_to_pieces("Hello there.", british=False) == [phonemize("Hello there.", False)]


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_input(text):
    assert text_to_pieces(text, british=False) == []


@pytest.mark.parametrize(
    ("voice", "british"),
    [
        ("af", False),
        ("af_bella", False),
        ("am_adam", False),
        ("bf_emma", True),
        ("bm_george", True),
    ],
)
def test_voice_is_british(voice, british):
    assert V0_19.lang_code(None, voice) == ("b" if british else "a")
