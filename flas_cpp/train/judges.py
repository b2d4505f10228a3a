"""Judges that need no model: does a text show a concept? Used by flas-train to keep only teacher
continuations that show their concept, and by benchmarks/quality.py to measure steering."""

from __future__ import annotations

import re
from typing import Callable

# ~25 of each language's most frequent short words; a text is in the language with the most
# hits, if it has at least two.
_STOP = {
    "fr": "le la les un une des et est en du de que qui pour pas je il elle nous vous ce cette sont avec dans sur au "
          "aux mon ma mes très",
    "es": "el la los las un una y es en del de que por para no yo él ella nosotros este esta son con mi muy se lo como",
    "de": "der die das und ist ein eine nicht zu mit von den dem ich sie es wir auf für im sind auch wie",
    "it": "il lo la gli le un una e è di che per non io lui lei noi con sono nel della molto come anche",
    "en": "the a an and is are of to in that it for you i with on this be was my",
}
_STOP_SETS = {k: set(v.split()) for k, v in _STOP.items()}
_WORD = re.compile(r"[a-záéíóúñàâçèêëîïôûùüÿœäöß']+")


def language(text: str) -> str | None:
    """The language code of text by stop-word counts, or None (fewer than two hits)."""
    words = _WORD.findall(text.lower())
    hits = {k: sum(w in s for w in words) for k, s in _STOP_SETS.items()}
    best = max(hits, key=lambda k: hits[k])
    return best if hits[best] >= 2 else None


JUDGES: dict[str, Callable[[str], bool]] = {code: (lambda text, c=code: language(text) == c)
                                            for code in ("fr", "es", "de", "it", "en")}
