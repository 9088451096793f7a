"""Pair kernels on a dense full neighbour list (neighbors.py's format: row i holds the
neighbours of particle i, padded with N): forces and energy of a radial pair potential, gather-only.

:func:`pair_forces_and_energy` (``ListKernels.force_fn``: the samplers' forces, of one species
and of mixtures) runs on the list's occupied column blocks only, so its work follows the rows'
actual occupancy, not the width the list was allocated with (the training sampler allocates on
the lattice start with room to spare: ~140 slots where its fluid fills ~75). It is a
``lax.switch`` (a loop over blocks was slower) whose derivatives are the all-columns kernel's
(a ``custom_jvp``), so direct AD's backpropagation through the integrator and gradients of
forces with respect to θ cost what they did before.
:func:`pair_energy` (``ListKernels.energy_fn``: snapshot energies, force matching's −∇U) runs
on all columns: force matching maps it over frames with ``vmap``, under which a switch on a
batched list would run every branch.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .neighbors import minimum_image

__all__ = ["BLOCK", "occupied_width", "pair_energy", "pair_forces_and_energy"]


#: Column block of the pair force kernel: it runs on the list's first ceil(w / BLOCK) * BLOCK
#: columns, w = 1 + the last column that holds a neighbour (8, 16 and 32 measured; see
#: :func:`pair_forces_and_energy`).
BLOCK = 16


def _pair_geometry(R, idx, box_size, cutoff):
    """(dr, r, mask) of the entries of ``idx``: r is 1.0 where masked (padding or r >= cutoff)."""
    n = R.shape[0]
    Rp = jnp.concatenate([R, jnp.zeros((1, 3), R.dtype)], 0)
    Rj = Rp[idx]                                   # (N, M, 3)
    dr = minimum_image(R[:, None, :] - Rj, box_size)
    r2 = jnp.sum(dr * dr, -1)
    mask = (idx < n) & (r2 < cutoff * cutoff)
    r2_safe = jnp.where(mask, r2, 1.0)
    r = jnp.sqrt(r2_safe)
    return dr, r, mask


def _forces_and_energy(u_fn, params, R, idx, box_size, cutoff):
    """Forces and energy of the entries of ``idx`` (all its columns)."""
    dr, r, mask = _pair_geometry(R, idx, box_size, cutoff)
    u, du = jax.jvp(lambda x: u_fn(params, x, idx), (r,), (jnp.ones_like(r),))
    u = jnp.where(mask, u, 0.0)
    du = jnp.where(mask, du, 0.0)
    coef = -du / r                                  # r is safe (1.0) where masked
    forces = jnp.sum(coef[..., None] * dr, axis=1)
    energy = 0.5 * jnp.sum(u)
    return forces, energy


def occupied_width(idx):
    """1 + the last column of the dense list ``idx`` that holds a neighbour in some row (0 for an
    empty list): the columns from there on are padding in every row."""
    n, m = idx.shape
    used = jnp.any(idx < n, axis=0)
    return jnp.max(jnp.where(used, jnp.arange(1, m + 1, dtype=jnp.int32), 0))


def pair_forces_and_energy(u_fn, params, R, idx, box_size, cutoff, block: int | None = BLOCK):
    """Forces (N, 3) and energy for a radial pair potential over a dense full list.

    ``u_fn(params, r, j) -> u`` is elementwise in r; ``j`` holds the neighbour index of each
    entry of ``r`` (same shape; row i is particle i), for pair functions that depend on the
    pair's types. F_i = -sum_j u'(r_ij) (R_i - R_j) / r_ij and E = 1/2 sum_ij u(r_ij) over pairs
    with j < N and r_ij < cutoff. Padded / out-of-range entries are masked with the
    double-``where`` pattern, so derivatives with respect to ``params`` stay finite. Derivatives
    are taken with respect to ``params`` and ``R`` only: ``u_fn`` must not close over values
    being differentiated (a ``custom_jvp`` below; JAX raises if it does).

    ``block``: the kernel runs on the first ceil(w / block) * block columns only, w =
    :func:`occupied_width` (a ``lax.switch`` over the static prefix widths block, 2 block, ...,
    M): work follows the list's occupancy, not its allocated width M, with static shapes and one
    compiled program; the dropped columns are padding in every row, so the result is the
    all-columns one up to summation order. Its derivatives (both modes) are the all-columns
    kernel's: a switch's reverse mode carries every branch's residuals (measured 7x slower and
    10x longer to compile than the all-columns gradient at N = 1000, M = 140). Under ``vmap``
    with a batched list every branch would run: use ``block=None`` (all columns) there.
    """
    m = idx.shape[1]
    if block is None or block >= m:
        return _forces_and_energy(u_fn, params, R, idx, box_size, cutoff)
    return _blocked(u_fn, box_size, cutoff, block, params, R, idx)


@partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3))
def _blocked(u_fn, box_size, cutoff, block, params, R, idx):
    """The kernel on the first ceil(w / block) * block columns (:func:`pair_forces_and_energy`)."""
    m = idx.shape[1]
    widths = [*range(block, m, block), m]
    k = jnp.maximum(occupied_width(idx) - 1, 0) // block    # (m - 1) // block = len(widths) - 1 at most
    branches = [lambda p, x, w=w: _forces_and_energy(u_fn, p, x, idx[:, :w], box_size, cutoff) for w in widths]
    return jax.lax.switch(k, branches, params, R)


@_blocked.defjvp
def _blocked_jvp(u_fn, box_size, cutoff, block, primals, tangents):
    params, R, idx = primals
    d_params, d_R, _ = tangents
    return jax.jvp(lambda p, x: _forces_and_energy(u_fn, p, x, idx, box_size, cutoff), (params, R),
                   (d_params, d_R))


def pair_energy(u_fn, params, R, idx, box_size, cutoff):
    """Energy only, over all columns (differentiable w.r.t. positions and parameters, and
    vmap-friendly); ``u_fn(params, r, j)`` as for :func:`pair_forces_and_energy`."""
    _, r, mask = _pair_geometry(R, idx, box_size, cutoff)
    return 0.5 * jnp.sum(jnp.where(mask, u_fn(params, r, idx), 0.0))
