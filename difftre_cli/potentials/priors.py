"""Fixed (non-learnable) pair priors u_prior(r), shifted so that u(r_cut) = 0.

Each builder returns an elementwise function ``u(r)`` of distances (any shape).
Energies are in the system's energy unit, distances in its length unit.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from ..errors import UserError

PairFn = Callable[[jnp.ndarray], jnp.ndarray]


def _shifted(u: PairFn, cutoff: float) -> PairFn:
    shift = float(u(jnp.asarray(cutoff)))
    return lambda r: u(r) - shift


def repulsive(epsilon: float = 1.0, sigma: float = 1.0, exponent: int = 12, cutoff: float = 2.5) -> PairFn:
    """ε (σ/r)^n."""
    return _shifted(lambda r: epsilon * (sigma / r) ** exponent, cutoff)


def lennard_jones(epsilon: float = 1.0, sigma: float = 1.0, cutoff: float = 2.5) -> PairFn:
    """4ε[(σ/r)^12 − (σ/r)^6], truncated and shifted at the cutoff."""
    def u(r):
        s6 = (sigma / r) ** 6
        return 4.0 * epsilon * (s6 * s6 - s6)
    return _shifted(u, cutoff)


def harmonic(k: float = 1.0, r0: float = 1.0, cutoff: float = 2.5) -> PairFn:
    """½ k (r − r0)²."""
    return _shifted(lambda r: 0.5 * k * (r - r0) ** 2, cutoff)


def none(cutoff: float = 2.5) -> PairFn:
    """No prior: u = 0."""
    return lambda r: jnp.zeros_like(r)


PRIORS = {"repulsive": repulsive, "lj": lennard_jones, "harmonic": harmonic, "none": none}


def build(cfg, cutoff: float) -> PairFn:
    """Prior from a config mapping with key ``kind`` and the builder's keyword arguments."""
    kind = cfg.get("kind", "none")
    if kind not in PRIORS:
        raise UserError(f"prior.kind: unknown prior {kind!r}", f"use one of {sorted(PRIORS)}")
    kwargs = {k: v for k, v in cfg.items() if k != "kind"}
    try:
        return PRIORS[kind](cutoff=cutoff, **kwargs)
    except TypeError as exc:
        raise UserError(f"prior ({kind}): {exc}", "check the keys of the prior config group") from None
