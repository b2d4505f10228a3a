"""K-quant flows (flas-convert flow --outtype q6_k, q5_k, q4_k, q5_k_m, q5_k_s, q4_k_m): the converter writes
ggml's block layout (decoded here by gguf-py's independent numpy K-quant decoder), the runtime
steers with them, and the steered displacement stays within each type's bound of the f32 flow's.
A model whose matrix rows are multiples of 256 (tiny256); its flow's last time-embedding layer is
scaled to 1% so that the displacement shows the blocks' quantization error, not the time embedding
(trained flows start with that layer at zero)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T, GGUFReader, quants

from flas_cpp import FlasModel, safetensors_io
from flas_cpp.convert import convert_base, convert_flow
from flas_cpp.testing.make_models import make_models

CONCEPT = "Talk like a pirate"
# displacement vs the f32 flow's over the prompts: (min cosine, max relative error), with room
# for other platforms' rounding
# (measured on this model, 8 prompts: q8_0 0.99993/0.012, q6_k 0.99947/0.033, q5_k 0.99767/0.068,
# q4_k 0.99204/0.126, q5_k_m 0.99911/0.042, q5_k_s 0.99897/0.045, q4_k_m 0.99747/0.071; a wrong block
# layout gives ~0)
BOUNDS = {"q8_0": (0.9995, 0.02), "q6_k": (0.999, 0.05), "q5_k": (0.996, 0.1), "q4_k": (0.985, 0.18),
          "q5_k_m": (0.998, 0.07), "q5_k_s": (0.998, 0.07), "q4_k_m": (0.995, 0.11)}
MLP_IN = {"q6_k": T.Q6_K, "q5_k": T.Q5_K, "q4_k": T.Q4_K, "q5_k_m": T.Q5_K, "q5_k_s": T.Q5_K, "q4_k_m": T.Q4_K,
          "q8_0": T.Q8_0}


@pytest.fixture(scope="module")
def k_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("kquant")
    base_dir, flow_st = make_models(d / "ckpt", "tiny256", seed=3, quiet=True)
    refs, meta = safetensors_io.read_header(flow_st)
    tensors = {}
    for name, ref in refs.items():
        x = ref.to_f32()
        if name.startswith("time_embed.mlp.2."):
            x = x * np.float32(0.01)
        tensors[name] = ("F32", x)
    small = d / "ckpt" / "flow" / "flow-small-time.safetensors"
    safetensors_io.write(small, tensors, meta)
    base = d / "base.gguf"
    convert_base(base_dir, base, "f32", progress=False)
    flows = {}
    for t in ("f32", *BOUNDS):
        flows[t] = d / f"flow-{t}.gguf"
        flows[f"{t}-summary"] = convert_flow(small, flows[t], config=small.parent / "config.json",
                                             base_config=base_dir / "config.json", outtype=t, progress=False)
    return base, flows, tensors


def displacements(base: Path, flow: Path, texts: list[str]) -> list[np.ndarray]:
    with FlasModel(base, flow, n_ctx=512, exact=True) as m:
        out = []
        for p in texts:
            t = m.trace(p, concept=CONCEPT, flowtime=2.0, n_steps=3)
            out.append(t["steered"] - t["unsteered"])
        return out


@pytest.mark.parametrize("outtype", list(BOUNDS))
def test_each_k_quant_round_trips_within_its_bound(k_models, prompts, outtype):
    base, flows, tensors = k_models
    r = GGUFReader(flows[outtype])
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["blk.0.ffn_up.weight"] == MLP_IN[outtype]
    if outtype.endswith("_m"):
        assert types["blk.0.ffn_down.weight"] == types["blk.0.attn_q.weight"] == types["blk.0.cross_out.weight"] == T.Q6_K
    if outtype.endswith(("_m", "_s")):
        # applied once per concept or per (T, N), never read by decode: f16
        assert types["time_embd.out.weight"] == types["blk.0.cross_k.weight"] == types["blk.0.cross_v.weight"] == T.F16
    if outtype == "q5_k_s":  # the MLP at q5_k, the attention at q6_k, cross_out (folded) at f16
        assert types["blk.0.ffn_down.weight"] == T.Q5_K and types["blk.0.attn_v.weight"] == T.Q6_K
        assert types["blk.0.cross_q.weight"] == T.Q6_K and types["blk.0.cross_out.weight"] == T.F16
    assert types["time_embd.in.weight"] in (T.Q8_0, T.F16, T.F32) and types["blk.0.ffn_norm.weight"] == T.F32
    # the bytes decode, with gguf-py's own numpy decoder, to the weights within the type's error
    up = next(t for t in r.tensors if t.name == "blk.0.ffn_up.weight")
    w = tensors["blocks.0.up_proj.weight"][1]
    back = quants.dequantize(np.asarray(up.data), up.tensor_type).reshape(w.shape)
    rel = np.linalg.norm(back - w) / np.linalg.norm(w)
    assert rel < {T.Q8_0: 0.01, T.Q6_K: 0.02, T.Q5_K: 0.04, T.Q4_K: 0.08}[up.tensor_type], rel
    # the runtime steers with it: displacement vs the f32 flow's
    texts = prompts[:8]  # ../shared/data's (conftest falls back to three of its own)
    ref = displacements(base, flows["f32"], texts)
    got = displacements(base, flows[outtype], texts)
    cos = [float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(got, ref)]
    err = [float(np.linalg.norm(a - b) / np.linalg.norm(b)) for a, b in zip(got, ref)]
    lo, hi = BOUNDS[outtype]
    print(f"{outtype}: cosine mean {np.mean(cos):.5f} min {min(cos):.5f}, relative error max {max(err):.4f}")
    assert min(cos) >= lo and max(err) <= hi, (cos, err)


def test_rows_that_do_not_fill_k_quant_blocks_fall_back_to_q8_0_and_say_so(tiny, tmp_path):
    out = tmp_path / "flow-q4_k.gguf"
    line = convert_flow(tiny[1], out, base_config=tiny[0] / "config.json", outtype="q4_k", progress=False)
    assert "as q8_0: their rows of 128, 384 values do not fill 256-value K-quant blocks" in line
    types = {t.name: t.tensor_type for t in GGUFReader(out).tensors}
    assert {types[n] for n in types if n.endswith("weight") and "norm" not in n} == {T.Q8_0}


def test_k_quant_flows_steer_on_the_rpc_device_as_on_the_cpu(k_models, prompts):
    """Every layer and the q4_k_m flow (q4_k and q6_k matrices) on a ggml RPC server: the same rows
    and tokens as on the CPU."""
    from test_device import free_port, start_server, stop_server

    base, flows, _ = k_models
    port = free_port()
    server = start_server(port)
    try:
        out = []
        for kw in ({}, dict(n_gpu_layers=-1, rpc_servers=[f"127.0.0.1:{port}"])):
            with FlasModel(base, flows["q4_k_m"], n_ctx=512, exact=True, **kw) as m:
                assert m.flow_device.startswith("RPC") if kw else m.flow_device == "CPU"
                t = m.trace(prompts[0], concept=CONCEPT, flowtime=2.0, n_steps=3, n_decode=8)
                out.append(t)
        assert out[0]["tokens"] == out[1]["tokens"]
        assert np.abs(out[1]["steered"] - out[0]["steered"]).max() <= 1e-5 * np.abs(out[0]["steered"]).max()
    finally:
        stop_server(server)
