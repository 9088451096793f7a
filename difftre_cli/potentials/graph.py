"""Graph layer of DimeNet++ (the network: potentials/gnn.py): geometry and gather/sum maps.

Edges are directed, j → i (sender j, receiver i). Triplets k → j → i are held in an
*atom-centred* layout: around every atom j, its received edges sit in K slots, and triplet
(j, a, b) pairs slot a (the edge i → j) with slot b (the edge k → j), a ≠ b. The triplet sum
of an interaction block is then dense arithmetic on (N, K, K, …) arrays; only edge-sized
arrays are gathered (``to_local``: edge values into the slots; ``from_local``: the value at
slot (j, a) becomes the message of the reverse edge j → i). Two graph formats with the same
values:

- dense: a neighbour list ``idx`` (N, M) padded with N (:mod:`difftre_cli.neighbors`); edges
  are list slots (i, a), K = M and every row is its atom's slots;
- sparse: a :class:`SparseGraph` (the pairs closer than a cutoff as an edge list, plus the
  slot table and the reverse-edge map) built by :func:`sparse_graph` with fixed capacities
  (edges, slots per atom).

``dense_geometry`` / ``sparse_geometry`` turn positions into what the network reads: edge
lengths d, the exact cutoff mask, cos α of every slot pair (the angle at j between
x_i − x_j and x_k − x_j) and its mask, and the graph's maps (``_DenseOps`` / ``_SparseOps``,
pytrees). Minimum image in an orthorhombic box (a float or a (3,) edge), an optional strain ε
(d → (I + ε) d), masked slots replaced by finite dummy vectors (double-``where``), so
gradients are finite on padding.

``sparse_graph(idx, R, box, cutoff, max_edges, max_degree) -> (SparseGraph, overflow)``
    jit-able for fixed capacities; ``overflow`` is a bool scalar, never a silent truncation.
``graph_counts(idx, R, box, cutoff) -> (edges, degree)`` jit-able counts (overflow check).
``sparse_capacity(idx, R, box, cutoff, multiplier=1.25) -> (max_edges, max_degree)``

Why atom-centred (N = 901 water beads, cutoff 0.5 nm, ~16 neighbours each, 4 blocks, float32,
2 CPU cores; ``scripts/bench/update_cost.py --only water``): a triplet *list* (~216k triplets,
each gathering its two edges' features and scattering its cotangents back) made the backward
pass of the triplet sum 10x its forward and the force call 0.31 s; the slot layout has ~2x more
(padded) triplet slots but no triplet-sized gather or scatter: 0.21 s. Prefer the sparse format for
production (only pairs inside the cutoff; K = 1.25 × the largest degree + 2) and the dense one for
checks (K = the whole list width, skin and padding included).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ..neighbors import minimum_image

__all__ = ["SparseGraph", "sparse_graph", "graph_counts", "sparse_capacity", "dense_geometry",
           "sparse_geometry", "barrier"]


# ---------------------------------------------------------------------------------------
# Graph operations: the network is written once against these four maps
# ---------------------------------------------------------------------------------------
def barrier(x, token):
    """Identity that makes XLA:CPU write ``x`` to memory before its consumers read it.

    XLA:CPU fuses elementwise producers into gathers and scatters and then recomputes them
    per gathered element (measured here: swish recomputed for every triplet, 2x the forward
    time of a block). A conditional is a fusion boundary; its predicate ``token[0] >= 0`` is
    always true for an index array but unknown to the compiler, and its branches differ
    (x / zeros), so it is not simplified away (an identical-branch cond is, in jax 0.10).
    """
    if token.size == 0:
        return x
    pred = token.reshape(-1)[0] >= 0
    return jax.lax.cond(pred, lambda t: t, lambda t: jax.tree_util.tree_map(jnp.zeros_like, t), x)


def _gather(e, ids):
    """Rows ``e[ids]``; ids == len(e) (padding) gives zeros. The source is materialised first
    (one barrier on an edge- or atom-sized array) so the gather copies rows instead of
    recomputing the source's producers per gathered element."""
    e_pad = jnp.concatenate([e, jnp.zeros((1,) + e.shape[1:], e.dtype)], 0)
    return barrier(e_pad, ids)[ids]


def _segment_sum(v, ids, n: int):
    """Σ of the rows of ``v`` with equal ``ids`` (sorted; ids ≥ n dropped), n rows out."""
    return jax.ops.segment_sum(v, ids, n, indices_are_sorted=True)


