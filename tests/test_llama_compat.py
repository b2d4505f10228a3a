"""Code written for llama-cpp-python works with FlasModel: the same keyword names, the same
create_completion / create_chat_completion dicts and stream chunks, tokenize(bytes) and
detokenize -> bytes; unsteered, the very same text as llama_cpp.Llama on the same base GGUF."""

from __future__ import annotations

import llama_cpp
import pytest

from conftest import convert_tiny_flow
from flas_cpp import FlasModel, Request

PIRATE = "Talk like a pirate"
MESSAGES = [{"role": "user", "content": "Tell me about your day."}]


@pytest.fixture(scope="module")
def models(tiny, tiny_base_f32, tmp_path_factory):
    flow = convert_tiny_flow(tiny, tmp_path_factory.mktemp("compat") / "flow-f32.gguf", "f32")
    ours = FlasModel(model_path=str(tiny_base_f32), flow=flow, n_ctx=512, n_threads=2, n_batch=512, seed=0)
    theirs = llama_cpp.Llama(model_path=str(tiny_base_f32), n_ctx=512, n_threads=2, n_batch=512, seed=0,
                             verbose=False)
    yield ours, theirs
    ours.close()
    theirs.close()


def shape(obj):
    """The keys of nested dicts and lists, with the types of the leaves."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(v) for v in obj]
    return type(obj).__name__ if obj is not None else None


def test_chat_completion_has_llama_cpp_pythons_shape_and_text(models):
    ours, theirs = models
    a = ours.create_chat_completion(MESSAGES, temperature=0.0, max_tokens=16)
    b = theirs.create_chat_completion(MESSAGES, temperature=0.0, max_tokens=16)
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"] != ""
    assert a["usage"] == b["usage"]
    assert shape(a) == shape(b)
    assert a["object"] == "chat.completion" and a["id"].startswith("chatcmpl-") and a["model"] == ours.model_path


def test_completion_has_llama_cpp_pythons_shape_and_text(models):
    ours, theirs = models
    a = ours.create_completion("Once upon a time", temperature=0.0, max_tokens=24)
    b = theirs.create_completion("Once upon a time", temperature=0.0, max_tokens=24)
    assert a["choices"][0]["text"] == b["choices"][0]["text"] and a["choices"][0]["finish_reason"] == "length"
    assert a["choices"][0]["text"]  # the random model's first tokens are stray bytes: compare real text
    assert a["usage"] == b["usage"]
    assert shape(a) == shape(b)


def test_streams_have_llama_cpp_pythons_chunks(models):
    ours, theirs = models
    for chat in (True, False):
        call = "create_chat_completion" if chat else "create_completion"
        first = MESSAGES if chat else "Once upon a time"
        a = list(getattr(ours, call)(first, temperature=0.0, max_tokens=24, stream=True))
        b = list(getattr(theirs, call)(first, temperature=0.0, max_tokens=24, stream=True))
        key = "delta" if chat else "text"
        text = [("".join(c["choices"][0][key].get("content", "") if chat else c["choices"][0][key] for c in s))
                for s in (a, b)]
        assert text[0] == text[1] != ""
        assert shape(a[-1]) == shape(b[-1])  # the finish chunk
        if chat:
            assert shape(a[0]) == shape(b[0])  # the role chunk
        pieces = a[1 if chat else 0:-1]  # ours yields only non-empty pieces; theirs one chunk per token
        assert all(shape(c) == shape(b[1 if chat else 0]) for c in pieces)
        assert a[-1]["choices"][0]["finish_reason"] == b[-1]["choices"][0]["finish_reason"] == "length"


def test_stop_strings_end_the_text_as_llama_cpp_python_does(models):
    ours, theirs = models
    full = theirs.create_completion("Once upon a time", temperature=0.0, max_tokens=24)["choices"][0]["text"]
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip()
    a = ours.create_completion("Once upon a time", temperature=0.0, max_tokens=24, stop=[stop, "never seen"])
    b = theirs.create_completion("Once upon a time", temperature=0.0, max_tokens=24, stop=[stop, "never seen"])
    assert a["choices"][0]["text"] == b["choices"][0]["text"] == full[:full.index(stop)]
    assert a["choices"][0]["finish_reason"] == b["choices"][0]["finish_reason"] == "stop"
    streamed = "".join(c["choices"][0]["text"] for c in
                       ours.create_completion("Once upon a time", temperature=0.0, max_tokens=24, stop=stop, stream=True))
    assert streamed == full[:full.index(stop)]
    g = ours.generate(prompt=None, messages=MESSAGES, flowtime=0.0, temperature=0.0, max_tokens=24, stop="never seen")
    assert g.stop_reason in ("max_tokens", "eog")


def test_sampling_keywords_reach_llama_cpps_samplers(models):
    """repeat_penalty and min_p as llama-cpp-python applies them: greedy with a penalty gives its
    text; a min_p of 1 keeps only the most likely token, so sampling at any temperature is greedy."""
    ours, theirs = models
    kw = dict(temperature=0.0, max_tokens=24, repeat_penalty=1.5)
    pen = ours.create_completion("Once upon a time", **kw)["choices"][0]["text"]
    assert pen == theirs.create_completion("Once upon a time", **kw)["choices"][0]["text"]
    assert pen != ours.create_completion("Once upon a time", temperature=0.0, max_tokens=24)["choices"][0]["text"]
    greedy = ours.create_completion("Once upon a time", temperature=0.0, max_tokens=16)["choices"][0]["text"]
    for seed in (1, 2, 3):
        assert ours.create_completion("Once upon a time", temperature=1.5, top_k=0, top_p=1.0, min_p=1.0,
                                      max_tokens=16, seed=seed)["choices"][0]["text"] == greedy
    with pytest.raises(ValueError, match="min_p must be in"):
        ours.create_completion("x", min_p=2.0)
    with pytest.raises(ValueError, match="repeat_penalty must be"):
        ours.create_completion("x", repeat_penalty=0.0)


def test_any_sampling_field_of_the_core_is_a_keyword(models, tiny_base_f32):
    """A flas_sampling_params field that Request does not name (repeat_last_n) reaches the sampler
    by its name from generate(), a dict request and Request(sampling=...): greedy with a penalty
    over the last 4 tokens is llama_cpp.Llama(last_n_tokens_size=4)'s text, not the default 64's
    (the tiny random model needs a strong penalty to leave its favourite tokens)."""
    ours, _ = models
    theirs = llama_cpp.Llama(model_path=str(tiny_base_f32), n_ctx=512, n_threads=2, n_batch=512, seed=0,
                             last_n_tokens_size=4, verbose=False)
    try:
        want = theirs.create_completion("Once upon a time", temperature=0.0, max_tokens=20,
                                        repeat_penalty=3.0)["choices"][0]["text"]
    finally:
        theirs.close()
    kw = dict(prompt="Once upon a time", raw=True, flowtime=0.0, temperature=0.0, max_tokens=20)
    assert ours.generate(**kw, repeat_penalty=3.0, repeat_last_n=4).text == want
    assert ours.generate_many([dict(kw, repeat_penalty=3.0, repeat_last_n=4)])[0].text == want
    assert ours.generate(Request(**kw, sampling={"repeat_penalty": 3.0, "repeat_last_n": 4})).text == want
    assert ours.generate(**kw, repeat_penalty=3.0).text != want  # the default window, 64 tokens
    with pytest.raises(ValueError, match="repeat_last_n must be >= -1"):
        ours.generate(**kw, repeat_last_n=-2)
    with pytest.raises(ValueError, match="repeat_last_n must be an integer"):
        ours.generate(**kw, repeat_last_n=4.5)
    with pytest.raises(ValueError, match="unknown field 'mirostat'"):
        ours.generate(**kw, mirostat=2)
    with pytest.raises(ValueError, match="sampling: unknown field 'temperature'"):
        ours.generate(Request(**kw, sampling={"temperature": 1.0}))


def test_tokenize_and_detokenize_are_typed_as_in_llama_cpp_python(models):
    ours, theirs = models
    text = "Ahoy, matey! <start_of_turn> ünïcode"
    for add_bos in (True, False):
        for special in (False, True):
            assert ours.tokenize(text.encode(), add_bos, special) == theirs.tokenize(text.encode(), add_bos, special)
    ids = theirs.tokenize(text.encode(), add_bos=False)
    assert ours.detokenize(ids) == theirs.detokenize(ids) and isinstance(ours.detokenize(ids), bytes)
    assert ours.tokenize(text) == ours.tokenize(text.encode())  # str taken as UTF-8


def test_steering_through_the_llama_cpp_python_calls(models):
    ours, _ = models
    steered = ours.create_chat_completion(MESSAGES, temperature=0.0, max_tokens=16, concept=PIRATE, flowtime=2.0)
    g = ours.generate(messages=MESSAGES, concept=PIRATE, flowtime=2.0, temperature=0.0, max_tokens=16)
    plain = ours.create_chat_completion(MESSAGES, temperature=0.0, max_tokens=16)
    assert steered["choices"][0]["message"]["content"] == g.text != plain["choices"][0]["message"]["content"]
    with pytest.raises(ValueError, match="once"):
        FlasModel("a.gguf", "b.gguf", model_path="a.gguf")


@pytest.mark.parametrize("typical_p", [0.3, 0.9])
def test_typical_p_samples_as_llama_cpp_python(models, typical_p):
    """typical_p (llama.cpp's locally typical sampler) reaches the sampler chain where
    llama-cpp-python puts it: sampled text, seeded, equals llama_cpp.Llama's on the same GGUF,
    and differs from the same draw without it."""
    ours, theirs = models
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=24)
    texts = {seed: ours.create_completion("Once upon a time", typical_p=typical_p, seed=seed, **kw)["choices"][0]["text"]
             for seed in (1, 2, 3)}
    for seed, text in texts.items():
        assert text == theirs.create_completion("Once upon a time", typical_p=typical_p, seed=seed,
                                                **kw)["choices"][0]["text"], seed
    assert any(text != ours.create_completion("Once upon a time", seed=seed, **kw)["choices"][0]["text"]
               for seed, text in texts.items())
    with pytest.raises(ValueError, match=r"typical_p must be in \(0, 1\] \(1: off\), got 0"):
        ours.create_completion("x", typical_p=0.0)
