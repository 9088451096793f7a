"""Learnable pair models u_θ(r) and their registry: a cubic spline with learnable knot values
(``spline``), a tabulated potential (``table``: values on a uniform grid, cubic or linear
interpolation; what iterative Boltzmann inversion updates), an MLP on Gaussian radial features
(``mlp``, pair_mlp.py) and the temperature-dependent u₁(r) − k_BT u₂(r) of two of them
(``thermal``). Each model is a frozen dataclass deriving from :class:`.base.PairModel`
(``from_config``, ``init``, ``__call__``; optional ``temperature_dependent``/``at_kT``). All
vanish at (and beyond) the cutoff; the spline, the cubic table and the MLP with zero slope, so
forces are continuous.

The registry :data:`MODELS` maps ``model.kind`` to the class; :func:`build` looks the kind up
there and calls the class's ``from_config``. It holds the ``KINDS`` of this module and of every
``pair_*.py`` module of this package, so adding a pair model is one module and one YAML:
``potentials/pair_NAME.py`` with the class (deriving from ``base.PairModel``, importing from
``.base`` and never from here) and ``KINDS = {"NAME": TheClass}``, and ``configs/model/NAME.yaml``
with ``kind: NAME`` and its keys. ``PairPotential``, the mixture and ``thermal`` use it as it is.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import choice, mapping, number
from ..errors import UserError
from .base import (
    PairModel,
    cubic_uniform,
    spline_second_derivative_map,
    uniform_segment,
)

__all__ = ["MODELS", "build", "PairModel", "SplinePair", "TablePair", "ThermalPair"]


@dataclass(frozen=True)
class SplinePair(PairModel):
    """Cubic spline through ``n_knots`` equidistant knots on [r_min, cutoff].

    The learnable parameters are the knot values except the last, which is fixed at 0 so
    that u(r_cut) = 0; u'(r_cut) = 0 by the clamped end condition. Below r_min the spline is
    held constant (the prior carries the repulsion there).
    """

    linear: ClassVar[bool] = True   # u = Σ_k y_k B_k(r): the knot values enter linearly

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

    @classmethod
    def from_config(cls, cfg, cutoff: float, prefix: str) -> "SplinePair":
        r_min = number(cfg, "r_min", prefix=prefix, lo=0.0, lo_open=True, hi=cutoff, hi_open=True,
                       required=False, default=0.5 * cutoff, example=f"{0.3 * cutoff:.3g}")
        n_knots = number(cfg, "n_knots", prefix=prefix, integer=True, lo=4, required=False, default=40, example="40")
        return cls(r_min=r_min, cutoff=cutoff, n_knots=n_knots)

    def init(self, key):
        del key
        return {"knot_values": jnp.zeros(self.n_knots - 1)}

    def __call__(self, params, r):
        y = jnp.concatenate([params["knot_values"], jnp.zeros(1, params["knot_values"].dtype)])
        m = jnp.asarray(self.m_map, y.dtype) @ y
        h = (self.cutoff - self.r_min) / (self.n_knots - 1)
        u = cubic_uniform(y, m, self.r_min, h, jnp.clip(r, self.r_min, self.cutoff))
        return jnp.where(r < self.cutoff, u, 0.0)


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

    @classmethod
    def from_config(cls, cfg, cutoff: float, prefix: str) -> "TablePair":
        r_min = number(cfg, "r_min", prefix=prefix, lo=0.0, lo_open=True, hi=cutoff, hi_open=True,
                       required=False, default=0.5 * cutoff, example=f"{0.3 * cutoff:.3g}")
        n_points = number(cfg, "n_points", prefix=prefix, integer=True, lo=4, required=False, default=69,
                          example="69")
        interpolation = choice(cfg, "interpolation", ("cubic", "linear"), prefix=prefix, default="cubic",
                               what="interpolation")
        return cls(r_min=r_min, cutoff=cutoff, n_points=n_points, interpolation=interpolation)

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
            idx, b = uniform_segment(x, self.r_min, h, self.n_points)
            u = (1.0 - b) * y[idx] + b * y[idx + 1]
            slope0 = (y[1] - y[0]) / h
        below = y[0] + jnp.minimum(slope0, 0.0) * (r - self.r_min)
        return jnp.where(r < self.cutoff, jnp.where(r < self.r_min, below, u), 0.0)


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

    @classmethod
    def from_config(cls, cfg, cutoff: float, prefix: str) -> "ThermalPair":
        """``u1`` and ``u2``: mappings of any temperature-independent registered pair model."""
        kinds = [kind for kind, model in MODELS.items() if not model.temperature_dependent]
        parts = []
        for part in ("u1", "u2"):
            sub = cfg.get(part)
            mapping(sub, f"{prefix}.{part}", f"{prefix}.{part}={{kind: spline, r_min: 0.8, n_knots: 20}}")
            if sub.get("kind") not in kinds:
                raise UserError(f"{prefix}.{part}.kind must be {', '.join(kinds[:-1])} or {kinds[-1]}, got "
                                f"{sub.get('kind')!r}", f"set {prefix}.{part}.kind=spline")
            parts.append(build(sub, cutoff, prefix=f"{prefix}.{part}"))
        return cls(*parts)

    @property
    def cutoff(self) -> float:
        return self.u1.cutoff

    @property
    def linear(self) -> bool:
        """u₁ − kT u₂ is linear in θ when both parts are (two splines: the engine's linear features)."""
        return bool(self.u1.linear and self.u2.linear)

    def at_kT(self, kT: float) -> "ThermalPair":
        return ThermalPair(self.u1, self.u2, float(kT))

    def init(self, key):
        k1, k2 = jax.random.split(key)
        return {"u1": self.u1.init(k1), "u2": self.u2.init(k2)}

    def __call__(self, params, r):
        if self.kT is None:
            raise RuntimeError("ThermalPair used before at_kT(kT): the state point's temperature is not bound")
        return self.u1(params["u1"], r) - self.kT * self.u2(params["u2"], r)


KINDS = {"spline": SplinePair, "table": TablePair, "thermal": ThermalPair}


def _collect() -> dict:
    """kind -> pair-model class: this module's ``KINDS``, then those of every ``pair_*.py`` module
    of the package (in name order)."""
    found = dict(KINDS)
    package = __name__.rpartition(".")[0]
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda i: i.name):
        if not info.name.startswith("pair_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for kind, cls in vars(module).get("KINDS", {}).items():
            if kind == "none":
                raise RuntimeError(f"pair model kind 'none' is reserved (no learnable model): {cls}")
            if kind in found:
                raise RuntimeError(f"pair model kind {kind!r} defined twice ({found[kind]} and {cls})")
            if not (isinstance(cls, type) and issubclass(cls, PairModel)):
                raise RuntimeError(f"pair model kind {kind!r}: {cls} does not derive from base.PairModel")
            found[kind] = cls
    return found


#: ``model.kind`` -> pair-model class (``none``, or no kind: no learnable model)
MODELS: dict[str, type[PairModel]] = _collect()


def build(cfg, cutoff: float, prefix: str = "model") -> PairModel | None:
    """The learnable pair model of a ``model`` config mapping (``kind``: a key of :data:`MODELS`,
    or none); ``prefix`` is the mapping's dotted key, used in error messages."""
    if cfg.get("kind") is None:   # no kind: no learnable model, as kind: none
        return None
    kind = choice(cfg, "kind", (*MODELS, "none"), prefix=prefix, what="model")
    return None if kind == "none" else MODELS[kind].from_config(cfg, cutoff, prefix)