@dataclass(frozen=True)
class _DenseOps:
    """Edges (N, M, …) are list slots (i, a): the edge j → i, j = idx[i, a]. Each row holds its
    atom's received edges, so the slot layout is the list itself; ``reverse`` (N, M) is the flat
    slot of the edge i → j (N·M where it is not listed)."""

    idx: jax.Array
    reverse: jax.Array

    def atoms_to_edges(self, h):
        """(receiver, sender) features of every edge."""
        recv = jnp.broadcast_to(h[:, None], self.idx.shape + h.shape[1:])
        return recv, _gather(h, self.idx)

    def edges_to_atoms(self, e):
        return jnp.sum(e, axis=1)

    def to_local(self, e):
        """Edge values in the atom-centred slots (N, K, …): here the edges themselves."""
        return e

    def from_local(self, t):
        """Per edge j → i, the value ``t`` holds at the slot (j, a) of the edge i → j."""
        return _gather(t.reshape((-1,) + t.shape[2:]), self.reverse)


@dataclass(frozen=True)
class _SparseOps:
    """Edges (E, …) with senders/receivers (receivers sorted); slots from the graph's table."""

    graph: "SparseGraph"
    n: int

    def atoms_to_edges(self, h):
        return _gather(h, self.graph.receivers), _gather(h, self.graph.senders)

    def edges_to_atoms(self, e):
        return _segment_sum(e, self.graph.receivers, self.n)

    def to_local(self, e):
        """Edge values in the atom-centred slots (N, K, …); zeros on empty slots."""
        return _gather(e, self.graph.slots)

    def from_local(self, t):
        """Per edge j → i, the value ``t`` holds at the slot (j, a) of the edge i → j."""
        return _gather(t.reshape((-1,) + t.shape[2:]), self.graph.reverse)


jax.tree_util.register_dataclass(_DenseOps, data_fields=["idx", "reverse"], meta_fields=[])
jax.tree_util.register_dataclass(_SparseOps, data_fields=["graph"], meta_fields=["n"])


# ---------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------
def _apply_strain(dr, strain):
    if strain is None:
        return dr
    strain = jnp.asarray(strain, dr.dtype)
    return dr + jnp.einsum("...b,ab->...a", dr, strain)


def _safe_edges(dr, valid, cutoff):
    """Exact cutoff mask; masked vectors replaced by a fixed one of length c/2 (double-where)."""
    r2 = jnp.sum(dr * dr, -1)
    mask = valid & (r2 < cutoff * cutoff)
    safe = jnp.zeros(3, dr.dtype).at[0].set(0.5 * cutoff)
    dr = jnp.where(mask[..., None], dr, safe)
    return dr, jnp.sqrt(jnp.sum(dr * dr, -1)), mask


def _slot_angles(v, d, mask):
    """cos α and the mask of every slot pair (j, a, b), a ≠ b, from the slots' vectors
    v = x_neighbour − x_j (N, K, 3), their lengths d (> 0 everywhere) and masks (N, K)."""
    cos = jnp.einsum("jax,jbx->jab", v, v) / (d[:, :, None] * d[:, None, :])
    k = mask.shape[1]
    tmask = mask[:, :, None] & mask[:, None, :] & ~jnp.eye(k, dtype=bool)
    return cos, tmask


def _dense_reverse(idx):
    """(N, M) flat slot (j·M + a') of the edge i → j for every list slot (i, a), j = idx[i, a]."""
    n, m = idx.shape
    j = jnp.minimum(idx, n - 1)
    hit = (idx[j] == jnp.arange(n, dtype=idx.dtype)[:, None, None]) & (idx < n)[..., None]   # (N, M, M)
    return jnp.where(jnp.any(hit, -1), j * m + jnp.argmax(hit, -1), n * m).astype(jnp.int32)


def dense_geometry(R, idx, box, cutoff, strain):
    n = idx.shape[0]
    valid = idx < n
    dr = minimum_image(R[jnp.minimum(idx, n - 1)] - R[:, None, :], box)   # x_j − x_i at slot (i, a)
    dr, d, mask = _safe_edges(_apply_strain(dr, strain), valid, cutoff)
    cos, tmask = _slot_angles(dr, d, mask)
    return d, mask, cos, tmask, _DenseOps(idx, _dense_reverse(idx))


def sparse_geometry(R, graph, box, cutoff, strain):
    n = R.shape[0]
    s, r = graph.senders, graph.receivers
    valid = (s < n) & (r < n)
    dr = minimum_image(R[jnp.minimum(s, n - 1)] - R[jnp.minimum(r, n - 1)], box)
    dr, d, mask = _safe_edges(_apply_strain(dr, strain), valid, cutoff)
    ops = _SparseOps(graph, n)
    mask_l = ops.to_local(mask)                             # empty slots: False
    v = jnp.where(mask_l[..., None], ops.to_local(dr), jnp.zeros(3, dr.dtype).at[0].set(0.5 * cutoff))
    d_l = jnp.where(mask_l, ops.to_local(d), 0.5 * cutoff)
    cos, tmask = _slot_angles(v, d_l, mask_l)
    return d, mask, cos, tmask, ops


