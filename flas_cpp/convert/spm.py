"""Read a SentencePiece `tokenizer.model` (a serialized ModelProto) without protobuf.

Only what a GGUF vocabulary needs: every piece with its score and type, and the two
normalizer flags llama.cpp's SPM tokenizer honours.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

# SentencePiece piece types; GGUF's tokenizer.ggml.token_type uses the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


class SentencePieceError(ValueError):
    pass


@dataclass
class SentencePieceModel:
    pieces: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    add_dummy_prefix: bool = True            # NormalizerSpec defaults
    remove_extra_whitespaces: bool = True


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise SentencePieceError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) for each field of one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise SentencePieceError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise SentencePieceError("truncated field")
        yield num, wire, val


def load(path: str | Path) -> SentencePieceModel:
    data = Path(path).read_bytes()
    model = SentencePieceModel()
    try:
        for num, wire, val in _fields(data):
            if num == 1 and wire == 2:                     # repeated SentencePiece pieces
                piece, score, ptype = "", 0.0, NORMAL
                for n, w, v in _fields(val):
                    if n == 1 and w == 2:
                        piece = v.decode("utf-8")
                    elif n == 2 and w == 5:
                        (score,) = struct.unpack("<f", v)
                    elif n == 3 and w == 0:
                        ptype = v
                model.pieces.append(piece)
                model.scores.append(score)
                model.types.append(ptype)
            elif num == 3 and wire == 2:                   # NormalizerSpec
                for n, w, v in _fields(val):
                    if n == 3 and w == 0:
                        model.add_dummy_prefix = bool(v)
                    elif n == 4 and w == 0:
                        model.remove_extra_whitespaces = bool(v)
    except (SentencePieceError, UnicodeDecodeError) as e:
        raise SentencePieceError(f"{path}: not a SentencePiece model ({e})") from None
    if not model.pieces:
        raise SentencePieceError(f"{path}: not a SentencePiece model (no pieces)")
    return model
