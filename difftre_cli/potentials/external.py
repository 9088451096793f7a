"""One-body (external-field) potentials U(R) = Σ_n u(x_n) for independent particles.

Used by the double-well study (Thaler & Zavadlav, Nat. Commun. 12, 6884 (2021), the 1-D
example): ideal-gas particles on a line in u(x) = k_B T [a (x − c)^6 − b (x − d)^2], learned
from their density profile. Energies are in the system's energy unit (k_B T = 1 in the
preset), x in its length unit (dimensionless there).

:class:`ExternalPotential` combines a fixed prior u_prior(x) with a learnable model u_θ(x); it
is a :class:`~.protocol.OneBodyPotential`: ``features(positions)`` (the coordinates:
θ-independent) and ``energy_from_features(params, x, scale)`` for the observable engine,
per-particle energies and forces for the sampler; no neighbour list is involved.

Priors (elementwise ``u(x)``): ``harmonic_1d`` λ (x − x0)², ``double_well`` (the true
potential of the study, for targets and evaluation), ``none``.
Models (``init(key)``, ``__call__(params, x)``): ``spline_1d`` (natural cubic spline with
learnable knot values on [x_min, x_max], constant outside), ``mlp_1d`` (Flax MLP on x). Both are
the pair models' implementations in one variable (base.py: the uniform cubic spline, ScalarMLP).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import UserError
from .base import ScalarMLP, cubic_uniform, spline_second_derivative_map
from .protocol import OneBodyPotential


# -- priors / ground truth ---------------------------------------------------------------
def harmonic_1d(lam: float = 75.0, x0: float = 0.5) -> Callable:
    """λ (x − x0)² (note: λ, not λ/2, as in the published study)."""
    return lambda x: lam * (x - x0) ** 2


def double_well(a: float = 2500.0, c: float = 0.5, b: float = 10.0, d: float = 0.55, kT: float = 1.0) -> Callable:
    """k_B T [a (x − c)^6 − b (x − d)^2]; the published defaults a = 2500, c = 0.5, b = 10, d = 0.55."""
    return lambda x: kT * (a * (x - c) ** 6 - b * (x - d) ** 2)


def none(**unused) -> Callable:
    return lambda x: jnp.zeros_like(x)


PRIORS = {"harmonic_1d": harmonic_1d, "double_well": double_well, "none_1d": none}


def build_prior(cfg) -> Callable:
    kind = cfg.get("kind")
    kind = "none_1d" if kind == "none" else kind
    if kind not in PRIORS:
        raise UserError(f"prior.kind: unknown one-body prior {kind!r}", f"use one of {sorted(PRIORS)}")
    kwargs = {k: float(v) for k, v in cfg.items() if k != "kind"}
    try:
        return PRIORS[kind](**kwargs)
    except TypeError as exc:
        raise UserError(f"prior ({kind}): {exc}", "check the keys of the prior config group") from None


# -- models ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spline1D:
    """Natural cubic spline through ``n_knots`` equidistant knots on [x_min, x_max] with learnable
    values (initially 0). Outside the interval it is held at its end values (no force): the prior
    confines the particles there."""

    x_min: float
    x_max: float
    n_knots: int = 30
    m_map: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not self.x_min < self.x_max:
            raise UserError(f"model.x_min={self.x_min} must be below model.x_max={self.x_max}",
                            "e.g. model.x_min=0.0 model.x_max=1.0")
        if self.n_knots < 4:
            raise UserError(f"model.n_knots must be >= 4; got {self.n_knots}", "use e.g. model.n_knots=30")
        object.__setattr__(self, "m_map", spline_second_derivative_map(np.full(self.n_knots - 1, self.h), "natural"))

    @property
    def h(self) -> float:
        return (self.x_max - self.x_min) / (self.n_knots - 1)

    def init(self, key):
        del key
        return {"knot_values": jnp.zeros(self.n_knots)}

    def __call__(self, params, x):
        y = params["knot_values"]
        m = jnp.asarray(self.m_map, y.dtype) @ y
        return cubic_uniform(y, m, self.x_min, self.h, jnp.clip(x, self.x_min, self.x_max))


@dataclass(frozen=True)
class MLP1D:
    """Multilayer perceptron u_θ(x) (swish activations; zero output at initialisation)."""

    hidden: tuple = (100, 100)
    x_center: float = 0.5

    @property
    def module(self) -> ScalarMLP:
        return ScalarMLP(tuple(int(h) for h in self.hidden))

    def init(self, key):
        return self.module.init(key, jnp.zeros((1,)))

    def __call__(self, params, x):
        flat = x.reshape(-1) - self.x_center
        return self.module.apply(params, flat).reshape(x.shape)


MODELS = ("spline_1d", "mlp_1d", "none")


def build_model(cfg):
    kind = cfg.get("kind")
    if kind == "spline_1d":
        return Spline1D(x_min=float(cfg.get("x_min", 0.0)), x_max=float(cfg.get("x_max", 1.0)),
                        n_knots=int(cfg.get("n_knots", 30)))
    if kind == "mlp_1d":
        return MLP1D(hidden=tuple(int(h) for h in cfg.get("hidden", (100, 100))),
                     x_center=float(cfg.get("x_center", 0.5)))
    if kind in (None, "none"):
        return None
    raise UserError(f"model.kind: unknown one-body model {kind!r}", "use spline_1d, mlp_1d or none")


# -- the potential -----------------------------------------------------------------------
@dataclass(frozen=True)
class ExternalPotential(OneBodyPotential):
    """u(x) = u_prior(x) + u_θ(x) per particle; U(R) = Σ_n u(x_n). Positions R: (N, 1)."""

    prior: Callable
    model: object | None

    def init(self, key):
        return {"model": self.model.init(key)} if self.model is not None else {}

    def u(self, params, x):
        """Total one-body energy u(x), elementwise."""
        out = self.prior(x)
        if self.model is not None:
            out = out + self.model(params["model"], x)
        return out

    def x_range(self) -> tuple[float, float]:
        """Where u(x) is learnt: the spline's knot interval; [0, 1] for a model without one."""
        if isinstance(self.model, Spline1D):
            return self.model.x_min, self.model.x_max
        return 0.0, 1.0

    # the observable engine's side of the protocol ------------------------------------------
    def features(self, positions):
        """θ-independent features of snapshots (..., N, 1): the coordinates themselves."""
        return positions

    def energy_from_features(self, params, x, scale=1.0):
        """Σ_n u(s·x_n) over stored coordinates ``x`` (any shape); d/ds at 1 is Σ x u'(x)."""
        return jnp.sum(self.u(params, x * scale))

    # sampling ---------------------------------------------------------------------------
    def per_particle_energy(self, params, R):
        """(N,) energies u(x_n) of positions R (N, 1)."""
        return self.u(params, R[..., 0])

    def energy(self, params, R):
        return jnp.sum(self.per_particle_energy(params, R))

    def force(self, params, R):
        """(N, 1) forces −∂U/∂R."""
        return -jax.grad(lambda R_: self.energy(params, R_))(R)


def build(prior_cfg, model_cfg) -> ExternalPotential:
    return ExternalPotential(prior=build_prior(prior_cfg), model=build_model(model_cfg))


def is_external(prior_cfg, model_cfg) -> bool:
    """True when the prior or the model config names a one-body kind."""
    return (prior_cfg or {}).get("kind") in PRIORS or (model_cfg or {}).get("kind") in ("spline_1d", "mlp_1d")
