"""The triplet sum of a DimeNet++ interaction block (the network: potentials/gnn.py).

out_ji = Σ_k x_kj ⊙ (W2ᵀ Σ_l Y_l(α_kji) rad_l(d_kj)) for every edge j → i, written once
against a graph's maps (``ops``, potentials/graph.py), so it runs on the dense list and on the
sparse graph alike. In the atom-centred slots around j (slot a: the edge i → j, slot b: the
edge k → j) it is dense arithmetic:

    σ_jabc = Σ_l Y_l(α_jab) rad_lc(slot b),   t_jacf = Σ_b σ_jabc x_jbf,   out_jaf = Σ_c W2_cf t_jacf,

and ``ops.from_local`` hands out_ja to the edge j → i. Plain autodiff (every mode): without
triplet-sized gathers and scatters its backward pass costs ~2x its forward (it was ~10x on a
triplet list, which needed a hand-written backward).
"""
from __future__ import annotations

import jax.numpy as jnp

from .dimenet_basis import angular_basis

__all__ = ["triplet_messages"]


def triplet_messages(x_kj, rad, cos, tmask, w2, ops):
    """out_ji (edges, F) from edge arrays x_kj (edges, F) and rad (edges, L·B), cos α (N, K, K) of
    every pair of slots and its mask ``tmask`` (False where the pair is no triplet), and
    w2 (B, F)."""
    n_b = w2.shape[0]
    n_l = rad.shape[-1] // n_b
    x = ops.to_local(x_kj)                                                   # (N, K, F)
    r = ops.to_local(rad)
    r = r.reshape(r.shape[:-1] + (n_l, n_b))                                 # (N, K, L, B)
    # Y_l(α) from cos α by the Legendre recursion inside the sum over l: one fused pass, and no
    # (N, K, K, L) array in either direction
    ys = angular_basis(cos, n_l)                  # finite on every slot pair: one mask suffices
    sigma = jnp.where(tmask[..., None], sum(ys[l][..., None] * r[:, None, :, l, :] for l in range(n_l)), 0.0)
    t = jnp.einsum("jabc,jbf->jacf", sigma, x)
    return ops.from_local(jnp.einsum("jacf,cf->jaf", t, w2))
