"""Learnable pair models u_θ(r): a cubic spline with learnable knot values, and an MLP on
Gaussian radial features (Flax). Each model is a small frozen dataclass with

- ``init(key) -> params`` (a pytree),
- ``__call__(params, r) -> u`` elementwise on distances of any shape.

Both vanish at (and beyond) the cutoff with zero slope, so forces are continuous.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import UserError


def _spline_second_derivative_map(knots: np.ndarray) -> np.ndarray:
    """Matrix C with M = C y: second derivatives of the cubic spline through (knots, y)
    with a natural left end (M_0 = 0) and a clamped right end (u'(r_cut) = 0)."""
    k = len(knots)
    h = np.diff(knots)
    a = np.zeros((k, k))
    b = np.zeros((k, k))
    a[0, 0] = 1.0
    for i in range(1, k - 1):
        a[i, i - 1] = h[i - 1] / 6.0
        a[i, i] = (h[i - 1] + h[i]) / 3.0
        a[i, i + 1] = h[i] / 6.0
        b[i, i - 1] = 1.0 / h[i - 1]
        b[i, i] = -1.0 / h[i - 1] - 1.0 / h[i]
        b[i, i + 1] = 1.0 / h[i]
    a[-1, -2] = h[-1] / 6.0
    a[-1, -1] = h[-1] / 3.0
    b[-1, -2] = 1.0 / h[-1]
    b[-1, -1] = -1.0 / h[-1]
    return np.linalg.solve(a, b)


@dataclass(frozen=True)
class SplinePair:
    """Cubic spline through ``n_knots`` equidistant knots on [r_min, cutoff].

    The learnable parameters are the knot values except the last, which is fixed at 0 so
    that u(r_cut) = 0; u'(r_cut) = 0 by the clamped end condition. Below r_min the spline is
    held constant (the prior carries the repulsion there).
    """

    r_min: float
    cutoff: float
    n_knots: int = 40
    knots: np.ndarray = field(init=False, repr=False, compare=False)
    m_map: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not (0.0 < self.r_min < self.cutoff):
            raise UserError(f"model.r_min must be in (0, cutoff={self.cutoff}); got {self.r_min}",
                            "set model.r_min below the cutoff")
        if self.n_knots < 4:
            raise UserError(f"model.n_knots must be >= 4; got {self.n_knots}", "use e.g. model.n_knots=40")
        knots = np.linspace(self.r_min, self.cutoff, self.n_knots)
        object.__setattr__(self, "knots", knots)
        object.__setattr__(self, "m_map", _spline_second_derivative_map(knots))

    def init(self, key):
        del key
        return {"knot_values": jnp.zeros(self.n_knots - 1)}

    def __call__(self, params, r):
        y = jnp.concatenate([params["knot_values"], jnp.zeros(1, params["knot_values"].dtype)])
        m = jnp.asarray(self.m_map, y.dtype) @ y
        h = (self.cutoff - self.r_min) / (self.n_knots - 1)
        x = jnp.clip(r, self.r_min, self.cutoff)
        idx = jnp.clip(jnp.floor((x - self.r_min) / h).astype(jnp.int32), 0, self.n_knots - 2)
        b = (x - (self.r_min + idx * h)) / h
        a = 1.0 - b
        u = a * y[idx] + b * y[idx + 1] + ((a ** 3 - a) * m[idx] + (b ** 3 - b) * m[idx + 1]) * (h * h / 6.0)
        return jnp.where(r < self.cutoff, u, 0.0)


class _RadialMLP(nn.Module):
    hidden: tuple[int, ...]
    n_basis: int
    cutoff: float

    @nn.compact
    def __call__(self, r):
        centres = jnp.linspace(0.0, self.cutoff, self.n_basis)
        width = self.cutoff / self.n_basis
        feats = jnp.exp(-0.5 * ((r[..., None] - centres) / width) ** 2)
        x = feats
        for size in self.hidden:
            x = nn.swish(nn.Dense(size)(x))
        out = nn.Dense(1, kernel_init=nn.initializers.zeros)(x)[..., 0]
        # Smooth envelope: value and slope vanish at the cutoff.
        envelope = 0.5 * (jnp.cos(jnp.pi * jnp.clip(r / self.cutoff, 0.0, 1.0)) + 1.0)
        return out * envelope


@dataclass(frozen=True)
class MLPPair:
    """Multilayer perceptron on Gaussian radial-basis features of r, times a cosine envelope."""

    cutoff: float
    hidden: tuple = (32, 32)
    n_basis: int = 32

    @property
    def module(self) -> _RadialMLP:
        return _RadialMLP(tuple(int(h) for h in self.hidden), int(self.n_basis), float(self.cutoff))

    def init(self, key):
        return self.module.init(key, jnp.ones((1,)))

    def __call__(self, params, r):
        flat = r.reshape(-1)
        return self.module.apply(params, flat).reshape(r.shape)


def build(cfg, cutoff: float):
    """The learnable model from the ``model`` config group (``kind``: spline | mlp | none)."""
    from ..checks import choice, int_list, number

    if cfg.get("kind") is None:   # no kind: no learnable model, as kind: none
        return None
    kind = choice(cfg, "kind", ("spline", "mlp", "none"), prefix="model", what="model")
    if kind == "spline":
        r_min = number(cfg, "r_min", prefix="model", lo=0.0, lo_open=True, hi=cutoff, hi_open=True,
                       required=False, default=0.5 * cutoff, example=f"{0.3 * cutoff:.3g}")
        n_knots = number(cfg, "n_knots", prefix="model", integer=True, lo=4, required=False, default=40, example="40")
        return SplinePair(r_min=r_min, cutoff=cutoff, n_knots=n_knots)
    if kind == "mlp":
        hidden = int_list(cfg, "hidden", prefix="model") if cfg.get("hidden") is not None else (32, 32)
        n_basis = number(cfg, "n_basis", prefix="model", integer=True, lo=1, required=False, default=32, example="32")
        return MLPPair(cutoff=cutoff, hidden=hidden, n_basis=n_basis)
    return None
