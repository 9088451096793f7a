"""Learnable pair models u_θ(r): a cubic spline with learnable knot values, a tabulated
potential (values on a uniform grid, cubic or linear interpolation; what iterative Boltzmann
inversion updates), and an MLP on Gaussian radial features (Flax). Each model is a small
frozen dataclass with

- ``init(key) -> params`` (a pytree),
- ``__call__(params, r) -> u`` elementwise on distances of any shape.

All vanish at (and beyond) the cutoff; the spline, the cubic table and the MLP with zero
slope, so forces are continuous. They derive from :class:`PairModel`, which declares the one
optional part: a temperature-dependent model (``temperature_dependent``) is bound to a state
point's kT by ``at_kT``.

The cubic spline on a uniform grid (:func:`spline_second_derivative_map`, :func:`cubic_uniform`)
and the MLP of one variable (:class:`ScalarMLP`) are also those of the one-body models u(x)
(external.py): a spline in one variable is the same whether the variable is r or x.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import UserError


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


class PairModel:
    """Base of the learnable pair models: ``init(key)``, ``__call__(params, r)`` and ``cutoff``;
    declared optional part: ``temperature_dependent`` (then ``at_kT(kT)`` binds a state's kT)."""

    temperature_dependent: ClassVar[bool] = False

    def at_kT(self, kT: float) -> "PairModel":
        return self


@dataclass(frozen=True)
class SplinePair(PairModel):
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
        object.__setattr__(self, "m_map", spline_second_derivative_map(np.diff(knots)))

    def init(self, key):
        del key
        return {"knot_values": jnp.zeros(self.n_knots - 1)}

    def __call__(self, params, r):
        y = jnp.concatenate([params["knot_values"], jnp.zeros(1, params["knot_values"].dtype)])
        m = jnp.asarray(self.m_map, y.dtype) @ y
        h = (self.cutoff - self.r_min) / (self.n_knots - 1)
        u = cubic_uniform(y, m, self.r_min, h, jnp.clip(r, self.r_min, self.cutoff))
        return jnp.where(r < self.cutoff, u, 0.0)


def _segment(x, x0: float, h: float, n: int):
    """Interval index i (0 … n−2) of the uniform grid x0 + k h holding x, and the fraction b in it."""
    idx = jnp.clip(jnp.floor((x - x0) / h).astype(jnp.int32), 0, n - 2)
    return idx, (x - (x0 + idx * h)) / h


def cubic_uniform(y, m, x0: float, h: float, x):
    """Cubic spline through values ``y`` with second derivatives ``m`` on the uniform grid x0 + k h."""
    idx, b = _segment(x, x0, h, y.shape[0])
    a = 1.0 - b
    return a * y[idx] + b * y[idx + 1] + ((a ** 3 - a) * m[idx] + (b ** 3 - b) * m[idx + 1]) * (h * h / 6.0)


@dataclass(frozen=True)
class TablePair(PairModel):
    """Tabulated pair potential: values u_k at ``n_points`` equidistant points r_k on [r_min, cutoff].

    The parameters are the table (all values but the last, which is fixed at u(cutoff) = 0;
    the table is zero beyond the cutoff). ``interpolation="cubic"`` is the cubic spline
    through the table with a natural left end and a clamped right end (u'(cutoff) = 0,
    continuous forces); ``"linear"`` joins the points by straight lines (piecewise-constant
    forces, as in tabulated MD codes without spline interpolation). Below r_min the table is
    continued linearly with its slope at r_min if that slope is repulsive (negative), and
    held constant otherwise — a prior or the table itself carries the core.
    """

    r_min: float
    cutoff: float
    n_points: int = 69
    interpolation: str = "cubic"
    grid: np.ndarray = field(init=False, repr=False, compare=False)
    m_map: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not (0.0 < self.r_min < self.cutoff):
            raise UserError(f"model.r_min must be in (0, cutoff={self.cutoff}); got {self.r_min}",
                            "set model.r_min below the cutoff")
        if self.n_points < 4:
            raise UserError(f"model.n_points must be >= 4; got {self.n_points}", "use e.g. model.n_points=69")
        if self.interpolation not in ("cubic", "linear"):
            raise UserError(f"model.interpolation: unknown {self.interpolation!r}", "use cubic or linear")
        grid = np.linspace(self.r_min, self.cutoff, self.n_points)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "m_map", spline_second_derivative_map(np.diff(grid)))

    @property
    def spacing(self) -> float:
        return (self.cutoff - self.r_min) / (self.n_points - 1)

    def init(self, key):
        del key
        return {"table": jnp.zeros(self.n_points - 1)}

    def values(self, params):
        """The full table (n_points,), the fixed zero at the cutoff included."""
        return jnp.concatenate([params["table"], jnp.zeros(1, params["table"].dtype)])

    def __call__(self, params, r):
        y = self.values(params)
        h = self.spacing
        x = jnp.clip(r, self.r_min, self.cutoff)
        if self.interpolation == "cubic":
            m = jnp.asarray(self.m_map, y.dtype) @ y
            u = cubic_uniform(y, m, self.r_min, h, x)
            slope0 = (y[1] - y[0]) / h - h * m[1] / 6.0          # u'(r_min) with m[0] = 0
        else:
            idx, b = _segment(x, self.r_min, h, self.n_points)
            u = (1.0 - b) * y[idx] + b * y[idx + 1]
            slope0 = (y[1] - y[0]) / h
        below = y[0] + jnp.minimum(slope0, 0.0) * (r - self.r_min)
        return jnp.where(r < self.cutoff, jnp.where(r < self.r_min, below, u), 0.0)


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


