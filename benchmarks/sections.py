"""docs/PERFORMANCE.md is written by several benchmarks: each owns one "## " section."""

from __future__ import annotations

# sections written by benchmarks other than run.py, which keeps them when it rewrites the rest
OWN_SECTIONS = ["## flas-server over HTTP", "## The device path over ggml RPC", "## Families beyond Gemma-2",
                "## The C API", "## K-quant flows and the memory-bandwidth limit", "## Models from the hub (--hf)",
                "## Two builds side by side", "## Strength schedules", "## Changing a running request"]


def replace_section(text: str, title: str, md: str) -> str:
    """text with its section `title` (up to the next "## " heading) replaced by md, or md appended."""
    marker = "\n" + title
    if marker not in text:
        return text.rstrip("\n") + "\n\n" + md
    head, rest = text.split(marker, 1)
    nxt = rest.find("\n## ")
    tail = rest[nxt:] if nxt >= 0 else ""
    return head.rstrip("\n") + "\n" + md.rstrip("\n") + "\n" + tail


def kept_sections(text: str) -> str:
    """The sections of OWN_SECTIONS in text, from the first of them on."""
    starts = [text.find("\n" + t) for t in OWN_SECTIONS if ("\n" + t) in text]
    return text[min(starts):] if starts else ""
