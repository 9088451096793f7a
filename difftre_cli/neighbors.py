"""Fast, jit-compatible Verlet neighbour lists for a cubic periodic box (CPU-friendly).

The list is built from a cell list obtained by *sorting* particles by cell id
(gather-only, no scatter-add) or, for small systems, by brute force. Lists are
in JAX MD's *dense* format: ``idx`` has shape (N, M), each row holds the
neighbours of particle i padded with the value N, and the list is *full*
(j in i's row and i in j's row).

Overflow (more neighbours than M, or more particles in a cell than the cell
capacity) is always detected and sets ``did_buffer_overflow`` (sticky); the
caller must then call ``allocate`` again with the current positions.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NeighborList", "NeighborFns", "make_neighbor_fn", "pair_forces_and_energy",
           "pair_energy"]


@dataclasses.dataclass
class NeighborList:
    """Dense full neighbour list (a pytree; ``max_occupancy`` and capacities are static)."""

    idx: jax.Array                  # (N, M) int32, padded with N
    reference_position: jax.Array   # (N, 3) positions at the last build
    did_buffer_overflow: jax.Array  # bool scalar, sticky
    num_builds: jax.Array           # int32 scalar: builds since allocate (incl. the first)
    max_occupancy: int = dataclasses.field(metadata=dict(static=True), default=0)
    cell_capacity: int = dataclasses.field(metadata=dict(static=True), default=0)


jax.tree_util.register_dataclass(
    NeighborList,
    data_fields=["idx", "reference_position", "did_buffer_overflow", "num_builds"],
    meta_fields=["max_occupancy", "cell_capacity"],
)


class NeighborFns(NamedTuple):
    allocate: Callable[..., NeighborList]
    update: Callable[[jax.Array, NeighborList], NeighborList]
    box_size: float
    cutoff: float
    skin: float
    method: str


def _wrap(dr, box):
    return dr - box * jnp.round(dr / box)


def _compact(mask, cand, max_nbrs: int, n: int):
    """Indices ``cand[row, k]`` of the True entries of ``mask`` (rows), first ``max_nbrs``,
    padded with ``n``. Returns (idx, per-row counts). Gather-only (top_k)."""
    k = mask.shape[-1]
    if max_nbrs >= k:
        # Everything fits; pad columns.
        out = jnp.where(mask, cand, n)
        pad = max_nbrs - k
        if pad:
            out = jnp.concatenate([out, jnp.full(out.shape[:-1] + (pad,), n, out.dtype)], -1)
        return out, mask.sum(-1)
    score = mask.astype(jnp.float32)
    vals, pos = jax.lax.top_k(score, max_nbrs)
    sel = jnp.take_along_axis(cand, pos, axis=-1)
    out = jnp.where(vals > 0, sel, n).astype(jnp.int32)
    return out, mask.sum(-1)


def _cell_geometry(box_size: float, r_list: float):
    nc = int(math.floor(box_size / r_list))
    return nc


def make_neighbor_fn(box_size: float, cutoff: float, skin: float,
                     capacity_multiplier: float = 1.25, method: str = "auto",
                     brute_force_max_n: int = 2000) -> NeighborFns:
    """Neighbour-list functions for a cubic periodic box of side ``box_size``.

    ``method``: "cell" (sort-based cell list), "brute" (all pairs) or "auto"
    (brute force when N <= ``brute_force_max_n`` or the box holds fewer than 4 cells per side).
    """
    box_size = float(box_size)
    r_list = float(cutoff) + float(skin)
    r_list_sq = r_list * r_list
    half_skin_sq = (0.5 * float(skin)) ** 2
    nc = _cell_geometry(box_size, r_list)
    ncell = nc ** 3

    if nc >= 3:
        offs = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
        ids = np.arange(nc ** 3)
        # cell id = x + nc*(y + nc*z); row k of cc is the cell with id k
        cc = np.stack([ids % nc, (ids // nc) % nc, ids // (nc * nc)], -1)
        nb = (cc[:, None, :] + offs[None]) % nc
        nbr_cells = jnp.asarray(nb[..., 0] + nc * (nb[..., 1] + nc * nb[..., 2]), jnp.int32)
    else:
        nbr_cells = None

    def _method_for(n):
        if method == "auto":
            return "brute" if (n <= brute_force_max_n or nc < 4) else "cell"
        if method == "cell" and nc < 3:
            return "brute"
        return method

    def _cell_ids(R):
        c = jnp.floor(R * (nc / box_size)).astype(jnp.int32)
        c = jnp.clip(c, 0, nc - 1)  # positions are in [0, L); guard rounding at L
        return c[:, 0] + nc * (c[:, 1] + nc * c[:, 2])

    def _build_brute(R, max_nbrs):
        n = R.shape[0]
        dr = _wrap(R[:, None, :] - R[None, :, :], box_size)
        d2 = jnp.sum(dr * dr, -1)
        mask = (d2 < r_list_sq) & ~jnp.eye(n, dtype=bool)
        cand = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None, :], (n, n))
        idx, cnt = _compact(mask, cand, max_nbrs, n)
        return idx, jnp.max(cnt), jnp.int32(0)

    def _build_cell(R, max_nbrs, cell_cap):
        n = R.shape[0]
        cid = _cell_ids(R)
        order = jnp.argsort(cid).astype(jnp.int32)
        sorted_cid = cid[order]
        cells = jnp.arange(ncell, dtype=jnp.int32)
        start = jnp.searchsorted(sorted_cid, cells, side="left").astype(jnp.int32)
        end = jnp.searchsorted(sorted_cid, cells, side="right").astype(jnp.int32)
        count = end - start
        slot = jnp.arange(cell_cap, dtype=jnp.int32)
        pos = start[:, None] + slot[None, :]
        valid = slot[None, :] < count[:, None]
        members = jnp.where(valid, order[jnp.clip(pos, 0, n - 1)], n)  # (ncell, C)
        cand = members[nbr_cells].reshape(ncell, 27 * cell_cap)          # (ncell, K)
        Rp = jnp.concatenate([R, jnp.zeros((1, 3), R.dtype)], 0)
        Rc = Rp[cand]                                                   # (ncell, K, 3)
        Rm = Rp[members]                                                # (ncell, C, 3)
        dr = _wrap(Rm[:, :, None, :] - Rc[:, None, :, :], box_size)     # (ncell, C, K, 3)
        d2 = jnp.sum(dr * dr, -1)
        mask = ((d2 < r_list_sq) & (cand[:, None, :] < n)
                & (cand[:, None, :] != members[:, :, None]) & (members[:, :, None] < n))
        cand_b = jnp.broadcast_to(cand[:, None, :], mask.shape)
        idx_cells, cnt = _compact(mask, cand_b, max_nbrs, n)            # (ncell, C, M)
        # back to particle order: particle order[p] sits in cell sorted_cid[p], slot p - start
        rank = jnp.arange(n, dtype=jnp.int32) - start[sorted_cid]
        inv = jnp.argsort(order).astype(jnp.int32)  # inverse permutation, gather-only
        cell_of = cid
        rank_of = rank[inv]
        idx = idx_cells[cell_of, rank_of]
        return idx, jnp.max(cnt), jnp.max(count)

    def _build(R, max_nbrs, cell_cap, kind):
        if kind == "brute":
            return _build_brute(R, max_nbrs)
        return _build_cell(R, max_nbrs, cell_cap)

    def allocate(R, extra_capacity: int = 0) -> NeighborList:
        R = jnp.asarray(R)
        n = R.shape[0]
        kind = _method_for(n)
        # Measure occupancies with generous buffers, then size the real ones.
        if kind == "cell":
            cid = np.asarray(_cell_ids(R))
            cmax = int(np.bincount(cid, minlength=ncell).max())
            cell_cap = int(math.ceil(cmax * capacity_multiplier)) + extra_capacity // 8 + 1
        else:
            cell_cap = 0
        probe_m = n if kind == "brute" else 27 * cell_cap
        _, occ, _ = jax.jit(_build, static_argnums=(1, 2, 3))(R, probe_m, cell_cap, kind)
        occ = int(occ)
        max_nbrs = int(math.ceil(occ * capacity_multiplier)) + int(extra_capacity)
        max_nbrs = max(1, min(max_nbrs, n - 1 if n > 1 else 1))
        idx, _, _ = jax.jit(_build, static_argnums=(1, 2, 3))(R, max_nbrs, cell_cap, kind)
        return NeighborList(idx=idx, reference_position=R,
                            did_buffer_overflow=jnp.asarray(False),
                            num_builds=jnp.asarray(1, jnp.int32),
                            max_occupancy=max_nbrs, cell_capacity=cell_cap)

    def _rebuild(R, nbrs: NeighborList) -> NeighborList:
        n = R.shape[0]
        kind = _method_for(n)
        idx, occ, cmax = _build(R, nbrs.max_occupancy, nbrs.cell_capacity, kind)
        overflow = nbrs.did_buffer_overflow | (occ > nbrs.max_occupancy)
        if kind == "cell":
            overflow = overflow | (cmax > nbrs.cell_capacity)
        return dataclasses.replace(nbrs, idx=idx, reference_position=R,
                                   did_buffer_overflow=overflow,
                                   num_builds=nbrs.num_builds + 1)

    def update(R, nbrs: NeighborList) -> NeighborList:
        dr = _wrap(R - nbrs.reference_position, box_size)
        moved = jnp.max(jnp.sum(dr * dr, -1)) > half_skin_sq
        return jax.lax.cond(moved, _rebuild, lambda R, nb: nb, R, nbrs)

    return NeighborFns(allocate=allocate, update=update, box_size=box_size,
                       cutoff=float(cutoff), skin=float(skin), method=method)


def _pair_terms(u_fn, R, idx, box_size, cutoff):
    n = R.shape[0]
    Rp = jnp.concatenate([R, jnp.zeros((1, 3), R.dtype)], 0)
    Rj = Rp[idx]                                   # (N, M, 3)
    dr = _wrap(R[:, None, :] - Rj, box_size)
    r2 = jnp.sum(dr * dr, -1)
    mask = (idx < n) & (r2 < cutoff * cutoff)
    r2_safe = jnp.where(mask, r2, 1.0)
    r = jnp.sqrt(r2_safe)
    return dr, r, mask


def pair_forces_and_energy(u_fn, R, idx, box_size, cutoff):
    """Forces (N, 3) and energy for a radial pair potential over a dense full list.

    ``u_fn(r) -> u`` is elementwise in r. F_i = -sum_j u'(r_ij) (R_i - R_j) / r_ij and
    E = 1/2 sum_ij u(r_ij) over pairs with j < N and r_ij < cutoff. Padded / out-of-range
    entries are masked with the double-``where`` pattern, so derivatives with respect to
    parameters closed over by ``u_fn`` stay finite.
    """
    dr, r, mask = _pair_terms(u_fn, R, idx, box_size, cutoff)
    u, du = jax.jvp(u_fn, (r,), (jnp.ones_like(r),))
    u = jnp.where(mask, u, 0.0)
    du = jnp.where(mask, du, 0.0)
    coef = -du / r                                  # r is safe (1.0) where masked
    forces = jnp.sum(coef[..., None] * dr, axis=1)
    energy = 0.5 * jnp.sum(u)
    return forces, energy


def pair_energy(u_fn, R, idx, box_size, cutoff):
    """Energy only (differentiable w.r.t. positions and parameters)."""
    _, r, mask = _pair_terms(u_fn, R, idx, box_size, cutoff)
    return 0.5 * jnp.sum(jnp.where(mask, u_fn(r), 0.0))
