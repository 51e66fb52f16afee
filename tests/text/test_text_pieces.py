import random

import pytest

from serve_app.text.pieces import (
    FIRST_PIECE_CHARS,
    PIECE_CHARS,
    normalize_whitespace,
    split_text,
)


def check(text, first=FIRST_PIECE_CHARS, rest=PIECE_CHARS):
    """Split text and assert the invariants every result must meet."""
    pieces = split_text(text, first, rest)
    # In order, nothing lost: the pieces tile the whitespace-normalised text,
    # separated by one space, or by nothing where a too-long word was cut hard.
    flat = " ".join(text.split())
    pos = 0
    for n, piece in enumerate(pieces):
        limit = first if n == 0 else rest
        assert piece and piece == piece.strip()
        assert len(piece) <= limit
        assert flat.startswith(piece, pos), (piece, flat[pos:])
        pos += len(piece)
        if flat[pos : pos + 1] == " ":
            pos += 1
        elif pos < len(flat):
            assert len(piece) == limit and " " not in piece, piece
    assert pos == len(flat)
    # No piece spans a line break: each line is covered by whole pieces.
    remaining = iter(pieces)
    for line in text.splitlines():
        target, covered = "".join(line.split()), ""
        while len(covered) < len(target):
            covered += next(remaining).replace(" ", "")
        assert covered == target
    return pieces


@pytest.mark.parametrize("text", ["", " ", "\n\n\t \r\n", "\u00a0\u2028 "])
def test_blank_text_gives_no_pieces(text):
    assert normalize_whitespace(text) == ""
    assert check(text) == []


def test_normalize_whitespace():
    text = "  One \t two\u00a0 three.\r\n\n \n\tFour  five. \n"
    assert normalize_whitespace(text) == "One two three.\nFour five."


def test_short_text_is_one_piece():
    assert check("  Hello,\tworld!  How are you? ") == ["Hello, world! How are you?"]


@pytest.mark.parametrize(
    "text, expected",
    [
        # The sentence end wins over the later clause and comma.
        ("First part. Second; third, fourth fifth sixth", ["First part.", "Second;", "third, fourth fifth sixth"]),
        # No sentence end: the clause mark wins over the later comma.
        ("Alpha beta; gamma, delta epsilon zeta eta", ["Alpha beta;", "gamma, delta epsilon zeta eta"]),
        ("Alpha beta, gamma delta epsilon zeta", ["Alpha beta,", "gamma delta epsilon zeta"]),
        ("Alpha beta — gamma delta epsilon zeta", ["Alpha beta —", "gamma delta epsilon zeta"]),
        # No punctuation at all: the last space that fits.
        ("one two three four five six seven eight", ["one two three four five six", "seven eight"]),
        # A space right after the limit still lets the piece fill it exactly.
        ("ab cdefghijklmnopqrstuvwxyz012 four", ["ab cdefghijklmnopqrstuvwxyz012", "four"]),
        # The last of equally good boundaries is taken (greedy packing).
        ("Ab. Cd. Ef gh. Ijk lmn opq rst uvw", ["Ab. Cd. Ef gh.", "Ijk lmn opq rst uvw"]),
    ],
)
def test_boundary_preference(text, expected):
    assert check(text, 30, 30) == expected


def test_closing_quotes_and_brackets_stay_with_their_sentence():
    assert check("He said “Stop.” Then he left", 20, 20) == ["He said “Stop.”", "Then he left"]
    assert check("It ends (so it goes.) And on we go", 22, 22) == ["It ends (so it goes.)", "And on we go"]


def test_unicode_ellipsis_and_dash():
    assert check("Well… Maybe later — friend, maybe", 15, 15) == ["Well…", "Maybe later —", "friend, maybe"]


def test_period_inside_a_word_is_not_a_boundary():
    # "3.5" must stay whole; the comma after it is the best boundary.
    assert check("Version 3.5, the latest release", 20, 20) == ["Version 3.5,", "the latest release"]


def test_period_before_lowercase_is_not_a_sentence_end():
    # Were "e.g." a sentence end it would beat the comma: "Use tools, e.g.".
    assert check("Use tools, e.g. the hammer", 20, 20) == ["Use tools,", "e.g. the hammer"]


def test_first_and_later_piece_limits():
    sentences = [f"Sentence number {i} says something short." for i in range(60)]
    pieces = check(" ".join(sentences))
    assert len(pieces[0]) <= FIRST_PIECE_CHARS < max(len(c) for c in pieces[1:])
    longest = max(len(s) for s in sentences)
    for n, piece in enumerate(pieces[:-1]):
        limit = FIRST_PIECE_CHARS if n == 0 else PIECE_CHARS
        assert piece.endswith(".")
        # Greedy: the next sentence would not have fitted.
        assert len(piece) + 1 + longest > limit


def test_paragraph_breaks_are_always_boundaries():
    text = "Title\n\n\nFirst paragraph here.\n  \nSecond one,\nstill short."
    assert check(text) == ["Title", "First paragraph here.", "Second one,", "still short."]


def test_long_word_is_cut_hard_at_each_limit():
    word = "x" * 2000
    pieces = check(word)
    assert len(pieces[0]) == FIRST_PIECE_CHARS
    assert all(len(c) == PIECE_CHARS for c in pieces[1:-1]) and 0 < len(pieces[-1]) <= PIECE_CHARS
    assert "".join(pieces) == word


def test_long_word_gets_its_own_pieces():
    url = "https://example.com/" + "a" * 150
    assert check(f"See {url} now", 50, 50) == ["See", url[:50], url[50:100], url[100:150], url[150:] + " now"]


@pytest.mark.parametrize("first, rest", [(0, 10), (10, 0), (-1, -1)])
def test_limits_below_one_are_rejected(first, rest):
    with pytest.raises(ValueError):
        split_text("some text", first, rest)


WORDS = ["a", "I", "the", "speech", "Kokoro", "3.5", "e.g.", "Dr.", "don’t", "naïve", "—", "“Quoted”", "(aside)"]
MARKS = ["", "", "", ".", "!", "?", "…", ":", ";", ",", "—", ".”", "?)", "!'"]
GAPS = [" ", " ", " ", " ", "  ", "\t", "\n", "\n\n", " \n \t\n ", "\r\n"]


def random_text(rng):
    parts = []
    for _ in range(rng.randint(0, 80)):
        if rng.random() < 0.05:  # now and then a word longer than most limits
            word = "".join(rng.choices("abc/.-", k=rng.randint(1, 120)))
        else:
            word = rng.choice(WORDS) + rng.choice(MARKS)
        parts += [word, rng.choice(GAPS)]
    return "".join(parts)


def test_random_texts_keep_all_invariants():
    rng = random.Random(20240601)
    for _ in range(2000):
        check(random_text(rng), rng.randint(1, 80), rng.randint(1, 200))
