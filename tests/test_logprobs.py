"""logprobs (issue 22): each generated token's log-probability and its most likely alternatives.
Unsteered, equal to llama-cpp-python's create_completion(logprobs=k) on the same GGUF; steered,
equal to a run whose flow is replaced by the independent numpy reference (the log-softmax of the
logits llama.cpp computes above the reference's rows); the top alternatives in order; the shapes
OpenAI's client reads, streamed and not, through the server."""

from __future__ import annotations

import json

import llama_cpp
import numpy as np
import pytest

from conftest import convert_tiny_flow
from flas_cpp import FlasModel, TokenLogprob
from flow_reference import FlowReference

PIRATE = "Talk like a pirate"
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def flow(tiny, tmp_path_factory):
    return convert_tiny_flow(tiny, tmp_path_factory.mktemp("logprobs") / "flow-f32.gguf", "f32")


@pytest.fixture(scope="module")
def ours(tiny_base_f32, flow):
    with FlasModel(tiny_base_f32, flow, n_ctx=512, exact=True) as m:
        yield m


def test_unsteered_logprobs_are_llama_cpp_pythons(ours, tiny_base_f32):
    # float32 caches and no flash attention on both sides (ours: exact=True), so the logits agree to rounding
    theirs = llama_cpp.Llama(model_path=str(tiny_base_f32), n_ctx=512, logits_all=True, verbose=False, seed=0,
                             type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, flash_attn=False)
    try:
        b = theirs.create_completion(PROMPT, max_tokens=24, temperature=0.0, logprobs=3)["choices"][0]
    finally:
        theirs.close()
    a = ours.create_completion(PROMPT, max_tokens=24, temperature=0.0, logprobs=3)["choices"][0]
    assert a["text"] == b["text"] and a["text"]  # the random model's first tokens are stray bytes: some text too
    la, lb = a["logprobs"], b["logprobs"]
    assert la["tokens"] == lb["tokens"] and la["text_offset"] == lb["text_offset"]
    np.testing.assert_allclose(la["token_logprobs"], lb["token_logprobs"], atol=1e-4)
    for x, y in zip(la["top_logprobs"], lb["top_logprobs"]):
        assert x.keys() == y.keys()
        np.testing.assert_allclose([x[k] for k in y], list(y.values()), atol=1e-4)


def test_steered_logprobs_are_those_of_the_reference_flow(ours, tiny):
    ref = FlowReference(tiny[1], json.loads((tiny[0] / "config.json").read_text()))
    c = ours.concept_rows(PIRATE).astype(np.float64)
    fields = dict(prompt="Tell me about your day.", max_tokens=10, temperature=0.0, logprobs=5)
    want = ours.generate(**fields, concept=PIRATE, flowtime=2.0, n_steps=3)
    seen: list[np.ndarray] = []

    def hook(rows: np.ndarray, pos0: int) -> np.ndarray:
        seen.append(rows.copy())
        return ref.steer(np.concatenate(seen), c, 2.0, 3)[pos0:].astype(np.float32)

    ours.set_steer_hook(hook)
    try:
        got = ours.generate(**fields, flowtime=0.0)
    finally:
        ours.set_steer_hook(None)
    assert got.tokens == want.tokens
    assert all(isinstance(x, TokenLogprob) and x.token == t for x, t in zip(want.logprobs, want.tokens))
    np.testing.assert_allclose([x.logprob for x in want.logprobs], [x.logprob for x in got.logprobs], atol=1e-3)
    for x, y in zip(want.logprobs, got.logprobs):
        assert [t for t, _ in x.top] == [t for t, _ in y.top]
        lps = [lp for _, lp in x.top]
        assert len(lps) == 5 and lps == sorted(lps, reverse=True) and x.top[0] == (x.token, x.logprob)  # greedy
    plain = ours.generate(**fields, flowtime=0.0)
    assert plain.logprobs[0].logprob != pytest.approx(want.logprobs[0].logprob, abs=1e-3)  # steering shows


def test_logprobs_are_opt_in_and_checked(ours):
    assert ours.generate(PROMPT, flowtime=0.0, max_tokens=3).logprobs is None
    g = ours.generate(PROMPT, flowtime=0.0, max_tokens=3, logprobs=0, temperature=0.9, seed=3)
    assert all(x.top == [] and x.logprob < 0 for x in g.logprobs)
    with pytest.raises(ValueError, match="logprobs must be in -1..20"):
        ours.generate(PROMPT, flowtime=0.0, logprobs=21)
    chat = ours.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0.0,
                                       logprobs=True, top_logprobs=2)["choices"][0]["logprobs"]["content"]
    assert len(chat) == 4 and all(len(x["top_logprobs"]) == 2 and bytes(x["bytes"])
                                  .decode("utf-8", "ignore") == x["token"] for x in chat)
