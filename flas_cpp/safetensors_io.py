"""Minimal safetensors reader and writer on numpy, bfloat16 included.

numpy has no bfloat16, so bf16 tensors are carried as raw uint16 bit patterns and widened
to float32 on demand. Reading memory-maps the file: a 5 GB shard costs no RAM up front.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# safetensors dtype name -> numpy storage dtype (BF16 is stored as its uint16 bits)
_STORAGE = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U8": np.uint8, "BOOL": np.bool_,
}


class SafetensorsError(ValueError):
    """The file is not a well-formed safetensors file."""


@dataclass
class TensorRef:
    """One tensor of a safetensors file, not yet read."""
    path: Path
    dtype: str                  # safetensors name: "F32", "BF16", ...
    shape: tuple[int, ...]
    offset: int                 # absolute byte offset of the data in the file
    nbytes: int

    def raw(self) -> np.ndarray:
        """The stored values with their storage dtype (bf16 as uint16 bits), memory-mapped."""
        if self.nbytes == 0:
            return np.zeros(self.shape, dtype=_STORAGE[self.dtype])
        mm = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=(self.nbytes,))
        return mm.view(_STORAGE[self.dtype]).reshape(self.shape)

    def to_f32(self) -> np.ndarray:
        data = self.raw()
        if self.dtype == "BF16":
            return (data.astype(np.uint32) << 16).view(np.float32)
        return data.astype(np.float32)


def read_header(path: str | Path) -> tuple[dict[str, TensorRef], dict[str, str]]:
    """Tensor references and the `__metadata__` of one safetensors file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise SafetensorsError(f"{path}: header length {n} does not fit the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    meta = header.pop("__metadata__", {}) or {}
    refs = {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"{path}: malformed entry for tensor {name!r}") from None
        if dtype not in _STORAGE:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_STORAGE[dtype]).itemsize
        if end - begin != nbytes or 8 + n + end > size:
            raise SafetensorsError(f"{path}: tensor {name!r} data range does not match its shape or the file size")
        refs[name] = TensorRef(path, dtype, shape, 8 + n + begin, nbytes)
    return refs, meta


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16, returned as uint16 bits."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def write(path: str | Path, tensors: dict[str, tuple[str, np.ndarray]], metadata: dict[str, str] | None = None) -> None:
    """Write `{name: (dtype, array)}`; for "BF16" the array holds uint16 bits (see f32_to_bf16_bits)."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    blobs = []
    for name, (dtype, arr) in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=_STORAGE[dtype])
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        blobs.append(arr)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # data starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for arr in blobs:
            f.write(arr.tobytes())
