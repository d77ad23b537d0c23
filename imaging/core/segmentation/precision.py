"""Probability maps between float32 and float16, at the speed of torch's conversion.

The segmenter's probabilities are kept as float16 (six classes over a study's grid).
A softmax is mostly values near 0, and numpy converts float32 values under float16's
smallest normal (6.1e-5) to and from float16 in a slow software path: the first small
study's six-class map took 2.3 s to store and a class 0.15 s to read back. Torch gives
the same bits (round to nearest even, subnormals kept) at memory speed.
"""

from __future__ import annotations

import numpy as np
import torch


def half_convert(array: np.ndarray) -> np.ndarray:
    """``array`` (float32) as float16, bit for bit what ``array.astype(np.float16)`` gives."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).half().numpy()


def single_convert(array: np.ndarray) -> np.ndarray:
    """``array`` (float16 or float32) as float32, bit for bit what ``astype(np.float32)`` gives."""
    if array.dtype == np.float32:
        return array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).float().numpy()
