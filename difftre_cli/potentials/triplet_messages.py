"""The triplet sum of a DimeNet++ interaction block (the network: potentials/gnn.py).

out_ji = Σ_k x_kj ⊙ (W2ᵀ Σ_l Y_l(α_kji) rad_l(d_kj)) for every edge ji, written once against a
graph's gather/sum maps (``ops``, potentials/graph.py), so it runs on the dense list and on the
sparse graph alike. ``triplet_messages`` has a hand-written VJP that keeps only edge-sized
arrays (reverse mode only); ``triplet_messages_autodiff`` is the same function under plain
autodiff (every mode; more memory and time).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .dimenet_basis import angular_basis
from .graph import barrier

__all__ = ["triplet_messages", "triplet_messages_autodiff"]


def _triplet_terms(x_kj, rad, cos, tmask, w2, ops):
    """Per-triplet factors: x_t = x_kj at kj, rad_t, σ_t = Σ_l Y_l rad_l (…, B), s_t = W2ᵀ σ_t."""
    n_b = w2.shape[0]
    n_l = rad.shape[-1] // n_b
    ang = jnp.where(tmask[..., None], angular_basis(cos, n_l), 0.0)
    x_t = ops.kj_to_triplets(x_kj)
    rad_t = ops.kj_to_triplets(rad)
    rad_t = rad_t.reshape(rad_t.shape[:-1] + (n_l, n_b))
    sigma = jnp.sum(ang[..., None] * rad_t, axis=-2)
    # B → F as B broadcast multiply-adds: they fuse with their consumer (a K = B matmul would
    # write and re-read a (T, F) array).
    s = sum(sigma[..., b, None] * w2[b] for b in range(n_b))
    return x_t, rad_t, sigma, s


@jax.custom_vjp
def triplet_messages(x_kj, rad, cos, tmask, w2, ops):
    """out_ji = Σ_k x_kj ⊙ (W2ᵀ Σ_l Y_l(α_kji) rad_l(d_kj)) for every edge ji.

    x_kj (…, F) and rad (…, L·B) are edge arrays, cos (…) cos α of every triplet and tmask its
    mask (both shared by all blocks), w2 (B, F). The hand-written VJP keeps only these inputs
    and recomputes the triplet factors; the angular cotangent leaves as one number per
    triplet. Autodiff kept several triplet-sized arrays per block alive until the end of the
    backward pass (XLA merges a ``jax.checkpoint`` recomputation with the forward, and fuses
    the sum of the blocks' angular cotangents into one kernel): the temporary memory is
    allocated on every call, and on CPU its page faults cost as much as the arithmetic.
    """
    x_t, _, _, s = _triplet_terms(x_kj, rad, cos, tmask, w2, ops)
    return ops.triplets_to_ji(x_t * s)


def _triplet_messages_fwd(x_kj, rad, cos, tmask, w2, ops):
    return triplet_messages(x_kj, rad, cos, tmask, w2, ops), (x_kj, rad, cos, tmask, w2, ops)


def _triplet_messages_bwd(res, g):
    x_kj, rad, cos, tmask, w2, ops = res
    # Recompute only once g exists: without this barrier XLA hoists the recomputation (it
    # depends on forward values only) and keeps every block's triplet arrays alive at once.
    x_kj, rad, cos, g = barrier((x_kj, rad, cos, g), tmask)
    x_t, rad_t, sigma, s = _triplet_terms(x_kj, rad, cos, tmask, w2, ops)
    g_t = ops.ji_to_triplets(g)                                  # (…, F)
    s_bar = g_t * x_t                                            # (…, F)
    sigma_bar = jnp.stack([jnp.sum(s_bar * w2[b], -1) for b in range(w2.shape[0])], -1)   # (…, B)
    batch = tuple(range(sigma.ndim - 1))
    w2_bar = jnp.tensordot(sigma, s_bar, axes=(batch, batch))    # (B, F)
    n_l = rad_t.shape[-2]
    ang, ang_vjp = jax.vjp(lambda c: jnp.where(tmask[..., None], angular_basis(c, n_l), 0.0), cos)
    rad_bar_t = ang[..., None] * sigma_bar[..., None, :]         # (…, L, B)
    (cos_bar,) = ang_vjp(jnp.sum(rad_t * sigma_bar[..., None, :], -1))
    cos_bar = barrier(cos_bar, tmask)
    both = jnp.concatenate([g_t * s, rad_bar_t.reshape(rad_bar_t.shape[:-2] + (-1,))], -1)
    both = ops.triplets_to_kj(both)
    f = x_kj.shape[-1]
    zeros = lambda a: np.zeros(a.shape, jax.dtypes.float0)     # noqa: E731
    return (both[..., :f], both[..., f:], cos_bar, zeros(tmask), w2_bar,
            jax.tree_util.tree_map(zeros, ops))


triplet_messages.defvjp(_triplet_messages_fwd, _triplet_messages_bwd)


def triplet_messages_autodiff(x_kj, rad, cos, tmask, w2, ops):
    """Same as :func:`triplet_messages`, differentiated by JAX (forward mode works)."""
    x_t, _, _, s = _triplet_terms(x_kj, rad, cos, tmask, w2, ops)
    return ops.triplets_to_ji(x_t * s)
