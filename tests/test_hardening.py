"""Bad files and bad numbers end in a clear error, never a crash or a silently wrong answer:
every defect found by probing the loader and the runtime as a hostile user, as a regression test.
Each load runs through flas_flow_validate (no base model) and through FlasModel."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from conftest import convert_tiny_flow
from flas_cpp import FlasModel
from flas_cpp import gguf_names as N
from flas_cpp._native import core
from gguf_edit import edit_gguf

PROMPT, PIRATE = "Tell me about your day.", "Talk like a pirate"
U32 = GGUFValueType.UINT32


@pytest.fixture(scope="module")
def flow(tiny, tmp_path_factory):
    return convert_tiny_flow(tiny, tmp_path_factory.mktemp("hardening") / "flow-f32.gguf", "f32")


@pytest.fixture(scope="module")
def flow_q8(tiny, tmp_path_factory):
    return convert_tiny_flow(tiny, tmp_path_factory.mktemp("hardening-q8") / "flow-q8_0.gguf", "q8_0")


def refused(base, path, *needles: str) -> None:
    """Both loaders raise ValueError whose message holds every needle."""
    with pytest.raises(ValueError) as e:
        core().validate_flow(str(path))
    for needle in needles:
        assert needle in str(e.value), str(e.value)
    with pytest.raises(ValueError) as e:
        FlasModel(base, path, n_ctx=256)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


@pytest.mark.parametrize("key, value, allowed", [
    (N.KEY_FF, 0, "1..1048576"),                   # aborted the process
    (N.KEY_TIME_FREQ_DIM, 0, "2..65536"),         # aborted the process
    (N.KEY_HEAD_DIM, 0, "2..4096"),               # "cannot allocate the flow KV cache"
    (N.KEY_LAYER, 2147483648, "0..5"),            # read as a negative layer: steering silently did nothing
    (N.KEY_LAYER, 4294967295, "0..5"),
    (N.KEY_LAYER, 6, "0..5"),                     # the base has 6 layers
    (N.KEY_N_STEPS, 65, "1..64"),
    (N.KEY_EMBD, 1 << 20, "1..65536"),
    (N.KEY_HEAD_COUNT_KV, 5, "1..4"),             # more KV heads than heads
])
def test_out_of_range_integers_name_the_key_value_and_range(tiny_base_f32, flow, tmp_path, key, value, allowed):
    bad = edit_gguf(flow, tmp_path / "bad.gguf", keys={key: (value, U32)})
    refused(tiny_base_f32, bad, f"'{key}' is {value}", allowed, str(bad))


def test_integer_keys_are_read_as_the_type_they_are_stored_in(tiny_base_f32, flow, tmp_path):
    as_other = edit_gguf(flow, tmp_path / "types.gguf", keys={N.KEY_LAYER: (4, GGUFValueType.INT64),
                                                              N.KEY_N_STEPS: (3, GGUFValueType.UINT8)})
    core().validate_flow(str(as_other))
    a = FlasModel(tiny_base_f32, flow, n_ctx=256, exact=True).trace(PROMPT, concept=PIRATE, flowtime=2.0)
    b = FlasModel(tiny_base_f32, as_other, n_ctx=256, exact=True).trace(PROMPT, concept=PIRATE, flowtime=2.0)
    np.testing.assert_array_equal(a["steered"], b["steered"])  # the same layer and steps, however stored
    negative = edit_gguf(flow, tmp_path / "neg.gguf", keys={N.KEY_LAYER: (-1, GGUFValueType.INT32)})
    refused(tiny_base_f32, negative, f"'{N.KEY_LAYER}' is -1")
    text = edit_gguf(flow, tmp_path / "text.gguf", keys={N.KEY_LAYER: ("4", GGUFValueType.STRING)})
    refused(tiny_base_f32, text, f"'{N.KEY_LAYER}' has type str, expected an integer")


@pytest.mark.parametrize("key, value", [(N.KEY_RMS_EPS, 0.0), (N.KEY_RMS_EPS, float("nan")),
                                        (N.KEY_T_MAX, float("inf")), (N.KEY_ROPE_FREQ_BASE, -1.0)])
def test_bad_floats_name_the_key(tiny_base_f32, flow, tmp_path, key, value):
    bad = edit_gguf(flow, tmp_path / "bad.gguf", keys={key: (value, GGUFValueType.FLOAT32)})
    refused(tiny_base_f32, bad, f"'{key}' is", "outside the allowed")


def test_heads_and_dimensions_must_be_consistent(tiny_base_f32, flow, tmp_path):
    bad = edit_gguf(flow, tmp_path / "heads.gguf", keys={N.KEY_HEAD_COUNT_KV: (3, U32)})
    refused(tiny_base_f32, bad, "head_count 4 is not a multiple of head_count_kv 3")
    odd = edit_gguf(flow, tmp_path / "odd.gguf", keys={N.KEY_TIME_FREQ_DIM: (127, U32)})
    refused(tiny_base_f32, odd, "must be even")


@pytest.mark.parametrize("qtype, block, type_size", [(GGMLQuantizationType.IQ4_NL, 32, 18),
                                                     (GGMLQuantizationType.MXFP4, 32, 17),
                                                     (GGMLQuantizationType.Q4_0, 32, 18)])
def test_matrix_types_outside_the_documented_set_are_refused(tiny_base_f32, flow, tmp_path, qtype, block, type_size):
    t = next(t for t in GGUFReader(flow).tensors if t.name == "blk.0.ffn_up.weight")
    n = int(np.prod(t.shape))
    raw = np.zeros(n // block * type_size, dtype=np.uint8)  # finite, well-formed blocks
    bad = edit_gguf(flow, tmp_path / "type.gguf", tensors={t.name: (raw, qtype)})
    refused(tiny_base_f32, bad, "matrix 'blk.0.ffn_up.weight' is " + qtype.name.lower(), "f32, f16, bf16, q8_0, q6_k, q5_k or q4_k")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_at_load(tiny_base_f32, flow, tmp_path, bad_value):
    t = next(t for t in GGUFReader(flow).tensors if t.name == "blk.0.attn_q.weight")
    w = np.array(t.data, dtype=np.float32)
    w.flat[777] = bad_value
    bad = edit_gguf(flow, tmp_path / "nan.gguf", tensors={t.name: w})
    refused(tiny_base_f32, bad, "tensor 'blk.0.attn_q.weight' holds a non-finite value", "at element 777")


def test_a_q8_0_block_with_an_infinite_scale_is_refused(tiny_base_f32, flow_q8, tmp_path):
    t = next(t for t in GGUFReader(flow_q8).tensors if t.name == "blk.0.ffn_down.weight")
    raw = np.array(t.data, dtype=np.uint8).reshape(-1)
    raw[34 * 5:34 * 5 + 2] = np.frombuffer(np.float16(np.inf).tobytes(), dtype=np.uint8)  # block 5's scale
    bad = edit_gguf(flow_q8, tmp_path / "inf-scale.gguf", tensors={t.name: (raw, GGMLQuantizationType.Q8_0)})
    refused(tiny_base_f32, bad, "tensor 'blk.0.ffn_down.weight' holds a non-finite value", "at element 160")


def test_a_base_with_an_f16_norm_is_refused_instead_of_aborting(tiny_base_f32, flow, tmp_path):
    t = next(t for t in GGUFReader(tiny_base_f32).tensors if t.name == "output_norm.weight")
    base16 = edit_gguf(tiny_base_f32, tmp_path / "base-norm16.gguf",
                       tensors={t.name: np.asarray(t.data).astype(np.float16)})
    with pytest.raises(ValueError, match="vector 'output_norm.weight' is f16, but llama.cpp computes norms"):
        FlasModel(base16, flow, n_ctx=256)
    nan = np.array(t.data, dtype=np.float32)
    nan[3] = np.nan
    base_nan = edit_gguf(tiny_base_f32, tmp_path / "base-norm-nan.gguf", tensors={t.name: nan})
    with pytest.raises(ValueError, match="output_norm.weight holds a non-finite value"):
        FlasModel(base_nan, flow, n_ctx=256)


def test_non_finite_steered_rows_fail_the_request_and_leave_the_model_usable(tiny_base_f32, flow, tmp_path):
    """Finite weights that overflow: an MLP residual gate of 3e38 (float32's largest is 3.4e38)
    makes the velocity Inf; the request ends with an error naming it, and the model keeps working."""
    t = next(t for t in GGUFReader(flow).tensors if t.name == "blk.0.ffn_res_gate")
    huge = edit_gguf(flow, tmp_path / "huge.gguf", tensors={t.name: np.full(t.shape, 3e38, dtype=np.float32)})
    core().validate_flow(str(huge))  # every value finite: the file itself is not wrong
    with FlasModel(tiny_base_f32, huge, n_ctx=256) as m:
        with pytest.raises(RuntimeError, match="the flow produced non-finite activations"):
            m.generate(PROMPT, concept=PIRATE, flowtime=2.0, temperature=0.0, max_tokens=4)
        plain = m.generate(PROMPT, flowtime=0.0, temperature=0.0, max_tokens=8)
        assert plain.stop_reason in ("max_tokens", "eog") and plain.tokens
    with FlasModel(tiny_base_f32, flow, n_ctx=256) as ref:
        assert ref.generate(PROMPT, flowtime=0.0, temperature=0.0, max_tokens=8).tokens == plain.tokens


def test_a_failing_sequence_fails_alone(tiny_base_f32, flow, tmp_path):
    """With the overflowing flow, a steered and an unsteered request decoded together: the steered
    one fails, the unsteered one gets exactly what it gets alone (its rows and KV cells stay clean)."""
    t = next(t for t in GGUFReader(flow).tensors if t.name == "blk.0.ffn_res_gate")
    huge = edit_gguf(flow, tmp_path / "huge.gguf", tensors={t.name: np.full(t.shape, 3e38, dtype=np.float32)})
    with FlasModel(tiny_base_f32, huge, n_ctx=512, n_seq=2) as m:
        alone = m.generate(PROMPT, flowtime=0.0, temperature=0.0, max_tokens=12).tokens
        steered, plain = m.generate_many([dict(prompt=PROMPT, concept=PIRATE, temperature=0.0, max_tokens=12),
                                          dict(prompt=PROMPT, flowtime=0.0, temperature=0.0, max_tokens=12)])
        assert steered.stop_reason == "error" and "non-finite activations" in steered.error
        assert plain.stop_reason in ("max_tokens", "eog") and plain.tokens == alone
