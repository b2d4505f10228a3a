"""The flow converter: every tensor and config value round-trips through GGUF."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.torch import load_file  # an independent reader of the source checkpoint

from flas_cpp import gguf_names as N
from flas_cpp.convert import convert_flow
from flas_cpp.testing import make_models as mm

from reference import q8_0_error_bound


def read_gguf(path):
    r = GGUFReader(path)
    fields = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: t for t in r.tensors}


def as_f32(t) -> np.ndarray:
    shape = tuple(int(x) for x in reversed(t.shape))  # ggml ne -> numpy order
    if t.tensor_type.name in ("F32", "F16"):
        return np.asarray(t.data, dtype=np.float32).reshape(shape)
    return dequantize(t.data, t.tensor_type).reshape(shape)


def source(tiny) -> dict[str, np.ndarray]:
    return {k: v.float().numpy() for k, v in load_file(tiny[1]).items()}


def table(s=mm.SIZES["tiny"]):
    return N.flow_tensor_table(s.hidden, s.intermediate, s.n_heads, s.n_kv_heads, s.head_dim)


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_every_tensor_round_trips(tiny, tmp_path, outtype):
    out = tmp_path / f"flow-{outtype}.gguf"
    convert_flow(tiny[1], out, base_config=tiny[0] / "config.json", outtype=outtype, progress=False)
    _, tensors = read_gguf(out)
    src = source(tiny)
    assert len(tensors) == len(src) == 26
    for ck, gg, _, kind, shape in table():
        ck, gg = ck.format(b=0), gg.format(b=0)
        t, x = tensors[gg], src[ck]
        got = as_f32(t)
        assert got.shape == shape == x.shape, gg
        if kind != "matrix":  # norms (stored as 1 + w), gates and biases: f32 whatever the outtype
            assert t.tensor_type.name == "F32", gg
            np.testing.assert_array_equal(got, x + np.float32(1) if kind == "norm" else x, err_msg=gg)
        elif outtype == "q8_0":
            assert t.tensor_type.name == "Q8_0", gg
            assert (np.abs(got - x) <= q8_0_error_bound(x) * (1 + 1e-3)).all(), gg
        else:
            assert t.tensor_type.name == outtype.upper(), gg
            want = torch.from_numpy(x).to({"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[outtype])
            np.testing.assert_array_equal(got, want.float().numpy(), err_msg=gg)  # bf16 -> bf16 is exact


def test_every_config_value_is_recorded(tiny, tmp_path):
    out = tmp_path / "flow.gguf"
    convert_flow(tiny[1], out, base_config=tiny[0] / "config.json", progress=False)
    f, _ = read_gguf(out)
    cfg = json.loads((tiny[1].parent / "config.json").read_text())
    base = json.loads((tiny[0] / "config.json").read_text())
    want = {
        "general.architecture": "flas", N.KEY_FORMAT_VERSION: 2, N.KEY_BASE_MODEL_ID: cfg["model_id"],
        N.KEY_BASE_ARCH: "gemma2", N.KEY_BASE_BLOCK_COUNT: base["num_hidden_layers"],
        N.KEY_LAYER: cfg["layer"], N.KEY_BLOCK_COUNT: cfg["num_blocks"], N.KEY_N_STEPS: cfg["n_steps"],
        N.KEY_T_MIN: cfg["T_min"], N.KEY_T_MAX: cfg["T_max"], N.KEY_CONCEPT_MAX_LEN: cfg["concept_max_len"],
        N.KEY_PROMPT_FORMAT: "chat", N.KEY_DISABLE_CROSS_ATTN: False, N.KEY_DISABLE_SELF_ATTN: False,
        N.KEY_DISABLE_MLP: False, N.KEY_EMBD: base["hidden_size"], N.KEY_FF: base["intermediate_size"],
        N.KEY_HEAD_COUNT: base["num_attention_heads"], N.KEY_HEAD_COUNT_KV: base["num_key_value_heads"],
        N.KEY_HEAD_DIM: base["head_dim"], N.KEY_RMS_EPS: pytest.approx(base["rms_norm_eps"]),
        N.KEY_SOFTCAP: base["attn_logit_softcapping"], N.KEY_QUERY_PRE_ATTN_SCALAR: base["query_pre_attn_scalar"],
        N.KEY_ROPE_FREQ_BASE: base["rope_theta"], N.KEY_TIME_FREQ_DIM: 128, N.KEY_NORM_PLUS_ONE: True,
        N.KEY_ACTIVATION: "gelu_tanh", N.KEY_ROPE_SCALING_TYPE: "none", N.KEY_ROPE_SCALING_FACTOR: 1.0,
    }
    for key, value in want.items():
        assert f[key] == value, key


@pytest.mark.parametrize("group", N.GROUPS)
def test_ablated_checkpoints_convert_and_are_marked(tiny, tmp_path, group):
    flow = mm.write_flow(tmp_path / "ablated", disable=frozenset({group}), quiet=True)
    out = tmp_path / "ablated.gguf"
    line = convert_flow(flow, out, base_config=tiny[0] / "config.json", outtype="q8_0", progress=False)
    assert f"ablated: {group}" in line
    f, tensors = read_gguf(out)
    for g in N.GROUPS:
        assert f[N.GROUP_DISABLE_KEY[g]] is (g == group)
    want = {gg.format(b=0) for _, gg, g, _, _ in table() if g != group}
    assert set(tensors) == want


def test_released_model_id_needs_no_base_config_and_inv_freq_is_ignored(tmp_path):
    # A full-size-shaped flow without any base config.json: google/gemma-2-2b-it is known.
    s = mm.SIZES["full"]
    cfg = mm.flow_config(s, "google/gemma-2-2b-it")
    from flas_cpp import safetensors_io

    names = [(n, shape) for n, shape, _, _ in mm.flow_tensor_specs(s)]
    tensors = {n: ("BF16", np.zeros(shape, np.uint16)) for n, shape in names}
    tensors["rotary_emb.inv_freq"] = ("F32", np.ones(128, np.float32))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    safetensors_io.write(tmp_path / "flas.safetensors", tensors)
    line = convert_flow(tmp_path / "flas.safetensors", tmp_path / "out.gguf", dry_run=True)
    assert "26 tensors" in line and "97.6" in line  # 97.6 M params (FLAS_SPEC.md)
