"""Copies of GGUF files with keys or tensors changed, for tests of what the loaders refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter


def edit_gguf(src: Path, dst: Path, keys: dict[str, tuple[Any, GGUFValueType]] | None = None,
              tensors: dict[str, np.ndarray | tuple[np.ndarray, GGMLQuantizationType]] | None = None,
              drop_keys: frozenset[str] = frozenset()) -> Path:
    """dst: src with keys[name] = (value, stored type) and tensors[name] = a float array (written as
    f32), or (raw bytes as uint8, quantization type); every other key and tensor as stored."""
    keys, tensors = keys or {}, tensors or {}
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch)
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop_keys:
            continue
        if key in keys:
            value, vtype = keys[key]
            w.add_key_value(key, value, vtype)
            continue
        vtype = field.types[0]
        w.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1] if vtype == GGUFValueType.ARRAY else None)
    for key, (value, vtype) in keys.items():
        if key not in r.fields:
            w.add_key_value(key, value, vtype)
    for t in r.tensors:
        new = tensors.get(t.name)
        if new is None:
            if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                w.add_tensor(t.name, np.asarray(t.data))
            else:
                w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)  # bytes, [rows, row bytes]
        elif isinstance(new, tuple):
            data, qtype = new
            n_rows = int(np.prod(t.shape[1:]))  # ggml order: ne0 first
            w.add_tensor(t.name, data.reshape(n_rows, -1), raw_dtype=qtype)
        else:
            w.add_tensor(t.name, np.asarray(new))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
