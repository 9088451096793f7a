"""Density profile ρ(x)/ρ₀ of particles on a line, differentiable (Gaussian-smoothed histogram).

ρ(x_b)/ρ₀ = (L / N) Σ_n K_σ(x_b − x_n),  K_σ the normalised Gaussian of width σ (default: one
bin width), x_b the K bin centres on [x_min, x_max], L = x_max − x_min, ρ₀ = N / L. With the
whole profile inside the window the values average to 1 over the bins (up to the Gaussian
tails at the window's edges). The smoothing makes the observable differentiable in x_n (for
direct differentiation through the dynamics; DiffTRe needs no derivative of it: it depends on
positions only). Used by the double-well study; length unit: the system's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from ..errors import UserError
from .base import Observable


@dataclass(frozen=True)
class Density(Observable):
    name: str
    x_min: float
    x_max: float
    n_bins: int
    sigma: float = 0.0
    depends_on_params: bool = False
    unit_kind: str = "length"
    symbols: ClassVar[tuple[str, str]] = ("x", "rho")      # ρ(x)/ρ₀
    grid: np.ndarray = field(init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, name, cfg):
        try:
            return cls(name=name, x_min=float(cfg["x_min"]), x_max=float(cfg["x_max"]), n_bins=int(cfg["n_bins"]),
                       sigma=float(cfg.get("sigma", 0.0) or 0.0))
        except KeyError as exc:
            raise UserError(f"observables.{name}: missing key {exc}", "set x_min, x_max and n_bins") from None

    def __post_init__(self):
        if not self.x_min < self.x_max or self.n_bins < 2 or self.sigma < 0:
            raise UserError(f"observables.{self.name}: need x_min < x_max, n_bins >= 2 and sigma >= 0",
                            f"got x_min={self.x_min}, x_max={self.x_max}, n_bins={self.n_bins}, sigma={self.sigma}")
        dx = (self.x_max - self.x_min) / self.n_bins
        object.__setattr__(self, "grid", self.x_min + dx * (np.arange(self.n_bins) + 0.5))
        if self.sigma == 0:
            object.__setattr__(self, "sigma", dx)

    def profile(self, x):
        """ρ(x_b)/ρ₀ (K,) of the coordinates ``x`` (any shape; all count)."""
        x = x.reshape(-1)
        grid = jnp.asarray(self.grid, x.dtype)
        z = (grid[:, None] - x[None, :]) / self.sigma
        kern = jnp.exp(-0.5 * z * z) / (np.sqrt(2.0 * np.pi) * self.sigma)
        return (self.x_max - self.x_min) * jnp.sum(kern, axis=1) / x.size

    def snapshot(self, ctx, q):
        return self.profile(q["x"])

    def boltzmann_profile(self, u_fn, kT: float, n_fine: int = 20001) -> np.ndarray:
        """Exact ρ(x_b)/ρ₀ of an ideal gas in u(x), ρ ∝ exp(−u/kT), smoothed with this
        observable's Gaussian (numpy quadrature on a fine grid reaching 8 σ beyond the window;
        ``u_fn`` takes and returns numpy arrays, energies in the unit of ``kT``)."""
        x = np.linspace(self.x_min - 8 * self.sigma, self.x_max + 8 * self.sigma, n_fine)
        u = np.asarray(u_fn(x), float)
        p = np.exp(-(u - u.min()) / kT)
        p /= np.trapezoid(p, x)
        kern = np.exp(-0.5 * ((self.grid[:, None] - x[None, :]) / self.sigma) ** 2) / (np.sqrt(2 * np.pi) * self.sigma)
        return (self.x_max - self.x_min) * np.trapezoid(kern * p[None, :], x, axis=1)


#: the ``kind`` names of ``observables/*.yaml`` this module provides (collected by observables/__init__.py)
KINDS = {"density": Density}
