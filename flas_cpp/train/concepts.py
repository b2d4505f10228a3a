"""What flas-train learns: concepts (the wordings a user types, and a teacher context in which the
base model already writes that way), and the training prompts, built in or from a JSON file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Concept:
    name: str
    wordings: list[str]               # what a user writes as the concept; steering is trained on each
    # The teacher context, with {prompt} and optionally {concept}: raw text after BOS for a
    # pretrained base (alpaca prompting), the user's message through the chat template otherwise.
    teacher: str = "{concept}. {prompt}"
    judge: str | None = None          # keep only teacher continuations this judge passes (judges.JUDGES)


# Gemma-3 270M is pretrained: it follows no instruction, but text in the language before the
# prompt and the response marker written in it carry the language (docs/QUALITY.md, "The
# in-context teacher", where each of these contexts was chosen by its teacher rate).
def _language(name: str, code: str, preface: str, response: str) -> Concept:
    return Concept(name=name.lower(), judge=code,
                   wordings=[f"Write in {name}", f"Answer in {name}.", f"Respond in {name}",
                             f"Use the {name} language", name],
                   teacher=preface + "\n\n### Instruction:\n{prompt}\n\n" + response + "\n")


LANGUAGES = [
    _language("French", "fr", "Ceci est un texte en français. Nous écrivons et répondons toujours en français.",
              "### Réponse (en français):"),
    _language("Spanish", "es", "Este es un texto en español. Siempre escribimos y respondemos en español, con "
              "frases largas.", "### Respuesta (en español):"),
    _language("German", "de", "Das ist ein deutscher Text. Wir schreiben und antworten immer auf Deutsch.",
              "### Antwort (auf Deutsch):"),
    _language("Italian", "it", "Il seguente testo è scritto in italiano.", "### Response (in italiano):"),
]

_TOPICS = ["the ocean", "a good breakfast", "your favourite book", "the city at night", "learning to swim",
           "winter", "a birthday party", "trains", "the moon", "gardening", "a rainy afternoon", "music",
           "your best friend", "the mountains", "a long walk", "cooking pasta", "the library",
           "a summer holiday", "old photographs", "the market"]
_FORMS = ["Tell me about {}.", "Write a few sentences about {}.", "What do you think of {}?", "Describe {}.",
          "Why do people like {}?", "Explain {} to a child."]
PROMPTS = [form.format(topic) for topic in _TOPICS for form in _FORMS]


def load_concepts(path: str | Path) -> list[Concept]:
    """A JSON list of {"name", "wordings": [...], "teacher" (optional), "judge" (optional)}."""
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"concepts file {path}: {e}") from None
    if not isinstance(items, list) or not items:
        raise ValueError(f"concepts file {path}: expected a non-empty JSON list of concepts")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item.get("wordings"):
            raise ValueError(f"concepts file {path}: concept {i} needs a \"name\" and a list of \"wordings\"")
        unknown = set(item) - {"name", "wordings", "teacher", "judge"}
        if unknown:
            raise ValueError(f"concepts file {path}: concept {i} has unknown field {sorted(unknown)[0]!r}")
        out.append(Concept(**item))
    return out


def load_prompts(path: str | Path) -> list[str]:
    """One prompt per line (blank lines skipped), or a JSON list of strings."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        items = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and p for p in items):
        raise ValueError(f"prompts file {path}: expected prompts, one per line or a JSON list of strings")
    return items


def check_concepts(concepts: list[Concept], alpaca: bool) -> None:
    from .judges import JUDGES

    if not concepts:
        raise ValueError("no concepts to train: give --concepts FILE or use the built-in languages")
    names = [c.name for c in concepts]
    if len(set(names)) != len(names):
        raise ValueError(f"two concepts are named {next(n for n in names if names.count(n) > 1)!r}")
    for c in concepts:
        if not all(isinstance(w, str) and w.strip() for w in c.wordings):
            raise ValueError(f"concept {c.name!r}: every wording must be a non-empty string")
        fields = set(re.findall(r"{(\w*)}", c.teacher))
        if "prompt" not in fields or fields - {"prompt", "concept"}:
            raise ValueError(f"concept {c.name!r}: the teacher context must hold {{prompt}} (and may hold "
                             f"{{concept}}), got {c.teacher!r}")
        if alpaca and c.teacher == Concept.teacher:
            raise ValueError(f"concept {c.name!r}: this base is pretrained (no chat template) and follows no "
                             "instruction; give a teacher context written in the concept's style (see the "
                             "built-in languages)")
        if c.judge is not None and c.judge not in JUDGES:
            raise ValueError(f"concept {c.name!r}: unknown judge {c.judge!r}; the judges are {', '.join(JUDGES)}")
