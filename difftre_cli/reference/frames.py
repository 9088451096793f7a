"""Which frames of a reference trajectory are used: start/stop/stride, and a seeded split into
training and validation frames. Pure index arithmetic; reading is read.py's."""
from __future__ import annotations

import numpy as np

from ..errors import UserError


def select(n_frames: int, start: int, stop: int | None, stride: int) -> np.ndarray:
    """Frame numbers start, start + stride, … below ``stop`` (None: the end of the file)."""
    if start >= n_frames:
        raise UserError(f"reference.start={start} is past the end of the trajectory ({n_frames} frames)",
                        f"set reference.start below {n_frames}")
    end = n_frames if stop is None else min(stop, n_frames)
    return np.arange(start, end, stride)


def split(indices: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) frame numbers, each ascending and disjoint, their union ``indices``.

    ``round(fraction · n)`` frames (at least one if ``fraction`` > 0) are drawn at random by a
    generator seeded with ``seed``: the same seed gives the same split."""
    n = len(indices)
    n_val = 0 if fraction == 0 else max(1, round(fraction * n))
    if n_val >= n:
        raise UserError(f"reference.validation_fraction={fraction} leaves no training frame "
                        f"({n} frames selected by reference.start/stop/stride)",
                        "lower reference.validation_fraction or select more frames (a smaller reference.stride)")
    pick = np.random.default_rng(seed).permutation(n)[:n_val]
    mask = np.zeros(n, dtype=bool)
    mask[pick] = True
    return indices[~mask], indices[mask]


def batches(indices: np.ndarray, size: int | None):
    """Consecutive chunks of ``indices`` of ``size`` frames (the last may be shorter); one chunk
    of all of them if ``size`` is None."""
    if size is None or len(indices) == 0:
        yield indices
        return
    for i in range(0, len(indices), size):
        yield indices[i:i + size]
