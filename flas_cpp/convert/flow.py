"""Released FLAS flow checkpoint (safetensors + config.json) -> flow GGUF (see gguf_names.py)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from .. import gguf_names as N
from .. import safetensors_io
from .common import (PYTHON_OUTTYPES, ConversionError, TensorPlan, atomic_output, check_free_space, check_output,
                     check_shape, checked_config, config_value, llama3_rope_divisors, norm_plan, pick_qtype,
                     read_json, read_safetensors, summarize, write_gguf)
from .gemma import GEMMA3_TEXT_DEFAULTS, GemmaHparams, gemma3_rope  # one reader of Gemma configs


@dataclass
class BaseFacts:
    """What the flow inherits from its base model (FLAS_SPEC.md sections 4, 6 and 7)."""
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_layer: int
    rms_eps: float = 1e-6
    softcap: float = 50.0               # 0: none
    rope_theta: float = 10000.0
    query_pre_attn_scalar: float = 256.0
    family: str = "gemma2"              # llama.cpp's architecture of the base
    activation: str = "gelu_tanh"
    rope_scaling_factor: float = 1.0    # linear RoPE scaling (gemma3's global rope on 4B and up)
    rope_llama3: dict | None = None     # Llama-3 RoPE scaling: factor, low/high_freq_factor, original context

    def rope_freqs(self) -> np.ndarray | None:
        """Llama-3 scaling as per-frequency divisors of the RoPE frequencies ([head_dim/2]), the
        form ggml's rope takes (FLAS_SPEC.md 7)."""
        return llama3_rope_divisors(self.rope_theta, self.head_dim, self.rope_llama3) if self.rope_llama3 else None


# The families whose flows this version converts and runs: config model_type -> llama.cpp architecture.
SUPPORTED_FAMILIES = {"gemma2": "gemma2", "gemma3": "gemma3", "gemma3_text": "gemma3", "qwen3": "qwen3",
                      "llama": "llama"}

# The released checkpoints' bases, and Gemma-3 270M, so that converting them needs no base config.json.
KNOWN_BASES = {
    "google/gemma-2-2b-it": BaseFacts(2304, 9216, 8, 4, 256, 26),
    "google/gemma-2-2b": BaseFacts(2304, 9216, 8, 4, 256, 26),
    "google/gemma-2-9b-it": BaseFacts(3584, 14336, 16, 8, 256, 42),
    "google/gemma-2-9b": BaseFacts(3584, 14336, 16, 8, 256, 42),
    "google/gemma-3-270m": BaseFacts(640, 2048, 4, 1, 256, 18, softcap=0.0, rope_theta=1e6, family="gemma3"),
    "google/gemma-3-270m-it": BaseFacts(640, 2048, 4, 1, 256, 18, softcap=0.0, rope_theta=1e6, family="gemma3"),
}


