"""The vocabulary of a base GGUF, for every family flas-convert base converts: a SentencePiece
tokenizer.model, padded to the embedding's rows, with the Hugging Face tokenizer's added tokens
and special ids, written as llama.cpp's `llama` (SentencePiece) tokenizer reads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFWriter

from . import spm
from .common import ConversionError, read_json


@dataclass
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool
    remove_extra_whitespaces: bool


def load_vocab(hf_dir: Path, n_vocab: int, tok_cfg: dict) -> Vocab:
    """hf_dir's vocabulary over n_vocab ids (the embedding's rows; ids past the tokenizer's are padding)."""
    path = hf_dir / "tokenizer.model"
    if not path.is_file():
        raise ConversionError(f"tokenizer.model not found in {hf_dir}: flas-convert base needs the "
                              "SentencePiece model that Gemma checkpoints ship")
    try:
        sp = spm.load(path)
    except spm.SentencePieceError as e:
        raise ConversionError(str(e)) from None
    if len(sp.pieces) > n_vocab:
        raise ConversionError(f"tokenizer.model has {len(sp.pieces)} pieces but config.json vocab_size is "
                              f"{n_vocab}: the tokenizer and the weights do not belong together")
    pad = n_vocab - len(sp.pieces)
    v = Vocab(sp.pieces + [f"[PAD{i}]" for i in range(len(sp.pieces), n_vocab)],
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
        if i >= n_vocab:
            raise ConversionError(f"added token {info.get('content')!r} has id {i}, beyond vocab_size {n_vocab}")
        v.tokens[i] = info["content"]
        v.types[i] = spm.CONTROL if info.get("special") else spm.USER_DEFINED
    return v


def _token_id(tok_cfg: dict, cfg: dict, vocab: Vocab, role: str) -> int | None:
    """The id of the bos/eos/unk/pad token: by its text in tokenizer_config.json, else config.json's id."""
    tok = tok_cfg.get(f"{role}_token")
    if isinstance(tok, dict):
        tok = tok.get("content")
    if isinstance(tok, str) and tok in vocab.tokens:
        return vocab.tokens.index(tok)
    cid = cfg.get(f"{role}_token_id")
    if isinstance(cid, list):
        cid = cid[0] if cid else None
    return int(cid) if cid is not None else None


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
    if "<end_of_turn>" in vocab.tokens:  # Gemma's end of a chat turn; other vocabularies lack it
        w.add_eot_token_id(vocab.tokens.index("<end_of_turn>"))
    w.add_add_bos_token(bool(tok_cfg.get("add_bos_token", True)))
    w.add_add_eos_token(bool(tok_cfg.get("add_eos_token", False)))
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # the multi-template form: keep the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if isinstance(template, str) and template:
        w.add_chat_template(template)
