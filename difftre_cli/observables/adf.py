"""Angular distribution function p(α), differentiable (Gaussian-smoothed, smooth cutoff).

For every triplet (j, i, k) — i the central particle, j < k two of its neighbours — the angle
α_jik ∈ [0, π] between r_ij and r_ik is counted with the weight c(r_ij) c(r_ik), where

    c(r) = Φ((r_cut − r) / w)      (Φ the standard normal CDF)

is a smoothed step: 1 well inside r_cut, ½ at r_cut, 0 well beyond; as w → 0 it becomes the
hard count of neighbours closer than r_cut. The weighted angles are deposited on a fine grid
(linear, cloud-in-cell) and smoothed with a Gaussian of width ``sigma`` (rad, default one bin
width) onto the bin centres α_b of n_bins bins on [0, π], as in :mod:`.rdf`. The result is
normalised to unit integral on the grid, Σ_b p(α_b) Δα = 1 (so ∫₀^π p(α) dα = 1; the Gaussian
tails that spill beyond 0 and π are renormalised away). A snapshot without any triplet gives
p = 0. Every step is differentiable in the positions.

Choice of the default w = r_cut / 64 (0.005 nm for the water O–O cutoff 0.318 nm): it keeps the
smoothed neighbour count within ~1 % of the hard count (the first-order change cancels by
symmetry of Φ around r_cut; what remains is ∝ w² times the slope of g at r_cut), and it is
still wide enough that position gradients are of order 1/w, not a delta function. The
observable reaches r_cut + 5 w (c = 3·10⁻⁷ there).

Inputs (see ``learn/difftre.py``): ``R`` positions (N, 3), ``idx`` the dense neighbour list
(N, M) padded with N, ``r`` the distances on it (+inf for padding), ``box`` the cubic box side.
Only the ``max_neighbors`` nearest neighbours of each particle are used (a static size, so the
cost is N·K(K−1)/2 triplets, independent of the list width M, which other observables such as
a 1 nm RDF make large). If some particle has more than ``max_neighbors`` neighbours within the
reach the ADF would be truncated; it is then NaN for that snapshot (raise ``max_neighbors``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import number
from ..errors import UserError
from ..neighbors import minimum_image
from .base import Observable

#: Φ(−5) ≈ 2.9e−7: the smooth cutoff is treated as zero beyond r_cut + CDF_REACH · w.
CDF_REACH = 5.0


def nearest_vectors(q, k: int, reach: float):
    """The (up to) ``k`` nearest list neighbours of every particle.

    Returns (d (N, K, 3) minimum-image vectors R_j − R_i, r (N, K) their lengths, valid (N, K)
    neighbours that exist and lie closer than ``reach``, n_within (N,) how many list
    neighbours lie closer than ``reach``), K = min(k, M). Invalid slots get the safe vector
    (1, 0, 0) and length 1 (double-``where``), so no NaN reaches a gradient.
    """
    R, idx, r, box = q["R"], q["idx"], q["r"], q["box"]
    n, m = idx.shape
    within = r < reach
    n_within = jnp.sum(within, axis=1)
    if m > k:
        _, slot = jax.lax.top_k(-r, k)                    # nearest first; +inf padding last
        idx = jnp.take_along_axis(idx, slot, axis=1)
        within = jnp.take_along_axis(within, slot, axis=1)
    valid = (idx < n) & within
    d = R[jnp.minimum(idx, n - 1)] - R[:, None, :]
    d = minimum_image(d, box)
    d = jnp.where(valid[..., None], d, jnp.asarray([1.0, 0.0, 0.0], d.dtype))
    rr = jnp.sqrt(jnp.sum(d * d, axis=-1))
    return d, rr, valid, n_within


def pair_cosines(d, rr, pairs):
    """cos of the angle between neighbour vectors d[:, a] and d[:, b] for each static pair."""
    u = d / rr[..., None]
    a, b = pairs
    return jnp.sum(u[:, a] * u[:, b], axis=-1)


def safe_arccos(c):
    """arccos with the argument kept inside (−1, 1): finite derivative at collinear triplets."""
    eps = 1e-7 if c.dtype == jnp.float64 else 1e-6
    return jnp.arccos(jnp.clip(c, -1.0 + eps, 1.0 - eps))


def smooth_cutoff(r, r_cut: float, width: float):
    """Φ((r_cut − r)/w): the differentiable replacement of the step r < r_cut."""
    return 0.5 * jax.scipy.special.erfc((r - r_cut) / (math.sqrt(2.0) * width))


@dataclass(frozen=True)
class ADF(Observable):
    name: str
    r_cut: float
    n_bins: int = 150
    sigma: float = 0.0          # angular smoothing (rad); 0 means one bin width
    cdf_width: float = 0.0      # w of the smooth cutoff (length); 0 means r_cut / 64
    max_neighbors: int = 32
    depends_on_params: bool = False
    unit_kind: str = "angle"
    value_kind: ClassVar[str] = "inverse_angle"             # ∫ p(α) dα = 1
    symbols: ClassVar[tuple[str, str]] = ("alpha", "p")
    grid: np.ndarray = field(init=False, repr=False, compare=False)
    fine: np.ndarray = field(init=False, repr=False, compare=False)
    kernel: np.ndarray = field(init=False, repr=False, compare=False)
    pairs: tuple = field(init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, name, cfg):
        P = f"observables.{name}"
        r_cut = number(cfg, "r_cut", prefix=P, lo=0.0, lo_open=True, example="0.318")
        n_bins = number(cfg, "n_bins", prefix=P, integer=True, lo=2, required=False, default=150, example="150")
        sigma = number(cfg, "sigma", prefix=P, lo=0.0, required=False, default=0.0, example="0.02")
        width = number(cfg, "cdf_width", prefix=P, lo=0.0, required=False, default=0.0, example="0.005")
        k = number(cfg, "max_neighbors", prefix=P, integer=True, lo=2, required=False, default=32, example="32")
        return cls(name=name, r_cut=r_cut, n_bins=n_bins, sigma=sigma, cdf_width=width, max_neighbors=k)

    def __post_init__(self):
        if not self.r_cut > 0 or self.n_bins < 2 or self.sigma < 0 or self.cdf_width < 0 or self.max_neighbors < 2:
            raise UserError(f"observables.{self.name}: need r_cut > 0, n_bins >= 2, sigma >= 0, cdf_width >= 0 "
                            "and max_neighbors >= 2",
                            f"got r_cut={self.r_cut}, n_bins={self.n_bins}, sigma={self.sigma}, "
                            f"cdf_width={self.cdf_width}, max_neighbors={self.max_neighbors}")
        da = np.pi / self.n_bins
        if self.sigma == 0:
            object.__setattr__(self, "sigma", da)
        if self.cdf_width == 0:
            object.__setattr__(self, "cdf_width", self.r_cut / 64.0)
        grid = da * (np.arange(self.n_bins) + 0.5)
        step = min(self.sigma / 4.0, da / 2.0)
        fine = np.arange(0.0, np.pi + 2.0 * step, step)
        kern = np.exp(-0.5 * ((grid[:, None] - fine[None, :]) / self.sigma) ** 2)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "fine", fine)
        object.__setattr__(self, "kernel", kern)
        object.__setattr__(self, "pairs", tuple(np.triu_indices(self.max_neighbors, 1)))

    @property
    def reach(self) -> float:
        """Largest neighbour distance that contributes (the list cutoff it needs)."""
        return float(self.r_cut + CDF_REACH * self.cdf_width)

    def triplets(self, q):
        """Angles α (N, P) and weights c_ij c_ik (N, P) of every neighbour pair of every
        particle, and whether some particle had more neighbours in reach than max_neighbors."""
        d, rr, valid, n_within = nearest_vectors(q, self.max_neighbors, self.reach)
        k = d.shape[1]
        pairs = tuple(np.triu_indices(k, 1)) if k < self.max_neighbors else self.pairs
        c = jnp.where(valid, smooth_cutoff(rr, self.r_cut, self.cdf_width), 0.0)
        alpha = safe_arccos(pair_cosines(d, rr, pairs))
        weight = c[:, pairs[0]] * c[:, pairs[1]]
        return alpha, weight, jnp.any(n_within > k)

    def snapshot(self, ctx, q):
        alpha, weight, truncated = self.triplets(q)
        a, wt = alpha.reshape(-1), weight.reshape(-1)
        step = float(self.fine[1] - self.fine[0])
        x = a / step
        i0 = jnp.floor(x).astype(jnp.int32)
        frac = x - i0
        nf = len(self.fine)
        hist = jnp.zeros(nf, a.dtype)
        hist = hist.at[i0].add(wt * (1.0 - frac), mode="drop").at[i0 + 1].add(wt * frac, mode="drop")
        smooth = jnp.asarray(self.kernel, a.dtype) @ hist
        total = jnp.sum(smooth) * (np.pi / self.n_bins)
        p = smooth / jnp.where(total > 0, total, 1.0)
        return jnp.where(truncated, jnp.nan, p)


#: the ``kind`` names of ``observables/*.yaml`` this module provides (collected by observables/__init__.py)
KINDS = {"adf": ADF}
