"""Base of the learnable pair models u_θ(r) (:class:`PairModel`) and the one-variable building
blocks that they and the one-body models u(x) (external.py) share: the cubic spline on a uniform
grid (:func:`spline_second_derivative_map`, :func:`cubic_uniform`) and the MLP of one variable
(:class:`ScalarMLP`); a spline in one variable is the same whether the variable is r or x.

A pair model module (pair.py, pair_*.py) imports from here, never from pair.py, which collects
those modules (see pair.py).
"""
from __future__ import annotations

import abc
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class PairModel(abc.ABC):
    """Base of the learnable pair models, frozen dataclasses with

    - ``from_config(cfg, cutoff, prefix)`` (classmethod): the model from its ``model`` config
      mapping, every key checked with the helpers of ``checks.py`` (a UserError names
      ``prefix.key``);
    - ``init(key) -> params`` (a pytree) and ``__call__(params, r) -> u`` elementwise on distances of
      any shape, zero at and beyond ``cutoff``.

    Declared optional parts: ``temperature_dependent`` (then ``at_kT(kT)`` binds a state's kT) and
    ``linear`` (u_θ(r) is linear in θ, e.g. a spline in its knot values: the observable engine
    then reweights with precomputed ∂U/∂θ, observables/linear.py)."""

    temperature_dependent: ClassVar[bool] = False
    linear: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg, cutoff: float, prefix: str) -> "PairModel":
        """The model of a ``model`` config mapping (``prefix``: its dotted key, for messages)."""

    @abc.abstractmethod
    def init(self, key):
        """Initial parameters (a pytree)."""

    @abc.abstractmethod
    def __call__(self, params, r):
        """u_θ(r), elementwise."""

    def at_kT(self, kT: float) -> "PairModel":
        return self


def spline_second_derivative_map(h: np.ndarray, right: str = "clamped") -> np.ndarray:
    """Matrix C with M = C y: second derivatives at the knots of the cubic spline through the
    values y, with spacings ``h`` (K − 1,) between K knots, a natural left end (M_0 = 0) and a
    ``right`` end that is ``"clamped"`` (u' = 0 at the last knot: a pair model at its cutoff) or
    ``"natural"`` (M_{K−1} = 0)."""
    h = np.asarray(h, float)
    k = len(h) + 1
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
    if right == "clamped":
        a[-1, -2] = h[-1] / 6.0
        a[-1, -1] = h[-1] / 3.0
        b[-1, -2] = 1.0 / h[-1]
        b[-1, -1] = -1.0 / h[-1]
    elif right == "natural":
        a[-1, -1] = 1.0
    else:
        raise ValueError(f"unknown spline end condition {right!r}")
    return np.linalg.solve(a, b)


def uniform_segment(x, x0: float, h: float, n: int):
    """Interval index i (0 … n−2) of the uniform grid x0 + k h holding x, and the fraction b in it."""
    idx = jnp.clip(jnp.floor((x - x0) / h).astype(jnp.int32), 0, n - 2)
    return idx, (x - (x0 + idx * h)) / h


def cubic_uniform(y, m, x0: float, h: float, x):
    """Cubic spline through values ``y`` with second derivatives ``m`` on the uniform grid x0 + k h."""
    idx, b = uniform_segment(x, x0, h, y.shape[0])
    a = 1.0 - b
    return a * y[idx] + b * y[idx + 1] + ((a ** 3 - a) * m[idx] + (b ** 3 - b) * m[idx + 1]) * (h * h / 6.0)


class ScalarMLP(nn.Module):
    """u(x) elementwise on inputs of any shape (flattened by the caller): the features of x, swish
    ``hidden`` layers and a zero-initialised linear output (u = 0 at initialisation).

    Features: x itself (``n_basis`` = 0), or ``n_basis`` Gaussian radial-basis functions of x on
    [0, ``cutoff``]; with a ``cutoff`` the output is multiplied by the cosine envelope
    ½ (cos(π x / cutoff) + 1), whose value and slope vanish at the cutoff."""

    hidden: tuple[int, ...]
    n_basis: int = 0
    cutoff: float | None = None

    @nn.compact
    def __call__(self, x):
        if self.n_basis:
            centres = jnp.linspace(0.0, self.cutoff, self.n_basis)
            width = self.cutoff / self.n_basis
            h = jnp.exp(-0.5 * ((x[..., None] - centres) / width) ** 2)
        else:
            h = x[..., None]
        for size in self.hidden:
            h = nn.swish(nn.Dense(size)(h))
        out = nn.Dense(1, kernel_init=nn.initializers.zeros)(h)[..., 0]
        if self.cutoff is None:
            return out
        envelope = 0.5 * (jnp.cos(jnp.pi * jnp.clip(x / self.cutoff, 0.0, 1.0)) + 1.0)
        return out * envelope
