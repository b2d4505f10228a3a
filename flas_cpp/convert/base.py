"""Hugging Face checkpoint directory -> a GGUF that llama.cpp loads: Gemma-2 (`gemma2`), Gemma-3
text models (`gemma3`), and Qwen3 / Llama with a SentencePiece vocabulary (`qwen3`, `llama`,
see decoder.py)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, RopeScalingType

from .. import safetensors_io
from . import decoder, spm
from .common import (PYTHON_OUTTYPES, ConversionError, TensorPlan, atomic_output, check_free_space, check_output,
                     checked_config, config_value, max_bytes_per_param, plan_checkpoint, read_json, read_safetensors,
                     summarize, summarize_file, temp_beside, write_gguf)

# llama.cpp's llama_ftype values for the types only its quantizer writes (include/llama.h).
LLAMA_QUANT_FTYPES = {
    "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13,
    "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18,
}
PYTHON_FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                     "bf16": LlamaFileType.MOSTLY_BF16, "q8_0": LlamaFileType.MOSTLY_Q8_0}
BASE_OUTTYPES = [*PYTHON_OUTTYPES, *LLAMA_QUANT_FTYPES]


@dataclass
class GemmaHparams:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_ctx_train: int
    rms_eps: float
    rope_theta: float
    sliding_window: int
    attn_softcap: float
    final_softcap: float
    query_pre_attn_scalar: float
    arch: str = "gemma2"              # llama.cpp's architecture: "gemma2" or "gemma3"
    rope_local_theta: float = 10000.0  # gemma3: the sliding layers' RoPE base
    rope_linear_factor: float = 1.0    # gemma3 4B and up: linear scaling of the global layers' RoPE
    multimodal: bool = False           # gemma3: the language model of a Gemma3ForConditionalGeneration

    @classmethod
    def from_config(cls, cfg: dict, where: Path) -> "GemmaHparams":
        archs = cfg.get("architectures") or []
        if cfg.get("model_type") == "gemma3" or "Gemma3ForConditionalGeneration" in archs:
            text = cfg.get("text_config")
            if not isinstance(text, dict):
                raise ConversionError(f"{where}: a multimodal Gemma-3 config without text_config; its language "
                                      "model cannot be read")
            return gemma3_hparams({**GEMMA3_TEXT_DEFAULTS, **text}, where, multimodal=True)
        if cfg.get("model_type") == "gemma3_text" or "Gemma3ForCausalLM" in archs:
            return gemma3_hparams(cfg, where)
        if cfg.get("model_type") != "gemma2" and "Gemma2ForCausalLM" not in archs:
            raise ConversionError(
                f"{where}: not a config flas-convert base knows (model_type {cfg.get('model_type')!r}, architectures "
                f"{archs}); it converts gemma2, gemma3_text, qwen3 and llama checkpoints; for other families use "
                "llama.cpp's convert_hf_to_gguf.py")

        def need(key: str):
            return config_value(cfg, key, where, "Gemma-2")

        rope = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        hp = cls(
            n_vocab=int(need("vocab_size")), n_embd=int(need("hidden_size")), n_layer=int(need("num_hidden_layers")),
            n_head=int(need("num_attention_heads")),
            n_head_kv=int(cfg.get("num_key_value_heads", need("num_attention_heads"))),
            head_dim=int(need("head_dim")), n_ff=int(need("intermediate_size")),
            n_ctx_train=int(cfg.get("max_position_embeddings", 8192)), rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope), sliding_window=int(cfg.get("sliding_window", 4096) or 4096),
            attn_softcap=float(cfg.get("attn_logit_softcapping") or 50.0),
            final_softcap=float(cfg.get("final_logit_softcapping") or 30.0),
            query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", need("head_dim"))),
        )
        if hp.n_head % hp.n_head_kv:
            raise ConversionError(f"{where}: num_attention_heads {hp.n_head} is not a multiple of "
                                  f"num_key_value_heads {hp.n_head_kv}")
        # llama.cpp's gemma2 graph scales queries by 1/sqrt(head_dim) (27B aside): refuse a model
        # it would silently compute differently.
        if hp.n_layer != 46 and hp.query_pre_attn_scalar != hp.head_dim:
            raise ConversionError(
                f"{where}: query_pre_attn_scalar {hp.query_pre_attn_scalar:g} != head_dim {hp.head_dim}; "
                "llama.cpp's gemma2 scales attention by 1/sqrt(head_dim), so this model would run wrongly")
        return hp


# transformers' Gemma3TextConfig defaults: a multimodal checkpoint's text_config (google/gemma-3-4b-it's)
# lists only what differs from them
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "query_pre_attn_scalar": 256,
    "rope_theta": 1e6, "rope_local_base_freq": 1e4, "rms_norm_eps": 1e-6, "max_position_embeddings": 131072,
    "sliding_window": 4096,
}
# where a multimodal Gemma-3 checkpoint keeps its language model's tensors (the hub's files, and
# transformers 5's layout), and the towers flas-cpp leaves out
GEMMA3_TEXT_PREFIXES = ("language_model.model.", "model.language_model.")
GEMMA3_OTHER_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.",
                         "language_model.lm_head.")


def gemma3_rope(cfg: dict, where: Path) -> tuple[float, float, float]:
    """(global RoPE base, sliding RoPE base, linear factor of the global layers) from either form:
    rope_theta / rope_local_base_freq / rope_scaling, or transformers 5's rope_parameters per
    layer type."""
    params = cfg.get("rope_parameters") or {}
    if isinstance(params.get("full_attention"), dict):
        full, sliding = params["full_attention"], params.get("sliding_attention") or {}
        theta, local = full.get("rope_theta", 1e6), sliding.get("rope_theta", 1e4)
        scaling = full
        if sliding.get("rope_type", "default") != "default":
            raise ConversionError(f"{where}: the sliding layers' RoPE {sliding} is scaled; Gemma-3 scales only the "
                                  "global layers, as llama.cpp's gemma3 does")
    else:
        theta, local = cfg.get("rope_theta", 1e6), cfg.get("rope_local_base_freq", 1e4)
        scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear"):
        raise ConversionError(f"{where}: RoPE scaling {scaling} is not converted (Gemma-3 uses none or linear)")
    factor = scaling.get("factor", 1.0) if kind == "linear" else 1.0
    for name, v in (("rope_theta", theta), ("the sliding rope_theta", local), ("the RoPE factor", factor)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e30:
            raise ConversionError(f"{where}: {name} should be a positive number, got {v!r}"[:300])
    return float(theta), float(local), float(factor)


def gemma3_hparams(cfg: dict, where: Path, multimodal: bool = False) -> GemmaHparams:
    """A Gemma-3 text config (Gemma3ForCausalLM, or a multimodal checkpoint's text_config), as
    llama.cpp's gemma3 reads it."""
    def need(key: str):
        return config_value(cfg, key, where, "Gemma-3")

    layer_types = cfg.get("layer_types")
    n_layer = int(need("num_hidden_layers"))
    pattern = int(cfg.get("sliding_window_pattern") or 6)
    if layer_types is not None:
        want = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layer)]
        if list(layer_types) != want:
            raise ConversionError(f"{where}: layer_types is not Gemma-3's pattern (every 6th layer full attention), "
                                  "which llama.cpp's gemma3 assumes")
    elif pattern != 6:
        raise ConversionError(f"{where}: sliding_window_pattern {pattern}; llama.cpp's gemma3 assumes 6")
    theta, local, factor = gemma3_rope(cfg, where)
    head_dim = int(need("head_dim"))
    hp = GemmaHparams(
        n_vocab=int(need("vocab_size")), n_embd=int(need("hidden_size")), n_layer=n_layer,
        n_head=int(need("num_attention_heads")), n_head_kv=int(cfg.get("num_key_value_heads", need("num_attention_heads"))),
        head_dim=head_dim, n_ff=int(need("intermediate_size")),
        n_ctx_train=int(cfg.get("max_position_embeddings", 32768)), rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta, sliding_window=int(cfg.get("sliding_window", 512) or 512),
        attn_softcap=0.0, final_softcap=float(cfg.get("final_logit_softcapping") or 0.0),
        query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", head_dim)), arch="gemma3",
        rope_local_theta=local, rope_linear_factor=factor, multimodal=multimodal,
    )
    if hp.query_pre_attn_scalar != hp.head_dim:
        raise ConversionError(f"{where}: query_pre_attn_scalar {hp.query_pre_attn_scalar:g} != head_dim "
                              f"{hp.head_dim}; llama.cpp's gemma3 scales attention by 1/sqrt(head_dim)")
    if hp.n_head % hp.n_head_kv:
        raise ConversionError(f"{where}: num_attention_heads {hp.n_head} is not a multiple of num_key_value_heads "
                              f"{hp.n_head_kv}")
    return hp


