"""Stop strings: the automaton the Handle uses against the plain definition (cut the text before
the earliest occurrence of any stop string, send nothing that could still be the start of one),
on random strings and random piece boundaries."""

from __future__ import annotations

import random

from flas_cpp.generation import StopMatcher


def reference(stops: list[str], pieces: list[str]) -> list[str]:
    """What is sent after each piece and at the end, from the whole text seen so far."""
    out, sent, stopped = [], 0, False
    text = ""
    for piece in pieces + [None]:
        if stopped:
            out.append("")
            continue
        if piece is None:  # the end: whatever is left
            out.append(text[sent:])
            continue
        text += piece
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        if hits:
            stopped = True
            out.append(text[sent:min(hits)])
            continue
        hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        out.append(text[sent:len(text) - hold])
        sent = len(text) - hold
    return out


def test_the_matcher_cuts_where_the_definition_cuts():
    rng = random.Random(7)
    for _ in range(5000):
        stops = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 4))]
        text = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 40)))
        pieces, i = [], 0
        while i < len(text):
            n = rng.randint(1, 5)
            pieces.append(text[i:i + n])
            i += n
        m = StopMatcher(stops)
        got = [m.feed(p) for p in pieces] + [m.flush()]
        assert got == reference(stops, pieces), (stops, pieces)


def test_long_stop_strings_hold_back_only_a_possible_start():
    stops = ["x" * 999 + "!", "y" * 1000]
    m = StopMatcher(stops)
    assert m.feed("ab" + "x" * 500) == "ab" and len(m.held) == 500
    assert m.feed("xyz") == "x" * 500 + "xyz" and m.held == ""
    assert m.feed("x" * 999) == "" and m.feed("!tail") == "" and m.stopped
