"""FlasModel's public API: streaming, compare, batches, multi-turn, and every bad input."""

from __future__ import annotations

import json
import math
import re
import warnings

import pytest

from conftest import convert_tiny_flow
from flas_cpp import FlasModel
from flas_cpp.convert import convert_flow

PROMPT = "Tell me about your day."
CONCEPT = "Talk like a pirate"


@pytest.fixture(scope="module")
def flow_gguf(tiny, tmp_path_factory):
    return convert_tiny_flow(tiny, tmp_path_factory.mktemp("api") / "flow.gguf", "bf16")


@pytest.fixture(scope="module")
def model(tiny_base_f32, flow_gguf):
    return FlasModel(tiny_base_f32, flow_gguf, n_ctx=256)


def test_generate_reports_what_it_did(model):
    r = model.generate(PROMPT, concept=CONCEPT, flowtime=2.0, max_tokens=10, seed=3)
    assert r.n_prompt_tokens == len(model.prompt_tokens(PROMPT)) == 19
    assert r.concept == CONCEPT and r.flowtime == 2.0 and r.n_steps == 3  # the flow's default N
    assert r.stop_reason in ("eog", "max_tokens") and len(r.tokens) <= 10
    assert r.text == model.detokenize(r.tokens).decode()
    assert r.seconds >= r.prompt_seconds > 0


def test_stream_yields_the_text_of_generate_and_can_stop(model):
    kw = dict(concept=CONCEPT, flowtime=2.0, max_tokens=12, temperature=0.7, seed=5)
    full = model.generate(PROMPT, **kw)
    assert "".join(model.stream(PROMPT, **kw)) == full.text
    it = model.stream(PROMPT, **kw)
    first = next(it)
    it.close()  # stopping early leaves the model usable
    assert full.text.startswith(first)
    assert model.generate(PROMPT, **kw).tokens == full.tokens


def test_sampling_is_reproducible_by_seed(model):
    kw = dict(concept=CONCEPT, flowtime=1.0, max_tokens=16, temperature=1.0)
    assert model.generate(PROMPT, seed=1, **kw).tokens == model.generate(PROMPT, seed=1, **kw).tokens
    assert model.generate(PROMPT, seed=1, **kw).tokens != model.generate(PROMPT, seed=2, **kw).tokens


def test_compare_is_baseline_and_steered_with_the_same_seed(model):
    base, steered = model.compare(PROMPT, concept=CONCEPT, flowtime=2.0, max_tokens=8, temperature=0.0)
    assert base.flowtime == 0.0 and base.concept is None and steered.flowtime == 2.0
    assert base.tokens == model.generate(PROMPT, flowtime=0.0, max_tokens=8, temperature=0.0).tokens
    assert steered.tokens == model.generate(PROMPT, concept=CONCEPT, max_tokens=8, temperature=0.0).tokens
    assert base.tokens != steered.tokens


def test_generate_batch_is_every_prompt_at_every_flowtime(model):
    prompts = [PROMPT, "Why is the sky blue?"]
    out = model.generate_batch(prompts, concept=CONCEPT, flowtimes=[0.5, 2.0], max_tokens=6, temperature=0.0)
    assert [[g.flowtime for g in row] for row in out] == [[0.5, 2.0], [0.5, 2.0]]
    assert out[1][1].tokens == model.generate(prompts[1], concept=CONCEPT, flowtime=2.0, max_tokens=6,
                                              temperature=0.0).tokens


def test_multi_turn_messages_use_the_chat_template(model, tiny):
    from transformers import AutoTokenizer

    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
            {"role": "user", "content": PROMPT}]
    hf = AutoTokenizer.from_pretrained(tiny[0]).apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    assert model.prompt_tokens(messages=msgs) == list(hf["input_ids"])
    assert model.generate(messages=msgs, concept=CONCEPT, max_tokens=4).n_prompt_tokens == len(hf["input_ids"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(concept=""), "concept is empty"),
    (dict(concept="   \n"), "concept is empty"),
    (dict(concept=None, flowtime=2.0), "needs a concept"),
    (dict(concept="Talk like\0 a pirate"), "the concept contains a NUL character"),
    (dict(flowtime=-0.5), "flowtime must be a finite number >= 0"),
    (dict(flowtime=math.nan), "flowtime must be a finite number >= 0"),
    (dict(flowtime=math.inf), "flowtime must be a finite number >= 0"),
    (dict(n_steps=0), "n_steps must be in 1..64"),
    (dict(n_steps=65), "n_steps must be in 1..64"),
    (dict(max_tokens=0), "max_tokens must be >= 1, got 0"),
    (dict(max_tokens="8"), "max_tokens must be an integer"),
    (dict(temperature=-1.0), "temperature must be a finite number >= 0 (0: greedy), got -1"),
    (dict(top_p=0.0), "top_p must be in (0, 1] (1: off), got 0"),
    (dict(top_k=-1), "top_k must be >= 0 (0: off), got -1"),
    (dict(min_p=1.5), "min_p must be in [0, 1] (0: off), got 1.5"),
    (dict(repeat_penalty=0.0), "repeat_penalty must be a finite number > 0 (1: off), got 0"),
    (dict(temperatur=0.5), "unknown field 'temperatur'"),
])
def test_bad_generation_arguments(model, kwargs, message):
    args = dict(concept=CONCEPT, flowtime=2.0) | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        model.generate(PROMPT, **args)