def expected_tensors(hp: GemmaHparams) -> dict[str, tuple[str, tuple[int, ...], bool]]:
    """HF name -> (GGUF name, shape, is_norm)."""
    H, D = hp.n_embd, hp.head_dim
    out = {"model.embed_tokens.weight": ("token_embd.weight", (hp.n_vocab, H), False),
           "model.norm.weight": ("output_norm.weight", (H,), True)}
    per_layer = [
        ("input_layernorm.weight", "attn_norm.weight", (H,), True),
        ("self_attn.q_proj.weight", "attn_q.weight", (hp.n_head * D, H), False),
        ("self_attn.k_proj.weight", "attn_k.weight", (hp.n_head_kv * D, H), False),
        ("self_attn.v_proj.weight", "attn_v.weight", (hp.n_head_kv * D, H), False),
        ("self_attn.o_proj.weight", "attn_output.weight", (H, hp.n_head * D), False),
        ("post_attention_layernorm.weight", "post_attention_norm.weight", (H,), True),
        ("pre_feedforward_layernorm.weight", "ffn_norm.weight", (H,), True),
        ("mlp.gate_proj.weight", "ffn_gate.weight", (hp.n_ff, H), False),
        ("mlp.up_proj.weight", "ffn_up.weight", (hp.n_ff, H), False),
        ("mlp.down_proj.weight", "ffn_down.weight", (H, hp.n_ff), False),
        ("post_feedforward_layernorm.weight", "post_ffw_norm.weight", (H,), True),
    ]
    if hp.arch == "gemma3":  # per-head q/k norms
        per_layer += [("self_attn.q_norm.weight", "attn_q_norm.weight", (D,), True),
                      ("self_attn.k_norm.weight", "attn_k_norm.weight", (D,), True)]
    for i in range(hp.n_layer):
        for hf, gg, shape, is_norm in per_layer:
            out[f"model.layers.{i}.{hf}"] = (f"blk.{i}.{gg}", shape, is_norm)
    return out