@dataclass(frozen=True)
class MLPPair(PairModel):
    """Multilayer perceptron on Gaussian radial-basis features of r, times a cosine envelope."""

    cutoff: float
    hidden: tuple = (32, 32)
    n_basis: int = 32

    @property
    def module(self) -> ScalarMLP:
        return ScalarMLP(tuple(int(h) for h in self.hidden), int(self.n_basis), float(self.cutoff))

    def init(self, key):
        return self.module.init(key, jnp.ones((1,)))

    def __call__(self, params, r):
        flat = r.reshape(-1)
        return self.module.apply(params, flat).reshape(r.shape)


@dataclass(frozen=True)
class ThermalPair(PairModel):
    """Temperature-dependent pair model u(r, T) = u₁(r) − k_B T u₂(r) with two learnable pair
    models (parameters ``{"u1": …, "u2": …}``). u₂ acts like an entropy of the pair: the
    model transfers between temperatures when the effective interaction's free-energy
    character is linear in T. ``kT`` is bound per state point (:meth:`at_kT`)."""

    u1: object
    u2: object
    kT: float | None = None
    temperature_dependent = True

    @property
    def cutoff(self) -> float:
        return self.u1.cutoff

    def at_kT(self, kT: float) -> "ThermalPair":
        return ThermalPair(self.u1, self.u2, float(kT))

    def init(self, key):
        k1, k2 = jax.random.split(key)
        return {"u1": self.u1.init(k1), "u2": self.u2.init(k2)}

    def __call__(self, params, r):
        if self.kT is None:
            raise RuntimeError("ThermalPair used before at_kT(kT): the state point's temperature is not bound")
        return self.u1(params["u1"], r) - self.kT * self.u2(params["u2"], r)


def build(cfg, cutoff: float, prefix: str = "model"):
    """The learnable model from the ``model`` config group (``kind``: spline | table | mlp |
    thermal | none)."""
    from ..checks import choice, int_list, mapping, number

    if cfg.get("kind") is None:   # no kind: no learnable model, as kind: none
        return None
    kind = choice(cfg, "kind", ("spline", "table", "mlp", "thermal", "none"), prefix=prefix, what="model")
    if kind == "thermal":
        parts = []
        for part in ("u1", "u2"):
            sub = cfg.get(part)
            mapping(sub, f"{prefix}.{part}", f"{prefix}.{part}={{kind: spline, r_min: 0.8, n_knots: 20}}")
            if sub.get("kind") in (None, "none", "thermal"):
                raise UserError(f"{prefix}.{part}.kind must be spline, table or mlp, got {sub.get('kind')!r}",
                                f"set {prefix}.{part}.kind=spline")
            parts.append(build(sub, cutoff, prefix=f"{prefix}.{part}"))
        return ThermalPair(*parts)
    if kind == "spline":
        r_min = number(cfg, "r_min", prefix=prefix, lo=0.0, lo_open=True, hi=cutoff, hi_open=True,
                       required=False, default=0.5 * cutoff, example=f"{0.3 * cutoff:.3g}")
        n_knots = number(cfg, "n_knots", prefix=prefix, integer=True, lo=4, required=False, default=40, example="40")
        return SplinePair(r_min=r_min, cutoff=cutoff, n_knots=n_knots)
    if kind == "table":
        r_min = number(cfg, "r_min", prefix=prefix, lo=0.0, lo_open=True, hi=cutoff, hi_open=True,
                       required=False, default=0.5 * cutoff, example=f"{0.3 * cutoff:.3g}")
        n_points = number(cfg, "n_points", prefix=prefix, integer=True, lo=4, required=False, default=69,
                          example="69")
        interpolation = choice(cfg, "interpolation", ("cubic", "linear"), prefix=prefix, default="cubic",
                               what="interpolation")
        return TablePair(r_min=r_min, cutoff=cutoff, n_points=n_points, interpolation=interpolation)
    if kind == "mlp":
        hidden = int_list(cfg, "hidden", prefix=prefix) if cfg.get("hidden") is not None else (32, 32)
        n_basis = number(cfg, "n_basis", prefix=prefix, integer=True, lo=1, required=False, default=32, example="32")
        return MLPPair(cutoff=cutoff, hidden=hidden, n_basis=n_basis)
    return None
