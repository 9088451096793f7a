"""Radial distribution function g(r), differentiable (Gaussian-smoothed histogram).

g(r_b) = V / (N (N−1)) · Σ_{i≠j} K_σ(r_b − r_ij) / (4π r_b²), normalised by the ideal gas,
evaluated at bin centres r_b on [r_min, r_max].

Partial RDFs of a mixture (``pair: [A, B]``): g_ab(r_b) = V / (N_a (N_b − δ_ab)) · Σ_{i∈a}
Σ_{j∈b, j≠i} K_σ(r_b − r_ij) / (4π r_b²). They add up to the total RDF with the weights of the
pairs they count, g = Σ_{a,b} N_a (N_b − δ_ab) / (N (N − 1)) · g_ab over ordered pairs (a, b),
i.e. g = x_A² g_AA + 2 x_A x_B g_AB + x_B² g_BB up to the δ_ab corrections of order 1/N. For speed the kernel sum is done as a
linear (cloud-in-cell) deposit of the pair distances on a fine grid followed by one
matrix product with the Gaussian kernel; both steps are differentiable in r_ij.

A target g(r) that is an unsmoothed histogram (LAMMPS ``compute rdf``, an experiment) is given the
same kernel before the comparison (``RDF.smooth_target``, ``targets.X.smooth``): the kernel acts
on the pair density ∝ r² g(r), g_σ(r) = ∫ K_σ(r − s) s² g(s) ds / r², as it does here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from ..checks import number
from ..errors import UserError
from .base import Observable


def gaussian_kernel(at, points, sigma: float) -> np.ndarray:
    """K_σ(a − p), the normalised Gaussian, as a (len(at), len(points)) matrix: the smoothing
    kernel of the RDF (on pair distances) and of targets given to it (``RDF.smooth_target``)."""
    at, points = np.asarray(at, float), np.asarray(points, float)
    return np.exp(-0.5 * ((at[:, None] - points[None, :]) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)


@dataclass(frozen=True)
class RDF(Observable):
    name: str
    r_min: float
    r_max: float
    n_bins: int
    sigma: float
    pair: tuple | None = None        # (species a, species b) for a partial RDF; None: all pairs
    depends_on_params: bool = False
    unit_kind: str = "length"
    symbols: ClassVar[tuple[str, str]] = ("r", "g")
    grid: np.ndarray = field(init=False, repr=False, compare=False)
    fine: np.ndarray = field(init=False, repr=False, compare=False)
    kernel: np.ndarray = field(init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, name, cfg):
        P = f"observables.{name}"
        r_min = number(cfg, "r_min", prefix=P, lo=0.0, required=False, default=0.0, example="0.0")
        r_max = number(cfg, "r_max", prefix=P, lo=0.0, lo_open=True, example="3.0")
        if r_max <= r_min:
            raise UserError(f"{P}.r_max={r_max:g} must be larger than {P}.r_min={r_min:g}",
                            f"lower {P}.r_min or raise {P}.r_max (r_min < r_max)")
        n_bins = number(cfg, "n_bins", prefix=P, integer=True, lo=2, example="150")
        # sigma: Gaussian smoothing width; null means one bin width.
        sigma = number(cfg, "sigma", prefix=P, lo=0.0, lo_open=True, required=False, default=0.0, example="0.02")
        pair = cfg.get("pair")
        if pair is not None:
            ok = (not isinstance(pair, (str, bytes)) and hasattr(pair, "__len__") and len(pair) == 2
                  and all(isinstance(p, str) for p in pair))
            if not ok:
                raise UserError(f"{P}.pair must be two species names, got {pair!r}", f"set {P}.pair=[A,B]")
            pair = (str(pair[0]), str(pair[1]))
        return cls(name=name, r_min=r_min, r_max=r_max, n_bins=n_bins, sigma=sigma, pair=pair)

    def __post_init__(self):
        if not (0 <= self.r_min < self.r_max) or self.n_bins < 2:
            raise UserError(f"observables.{self.name}: need 0 <= r_min < r_max and n_bins >= 2",
                            f"got r_min={self.r_min}, r_max={self.r_max}, n_bins={self.n_bins}")
        dr = (self.r_max - self.r_min) / self.n_bins
        sigma = self.sigma if self.sigma > 0 else dr
        object.__setattr__(self, "sigma", sigma)
        grid = self.r_min + dr * (np.arange(self.n_bins) + 0.5)
        step = min(sigma / 4.0, dr / 2.0)
        fine = np.arange(0.0, self.r_max + 4.0 * sigma + step, step)
        kern = gaussian_kernel(grid, fine, sigma)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "fine", fine)
        object.__setattr__(self, "kernel", kern)

    @property
    def kernel_width(self) -> float:
        """The Gaussian width σ a histogram target is given (targets.X.smooth=auto)."""
        return self.sigma

    def smooth_target(self, x, y, sigma: float):
        """g_σ(r) = ∫ K_σ(r − s) s² g(s) ds / r² of a target g sampled at sorted ``x``, on a
        uniform grid of step ≤ σ/8 over the target's own range [x₀, x₁] (r > 0): the kernel
        this observable applies to pair distances (the pair density is ∝ s² g(s)). Beyond the
        data g is continued by its end values (linear interpolation inside), below r = 0 there
        are no pairs; the kernel is cut at 5 σ (a 6e-7 loss of weight)."""
        x0, x1 = float(x[0]), float(x[-1])
        n = max(1, int(np.ceil(8.0 * (x1 - x0) / sigma)))
        h = (x1 - x0) / n
        m = int(np.ceil(5.0 * sigma / h))
        s = x0 + h * np.arange(-m, n + m + 1)
        pair_density = np.where(s > 0, s * s, 0.0) * np.interp(s, x, y)
        taps = gaussian_kernel(np.zeros(1), h * np.arange(-m, m + 1), sigma)[0] * h
        r = s[m:m + n + 1]
        smoothed = np.convolve(pair_density, taps, mode="valid")
        keep = r > 0
        return r[keep], smoothed[keep] / r[keep] ** 2

    @property
    def reach(self) -> float:
        """Largest pair distance that contributes."""
        return float(self.fine[-1])

    def check_box(self, box: float):
        half = 0.5 * box
        if self.reach > half:
            raise UserError(f"observables.{self.name}.r_max={self.r_max:g} (plus 4 sigma of smoothing: "
                            f"{self.reach:.4g}) exceeds half the box ({half:.4g}); the minimum-image RDF is undefined "
                            f"beyond it", f"lower observables.{self.name}.r_max below {half - 4 * self.sigma:.3g}, "
                            "or use more particles (system.n_particles)")

    def snapshot(self, ctx, q):
        r = q["r"]
        n_pairs = ctx.n_particles * (ctx.n_particles - 1)
        if self.pair is not None:   # keep the (i in a, j in b) entries of the full list
            key = f"observables.{self.name}.pair"
            a, b = (ctx.species_index(s, key) for s in self.pair)
            if "code" in q:
                r = jnp.where(q["code"] == a * len(ctx.species_names) + b, r, jnp.inf)
            n_pairs = ctx.counts[a] * (ctx.counts[b] - (a == b))
        r = r.reshape(-1)
        step = float(self.fine[1] - self.fine[0])   # a Python float: keeps the positions' dtype
        nf = len(self.fine)
        x = r / step
        i0 = jnp.floor(jnp.where(jnp.isfinite(x), x, nf + 1.0)).astype(jnp.int32)
        frac = x - i0
        frac = jnp.where(jnp.isfinite(frac), frac, 0.0)
        hist = jnp.zeros(nf, r.dtype)
        hist = hist.at[i0].add(1.0 - frac, mode="drop").at[i0 + 1].add(frac, mode="drop")
        density_sum = jnp.asarray(self.kernel, r.dtype) @ hist
        norm = ctx.volume / n_pairs / (4.0 * np.pi * self.grid ** 2)
        return density_sum * jnp.asarray(norm, r.dtype)


#: the ``kind`` names of ``observables/*.yaml`` this module provides (collected by observables/__init__.py)
KINDS = {"rdf": RDF}