def find_weights(hf_dir: Path) -> dict[str, safetensors_io.TensorRef]:
    """All tensors of the checkpoint, from the index if there is one, else from every shard."""
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "weight index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{index}: no 'weight_map'; the index file is damaged")
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in hf_dir.glob("*.safetensors"))
        if not files:
            bins = sorted(p.name for p in hf_dir.glob("*.bin"))
            hint = " (only PyTorch .bin files: re-save the model with safetensors)" if bins else ""
            raise ConversionError(f"no .safetensors weights in {hf_dir}{hint}")
        weight_map = None
    refs: dict[str, safetensors_io.TensorRef] = {}
    for fname in files:
        for name, ref in read_safetensors(hf_dir / fname).items():
            if name in refs:
                raise ConversionError(f"tensor {name!r} appears in both {refs[name].path.name} and {fname}")
            refs[name] = ref
    if weight_map is not None:
        for name, fname in weight_map.items():
            if name not in refs or refs[name].path.name != fname:
                raise ConversionError(f"{index}: says {name!r} is in {fname}, but it is not there; "
                                      "the index and the shards do not belong together")
    return refs


@dataclass
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool
    remove_extra_whitespaces: bool


def load_vocab(hf_dir: Path, hp: GemmaHparams, tok_cfg: dict) -> Vocab:
    path = hf_dir / "tokenizer.model"
    if not path.is_file():
        raise ConversionError(f"tokenizer.model not found in {hf_dir}: flas-convert base needs the "
                              "SentencePiece model that Gemma checkpoints ship")
    try:
        sp = spm.load(path)
    except spm.SentencePieceError as e:
        raise ConversionError(str(e)) from None
    if len(sp.pieces) > hp.n_vocab:
        raise ConversionError(f"tokenizer.model has {len(sp.pieces)} pieces but config.json vocab_size is "
                              f"{hp.n_vocab}: the tokenizer and the weights do not belong together")
    pad = hp.n_vocab - len(sp.pieces)
    v = Vocab(sp.pieces + [f"[PAD{i}]" for i in range(len(sp.pieces), hp.n_vocab)],
              sp.scores + [-10000.0] * pad, sp.types + [spm.UNUSED] * pad,
              sp.add_dummy_prefix, sp.remove_extra_whitespaces)
    # Tokens the HF tokenizer adds on top of the SentencePiece model: "special" ones are
    # control tokens for llama.cpp (parsed only when asked to), the rest user-defined.
    added = dict((tok_cfg.get("added_tokens_decoder") or {}).items())
    extra = hf_dir / "added_tokens.json"
    if extra.is_file():
        added.update({str(i): {"content": t, "special": False} for t, i in read_json(extra, "added_tokens.json").items()})
    for sid, info in added.items():
        i = int(sid)
        if i >= hp.n_vocab:
            raise ConversionError(f"added token {info.get('content')!r} has id {i}, beyond vocab_size {hp.n_vocab}")
        v.tokens[i] = info["content"]
        v.types[i] = spm.CONTROL if info.get("special") else spm.USER_DEFINED
    return v