def base_facts_from_dict(cfg: dict, where: Path) -> BaseFacts:
    """BaseFacts of a base config.json, by its model_type (a multimodal one: its text_config)."""
    cfg = checked_config(cfg, where)
    model_type = cfg.get("model_type")
    if model_type == "gemma2":
        hp = GemmaHparams.from_config(cfg, where)
        return BaseFacts(hp.n_embd, hp.n_ff, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_layer,
                         hp.rms_eps, hp.attn_softcap, hp.rope_theta, hp.query_pre_attn_scalar)
    if model_type not in SUPPORTED_FAMILIES:
        raise ConversionError(f"{where}: base model_type {model_type!r} is not supported; flas-cpp converts flows "
                              f"of {', '.join(sorted(SUPPORTED_FAMILIES))} bases")
    text = cfg.get("text_config") or cfg
    if SUPPORTED_FAMILIES[model_type] == "gemma3" and text is not cfg:
        text = {**GEMMA3_TEXT_DEFAULTS, **text}  # a multimodal text_config lists only what differs from them

    def need(key: str):
        return config_value(text, key, where, model_type)

    family = SUPPORTED_FAMILIES[model_type]
    n_head = int(need("num_attention_heads"))
    head_dim = int(text.get("head_dim") or int(need("hidden_size")) // n_head)
    dims = (int(need("hidden_size")), int(need("intermediate_size")), n_head,
            int(text.get("num_key_value_heads") or n_head), head_dim, int(need("num_hidden_layers")))
    eps = float(text.get("rms_norm_eps", 1e-6))
    scaling = text.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type")) if scaling else None
    if family == "gemma3":
        # the flow's RoPE is the base's global (full-attention) one: its base and linear scaling
        theta, _, factor = gemma3_rope(text, where)
        return BaseFacts(*dims, eps, float(text.get("attn_logit_softcapping") or 0.0), theta,
                         float(text.get("query_pre_attn_scalar", head_dim)), family=family, rope_scaling_factor=factor)
    # qwen3 and llama: w*x norms, SiLU, scale head_dim^-0.5, no soft-capping (FLAS_SPEC.md 7)
    if text.get("attention_bias"):
        raise ConversionError(f"{where}: attention_bias is true; flows with attention biases are not supported yet")
    act = text.get("hidden_act", "silu")
    if act != "silu":
        raise ConversionError(f"{where}: hidden_act {act!r}; {model_type} flows use silu")
    facts = BaseFacts(*dims, eps, 0.0, float(text.get("rope_theta", 10000.0)), float(head_dim), family=family,
                      activation="silu")
    if kind == "llama3":
        facts.rope_llama3 = {k: float(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                             "original_max_position_embeddings")}
    elif kind == "linear":
        facts.rope_scaling_factor = float(scaling["factor"])
    elif kind not in (None, "default"):
        raise ConversionError(f"{where}: rope_scaling {scaling} is not supported (none, linear or llama3)")
    return facts


def base_facts_from_config(path: Path) -> BaseFacts:
    return base_facts_from_dict(read_json(path, "base config.json"), path)


@dataclass
class FlowConfig:
    model_id: str
    layer: int
    num_blocks: int
    n_steps: int
    t_min: float
    t_max: float
    concept_max_len: int
    prompt_format: str
    disabled: dict[str, bool | None]  # group -> flag from config.json (None: not stated)

    @classmethod
    def from_json(cls, cfg: dict, where: Path) -> "FlowConfig":
        def get(key: str, kind, default=None):
            if key not in cfg:
                if default is None:
                    raise ConversionError(f"{where}: flow config lacks {key!r}; is this the config.json "
                                          "released with the flow checkpoint?")
                return default
            val = cfg[key]
            ok = isinstance(val, (int, float)) and not isinstance(val, bool) if kind is float else isinstance(val, kind)
            if not ok or (kind is int and isinstance(val, bool)):
                raise ConversionError(f"{where}: {key!r} should be {kind.__name__}, got {val!r}")
            return kind(val)

        fc = cls(
            model_id=get("model_id", str, ""), layer=get("layer", int), num_blocks=get("num_blocks", int, 1),
            n_steps=get("n_steps", int, 3), t_min=get("T_min", float, 0.5), t_max=get("T_max", float, 2.0),
            concept_max_len=get("concept_max_len", int, 64), prompt_format=get("prompt_format", str, "chat"),
            disabled={g: (bool(cfg[f"disable_{g}"]) if f"disable_{g}" in cfg else None) for g in N.GROUPS},
        )
        if fc.prompt_format not in ("chat", "alpaca"):
            raise ConversionError(f"{where}: prompt_format {fc.prompt_format!r} is neither 'chat' nor 'alpaca'")
        # the bounds flas-cpp's loader enforces (csrc/flas-flow.cpp)
        for key, val, lo, hi in (("layer", fc.layer, 0, 4095), ("num_blocks", fc.num_blocks, 1, 1024),
                                 ("n_steps", fc.n_steps, 1, 64), ("concept_max_len", fc.concept_max_len, 1, 8192)):
            if not lo <= val <= hi:
                raise ConversionError(f"{where}: {key} must be in {lo}..{hi}, got {val}")
        if not (math.isfinite(fc.t_min) and math.isfinite(fc.t_max) and 0 <= fc.t_min <= fc.t_max <= 1e6):
            raise ConversionError(f"{where}: T_min {fc.t_min} and T_max {fc.t_max} must be finite with 0 <= T_min <= T_max")
        return fc


_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


# --outtype of a flow: one type for every matrix, or a recipe by the matrix's role, in the spirit
# of llama.cpp's _S/_M types. The matrices the runtime applies once per concept (the
# cross-attention keys and values, and cross_out, folded into the concept's values: every concept
# folds, concept_max_len <= head_dim) or once per (T, N) (the time embedding) stay f16 in the
# recipes, since decode never reads them. The others, read at every Euler step of every token,
# are typed by how much the steered displacement moves when each alone is quantized (measured
# on the full-size test flow, docs/FLOW_GGUF.md): per parameter, the attention's matrices move it
# 2 to 9 times more than the MLP's, so q5_k_s keeps them at q6_k and gives the MLP q5_k.
# docs/FLOW_GGUF.md lists the recipes with their measured quality.
T = GGMLQuantizationType
MATRIX_ROLES = ("mlp_in", "mlp_out", "attn", "cross_out", "concept", "time")
FLOW_OUTTYPES: dict[str, dict[str, GGMLQuantizationType]] = {
    **{name: dict.fromkeys(MATRIX_ROLES, qt) for name, qt in PYTHON_OUTTYPES.items()},
    "q6_k": dict.fromkeys(MATRIX_ROLES, T.Q6_K),
    "q5_k": dict.fromkeys(MATRIX_ROLES, T.Q5_K),
    "q4_k": dict.fromkeys(MATRIX_ROLES, T.Q4_K),
    "q5_k_m": {"mlp_in": T.Q5_K, "mlp_out": T.Q6_K, "attn": T.Q6_K, "cross_out": T.Q6_K, "concept": T.F16,
               "time": T.F16},
    "q5_k_s": {"mlp_in": T.Q5_K, "mlp_out": T.Q5_K, "attn": T.Q6_K, "cross_out": T.F16, "concept": T.F16,
               "time": T.F16},
    "q4_k_m": {"mlp_in": T.Q4_K, "mlp_out": T.Q6_K, "attn": T.Q6_K, "cross_out": T.Q6_K, "concept": T.F16,
               "time": T.F16},
}
DEFAULT_FLOW_OUTTYPE = "q5_k_s"  # within every target of docs/PERFORMANCE.md's K-quant report, with margin
K_QUANTS = (T.Q4_K, T.Q5_K, T.Q6_K)
K_FALLBACK = T.Q8_0  # for rows that do not fill whole 256-value K-quant blocks


def matrix_role(gguf_name: str) -> str:
    if gguf_name.startswith("time_embd."):
        return "time"
    if ".ffn_gate." in gguf_name or ".ffn_up." in gguf_name:
        return "mlp_in"
    if ".cross_k." in gguf_name or ".cross_v." in gguf_name:
        return "concept"
    if ".cross_out." in gguf_name:
        return "cross_out"
    return "mlp_out" if ".ffn_down." in gguf_name else "attn"


def flow_qtype(shape: tuple[int, ...], wanted: GGMLQuantizationType) -> GGMLQuantizationType:
    """wanted, or for a K-quant whose rows do not fill 256-value blocks, q8_0 (f16 where rows do
    not fill q8_0's 32 either)."""
    if wanted in K_QUANTS and shape[-1] % 256 != 0:
        wanted = K_FALLBACK
    return pick_qtype(shape, wanted)


def plan_flow(refs: dict[str, safetensors_io.TensorRef], fc: FlowConfig, base: BaseFacts,
              recipe: dict[str, GGMLQuantizationType], where: Path) -> tuple[list[TensorPlan], dict[str, bool]]:
    """Every tensor checked against the config and the base; returns the plan and the ablated groups."""
    table = N.flow_tensor_table(base.n_embd, base.n_ff, base.n_head, base.n_head_kv, base.head_dim, base.family)
    blocks_present = {int(m.group(1)) for name in refs if (m := _BLOCK_RE.match(name))}
    if blocks_present != set(range(fc.num_blocks)):
        raise ConversionError(f"{where.name} holds blocks {sorted(blocks_present)} but config.json says "
                              f"num_blocks = {fc.num_blocks}: the config and the weights do not belong together")
    expected = {}
    for ck, gg, group, kind, shape in table:
        for b in (range(fc.num_blocks) if "{b}" in ck else [0]):
            expected[ck.format(b=b)] = (gg.format(b=b), group, kind, shape)
    for name, ref in refs.items():
        if name not in expected and name not in N.IGNORED_CHECKPOINT_TENSORS:
            raise ConversionError(f"unknown tensor {name!r} in {where.name}: not part of a FLAS flow checkpoint "
                                  "(FLAS_SPEC.md section 6)")

    # A group is ablated when its tensors are absent; config.json's disable_* must agree.
    disabled = {}
    for group in N.GROUPS:
        names = [ck for ck, (_, g, _, _) in expected.items() if g == group]
        have = [ck for ck in names if ck in refs]
        if have and len(have) != len(names):
            missing = sorted(set(names) - set(have))
            raise ConversionError(f"{where.name} has part of the {group} group but lacks {missing[0]!r}"
                                  f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}: the checkpoint is damaged")
        absent = not have
        flag = fc.disabled[group]
        if flag is not None and flag != absent:
            state = "lacks" if absent else "has"
            raise ConversionError(f"config.json says disable_{group}: {str(flag).lower()} but {where.name} {state} "
                                  f"the {group} tensors: the config and the weights do not belong together")
        disabled[group] = absent

    plan = []
    for ck, (gg, group, kind, shape) in expected.items():
        if group is not None and disabled[group]:
            continue
        if ck not in refs:
            raise ConversionError(f"missing tensor {ck!r} in {where.name}: the checkpoint is incomplete")
        ref = refs[ck]
        check_shape(ck, ref.shape, shape, f"the base model ({fc.model_id or 'base config'}: hidden {base.n_embd}, "
                    f"{base.n_head}/{base.n_head_kv} heads of {base.head_dim}, intermediate {base.n_ff})")
        if kind == "norm" and base.family in N.GEMMA_FAMILIES:
            plan.append(norm_plan(gg, shape, ref))
        elif kind in ("norm", "vector"):  # a w * x norm is stored as it is
            plan.append(TensorPlan(gg, shape, GGMLQuantizationType.F32, ref.to_f32))
        else:
            plan.append(TensorPlan(gg, shape, flow_qtype(shape, recipe[matrix_role(gg)]), ref.to_f32))
    freqs = base.rope_freqs()
    if freqs is not None:
        plan.append(TensorPlan(N.TN_ROPE_FREQS, freqs.shape, GGMLQuantizationType.F32, lambda: freqs))
    return plan, disabled


def add_metadata(w: GGUFWriter, fc: FlowConfig, base: BaseFacts, disabled: dict[str, bool], name: str) -> None:
    w.add_name(name)
    w.add_uint32(N.KEY_FORMAT_VERSION, N.FORMAT_VERSION)
    w.add_string(N.KEY_BASE_MODEL_ID, fc.model_id)
    w.add_string(N.KEY_BASE_ARCH, base.family)
    w.add_uint32(N.KEY_BASE_BLOCK_COUNT, base.n_layer)
    w.add_uint32(N.KEY_LAYER, fc.layer)
    w.add_uint32(N.KEY_BLOCK_COUNT, fc.num_blocks)
    w.add_uint32(N.KEY_N_STEPS, fc.n_steps)
    w.add_float32(N.KEY_T_MIN, fc.t_min)
    w.add_float32(N.KEY_T_MAX, fc.t_max)
    w.add_uint32(N.KEY_CONCEPT_MAX_LEN, fc.concept_max_len)
    w.add_string(N.KEY_PROMPT_FORMAT, fc.prompt_format)
    for group in N.GROUPS:
        w.add_bool(N.GROUP_DISABLE_KEY[group], disabled[group])
    w.add_uint32(N.KEY_EMBD, base.n_embd)
    w.add_uint32(N.KEY_FF, base.n_ff)
    w.add_uint32(N.KEY_HEAD_COUNT, base.n_head)
    w.add_uint32(N.KEY_HEAD_COUNT_KV, base.n_head_kv)
    w.add_uint32(N.KEY_HEAD_DIM, base.head_dim)
    w.add_float32(N.KEY_RMS_EPS, base.rms_eps)
    w.add_float32(N.KEY_SOFTCAP, base.softcap)
    w.add_float32(N.KEY_QUERY_PRE_ATTN_SCALAR, base.query_pre_attn_scalar)
    w.add_float32(N.KEY_ROPE_FREQ_BASE, base.rope_theta)
    w.add_uint32(N.KEY_TIME_FREQ_DIM, N.TIME_FREQ_DIM)
    w.add_bool(N.KEY_NORM_PLUS_ONE, base.family in N.GEMMA_FAMILIES)
    w.add_string(N.KEY_ACTIVATION, base.activation)
    if base.rope_llama3:
        w.add_string(N.KEY_ROPE_SCALING_TYPE, "llama3")
        w.add_float32(N.KEY_ROPE_SCALING_FACTOR, base.rope_llama3["factor"])
    else:
        w.add_string(N.KEY_ROPE_SCALING_TYPE, "linear" if base.rope_scaling_factor != 1.0 else "none")
        w.add_float32(N.KEY_ROPE_SCALING_FACTOR, base.rope_scaling_factor)


def convert_flow(flow_path: str | Path, out: str | Path, config: str | Path | None = None,
                 base_config: str | Path | None = None, outtype: str = DEFAULT_FLOW_OUTTYPE, force: bool = False,
                 dry_run: bool = False, progress: bool = True) -> str:
    """Convert; returns the summary line. Raises ConversionError for bad input."""
    flow_path, out = Path(flow_path), Path(out)
    if outtype.lower() not in FLOW_OUTTYPES:
        raise ConversionError(f"unknown --outtype {outtype!r} for a flow; choose one of: {', '.join(FLOW_OUTTYPES)}")
    if not dry_run:
        check_output(out, force)
    refs = read_safetensors(flow_path)
    config = Path(config) if config else flow_path.with_name("config.json")
    if not config.is_file():
        raise ConversionError(f"flow config not found: {config} (the config.json released beside the "
                              "checkpoint; pass --config PATH if it lives elsewhere)")
    fc = FlowConfig.from_json(read_json(config, "flow config.json"), config)
    local = Path(fc.model_id) / "config.json"  # a model_id that is a local checkpoint directory
    if base_config:
        base = base_facts_from_config(Path(base_config))
    elif local.is_file():
        base = base_facts_from_config(local)
    elif fc.model_id in KNOWN_BASES:
        base = KNOWN_BASES[fc.model_id]
    else:
        raise ConversionError(f"{config}: model_id {fc.model_id!r} is not a known base model nor a local "
                              "checkpoint directory; pass --base-config BASE_DIR/config.json so the flow's "
                              "family, dimensions, norm eps, soft-capping and RoPE can be recorded")
    if not 0 <= fc.layer < base.n_layer:
        raise ConversionError(f"{config}: layer {fc.layer} is outside the base model's {base.n_layer} layers")
    recipe = FLOW_OUTTYPES[outtype.lower()]
    plan, disabled = plan_flow(refs, fc, base, recipe, flow_path)
    summary = summarize(plan)
    ablated = [g for g, d in disabled.items() if d]
    note = f" [ablated: {', '.join(ablated)}]" if ablated else ""
    fell_back = [t for t in plan if recipe[matrix_role(t.name)] in K_QUANTS and t.qtype not in K_QUANTS
                 and t.qtype != GGMLQuantizationType.F32]
    for qtype in sorted({t.qtype for t in fell_back}, key=lambda q: q.name):
        group = [t for t in fell_back if t.qtype == qtype]
        widths = sorted({t.shape[-1] for t in group})
        note += (f" [{len(group)} matrices as {qtype.name.lower()}: their rows of "
                 f"{', '.join(map(str, widths))} values do not fill 256-value K-quant blocks]")
    if dry_run:
        return summary.line(out, dry_run=True) + note
    check_free_space(out, summary.n_bytes)
    with atomic_output(out) as tmp:
        w = GGUFWriter(tmp, N.ARCH)
        add_metadata(w, fc, base, disabled, flow_path.stem)
        write_gguf(w, plan, "flow tensors", progress)
    return summary.line(out, dry_run=False) + note