# ---------------------------------------------------------------------------------------
# Sparse graph
# ---------------------------------------------------------------------------------------
@dataclass
class SparseGraph:
    """Edge list and atom-centred slots with fixed capacities (a pytree).

    senders, receivers (E,) int32: edge e is senders[e] → receivers[e] (j → i), padded with N;
    receivers sorted, so each atom's received edges are consecutive.
    slots (N, K) int32: the ids of the edges atom j receives, padded with E.
    reverse (E,) int32: for edge j → i, the flat slot j·K + a that holds the edge i → j
    (N·K on padding).
    n_edges, degree: int32 scalars, the edges and the largest number of edges one atom
    receives that the positions needed (> E or > K on overflow).
    """

    senders: jax.Array
    receivers: jax.Array
    slots: jax.Array
    reverse: jax.Array
    n_edges: jax.Array
    degree: jax.Array


jax.tree_util.register_dataclass(
    SparseGraph, data_fields=["senders", "receivers", "slots", "reverse", "n_edges", "degree"], meta_fields=[])


def _list_mask(idx, R, box, cutoff):
    n = R.shape[0]
    valid = idx < n
    dr = minimum_image(R[jnp.minimum(idx, n - 1)] - R[:, None, :], box)
    return valid & (jnp.sum(dr * dr, -1) < cutoff * cutoff)


@functools.partial(jax.jit, static_argnames=("max_edges", "max_degree"))
def sparse_graph(idx, R, box, cutoff: float, max_edges: int, max_degree: int):
    """Edge list and slots of the pairs of a dense list ``idx`` closer than ``cutoff``.

    Pass the model's cutoff to build a graph for one configuration (smallest lists), or
    cutoff + skin to reuse the graph while particles move less than skin/2 (the energy masks
    d ≥ model cutoff exactly, either way; also use a skin when evaluating finite strains).
    Returns ``(graph, overflow)``: ``overflow`` is True when more than ``max_edges`` edges or
    more than ``max_degree`` edges into one atom were needed (``graph.n_edges`` /
    ``graph.degree`` say how many); the graph is then incomplete and must be rebuilt with
    larger capacities.
    """
    n, m = idx.shape
    idx = idx.astype(jnp.int32)
    mask = _list_mask(idx, R, box, cutoff)
    flat = mask.reshape(-1)
    n_edges = jnp.sum(flat, dtype=jnp.int32)
    count = jnp.sum(mask, 1, dtype=jnp.int32)
    (pos,) = jnp.nonzero(flat, size=max_edges, fill_value=n * m)
    ok = pos < n * m
    receivers = jnp.where(ok, pos // m, n).astype(jnp.int32)
    senders = jnp.where(ok, idx.reshape(-1)[jnp.minimum(pos, n * m - 1)], n).astype(jnp.int32)
    # edges are numbered row by row: atom j receives edges start_j … start_j + count_j − 1
    start = jnp.cumsum(count) - count
    b = jnp.arange(max_degree, dtype=jnp.int32)
    slots = start[:, None] + b
    slots = jnp.where((b < count[:, None]) & (slots < max_edges), slots, max_edges).astype(jnp.int32)
    # the reverse of edge j → i is i's entry in j's row; its slot is its rank in that row
    rank = jnp.cumsum(mask, 1, dtype=jnp.int32) - 1
    j = jnp.minimum(senders, n - 1)
    hit = (idx[j] == receivers[:, None]) & mask[j]                       # (E, M)
    rank_rev = rank[j, jnp.argmax(hit, -1)]
    found = ok & jnp.any(hit, -1) & (rank_rev < max_degree)
    reverse = jnp.where(found, j * max_degree + rank_rev, n * max_degree).astype(jnp.int32)
    degree = jnp.max(count)
    overflow = (n_edges > max_edges) | (degree > max_degree)
    return SparseGraph(senders, receivers, slots, reverse, n_edges, degree), overflow


def graph_counts(idx, R, box, cutoff: float):
    """(edges, degree) int32 scalars the graph of ``idx`` at R within ``cutoff`` needs: all
    edges, and the most edges one atom receives (jit-able; the cheap overflow check)."""
    mask = _list_mask(jnp.asarray(idx), jnp.asarray(R), box, cutoff)
    return jnp.sum(mask, dtype=jnp.int32), jnp.max(jnp.sum(mask, 1, dtype=jnp.int32))


def sparse_capacity(idx, R, box, cutoff: float, multiplier: float = 1.25) -> tuple[int, int]:
    """Capacities (max_edges, max_degree) for :func:`sparse_graph`: the counts at ``R``
    times ``multiplier``, and two more slots per atom (not jit-able: it returns Python ints).
    The largest degree is an extreme value over all atoms: it rises by a few as a lattice start
    melts (water: 18 on the lattice, 21-24 in the liquid), while the edge count barely moves."""
    ne, nd = (int(c) for c in graph_counts(idx, R, box, float(cutoff)))
    return max(1, math.ceil(ne * multiplier)), math.ceil(nd * multiplier) + 2
