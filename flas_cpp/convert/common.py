"""What both converters share: errors, output types, checked JSON/safetensors input, safe output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter, quants

from .. import safetensors_io


class ConversionError(ValueError):
    """A user mistake or bad input: the message says what is wrong and how to fix it."""


# --outtype name -> ggml type written by Python; K-quants go through llama.cpp's quantizer.
PYTHON_OUTTYPES = {
    "f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16,
    "bf16": GGMLQuantizationType.BF16, "q8_0": GGMLQuantizationType.Q8_0,
}


def max_bytes_per_param(outtype: str) -> float:
    """At most how many bytes a parameter takes in a converted file of outtype: the K-quant
    types and recipes (q4_k_m, Q4_K_M, ...) stay under 0.85, their widest part being q6_k's 0.82."""
    qtype = PYTHON_OUTTYPES.get(outtype.lower())
    if qtype is None:
        return 0.85
    block, size = GGML_QUANT_SIZES[qtype]
    return size / block


@dataclass
class TensorPlan:
    """One output tensor, decided before anything is written; `load` gives its float32 values."""
    name: str
    shape: tuple[int, ...]                 # numpy order (PyTorch [out, in]); ggml ne is reversed
    qtype: GGMLQuantizationType
    load: Callable[[], np.ndarray]

    @property
    def n_params(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_bytes(self) -> int:
        block, type_size = GGML_QUANT_SIZES[self.qtype]
        return self.n_params // block * type_size


def norm_plan(name: str, shape: tuple[int, ...], ref: safetensors_io.TensorRef) -> TensorPlan:
    """A Gemma RMSNorm weight: the checkpoint holds w, the GGUF holds 1 + w in f32 (llama.cpp's
    convention, for the base and the flow alike), so the runtime multiplies by it directly."""
    return TensorPlan(name, shape, GGMLQuantizationType.F32, lambda: ref.to_f32() + np.float32(1.0))


def pick_qtype(shape: tuple[int, ...], wanted: GGMLQuantizationType) -> GGMLQuantizationType:
    """`wanted`, or f16 where a row does not fill whole quant blocks (as llama.cpp falls back)."""
    block, _ = GGML_QUANT_SIZES[wanted]
    return wanted if shape[-1] % block == 0 else GGMLQuantizationType.F16


# Written by ggml's own quantizer (through libflas): gguf-py has no K-quant encoder.
GGML_QUANTIZED = (GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K)


def encode(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """float32 values -> the bytes (or f32/f16 values) GGUF stores for `qtype`."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == GGMLQuantizationType.F32:
        return x
    if qtype in GGML_QUANTIZED:
        from .._native import core

        return core().quantize_rows(x.reshape(-1, x.shape[-1]), int(qtype))
    return quants.quantize(x, qtype)


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConversionError(f"{what} not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e}); is this the right file?") from None
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected a JSON object at the top level")
    return obj


def read_safetensors(path: Path) -> dict[str, safetensors_io.TensorRef]:
    if not path.is_file():
        raise ConversionError(f"safetensors file not found: {path}")
    try:
        refs, _ = safetensors_io.read_header(path)
    except safetensors_io.SafetensorsError as e:
        raise ConversionError(f"{e}; re-download the checkpoint") from None
    return refs


def check_shape(name: str, got: tuple[int, ...], want: tuple[int, ...], source: str) -> None:
    if tuple(got) != tuple(want):
        raise ConversionError(
            f"tensor {name!r} has shape {list(got)} but {source} implies {list(want)}: "
            "the weights and the config do not belong together")


@dataclass
class Summary:
    """What was (or, with --dry-run, would be) written."""
    n_tensors: int = 0
    n_params: int = 0
    n_bytes: int = 0
    types: dict[str, int] = field(default_factory=dict)

    def add(self, n_params: int, n_bytes: int, qtype: GGMLQuantizationType) -> None:
        self.n_tensors += 1
        self.n_params += n_params
        self.n_bytes += n_bytes
        self.types[qtype.name.lower()] = self.types.get(qtype.name.lower(), 0) + 1

    def line(self, out: Path, dry_run: bool) -> str:
        types = ", ".join(f"{k} x{v}" for k, v in sorted(self.types.items(), key=lambda kv: -kv[1]))
        verb = "would write" if dry_run else "wrote"
        return (f"{verb} {out}: {self.n_tensors} tensors, {self.n_params / 1e6:.2f} M params, "
                f"{self.n_bytes / 1e6:.1f} MB of tensor data ({types})")


def check_output(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise ConversionError(f"output file exists: {out} (pass --force to overwrite it)")
    if out.is_dir():
        raise ConversionError(f"output path is a directory: {out}; give a file name ending in .gguf")
    if not out.parent.is_dir():
        raise ConversionError(f"output directory does not exist: {out.parent}")


def size_text(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def check_free_space(out: Path, n_bytes: float) -> None:
    """Stops before writing when out's disk cannot hold n_bytes (the tensors, plus any stage file)."""
    free = shutil.disk_usage(out.parent).free
    if n_bytes + (1 << 20) > free:  # 1 MiB for the GGUF's header and padding
        raise ConversionError(f"not enough disk space for {out}: writing it needs about {size_text(n_bytes)} and "
                              f"{size_text(free)} are free on {out.parent}; free some space or write elsewhere")


@contextlib.contextmanager
def temp_beside(out: Path, suffix: str = ".part") -> Iterator[Path]:
    """A fresh temporary path in `out`'s directory, deleted when the block ends."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """A temporary path beside `out`, renamed onto it only if the block succeeds."""
    with temp_beside(out) as tmp:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; give it a normal file's mode
        os.replace(tmp, out)


def write_gguf(writer: GGUFWriter, plan: list[TensorPlan], desc: str, progress: bool = True) -> None:
    """Write a GGUF: the writer's KV pairs (already added), then the tensors of `plan`.

    Tensors are loaded and encoded one at a time, so memory stays at one tensor whatever the
    model size.
    """
    for t in plan:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.n_bytes, raw_dtype=t.qtype)
    writer.open_output_file()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    bar = tqdm(plan, desc=desc, unit="tensor", file=sys.stderr, disable=not progress)
    for t in bar:
        data = encode(t.load(), t.qtype)
        if data.nbytes != t.n_bytes:  # a bug, not a user mistake
            raise RuntimeError(f"{t.name}: encoded to {data.nbytes} bytes, planned {t.n_bytes}")
        writer.write_tensor_data(data)
    writer.close()


def summarize(plan: list[TensorPlan]) -> Summary:
    summary = Summary()
    for t in plan:
        summary.add(t.n_params, t.n_bytes, t.qtype)
    return summary


def summarize_file(path: Path) -> Summary:
    """The summary of a written GGUF (for files llama.cpp's quantizer wrote)."""
    summary = Summary()
    for t in GGUFReader(path).tensors:
        summary.add(int(t.n_elements), int(t.n_bytes), GGMLQuantizationType(t.tensor_type))
    return summary


def llama3_rope_divisors(theta: float, head_dim: int, scaling: dict) -> np.ndarray:
    """Llama-3 RoPE scaling as per-frequency divisors ([head_dim/2], float32): the form of
    llama.cpp's rope_freqs tensor, which ggml's rope divides the frequencies by."""
    factor, low, high, ctx = (float(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                          "original_max_position_embeddings"))
    freqs = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / freqs
    smooth = (ctx / wavelen - low) / (high - low)
    div = np.where(wavelen < ctx / high, 1.0, np.where(wavelen > ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return div.astype(np.float32)


def config_value(cfg: dict, key: str, where, what: str):
    """cfg[key], or a ConversionError naming the config and the key."""
    if cfg.get(key) is None:
        raise ConversionError(f"{where}: {what} config lacks {key!r}; is the checkpoint complete?")
    return cfg[key]


# The keys of a Hugging Face model config the converters read, by the type they must have; sizes
# within what real models have (and flas-cpp's loader accepts), so that no table is built too big.
_COUNTS = {"vocab_size": 1 << 24, "hidden_size": 1 << 16, "num_hidden_layers": 4096, "num_attention_heads": 1024,
           "num_key_value_heads": 1024, "head_dim": 4096, "intermediate_size": 1 << 20,
           "max_position_embeddings": 1 << 31, "sliding_window": 1 << 31, "sliding_window_pattern": 4096}
_REALS = ("rms_norm_eps", "rope_theta", "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar",
          "rope_local_base_freq")
_TEXTS = ("model_type", "hidden_act", "hidden_activation", "_name_or_path")
_FLAGS = ("attention_bias", "mlp_bias", "tie_word_embeddings")
_OBJECTS = ("rope_scaling", "rope_parameters", "text_config")
_LISTS = ("architectures", "layer_types")


def checked_config(cfg: dict, where) -> dict:
    """A model config whose keys the converters read have the types they need: null counts as
    absent; anything else wrong is a ConversionError naming the file, the key and the value."""
    out = dict(cfg)

    def bad(key: str, want: str):
        raise ConversionError(f"{where}: {key!r} should be {want}, got {out[key]!r}"[:300])

    for key in [k for k in out if out[k] is None]:
        del out[key]
    for key, hi in _COUNTS.items():
        if key in out and (isinstance(out[key], bool) or not isinstance(out[key], int) or not 1 <= out[key] <= hi):
            bad(key, f"an integer in 1..{hi}")
    for key in _REALS:
        if key in out:
            v = out[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -1e30 < v < 1e30:  # NaN fails too
                bad(key, "a finite number")
    for key, kinds, want in ((_TEXTS, str, "a string"), (_FLAGS, bool, "true or false"), (_OBJECTS, dict, "an object"),
                             (_LISTS, list, "a list")):
        for k in key:
            if k in out and not isinstance(out[k], kinds):
                bad(k, want)
    scaling = out.get("rope_scaling") or {}
    for k, v in scaling.items():
        if k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings") and (
                isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e30):
            raise ConversionError(f"{where}: rope_scaling {k!r} should be a positive number, got {v!r}"[:300])
        if k in ("rope_type", "type") and not isinstance(v, str):
            raise ConversionError(f"{where}: rope_scaling {k!r} should be a string, got {v!r}"[:300])
    if "text_config" in out:
        out["text_config"] = checked_config(out["text_config"], f"{where} (text_config)")
    return out


# How a checkpoint tensor is stored: "matrix" in the chosen outtype, "norm1" as 1 + w in f32 (a
# Gemma norm), "f32" as it is in f32.
Expected = dict[str, tuple[str, tuple[int, ...], str, "Callable[[np.ndarray], np.ndarray] | None"]]


def plan_checkpoint(refs: dict, expected: Expected, qtype: GGMLQuantizationType, model: str,
                    ignored: tuple[str, ...] = ()) -> list[TensorPlan]:
    """A plan for every expected tensor (HF name -> (GGUF name, shape, kind, transform)), each
    checked; model names the model for errors ("a Gemma-2 model with 26 layers")."""
    for name, ref in refs.items():
        if name not in expected and name not in ignored:
            raise ConversionError(f"unknown tensor {name!r} in {ref.path.name}: not part of {model}; "
                                  "is config.json the one of these weights?")
    plan = []
    for hf_name, (gg_name, shape, kind, transform) in expected.items():
        if hf_name not in refs:
            raise ConversionError(f"missing tensor {hf_name!r}: the checkpoint is incomplete (a shard missing?)")
        ref = refs[hf_name]
        check_shape(hf_name, ref.shape, shape, "config.json")
        if kind == "norm1":
            plan.append(norm_plan(gg_name, shape, ref))
            continue
        load = (lambda r=ref, t=transform: t(r.to_f32())) if transform else ref.to_f32
        plan.append(TensorPlan(gg_name, shape, GGMLQuantizationType.F32 if kind == "f32" else pick_qtype(shape, qtype),
                               load))
    return plan


@dataclass
class DecoderShape:
    """What every family's config says of its transformer, in llama.cpp's names (each family's
    hyper-parameters extend it)."""
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

    def add_shape(self, w: GGUFWriter) -> None:
        """The shape's GGUF keys, in the order every family writes them first."""
        w.add_context_length(self.n_ctx_train)
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.n_layer)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)

    def check_heads(self, where: Path) -> None:
        """Grouped-query attention needs whole groups."""
        if self.n_head % self.n_head_kv:
            raise ConversionError(f"{where}: num_attention_heads {self.n_head} is not a multiple of "
                                  f"num_key_value_heads {self.n_head_kv}")
