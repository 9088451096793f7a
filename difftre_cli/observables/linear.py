"""Energy features of a potential that is linear in its parameters (a pair spline on a prior).

For such a potential U_θ(s) = U_0(s) + ⟨θ, h(s)⟩ on every stored state s, with h = ∂U/∂θ the
same at every θ, and the virial W = s·∂U/∂s at s = 1 likewise W_θ = W_0 + ⟨θ, g⟩, g = ∂W/∂θ.
The observable engine (engine.py) stores (U_0, h[, W_0, g]) per state instead of the pair
distances: computed once per trajectory by autodiff of the potential's own
``energy_from_features`` at θ = 0, so nothing is assumed about the model beyond its
declared linearity (``PairModel.linear``; tested against the distances' energy). Every later
U_θ is then a dot product with K numbers instead of a pass over N·M pair distances, which
is what a DiffTRe update does for every state and every line-search candidate.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["LinearFeatures", "linear_energy", "linearize"]


class LinearFeatures(NamedTuple):
    """One state's U_0, h = ∂U/∂θ (a pytree shaped like θ) and, when the virial is needed,
    W_0 and g = ∂W/∂θ (else None)."""

    u0: Any
    h: Any
    w0: Any = None
    g: Any = None


def _dot(params, h):
    return sum(jnp.vdot(p, x) for p, x in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(h)))


def linearize(energy_from_features, zero_params, feats, virial: bool) -> LinearFeatures:
    """The linear features of one state from its ordinary features ``feats``
    (``energy_from_features(params, feats, scale)`` of a potential linear in its parameters;
    ``zero_params`` θ = 0 with the parameters' structure and dtypes)."""
    u0, h = jax.value_and_grad(lambda p: energy_from_features(p, feats))(zero_params)
    if not virial:
        return LinearFeatures(u0, h)
    def w_of(p):
        return jax.grad(lambda s: energy_from_features(p, feats, s))(jnp.asarray(1.0, u0.dtype))
    w0, g = jax.value_and_grad(w_of)(zero_params)
    return LinearFeatures(u0, h, w0, g)


def linear_energy(params, feats: LinearFeatures, scale=1.0):
    """U_θ of one state from its linear features, with ``scale`` s a uniform strain: the first-order
    expansion U_θ + (s − 1) W_θ, exact in value and in ∂/∂s at s = 1 (the virial), which is
    all the engine asks of a pair potential."""
    u = feats.u0 + _dot(params, feats.h)
    if feats.g is None:
        if not (isinstance(scale, (int, float)) and scale == 1.0):
            raise ValueError("these linear features carry no virial; featurise with it (an observable that depends on θ)")
        return u
    return u + (scale - 1.0) * (feats.w0 + _dot(params, feats.g))
