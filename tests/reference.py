"""Independent references for tests: what stored values must be, computed without the package."""

from __future__ import annotations

import numpy as np
import torch


def reference_rounding(x: np.ndarray, outtype: str) -> np.ndarray:
    """What a tensor should read back as, computed independently of the converter."""
    if outtype == "f16":
        return x.astype(np.float16).astype(np.float32)
    if outtype == "bf16":
        return torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    raise ValueError(outtype)


def q8_0_error_bound(x: np.ndarray) -> np.ndarray:
    """q8_0 stores blocks of 32 as round(x / d) * d with d = max|block| / 127 kept in f16:
    half a step, plus up to 127 steps of d's own f16 rounding (2^-11 relative)."""
    d = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    return np.broadcast_to(d * (0.5 + 127 * 2.0**-11), (d.shape[0], 32)).reshape(x.shape)
