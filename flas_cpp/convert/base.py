"""flas-convert base, the driver: a Hugging Face checkpoint directory -> a GGUF that llama.cpp loads.
It reads config.json and the checkpoint, hands them to the family's converter (FAMILIES: Gemma-2
and Gemma-3 in gemma.py, Qwen3 and Llama in decoder.py), writes the vocabulary (vocab.py) and the
tensors, and has llama.cpp's quantizer make the K-quants."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar, Protocol

from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

from .. import safetensors_io
from .common import (PYTHON_OUTTYPES, ConversionError, TensorPlan, atomic_output, check_free_space, check_output,
                     checked_config, max_bytes_per_param, read_json, read_safetensors, summarize,
                     summarize_file, temp_beside, write_gguf)
from .decoder import DecoderHparams
from .gemma import GemmaHparams
from .vocab import Vocab, add_tokenizer_metadata, load_vocab

# llama.cpp's llama_ftype values for the types only its quantizer writes (include/llama.h).
LLAMA_QUANT_FTYPES = {
    "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13,
    "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18,
}
PYTHON_FILE_TYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                     "bf16": LlamaFileType.MOSTLY_BF16, "q8_0": LlamaFileType.MOSTLY_Q8_0}
BASE_OUTTYPES = [*PYTHON_OUTTYPES, *LLAMA_QUANT_FTYPES]


class Family(Protocol):
    """A family's base converter: its hyper-parameters, read from config.json by from_config, and
    what the driver asks of them. Everything that differs between families is behind these."""
    MODEL_TYPES: ClassVar[frozenset[str]]    # config.json model_type values of the family
    ARCHITECTURES: ClassVar[frozenset[str]]  # config.json architectures, for a config whose model_type is not known
    arch: str     # llama.cpp's general.architecture, the prefix of the hyper-parameter keys
    n_vocab: int  # the embedding's rows: the vocabulary is padded to them

    @classmethod
    def from_config(cls, cfg: dict, where: Path) -> "Family":
        """The family's hyper-parameters; a ConversionError for what llama.cpp would run wrongly."""

    def language_model(self, refs: dict[str, safetensors_io.TensorRef],
                       where: Path) -> dict[str, safetensors_io.TensorRef]:
        """The checkpoint's tensors of the language model, under the names plan_tensors expects."""

    def plan_tensors(self, refs: dict[str, safetensors_io.TensorRef], qtype: GGMLQuantizationType) -> list[TensorPlan]:
        """Every GGUF tensor (names, shapes checked, transforms such as Gemma's 1 + w), matrices in qtype."""

    def add_hparams(self, w: GGUFWriter) -> None:
        """The family's hyper-parameter keys."""


# The families flas-convert base converts, in the order they are looked up.
FAMILIES: tuple[type[Family], ...] = (DecoderHparams, GemmaHparams)


def read_family(cfg: dict, where: Path) -> Family:
    """The converter of config.json's family: by its model_type, else by its architectures."""
    archs = cfg.get("architectures") or []
    family = (next((f for f in FAMILIES if cfg.get("model_type") in f.MODEL_TYPES), None)
              or next((f for f in FAMILIES if f.ARCHITECTURES.intersection(archs)), None))
    if family is None:
        raise ConversionError(
            f"{where}: not a config flas-convert base knows (model_type {cfg.get('model_type')!r}, architectures "
            f"{archs}); it converts gemma2, gemma3_text, qwen3 and llama checkpoints; for other families use "
            "llama.cpp's convert_hf_to_gguf.py")
    return family.from_config(cfg, where)


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
    family = read_family(cfg, hf_dir / "config.json")
    tok_cfg_path = hf_dir / "tokenizer_config.json"
    tok_cfg = read_json(tok_cfg_path, "tokenizer_config.json") if tok_cfg_path.is_file() else {}
    vocab = load_vocab(hf_dir, family.n_vocab, tok_cfg)
    refs = family.language_model(find_weights(hf_dir), hf_dir)
    stage = key if key in PYTHON_OUTTYPES else intermediate_type(refs)
    plan = family.plan_tensors(refs, PYTHON_OUTTYPES[stage])
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
            write_stage(tmp, plan, family, vocab, cfg, tok_cfg, name, int(PYTHON_FILE_TYPES[key]), progress)
        else:
            from .._native import core  # the quantizer is llama.cpp's own, reached through the extension
            with temp_beside(out, f".{stage}.part") as staged:
                write_stage(staged, plan, family, vocab, cfg, tok_cfg, name, int(PYTHON_FILE_TYPES[stage]), progress)
                core().quantize(str(staged), str(tmp), LLAMA_QUANT_FTYPES[key], threads)
    if key in PYTHON_OUTTYPES:
        return summary.line(out, dry_run=False)
    return summarize_file(out).line(out, dry_run=False) + f" [{key}, by llama.cpp's quantizer]"


def write_stage(path: Path, plan: list[TensorPlan], family: Family, vocab: Vocab, cfg: dict, tok_cfg: dict,
                name: str, ftype: int, progress: bool) -> None:
    w = GGUFWriter(path, family.arch)
    w.add_name(name)
    w.add_file_type(ftype)
    w.add_quantization_version(2)
    family.add_hparams(w)
    add_tokenizer_metadata(w, vocab, cfg, tok_cfg)
    write_gguf(w, plan, "base tensors", progress)
