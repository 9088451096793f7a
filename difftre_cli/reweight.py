"""Trajectory reweighting: weights, effective sample size, reuse decision.

w_i = exp(−β (U_θ(S_i) − U_ref(S_i))) / Σ_j (…), computed with a log-sum-exp (softmax), and
N_eff = exp(−Σ_i w_i ln w_i) (Kish-like entropy estimate; N_eff = N when all w_i = 1/N).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def weights(beta, u_theta, u_ref):
    """Normalised weights of the snapshots, shape (S,)."""
    return jax.nn.softmax(-beta * (u_theta - u_ref))


def effective_sample_size(w):
    """exp(−Σ w ln w); zero weights contribute nothing."""
    safe = jnp.where(w > 0, w, 1.0)
    return jnp.exp(-jnp.sum(jnp.where(w > 0, w * jnp.log(safe), 0.0)))


def average(w, values):
    """Σ_i w_i O_i over the leading (snapshot) axis, for any trailing shape."""
    return jnp.tensordot(w, values, axes=1)


def reuse(n_eff, n_snapshots: int, ratio: float) -> bool:
    """Keep the reference trajectory while N_eff ≥ ratio · N."""
    return bool(n_eff >= ratio * n_snapshots)
