"""Fixed (non-learnable) pair priors u_prior(r), shifted so that u(r_cut) = 0.

Each builder returns an elementwise function ``u(r)`` of distances (any shape).
Energies are in the system's energy unit, distances in its length unit.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
from jax_md import energy as jax_md_energy

from ..checks import choice, number
from ..errors import UserError

PairFn = Callable[[jnp.ndarray], jnp.ndarray]


def _shifted(u: PairFn, cutoff: float) -> PairFn:
    shift = float(u(jnp.asarray(cutoff)))
    return lambda r: u(r) - shift


def _switched(u: PairFn, r_on: float, cutoff: float) -> PairFn:
    """u(r)·S(r): S = 1 below r_on, 0 beyond the cutoff, the quintic smoothstep
    1 − 10x³ + 15x⁴ − 6x⁵ (x = (r − r_on)/(r_c − r_on)) in between, so u, u' and u'' are
    continuous and vanish at the cutoff."""
    if not 0.0 < r_on < cutoff:
        raise UserError(f"prior.r_on={r_on:g} must lie between 0 and the cutoff {cutoff:g}",
                        "set prior.r_on below model.cutoff, e.g. 0.9 x cutoff")

    def fn(r):
        x = jnp.clip((r - r_on) / (cutoff - r_on), 0.0, 1.0)
        return u(r) * (1.0 - x ** 3 * (10.0 - 15.0 * x + 6.0 * x * x))
    return fn


def repulsive(epsilon: float = 1.0, sigma: float = 1.0, exponent: int = 12, cutoff: float = 2.5,
              r_on: float | None = None) -> PairFn:
    """ε (σ/r)^n, shifted to 0 at the cutoff; with ``r_on``, smoothly switched off between
    r_on and the cutoff instead (the DiffTRe water prior: σ = 0.3165 nm, ε = 1 kJ/mol,
    switched off between 0.45 and 0.5 nm)."""
    if float(exponent).is_integer():   # an integer power is products, not exp(n log x): ~2x faster forces
        exponent = int(exponent)
    u = lambda r: epsilon * (sigma / r) ** exponent  # noqa: E731
    return _shifted(u, cutoff) if r_on is None else _switched(u, float(r_on), cutoff)


def lennard_jones(epsilon: float = 1.0, sigma: float = 1.0, cutoff: float = 2.5) -> PairFn:
    """4ε[(σ/r)^12 − (σ/r)^6], truncated and shifted at the cutoff."""
    def u(r):
        s6 = (sigma / r) ** 6
        return 4.0 * epsilon * (s6 * s6 - s6)
    return _shifted(u, cutoff)


def morse(epsilon: float = 1.0, sigma: float = 1.0, alpha: float = 5.0, cutoff: float = 2.5) -> PairFn:
    """Morse ε[(1 − e^{−α(r − σ)})² − 1] (JAX MD's ``energy.morse``; minimum −ε at r = σ),
    truncated and shifted at the cutoff. Its core is soft: u(σ − 2/α) ≈ 40 ε whatever σ."""
    return _shifted(lambda r: jax_md_energy.morse(r, sigma, epsilon, alpha), cutoff)


def harmonic(k: float = 1.0, r0: float = 1.0, cutoff: float = 2.5) -> PairFn:
    """½ k (r − r0)²."""
    return _shifted(lambda r: 0.5 * k * (r - r0) ** 2, cutoff)


def none(cutoff: float = 2.5) -> PairFn:
    """No prior: u = 0."""
    return lambda r: jnp.zeros_like(r)


PRIORS = {"repulsive": repulsive, "lj": lennard_jones, "morse": morse, "harmonic": harmonic, "none": none}


#: Parameters of each prior: (lower bound, open?, example). ε, σ, k > 0; r0 >= 0.
_BOUNDS = {"epsilon": (0.0, True, "1.0"), "sigma": (0.0, True, "1.0"), "exponent": (0.0, True, "12"),
           "k": (0.0, True, "1.0"), "r0": (0.0, False, "1.0"), "r_on": (0.0, True, "0.45"),
           "alpha": (0.0, True, "3.0")}


def build(cfg, cutoff: float, prefix: str = "prior") -> PairFn:
    """Prior from a config mapping with key ``kind`` and the builder's keyword arguments.

    ``prefix`` is the config key the mapping came from (``prior`` or ``ground_truth``), used
    in error messages.
    """
    kind = choice(cfg, "kind", list(PRIORS), prefix=prefix, default="none", what="prior")
    kwargs = {k: v for k, v in cfg.items() if k != "kind"}
    for key in kwargs:
        if key in _BOUNDS:
            lo, lo_open, example = _BOUNDS[key]
            kwargs[key] = number(cfg, key, prefix=prefix, lo=lo, lo_open=lo_open, example=example)
    try:
        return PRIORS[kind](cutoff=cutoff, **kwargs)
    except TypeError as exc:
        raise UserError(f"{prefix} ({kind}): {exc}", f"check the keys of the {prefix} config group") from None
