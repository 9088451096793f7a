"""Graph layer of DimeNet++ (the network: potentials/gnn.py): geometry and gather/sum maps.

Two graph formats with the same values:

- dense: a neighbour list ``idx`` (N, M) padded with N (:mod:`difftre_cli.neighbors`); edges
  are list slots (i, a), triplets (i, a, b);
- sparse: a :class:`SparseGraph` (senders, receivers, kj, ji, counts) built by
  :func:`sparse_graph` with fixed capacities.

``dense_geometry`` / ``sparse_geometry`` turn positions into what the network reads: edge
lengths d, the exact cutoff mask, cos α of every triplet and its mask, and the graph's
gather/sum maps (``_DenseOps`` / ``_SparseOps``, pytrees). Minimum image in an orthorhombic box
(a float or a (3,) edge), an optional strain ε (d → (I + ε) d), masked slots replaced by finite
dummy vectors (double-``where``), so gradients are finite on padding.

``sparse_graph(idx, R, box, cutoff, max_edges, max_triplets) -> (SparseGraph, overflow)``
    jit-able for fixed capacities; ``overflow`` is a bool scalar, never a silent truncation.
``graph_counts(idx, R, box, cutoff) -> (edges, triplets)`` jit-able counts (overflow check).
``sparse_capacity(idx, R, box, cutoff, multiplier=1.25) -> (max_edges, max_triplets)``

Performance (N = 901, ρ = 33.4 nm⁻³, cutoff 0.5 nm, 4 blocks, float32, CPU): the sparse graph
has ~16k edges and ~265k triplets, the dense list N·M² ≈ 1.7M triplet slots, so the sparse
form is 2-4x faster; prefer it for production and the dense one for checks.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

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


def _gather_transpose(g, ids, n: int):
    """Scatter-add of the rows of g (shape ids.shape + row) into n rows (ids ≥ n dropped)."""
    flat = ids.reshape(-1)
    return jax.ops.segment_sum(g.reshape(flat.shape + g.shape[ids.ndim:]), flat, n)


def _segment_sum(v, ids, n: int):
    """Σ of the rows of ``v`` with equal ``ids`` (sorted; ids ≥ n dropped), n rows out."""
    return jax.ops.segment_sum(v, ids, n, indices_are_sorted=True)


@dataclass(frozen=True)
class _DenseOps:
    """Edges (N, M, …) are list slots (i, a), j = idx[i, a]; triplets (N, M, M, …) are
    (i, a, b) with k = idx[j, b]. Sums over triplets and edges are axis reductions."""

    idx: jax.Array

    def atoms_to_edges(self, h):
        """(receiver, sender) features of every edge."""
        recv = jnp.broadcast_to(h[:, None], self.idx.shape + h.shape[1:])
        return recv, _gather(h, self.idx)

    def kj_to_triplets(self, e):
        """Value of the incoming edge k → j at every triplet (k, j, i)."""
        return _gather(e, self.idx)

    def triplets_to_ji(self, t):
        return jnp.sum(t, axis=2)

    def ji_to_triplets(self, e):
        """Transpose of triplets_to_ji: the value of edge ji at each of its triplets."""
        return jnp.broadcast_to(e[:, :, None], e.shape[:2] + self.idx.shape[1:2] + e.shape[2:])

    def triplets_to_kj(self, t):
        """Transpose of kj_to_triplets: Σ over the triplets that read edge kj."""
        return _gather_transpose(t, self.idx, self.idx.shape[0])

    def edges_to_atoms(self, e):
        return jnp.sum(e, axis=1)


@dataclass(frozen=True)
class _SparseOps:
    """Edges (E, …) with senders/receivers; triplets (T, …) with edge ids kj, ji (pad = E);
    sums are sorted segment sums."""

    graph: "SparseGraph"
    n: int

    def atoms_to_edges(self, h):
        return _gather(h, self.graph.receivers), _gather(h, self.graph.senders)

    def kj_to_triplets(self, e):
        return _gather(e, self.graph.kj)

    def triplets_to_ji(self, t):
        return _segment_sum(t, self.graph.ji, self.graph.senders.shape[0])

    def ji_to_triplets(self, e):
        return _gather(e, self.graph.ji)

    def triplets_to_kj(self, t):
        return _gather_transpose(t, self.graph.kj, self.graph.senders.shape[0])

    def edges_to_atoms(self, e):
        return _segment_sum(e, self.graph.receivers, self.n)


jax.tree_util.register_dataclass(_DenseOps, data_fields=["idx"], meta_fields=[])
jax.tree_util.register_dataclass(_SparseOps, data_fields=["graph"], meta_fields=["n"])


# ---------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------
def _minimum_image(dr, box):
    box = jnp.asarray(box, dr.dtype)
    return dr - box * jnp.round(dr / box)


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


def _cosine(v_ji, d_ji, v_kj, d_kj):
    """cos of the angle at j between x_i − x_j and x_k − x_j, from v = x_sender − x_receiver."""
    return -jnp.sum(v_ji * v_kj, -1) / (d_ji * d_kj)


def dense_geometry(R, idx, box, cutoff, strain):
    n, m = idx.shape
    valid = idx < n
    dr = _minimum_image(R[jnp.minimum(idx, n - 1)] - R[:, None, :], box)   # x_j − x_i at slot (i, a)
    dr, d, mask = _safe_edges(_apply_strain(dr, strain), valid, cutoff)
    ops = _DenseOps(idx)
    # triplet (i, a, b): j = idx[i, a], k = idx[j, b]; the padding row N gives zeros / False
    geo = ops.kj_to_triplets(jnp.concatenate([dr, d[..., None]], -1))
    dr_kj, d_kj = geo[..., :3], geo[..., 3]
    d_kj = jnp.where(d_kj > 0, d_kj, 0.5 * cutoff)
    mask_kj = jnp.concatenate([mask, jnp.zeros((1, m), bool)], 0)[idx]
    k = jnp.concatenate([idx, jnp.full((1, m), n, idx.dtype)], 0)[idx]
    tmask = mask[:, :, None] & mask_kj & (k != jnp.arange(n)[:, None, None])
    cos = _cosine(dr[:, :, None, :], d[:, :, None], dr_kj, d_kj)
    return d, mask, cos, tmask, ops


def sparse_geometry(R, graph, box, cutoff, strain):
    n = R.shape[0]
    s, r = graph.senders, graph.receivers
    valid = (s < n) & (r < n)
    dr = _minimum_image(R[jnp.minimum(s, n - 1)] - R[jnp.minimum(r, n - 1)], box)
    dr, d, mask = _safe_edges(_apply_strain(dr, strain), valid, cutoff)
    n_e = s.shape[0]
    mask_p = jnp.concatenate([mask, jnp.zeros(1, bool)], 0)
    s_p = jnp.concatenate([s, jnp.full(1, n, s.dtype)], 0)
    r_p = jnp.concatenate([r, jnp.full(1, n, r.dtype)], 0)
    kj, ji = jnp.minimum(graph.kj, n_e), jnp.minimum(graph.ji, n_e)
    tmask = mask_p[kj] & mask_p[ji] & (s_p[kj] != r_p[ji]) & (r_p[kj] == s_p[ji])
    geo = jnp.concatenate([dr, d[:, None]], -1)
    geo_ji, geo_kj = _gather(geo, ji), _gather(geo, kj)
    safe = 0.5 * cutoff                                  # padding triplets: zero vectors
    cos = _cosine(geo_ji[:, :3], jnp.where(tmask, geo_ji[:, 3], safe),
                  geo_kj[:, :3], jnp.where(tmask, geo_kj[:, 3], safe))
    return d, mask, cos, tmask, _SparseOps(graph, n)


# ---------------------------------------------------------------------------------------
# Sparse graph
# ---------------------------------------------------------------------------------------
@dataclass
class SparseGraph:
    """Edge and triplet lists with fixed capacities (a pytree).

    senders, receivers (E,) int32: edge e is senders[e] → receivers[e] (j → i), padded with N.
    kj, ji (T,) int32: triplet t combines incoming edge kj[t] (k → j) into ji[t] (j → i),
    padded with E. ji and receivers are sorted (the sums use sorted segment sums).
    n_edges, n_triplets: int32 scalars, the counts the positions needed (> E or > T on overflow).
    """

    senders: jax.Array
    receivers: jax.Array
    kj: jax.Array
    ji: jax.Array
    n_edges: jax.Array
    n_triplets: jax.Array


jax.tree_util.register_dataclass(
    SparseGraph, data_fields=["senders", "receivers", "kj", "ji", "n_edges", "n_triplets"], meta_fields=[])


def _list_mask(idx, R, box, cutoff):
    n = R.shape[0]
    valid = idx < n
    dr = _minimum_image(R[jnp.minimum(idx, n - 1)] - R[:, None, :], box)
    return valid & (jnp.sum(dr * dr, -1) < cutoff * cutoff)


def _triplet_mask(idx, mask):
    n, m = idx.shape
    idx_p = jnp.concatenate([idx, jnp.full((1, m), n, idx.dtype)], 0)
    mask_p = jnp.concatenate([mask, jnp.zeros((1, m), bool)], 0)
    return mask[:, :, None] & mask_p[idx] & (idx_p[idx] != jnp.arange(n)[:, None, None])


@functools.partial(jax.jit, static_argnames=("max_edges", "max_triplets"))
def sparse_graph(idx, R, box, cutoff: float, max_edges: int, max_triplets: int):
    """Edge and triplet lists of the pairs of a dense list ``idx`` closer than ``cutoff``.

    Pass the model's cutoff to build a graph for one configuration (smallest lists), or
    cutoff + skin to reuse the graph while particles move less than skin/2 (the energy masks
    d ≥ model cutoff exactly, either way; also use a skin when evaluating finite strains).
    Returns ``(graph, overflow)``: ``overflow`` is True when more than ``max_edges`` edges or
    ``max_triplets`` triplets were needed (``graph.n_edges`` / ``graph.n_triplets`` say how
    many); the graph is then incomplete and must be rebuilt with larger capacities.
    """
    n, m = idx.shape
    idx = idx.astype(jnp.int32)
    mask = _list_mask(idx, R, box, cutoff)
    flat = mask.reshape(-1)
    n_edges = jnp.sum(flat, dtype=jnp.int32)
    (pos,) = jnp.nonzero(flat, size=max_edges, fill_value=n * m)
    ok = pos < n * m
    receivers = jnp.where(ok, pos // m, n).astype(jnp.int32)
    senders = jnp.where(ok, idx.reshape(-1)[jnp.minimum(pos, n * m - 1)], n).astype(jnp.int32)
    edge_id = (jnp.cumsum(flat, dtype=jnp.int32) - 1).reshape(n, m)
    edge_id = jnp.where(mask & (edge_id < max_edges), edge_id, max_edges)
    edge_id_p = jnp.concatenate([edge_id, jnp.full((1, m), max_edges, jnp.int32)], 0)

    tflat = _triplet_mask(idx, mask).reshape(-1)
    n_triplets = jnp.sum(tflat, dtype=jnp.int32)
    (tpos,) = jnp.nonzero(tflat, size=max_triplets, fill_value=n * m * m)
    tok = tpos < n * m * m
    tpos = jnp.minimum(tpos, n * m * m - 1)
    i, a, b = tpos // (m * m), (tpos // m) % m, tpos % m
    ji = jnp.where(tok, edge_id[i, a], max_edges)
    kj = jnp.where(tok, edge_id_p[idx[i, a], b], max_edges)
    bad = (ji >= max_edges) | (kj >= max_edges)          # only on edge overflow
    ji, kj = jnp.where(bad, max_edges, ji), jnp.where(bad, max_edges, kj)
    overflow = (n_edges > max_edges) | (n_triplets > max_triplets)
    return SparseGraph(senders, receivers, kj.astype(jnp.int32), ji.astype(jnp.int32),
                       n_edges, n_triplets), overflow


def graph_counts(idx, R, box, cutoff: float):
    """(edges, triplets) int32 scalars the graph of ``idx`` at R within ``cutoff`` needs
    (jit-able; masks and sums only, no compaction: the cheap overflow check)."""
    idx = jnp.asarray(idx)
    mask = _list_mask(idx, jnp.asarray(R), box, cutoff)
    return jnp.sum(mask, dtype=jnp.int32), jnp.sum(_triplet_mask(idx, mask), dtype=jnp.int32)


def sparse_capacity(idx, R, box, cutoff: float, multiplier: float = 1.25) -> tuple[int, int]:
    """Capacities (max_edges, max_triplets) for :func:`sparse_graph`: the counts at ``R``
    times ``multiplier`` (not jit-able: it returns Python ints)."""
    ne, nt = (int(c) for c in graph_counts(idx, R, box, float(cutoff)))
    return max(1, math.ceil(ne * multiplier)), max(1, math.ceil(nt * multiplier))