def _token_id(tok_cfg: dict, cfg: dict, vocab: Vocab, role: str) -> int | None:
    tok = tok_cfg.get(f"{role}_token")
    if isinstance(tok, dict):
        tok = tok.get("content")
    if isinstance(tok, str) and tok in vocab.tokens:
        return vocab.tokens.index(tok)
    cid = cfg.get(f"{role}_token_id")
    if isinstance(cid, list):
        cid = cid[0] if cid else None
    return int(cid) if cid is not None else None


def add_metadata(w: GGUFWriter, hp, vocab: Vocab, cfg: dict, tok_cfg: dict, name: str, ftype: int) -> None:
    w.add_name(name)
    w.add_file_type(ftype)
    w.add_quantization_version(2)
    if isinstance(hp, decoder.DecoderHparams):
        decoder.add_arch_metadata(w, hp)
    else:
        add_gemma_metadata(w, hp)
    add_tokenizer_metadata(w, vocab, cfg, tok_cfg)


def add_gemma_metadata(w: GGUFWriter, hp: GemmaHparams) -> None:
    w.add_context_length(hp.n_ctx_train)
    w.add_embedding_length(hp.n_embd)
    w.add_block_count(hp.n_layer)
    w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_key_length(hp.head_dim)
    w.add_value_length(hp.head_dim)
    w.add_layer_norm_rms_eps(hp.rms_eps)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_sliding_window(hp.sliding_window)
    if hp.arch == "gemma3":
        w.add_rope_freq_base_swa(hp.rope_local_theta)
        if hp.rope_linear_factor != 1.0:  # llama.cpp's gemma3 scales the global layers only, as transformers
            w.add_rope_scaling_type(RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(hp.rope_linear_factor)
        if hp.final_softcap:
            w.add_final_logit_softcapping(hp.final_softcap)
    else:
        w.add_attn_logit_softcapping(hp.attn_softcap)
        w.add_final_logit_softcapping(hp.final_softcap)


def add_tokenizer_metadata(w: GGUFWriter, vocab: Vocab, cfg: dict, tok_cfg: dict) -> None:
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    w.add_add_space_prefix(vocab.add_space_prefix)
    w.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    for role, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id),
                      ("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):
        tid = _token_id(tok_cfg, cfg, vocab, role)
        if tid is not None:
            add(tid)
    if "<end_of_turn>" in vocab.tokens:
        w.add_eot_token_id(vocab.tokens.index("<end_of_turn>"))
    w.add_add_bos_token(bool(tok_cfg.get("add_bos_token", True)))
    w.add_add_eos_token(bool(tok_cfg.get("add_eos_token", False)))
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # the multi-template form: keep the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if isinstance(template, str) and template:
        w.add_chat_template(template)


def plan_tensors(refs: dict[str, safetensors_io.TensorRef], hp, qtype: GGMLQuantizationType) -> list[TensorPlan]:
    if isinstance(hp, decoder.DecoderHparams):
        return decoder.plan_tensors(refs, hp, qtype)
    expected = {hf: (gg, shape, "norm1" if is_norm else "matrix", None)
                for hf, (gg, shape, is_norm) in expected_tensors(hp).items()}
    family = {"gemma2": "Gemma-2", "gemma3": "Gemma-3"}[hp.arch]
    # lm_head is tied to the embedding in Gemma: llama.cpp reuses token_embd
    return plan_checkpoint(refs, expected, qtype, f"a {family} model with {hp.n_layer} layers", ("lm_head.weight",))


def language_model_refs(refs: dict[str, safetensors_io.TensorRef], where: Path) -> dict[str, safetensors_io.TensorRef]:
    """A multimodal Gemma-3 checkpoint's language model under Gemma3ForCausalLM's names; the vision
    tower and the projector are left out (llama.cpp runs them from a separate mmproj file)."""
    out = {}
    for name, ref in refs.items():
        prefix = next((p for p in GEMMA3_TEXT_PREFIXES if name.startswith(p)), None)
        if prefix is not None:
            out["model." + name[len(prefix):]] = ref
        elif not name.startswith(GEMMA3_OTHER_PREFIXES) and name != "lm_head.weight":
            out[name] = ref  # unknown: plan_checkpoint names it
    if not any(n.startswith("model.layers.") for n in out):
        raise ConversionError(f"{where}: a multimodal Gemma-3 checkpoint without language model tensors (looked for "
                              f"{' and '.join(GEMMA3_TEXT_PREFIXES)})")
    return out


def intermediate_type(refs: dict[str, safetensors_io.TensorRef]) -> str:
    """The precision to hand llama.cpp's quantizer: the widest the checkpoint holds."""
    dtypes = {r.dtype for r in refs.values()}
    return "f32" if "F32" in dtypes or "F64" in dtypes else ("bf16" if "BF16" in dtypes else "f16")


def convert_base(hf_dir: str | Path, out: str | Path, outtype: str = "f16", force: bool = False,
                 dry_run: bool = False, progress: bool = True, threads: int = 0) -> str:
    """Convert; returns the summary line. Raises ConversionError for bad input."""
    hf_dir, out = Path(hf_dir), Path(out)
    key = outtype.lower() if outtype.lower() in PYTHON_OUTTYPES else outtype.upper()
    if key not in PYTHON_OUTTYPES and key not in LLAMA_QUANT_FTYPES:
        raise ConversionError(f"unknown --outtype {outtype!r}; choose one of: {', '.join(BASE_OUTTYPES)}")
    if not hf_dir.is_dir():
        raise ConversionError(f"checkpoint directory not found: {hf_dir}")
    if not dry_run:
        check_output(out, force)
    cfg = checked_config(read_json(hf_dir / "config.json", "config.json"), hf_dir / "config.json")
    hp = read_hparams(cfg, hf_dir / "config.json")
    tok_cfg_path = hf_dir / "tokenizer_config.json"
    tok_cfg = read_json(tok_cfg_path, "tokenizer_config.json") if tok_cfg_path.is_file() else {}
    vocab = load_vocab(hf_dir, hp, tok_cfg)
    refs = find_weights(hf_dir)
    if getattr(hp, "multimodal", False):
        refs = language_model_refs(refs, hf_dir)
    stage = key if key in PYTHON_OUTTYPES else intermediate_type(refs)
    plan = plan_tensors(refs, hp, PYTHON_OUTTYPES[stage])
    if not tok_cfg.get("chat_template"):
        print(f"warning: no chat template in {tok_cfg_path}; chat prompts will need one", file=sys.stderr)
    summary = summarize(plan)
    if dry_run:
        note = f" (then quantized to {key} by llama.cpp)" if key in LLAMA_QUANT_FTYPES else ""
        return summary.line(out, dry_run=True) + note

    # a K-quant is written twice: the stage file, then llama.cpp's output
    check_free_space(out, summary.n_bytes + (max_bytes_per_param(key) * summary.n_params
                                             if key in LLAMA_QUANT_FTYPES else 0))
    name = cfg.get("_name_or_path") or hf_dir.resolve().name
    with atomic_output(out) as tmp:
        if key in PYTHON_OUTTYPES:
            write_stage(tmp, plan, hp, vocab, cfg, tok_cfg, name, int(PYTHON_FILE_TYPES[key]), progress)
        else:
            from .._native import core  # the quantizer is llama.cpp's own, reached through the extension
            with temp_beside(out, f".{stage}.part") as staged:
                write_stage(staged, plan, hp, vocab, cfg, tok_cfg, name, int(PYTHON_FILE_TYPES[stage]), progress)
                core().quantize(str(staged), str(tmp), LLAMA_QUANT_FTYPES[key], threads)
    if key in PYTHON_OUTTYPES:
        return summary.line(out, dry_run=False)
    return summarize_file(out).line(out, dry_run=False) + f" [{key}, by llama.cpp's quantizer]"


def read_hparams(cfg: dict, where: Path):
    """GemmaHparams (gemma2, gemma3_text) or DecoderHparams (qwen3, llama) of a config.json."""
    if cfg.get("model_type") in decoder.ARCHS:
        return decoder.DecoderHparams.from_config(cfg, where)
    return GemmaHparams.from_config(cfg, where)


def write_stage(path: Path, plan: list[TensorPlan], hp, vocab: Vocab, cfg: dict, tok_cfg: dict,
                name: str, ftype: int, progress: bool) -> None:
    w = GGUFWriter(path, hp.arch)
    add_metadata(w, hp, vocab, cfg, tok_cfg, name, ftype)
    write_gguf(w, plan, "base tensors", progress)
