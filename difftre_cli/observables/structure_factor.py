"""Static structure factor S(k), shell-averaged on bins of |k| (θ-independent, differentiable).

    S(k) = (1/N) |Σ_j exp(i k·r_j)|²,   k = 2π n / L,  n ∈ Z³,  k_min < |k| ≤ k_max,

for every wave vector the cubic box of side L allows, then averaged over all vectors whose |k|
falls in each of ``n_bins`` equal bins (k_min + b Δk, k_min + (b+1) Δk], Δk = (k_max − k_min) /
n_bins. Units: k in inverse system length (1/σ in reduced LJ units, 1/nm in real units);
S is dimensionless (→ 1 for an ideal gas, → S(0) = ρ k_B T κ_T as k → 0). The grid is the bin
centres, fixed by the config; which vectors fall in which bin depends on L, known when the box
is: :meth:`check_box` (run by config validation) and :meth:`snapshot` raise a UserError naming
the key if k_max ≤ 2π/L (no vector) or a bin holds no vector (bins finer than the shell
spacing at small k; raise ``k_min`` or lower ``n_bins``).

Cost per snapshot: 3 (2m+1) N cosines and sines, m = ⌊k_max L / 2π⌋, and one real matrix
product of (m+1)(2m+1) × N × (2m+1) (the factorisation exp(i k·r) = Π_a exp(i k_a r_a)), from
which the K ≈ (2/3)π m³ vectors of one half-space are picked (S(−k) = S(k)); no neighbour
list (``reach`` = 0). Inputs: ``R`` positions (N, 3) and ``box``
(the cubic box side, a Python float; else (ctx.volume)^(1/3)); value: (n_bins,).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import number
from ..errors import UserError
from .base import Observable


@functools.lru_cache(maxsize=8)
def wave_vectors(k_min: float, k_max: float, n_bins: int, box: float):
    """Integer vectors n (K, 3) of one half-space with k_min < 2π|n|/L ≤ k_max, their bin index
    (K,), and the number of vectors per bin (n_bins,)."""
    n_max = int(math.floor(k_max * box / (2.0 * math.pi)))
    r = np.arange(-n_max, n_max + 1)
    n = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    half = (n[:, 0] > 0) | ((n[:, 0] == 0) & ((n[:, 1] > 0) | ((n[:, 1] == 0) & (n[:, 2] > 0))))
    k = 2.0 * math.pi / box * np.sqrt((n * n).sum(1))
    keep = half & (k > k_min) & (k <= k_max)
    n, k = n[keep], k[keep]
    dk = (k_max - k_min) / n_bins
    b = np.clip(np.ceil((k - k_min) / dk).astype(int) - 1, 0, n_bins - 1)
    return n, b, np.bincount(b, minlength=n_bins)


@dataclass(frozen=True)
class StructureFactor(Observable):
    name: str
    k_max: float
    n_bins: int
    k_min: float = 0.0
    depends_on_params: bool = False
    unit_kind: str = "inverse_length"
    symbols: ClassVar[tuple[str, str]] = ("k", "S")
    reach: float = 0.0
    grid: np.ndarray = field(init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, name, cfg):
        P = f"observables.{name}"
        k_min = number(cfg, "k_min", prefix=P, lo=0.0, required=False, default=0.0, example="1.0")
        k_max = number(cfg, "k_max", prefix=P, lo=0.0, lo_open=True, example="8.0")
        if k_max <= k_min:
            raise UserError(f"{P}.k_max={k_max:g} must be larger than {P}.k_min={k_min:g}",
                            f"lower {P}.k_min or raise {P}.k_max (k_min < k_max)")
        n_bins = number(cfg, "n_bins", prefix=P, integer=True, lo=1, example="35")
        return cls(name=name, k_max=k_max, n_bins=n_bins, k_min=k_min)

    def __post_init__(self):
        if not (0 <= self.k_min < self.k_max) or self.n_bins < 1:
            raise UserError(f"observables.{self.name}: need 0 <= k_min < k_max and n_bins >= 1",
                            f"got k_min={self.k_min}, k_max={self.k_max}, n_bins={self.n_bins}")
        dk = (self.k_max - self.k_min) / self.n_bins
        object.__setattr__(self, "grid", self.k_min + dk * (np.arange(self.n_bins) + 0.5))

    def check_box(self, box: float):
        """The wave vectors of a box of side ``box``; a UserError naming the key if a bin is empty."""
        P = f"observables.{self.name}"
        k1 = 2.0 * math.pi / box
        if self.k_max <= k1:
            raise UserError(f"{P}.k_max={self.k_max:g} is not above the smallest wave vector 2π/L = {k1:.4g} "
                            f"of the box (L = {box:.4g})", f"raise {P}.k_max above {k1:.4g}, or use a larger box")
        n, b, counts = wave_vectors(self.k_min, self.k_max, self.n_bins, float(box))
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            last = self.grid[empty[-1]] + 0.5 * (self.grid[1] - self.grid[0] if self.n_bins > 1 else 0.0)
            raise UserError(f"{P}: {empty.size} of {self.n_bins} |k| bins hold no wave vector 2πn/L of the box "
                            f"(L = {box:.4g}; first empty bin at k = {self.grid[empty[0]]:.4g}): shells are "
                            f"{k1:.3g}·√m apart, sparser than the bins at small k",
                            f"raise {P}.k_min to about {last:.3g} or lower {P}.n_bins")
        return n, b, counts

    def snapshot(self, ctx, q):
        box = q.get("box")
        box = float(box) if isinstance(box, (int, float)) else float(ctx.volume) ** (1.0 / 3.0)
        n, b, counts = self.check_box(box)
        m = int(np.abs(n).max())
        R = q["R"]
        # exp(i k·r) = Π_a exp(i 2π n_a r_a / L): per-axis phases, then one matrix product gives
        # ρ(n) = Σ_j exp(i k·r_j) on the half box n_x ∈ [0, m], n_y, n_z ∈ [−m, m]
        t = (2.0 * math.pi / box) * R                                   # (N, 3)
        ph = jnp.arange(-m, m + 1, dtype=R.dtype)[:, None, None] * t    # (2m+1, N, 3)
        c, s = jnp.cos(ph), jnp.sin(ph)
        cx, sx, cy, sy, cz, sz = c[m:, :, 0], s[m:, :, 0], c[..., 1], s[..., 1], c[..., 2], s[..., 2]
        ar = (cx[:, None] * cy[None] - sx[:, None] * sy[None]).reshape(-1, R.shape[0])
        ai = (cx[:, None] * sy[None] + sx[:, None] * cy[None]).reshape(-1, R.shape[0])
        mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
        rho_r = mm(ar, cz.T) - mm(ai, sz.T)                                 # (m+1)(2m+1) × (2m+1)
        rho_i = mm(ar, sz.T) + mm(ai, cz.T)
        w = 2 * m + 1
        flat = jnp.asarray((n[:, 0] * w + n[:, 1] + m) * w + n[:, 2] + m)
        s_k = (rho_r.reshape(-1)[flat] ** 2 + rho_i.reshape(-1)[flat] ** 2) / R.shape[0]   # (K,)
        sums = jax.ops.segment_sum(s_k, jnp.asarray(b), num_segments=self.n_bins)
        return sums / jnp.asarray(counts, R.dtype)


#: the ``kind`` names of ``observables/*.yaml`` this module provides (collected by observables/__init__.py)
KINDS = {"structure_factor": StructureFactor}
