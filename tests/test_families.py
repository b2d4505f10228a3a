"""Flow GGUFs that describe their family (format version 2): version 1 files still load and give
the same numbers, the family values reach the graph, and a flow cannot steer another family."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from conftest import convert_tiny_flow
from flas_cpp import FlasModel
from flas_cpp import gguf_names as N
from flas_cpp.convert import ConversionError, convert_flow
from flas_cpp.convert.flow import base_facts_from_dict

PIRATE = "Talk like a pirate"
V2_KEYS = {N.KEY_ACTIVATION, N.KEY_ROPE_SCALING_TYPE, N.KEY_ROPE_SCALING_FACTOR}


def rewrite(src, dst, version: int | None = None, drop: set[str] = frozenset(), change: dict | None = None) -> None:
    """A copy of an f32 flow GGUF with its metadata edited."""
    r = GGUFReader(src)
    w = GGUFWriter(dst, N.ARCH)
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop:
            continue
        value = field.contents()
        if key == N.KEY_FORMAT_VERSION and version is not None:
            value = version
        if change and key in change:
            value = change[key]
        vtype = field.types[0]
        w.add_key_value(key, value, vtype, sub_type=field.types[-1] if vtype == GGUFValueType.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def flow(tiny, tmp_path_factory):
    return convert_tiny_flow(tiny, tmp_path_factory.mktemp("families") / "flow-f32.gguf", "f32")


def test_a_version_1_flow_loads_and_steers_identically(tiny_base_f32, flow, tmp_path):
    v1 = tmp_path / "flow-v1.gguf"
    rewrite(flow, v1, version=1, drop=V2_KEYS)
    fields = {k: f.contents() for k, f in GGUFReader(v1).fields.items()}
    assert fields[N.KEY_FORMAT_VERSION] == 1 and not V2_KEYS & set(fields)
    traces = []
    for path in (flow, v1):
        with FlasModel(tiny_base_f32, path, n_ctx=256, exact=True) as m:
            assert m.flow_info["format_version"] == (2 if path == flow else 1)
            assert m.flow_info["family"] == "gemma2" and m.flow_info["activation"] == "gelu_tanh"
            traces.append(m.trace(prompt="Tell me about your day.", concept=PIRATE, flowtime=2.0, n_decode=4))
    assert traces[0]["tokens"] == traces[1]["tokens"]
    np.testing.assert_array_equal(traces[0]["steered"], traces[1]["steered"])


@pytest.mark.parametrize("change, message", [
    ({N.KEY_BASE_ARCH: "mistral"}, "flows of 'mistral' base models are not supported"),
    ({N.KEY_ACTIVATION: "relu"}, "activation 'relu' is not gelu_tanh or silu"),
    ({N.KEY_ROPE_SCALING_TYPE: "yarn"}, "RoPE scaling 'yarn'"),
    ({N.KEY_ROPE_SCALING_FACTOR: 0.5, N.KEY_ROPE_SCALING_TYPE: "linear"}, "'flas.rope.scaling.factor' is 0.5, outside the allowed \\[1, "),
    ({N.KEY_SOFTCAP: -1.0}, "'flas.attn_logit_softcapping' is -1, outside the allowed \\[0, "),
    ({N.KEY_FORMAT_VERSION: 3}, "format version 3 is not supported"),
])
def test_bad_family_values_are_clear_errors(tiny_base_f32, flow, tmp_path, change, message):
    bad = tmp_path / "bad.gguf"
    rewrite(flow, bad, change=change)
    with pytest.raises(ValueError, match=message):
        FlasModel(tiny_base_f32, bad, n_ctx=256)


def test_a_gemma3_flow_does_not_steer_a_gemma2_base(tiny_base_f32, flow, tmp_path):
    other = tmp_path / "gemma3-flow.gguf"
    rewrite(flow, other, change={N.KEY_BASE_ARCH: "gemma3", N.KEY_SOFTCAP: 0.0})
    with pytest.raises(ValueError, match="is 'gemma2', but the flow .* steers a gemma3 model"):
        FlasModel(tiny_base_f32, other, n_ctx=256)


def test_base_configs_by_family(tmp_path):
    gemma3 = {"model_type": "gemma3", "text_config": {
        "hidden_size": 640, "intermediate_size": 2048, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 256, "num_hidden_layers": 18, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "query_pre_attn_scalar": 256, "attn_logit_softcapping": None, "rope_scaling": {"rope_type": "linear",
                                                                                        "factor": 8.0}}}
    b = base_facts_from_dict(gemma3, tmp_path)
    assert (b.family, b.softcap, b.rope_theta, b.rope_scaling_factor, b.n_embd, b.n_head_kv) == \
        ("gemma3", 0.0, 1e6, 8.0, 640, 1)
    for model_type in ("mistral", "qwen2"):
        with pytest.raises(ConversionError, match=f"model_type '{model_type}' is not supported.*gemma2, gemma3"):
            base_facts_from_dict({"model_type": model_type}, tmp_path)
    llama = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
             "num_key_value_heads": 8, "num_hidden_layers": 16, "rope_theta": 500000.0, "hidden_act": "silu",
             "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192}}
    b = base_facts_from_dict(llama, tmp_path)
    assert (b.family, b.head_dim, b.activation, b.softcap, b.query_pre_attn_scalar) == ("llama", 64, "silu", 0.0, 64)
    div = b.rope_freqs()  # the highest frequencies untouched, the lowest divided by the factor
    assert div.shape == (32,) and div[0] == 1.0 and div[-1] == 32.0
    with pytest.raises(ConversionError, match="attention_bias is true"):
        base_facts_from_dict({**llama, "attention_bias": True}, tmp_path)


def test_the_flow_converter_reads_the_base_config_from_a_local_model_id(tiny, tmp_path):
    ckpt = tmp_path / "flow"
    ckpt.mkdir()
    cfg = json.loads((tiny[1].parent / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "model_id": str(tiny[0])}))
    (ckpt / "flow.safetensors").symlink_to(tiny[1])
    out = tmp_path / "flow.gguf"
    convert_flow(ckpt / "flow.safetensors", out, outtype="f32", progress=False)
    fields = {k: f.contents() for k, f in GGUFReader(out).fields.items()}
    base = json.loads((tiny[0] / "config.json").read_text())
    assert fields[N.KEY_EMBD] == base["hidden_size"] and fields[N.KEY_BASE_ARCH] == "gemma2"