def test_bad_prompts(model):
    with pytest.raises(ValueError, match=r"the prompt is .* tokens but a sequence holds 256 \(n_ctx 256 / n_seq 1\)"):
        model.generate("pirate " * 400, concept=CONCEPT)
    with pytest.raises(ValueError, match="either a prompt or messages"):
        model.generate(concept=CONCEPT)
    with pytest.raises(ValueError, match="must end with a user turn"):
        model.generate(messages=[{"role": "assistant", "content": "hi"}], concept=CONCEPT)
    with pytest.raises(ValueError, match=r"messages\[0\] must be"):
        model.generate(messages=[{"role": "robot", "content": "hi"}], concept=CONCEPT)
    # a C string ends at NUL: text with one inside is refused, never cut short
    with pytest.raises(ValueError, match=r"the prompt contains a NUL character \('\\0'\), where a C string ends"):
        model.generate("Tell me\0 about your day.", concept=CONCEPT)
    with pytest.raises(ValueError, match=r"messages\[1\] contains a NUL character"):
        model.generate(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel\0lo"},
                                 {"role": "user", "content": PROMPT}], concept=CONCEPT)
    with pytest.raises(ValueError, match="the text contains a NUL character"):
        model.tokenize(b"a\0b")


def test_long_concept_is_truncated_with_a_warning(model):
    long_concept = "Talk like a pirate who loves the sea " * 20
    with pytest.warns(UserWarning, match=r"only the first 64 are used"):
        model.generate(PROMPT, concept=long_concept, max_tokens=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.generate(PROMPT, concept=CONCEPT, max_tokens=2)


def test_missing_and_mismatched_files(tiny, tiny_base_f32, flow_gguf, tmp_path):
    with pytest.raises(ValueError, match="base model GGUF not found"):
        FlasModel(tmp_path / "nope.gguf", flow_gguf)
    with pytest.raises(ValueError, match="flow GGUF not found"):
        FlasModel(tiny_base_f32, tmp_path / "nope.gguf")
    with pytest.raises(ValueError, match="not a flow GGUF .general.architecture is 'gemma2'"):
        FlasModel(tiny_base_f32, tiny_base_f32)
    deeper = json.loads((tiny[0] / "config.json").read_text()) | {"num_hidden_layers": 8}
    (tmp_path / "config.json").write_text(json.dumps(deeper))
    other = tmp_path / "flow-for-8-layers.gguf"
    convert_flow(tiny[1], other, base_config=tmp_path / "config.json", progress=False)
    with pytest.raises(ValueError, match="layer count is 8 for the flow but 6 for the base"):
        FlasModel(tiny_base_f32, other)


def test_a_paused_stream_does_not_block_another_generation(model):
    kw = dict(concept=CONCEPT, max_tokens=16, temperature=0.0)
    whole = model.generate(PROMPT, **kw)
    it = model.stream(PROMPT, **kw)
    first = next(it)
    # the engine finishes the paused stream's sequence, then runs this one: neither is lost
    other = model.generate(PROMPT, flowtime=0.0, max_tokens=2, temperature=0.0)
    assert len(other.tokens) == 2
    assert first + "".join(it) == whole.text


def test_every_finish_reaches_python_by_its_code_through_each_call(tiny_base_f32, flow_gguf):
    """flas.h's finish and status codes, not message text, decide what Python says: max_tokens,
    context (the sequence is full), cancelled, and an error with its status (a prompt too long
    for a sequence: ContextLengthError) through generate, stream, submit and generate_many."""
    from flas_cpp import ContextLengthError
    from flas_cpp._native import core

    with FlasModel(tiny_base_f32, flow_gguf, n_ctx=256) as m:  # 256 tokens per sequence
        assert m.generate(PROMPT, concept=CONCEPT, max_tokens=3, temperature=0.0).stop_reason == "max_tokens"
        full = m.submit(PROMPT, concept=CONCEPT, max_tokens=1000, temperature=0.0).result()
        assert full.stop_reason in ("context", "eog")
        if full.stop_reason == "context":
            assert full.n_prompt_tokens + len(full.tokens) + 1 >= m.n_ctx_seq
        h = m.submit(PROMPT, concept=CONCEPT, max_tokens=1000)
        h.cancel()
        assert h.result().stop_reason == "cancelled"
        too_long = "pirate " * 400
        for call in (lambda: m.generate(too_long, concept=CONCEPT), lambda: list(m.stream(too_long, concept=CONCEPT)),
                     lambda: m.submit(too_long, concept=CONCEPT)):
            with pytest.raises(ContextLengthError):
                call()
        failed, ok = m.generate_many([dict(prompt=too_long, flowtime=0.0), dict(prompt=PROMPT, flowtime=0.0, max_tokens=2)])
        assert failed.stop_reason == "error" and failed.error_status == core().ERR_CONTEXT_LENGTH
        assert ok.stop_reason == "max_tokens"
        with pytest.raises(ContextLengthError):
            core().raise_status(failed.error_status, failed.error)
