"""DimeNet++: a directional message-passing potential U(R) for periodic systems.

Written from the equations of J. Gasteiger, J. Groß, S. Günnemann, "Directional message passing
for molecular graphs", ICLR 2020 (DimeNet) and J. Gasteiger, S. Giri, J. T. Margraf,
S. Günnemann, "Fast and uncertainty-aware directional message passing for non-equilibrium
molecules", arXiv:2011.14115 (DimeNet++). Defaults are the DiffTRe water model (Thaler &
Zavadlav, Nat. Commun. 12, 6884 (2021)): DimeNet++'s sizes divided by 4.

Messages m_ji live on directed edges j → i (d_ji < cutoff c). With x = d/c (all bases are
dimensionless, so the model does not care about the length unit):

- radial basis      e_n(d)     = √2 sin(f_n x)/x · u(x),   f_n initialised to nπ, learnable;
- spherical basis   a_ln(d, α) = √2/|j_{l+1}(z_ln)| j_l(z_ln x) u(x) · Y_l^0(α),
  z_ln the n-th positive root of j_l, Y_l^0(α) = √((2l+1)/4π) P_l(cos α), α the angle at j
  between x_i − x_j and x_k − x_j;
- envelope          u(x) = 1 − (p+1)(p+2)/2 x^p + p(p+2) x^{p+1} − p(p+1)/2 x^{p+2},
  p = envelope_exponent + 1, so u, u', u'' vanish at x = 1.

Embedding: m_ji = σ(W [h_i ‖ h_j ‖ σ(W_rbf e(d_ji))]), h = species embedding. Each of the
``num_blocks`` interaction blocks updates m_ji from m_kj, k ∈ N(j) \\ {i}, through the
bilinear-free DimeNet++ path (down-projection to ``int_emb_size``, basis projections through
``basis_emb_size``, up-projection), residual layers and a skip connection. ``num_blocks + 1``
output blocks turn Σ_j (W e(d_ji)) ⊙ m_ji into per-atom energies (``num_dense_out`` layers of
``out_embed_size``; last layer initialised to zero, as in DimeNet++, so U ≡ 0 before training).
Activation swish; weights glorot-orthogonal. Every edge enters the energy only through
products with bases that carry u(x), so the energy and the forces go to zero continuously as
a pair separates through the cutoff; pairs at d ≥ c are in addition masked out exactly, so
the result does not depend on the list's skin or capacity.

Public interface
----------------
``build(cfg) -> GNNModel``
    From a mapping ``{kind: dimenet, cutoff: ..., embed_size: ..., ...}`` (configs/model/
    dimenet.yaml); every key is validated, unknown keys included; a bad value raises
    :class:`UserError`.
``GNNModel.init(key, R=None, idx=None, box=None) -> params``
    A Flax variable dict; the shapes do not depend on the configuration.
``GNNModel.energy(params, R, idx, box, species=None, strain=None) -> scalar``
    On a dense neighbour list ``idx`` (N, M), padded with N (:mod:`difftre_cli.neighbors`).
``GNNModel.atom_energies(params, R, idx, box, species=None, strain=None) -> (N,)``
``GNNModel.energy_sparse(params, R, graph, box, species=None, strain=None) -> scalar``
    On a :class:`SparseGraph` (senders, receivers, kj, ji, counts) from :func:`sparse_graph`.
``sparse_graph(idx, R, box, cutoff, max_edges, max_triplets) -> (SparseGraph, overflow)``
    jit-able for fixed capacities; ``overflow`` is a bool scalar, never a silent truncation.
``sparse_capacity(idx, R, box, cutoff, multiplier=1.25) -> (max_edges, max_triplets)``
``DimeNetPP`` the Flax module (per-atom energies from reduced distances, masks, cos α and a
    graph's gather/sum maps).

Conventions: R (N, 3) positions in a periodic box of edge ``box`` (a float, or a (3,) array
for an orthorhombic box) with minimum image (so cutoff < box/2); species (N,) ints in
[0, n_species) (None = all 0); ``strain`` an optional (3, 3) ε mapping every minimum-image
displacement d → (I + ε) d before the network sees it, so ∂U/∂ε at ε = 0 is the virial
(box term included). Energies are in the caller's unit, lengths in the unit of ``cutoff``.
Everything is jit-able, vmap-able, without Python loops over atoms; gradients with respect to
R, ε and the parameters are finite on padded slots (double-``where``).

Derivatives: with ``custom_gradients=True`` (default) the triplet sum of each block has a
hand-written backward pass that keeps only edge-sized arrays; reverse mode (forces, virial,
parameter gradients, and reverse-over-reverse second derivatives) then works, forward mode
(``jax.jvp``, ``jacfwd``, ``hessian``) does not. ``custom_gradients=False`` is plain autodiff
(every mode; same values; more memory and time).

Performance (N = 901, ρ = 33.4 nm⁻³, cutoff 0.5 nm, 4 blocks, float32, CPU): the sparse graph
has ~16k edges and ~265k triplets, the dense list N·M² ≈ 1.7M triplet slots, so the sparse
form is 2-4x faster; prefer it for production and the dense one for checks. XLA:CPU
allocates the executable's temporaries (hundreds of MB for forces) on every call, and glibc
maps them afresh each time: ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0`` in the environment
(set before Python starts) roughly halves the wall time of a force call.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import UserError

__all__ = ["DimeNetPP", "GNNModel", "SparseGraph", "build", "sparse_graph", "sparse_capacity",
           "bessel_roots", "spherical_jn", "DEFAULTS"]

# ---------------------------------------------------------------------------------------
# Bases
# ---------------------------------------------------------------------------------------
_SERIES_TERMS = 16


@functools.lru_cache(maxsize=None)
def bessel_roots(num_spherical: int, num_radial: int) -> np.ndarray:
    """(num_spherical, num_radial) float64: z_ln, the n-th positive root of j_l.

    Roots of j_l and j_{l+1} interlace (z_{l,n} < z_{l+1,n} < z_{l,n+1}), so each root of j_l
    is bracketed by consecutive roots of j_{l-1}, starting from z_0n = nπ.
    """
    from scipy.optimize import brentq
    from scipy.special import spherical_jn as jn

    prev = np.pi * np.arange(1, num_radial + num_spherical + 1, dtype=np.float64)
    rows = [prev[:num_radial]]
    for l in range(1, num_spherical):
        prev = np.array([brentq(lambda z: jn(l, z), a, b, xtol=1e-14, rtol=1e-15, maxiter=200)
                         for a, b in zip(prev[:-1], prev[1:])])
        rows.append(prev[:num_radial])
    return np.stack(rows)


def _series_threshold(l: int) -> float:
    """Below this argument j_l comes from its power series (upward recursion loses digits
    for x ≲ l; measured in float32, the recursion is accurate to 3e-7 above ≈ 0.75 l + 0.5)."""
    return 0.5 if l == 0 else float(l) + 1.0


def spherical_jn(l: int, x):
    """Spherical Bessel function j_l(x) for x ≥ 0, accurate in float32 (≈ 1e-7 absolute,
    tested against scipy for l ≤ 10, x ≤ 70).

    Below a threshold ≈ l + 1 the power series
    j_l(x) = x^l/(2l+1)!! Σ_k (−x²/2)^k / (k! (2l+3)(2l+5)…(2l+2k+1)); above it the closed
    forms of j_0, j_1 and the upward recursion j_{m+1} = (2m+1)/x j_m − j_{m−1} (which loses
    digits for x ≲ l, hence the series there). Each branch sees a clamped argument, so neither
    produces inf and gradients stay finite everywhere (double-``where``).
    """
    x = jnp.asarray(x)
    small = x < _series_threshold(l)
    xr = jnp.where(small, 1.0 + _series_threshold(l), x)          # recursion branch: x ≥ 0.5
    s, c = jnp.sin(xr), jnp.cos(xr)
    prev, cur = s / xr, (s / xr - c) / xr
    if l == 0:
        cur = prev
    for m in range(1, l):
        prev, cur = cur, (2 * m + 1) / xr * cur - prev
    xs = jnp.where(small, x, 0.0)                                 # series branch: x < l + 1
    y = -0.5 * xs * xs
    term = jnp.ones_like(xs)
    acc = term
    for k in range(1, _SERIES_TERMS + 1):
        term = term * y / (k * (2 * l + 2 * k + 1))
        acc = acc + term
    double_factorial = float(np.prod(np.arange(1, 2 * l + 2, 2, dtype=np.float64)))
    series = acc * xs ** l / double_factorial
    return jnp.where(small, series, cur)


def legendre(l_max: int, c):
    """Legendre polynomials [P_0(c), …, P_lmax(c)] by Bonnet's recursion."""
    p = [jnp.ones_like(c), c]
    for l in range(1, l_max):
        p.append(((2 * l + 1) * c * p[l] - l * p[l - 1]) / (l + 1))
    return p[: l_max + 1]


def envelope(x, exponent: int):
    """u(x) with u(0) = 1 and u(1) = u'(1) = u''(1) = 0 (p = exponent + 1); x in [0, 1]."""
    p = exponent + 1
    a, b, c = -(p + 1) * (p + 2) / 2.0, p * (p + 2.0), -p * (p + 1) / 2.0
    xp = x ** p
    return 1.0 + xp * (a + x * (b + c * x))


def spherical_radial_basis(x, num_spherical: int, num_radial: int, exponent: int):
    """(…, L, Nr): √2/|j_{l+1}(z_ln)| j_l(z_ln x) u(x) for edges at reduced distance x ∈ (0, 1]."""
    from scipy.special import spherical_jn as jn

    z = bessel_roots(num_spherical, num_radial)
    norm = np.sqrt(2.0) / np.abs(jn(np.arange(1, num_spherical + 1)[:, None], z))
    jl = jnp.stack([spherical_jn(l, x[..., None] * jnp.asarray(z[l], x.dtype))
                    for l in range(num_spherical)], axis=-2)                 # (…, L, Nr)
    return jl * jnp.asarray(norm, x.dtype) * envelope(x, exponent)[..., None, None]


def angular_basis(cos_angle, num_spherical: int):
    """(…, L): Y_l^0(α) = √((2l+1)/4π) P_l(cos α)."""
    p = legendre(num_spherical - 1, cos_angle)
    return jnp.stack([math.sqrt((2 * l + 1) / (4 * math.pi)) * p[l] for l in range(num_spherical)], -1)


# Recomputed in the backward pass (cheap, per edge) instead of keeping the series' terms.
_basis_fn = jax.checkpoint(spherical_radial_basis, static_argnums=(1, 2, 3))


# ---------------------------------------------------------------------------------------
# Graph operations: the network is written once against these four maps
# ---------------------------------------------------------------------------------------
def _barrier(x, token):
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
    return _barrier(e_pad, ids)[ids]


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
def _triplet_messages(x_kj, rad, cos, tmask, w2, ops):
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
    return _triplet_messages(x_kj, rad, cos, tmask, w2, ops), (x_kj, rad, cos, tmask, w2, ops)


def _triplet_messages_bwd(res, g):
    x_kj, rad, cos, tmask, w2, ops = res
    # Recompute only once g exists: without this barrier XLA hoists the recomputation (it
    # depends on forward values only) and keeps every block's triplet arrays alive at once.
    x_kj, rad, cos, g = _barrier((x_kj, rad, cos, g), tmask)
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
    cos_bar = _barrier(cos_bar, tmask)
    both = jnp.concatenate([g_t * s, rad_bar_t.reshape(rad_bar_t.shape[:-2] + (-1,))], -1)
    both = ops.triplets_to_kj(both)
    f = x_kj.shape[-1]
    zeros = lambda a: np.zeros(a.shape, jax.dtypes.float0)     # noqa: E731
    return (both[..., :f], both[..., f:], cos_bar, zeros(tmask), w2_bar,
            jax.tree_util.tree_map(zeros, ops))


_triplet_messages.defvjp(_triplet_messages_fwd, _triplet_messages_bwd)


def _triplet_messages_autodiff(x_kj, rad, cos, tmask, w2, ops):
    """Same as :func:`_triplet_messages`, differentiated by JAX (forward mode works)."""
    x_t, _, _, s = _triplet_terms(x_kj, rad, cos, tmask, w2, ops)
    return ops.triplets_to_ji(x_t * s)


# ---------------------------------------------------------------------------------------
# Flax modules
# ---------------------------------------------------------------------------------------
def glorot_orthogonal(scale: float = 2.0):
    """Orthogonal matrix rescaled to the Glorot variance scale / (fan_in + fan_out)."""
    base = nn.initializers.orthogonal()

    def init(key, shape, dtype=jnp.float32):
        w = base(key, shape, dtype)
        fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
        return w * jnp.sqrt(scale / ((fan_in + fan_out) * jnp.mean(w * w)))
    return init


def _dense(features, bias=True, init=None, name=None):
    return nn.Dense(features, use_bias=bias, kernel_init=init or glorot_orthogonal(), name=name)


class _Residual(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        y = nn.swish(_dense(self.features)(x))
        return x + nn.swish(_dense(self.features)(y))


def _sqrt3_uniform(key, shape, dtype=jnp.float32):
    """U(−√3, √3): unit variance."""
    return jax.random.uniform(key, shape, dtype, -math.sqrt(3.0), math.sqrt(3.0))


class _Embedding(nn.Module):
    n_species: int
    features: int

    @nn.compact
    def __call__(self, species, rbf, ops):
        h = nn.Embed(self.n_species, self.features, embedding_init=_sqrt3_uniform,
                     name="species")(species)
        h = h.astype(rbf.dtype)
        h_i, h_j = ops.atoms_to_edges(h)
        r = nn.swish(_dense(self.features, name="rbf")(rbf))
        return nn.swish(_dense(self.features, name="edge")(jnp.concatenate([h_i, h_j, r], -1)))


class _Interaction(nn.Module):
    """DimeNet++ interaction block: m_ji ← f(m_ji, Σ_k m_kj ⊙ a(d_kj, α_kji))."""

    features: int
    int_features: int
    basis_features: int
    num_spherical: int
    num_radial: int
    n_before: int
    n_after: int
    custom_gradients: bool = True

    @nn.compact
    def __call__(self, m, rbf, sbf_rad, cos, tmask, ops):
        x_ji = nn.swish(_dense(self.features, name="ji")(m))
        x_kj = nn.swish(_dense(self.features, name="kj")(m))
        r = _dense(self.basis_features, False, name="rbf1")(rbf)
        x_kj = x_kj * _dense(self.features, False, name="rbf2")(r)
        x_kj = nn.swish(_dense(self.int_features, False, name="down")(x_kj))
        # First SBF projection W1 (L·Nr → B) of a_ln = rad_ln(d_kj) Y_l(α), factorised:
        # Σ_ln W1[ln, b] rad_ln Y_l = Σ_l Y_l (Σ_n W1[ln, b] rad_ln). The inner sum is per edge
        # (a matmul with the block-diagonal form of W1); only L·B numbers per triplet remain.
        L, B = self.num_spherical, self.basis_features
        w1 = self.param("sbf1", glorot_orthogonal(), (L * self.num_radial, B), m.dtype)
        w1 = w1.astype(sbf_rad.dtype).reshape(L, self.num_radial, B)
        block = (jnp.eye(L, dtype=w1.dtype)[:, None, :, None] * w1[:, :, None, :])
        rad = sbf_rad.reshape(sbf_rad.shape[:-2] + (-1,)) @ block.reshape(L * self.num_radial, L * B)
        w2 = self.param("sbf2", glorot_orthogonal(), (B, self.int_features), m.dtype)
        triplet_sum = _triplet_messages if self.custom_gradients else _triplet_messages_autodiff
        x_kj = triplet_sum(x_kj, rad, cos, tmask, w2.astype(rad.dtype), ops)
        x_kj = nn.swish(_dense(self.features, False, name="up")(x_kj))
        h = x_ji + x_kj
        for _ in range(self.n_before):
            h = _Residual(self.features)(h)
        h = nn.swish(_dense(self.features, name="skip")(h)) + m
        for _ in range(self.n_after):
            h = _Residual(self.features)(h)
        return h


class _Output(nn.Module):
    """Per-atom output: Σ_j (W e(d_ji)) ⊙ m_ji → up-projection → dense layers → scalar."""

    features: int
    out_features: int
    n_dense: int

    @nn.compact
    def __call__(self, m, rbf, ops):
        t = ops.edges_to_atoms(_dense(self.features, False, name="rbf")(rbf) * m)
        t = _dense(self.out_features, False, name="up")(t)
        for _ in range(self.n_dense):
            t = nn.swish(_dense(self.out_features)(t))
        return _dense(1, False, nn.initializers.zeros, name="final")(t)[..., 0]


class DimeNetPP(nn.Module):
    """DimeNet++ per-atom energies from graph geometry (see the module docstring).

    ``__call__(species, x, edge_mask, cos_angle, triplet_mask, ops) -> (N,)`` with x the
    reduced edge lengths d/c (finite, > 0, also on masked slots), the masks, cos α of every
    triplet and ``ops`` the graph's gather/sum maps (dense or sparse).
    """

    n_species: int = 1
    embed_size: int = 32
    out_embed_size: int = 64
    int_emb_size: int = 16
    basis_emb_size: int = 2
    num_blocks: int = 4
    num_spherical: int = 7
    num_radial: int = 6
    envelope_exponent: int = 5
    num_residual_before_skip: int = 1
    num_residual_after_skip: int = 2
    num_dense_out: int = 3
    custom_gradients: bool = True

    @nn.compact
    def __call__(self, species, x, edge_mask, cos_angle, triplet_mask, ops):
        dtype = x.dtype
        freq = self.param("frequencies", lambda k, s: jnp.pi * jnp.arange(1, s + 1, dtype=jnp.float32),
                          self.num_radial)
        env = envelope(x, self.envelope_exponent)
        rbf = math.sqrt(2.0) * jnp.sin(x[..., None] * freq.astype(dtype)) / x[..., None] * env[..., None]
        rbf = jnp.where(edge_mask[..., None], rbf, 0.0)
        sbf_rad = _basis_fn(x, self.num_spherical, self.num_radial, self.envelope_exponent)
        sbf_rad = jnp.where(edge_mask[..., None, None], sbf_rad, 0.0)

        m = _Embedding(self.n_species, self.embed_size)(species, rbf, ops)
        energies = _Output(self.embed_size, self.out_embed_size, self.num_dense_out)(m, rbf, ops)
        for _ in range(self.num_blocks):
            m = _Interaction(self.embed_size, self.int_emb_size, self.basis_emb_size, self.num_spherical,
                             self.num_radial, self.num_residual_before_skip,
                             self.num_residual_after_skip, self.custom_gradients)(
                m, rbf, sbf_rad, cos_angle, triplet_mask, ops)
            energies = energies + _Output(self.embed_size, self.out_embed_size, self.num_dense_out)(m, rbf, ops)
        return energies


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


def _dense_geometry(R, idx, box, cutoff, strain):
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


def _sparse_geometry(R, graph, box, cutoff, strain):
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


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------
DEFAULTS: dict[str, int] = {
    "n_species": 1,
    "embed_size": 32,
    "out_embed_size": 64,
    "int_emb_size": 16,
    "basis_emb_size": 2,
    "num_blocks": 4,
    "num_spherical": 7,
    "num_radial": 6,
    "envelope_exponent": 5,
    "num_residual_before_skip": 1,
    "num_residual_after_skip": 2,
    "num_dense_out": 3,
}
# (lower bound, upper bound) of each integer key; the basis bounds are those tested against scipy.
_BOUNDS = {"n_species": (1, None), "embed_size": (1, None), "out_embed_size": (1, None),
           "int_emb_size": (1, None), "basis_emb_size": (1, None), "num_blocks": (1, None),
           "num_spherical": (1, 11), "num_radial": (1, 16), "envelope_exponent": (1, 16),
           "num_residual_before_skip": (0, None), "num_residual_after_skip": (0, None),
           "num_dense_out": (0, None)}


@dataclass(frozen=True)
class GNNModel:
    """DimeNet++ potential U_θ(R) on a dense or a sparse graph (see the module docstring)."""

    cutoff: float
    n_species: int = 1
    embed_size: int = 32
    out_embed_size: int = 64
    int_emb_size: int = 16
    basis_emb_size: int = 2
    num_blocks: int = 4
    num_spherical: int = 7
    num_radial: int = 6
    envelope_exponent: int = 5
    num_residual_before_skip: int = 1
    num_residual_after_skip: int = 2
    num_dense_out: int = 3
    custom_gradients: bool = True

    @property
    def module(self) -> DimeNetPP:
        return DimeNetPP(**{k: getattr(self, k) for k in DEFAULTS}, custom_gradients=self.custom_gradients)

    def init(self, key, R=None, idx=None, box=None) -> Any:
        """Parameters (a pytree; shapes do not depend on the configuration). Without R, a
        three-atom triangle is used to trace the network."""
        if R is None or idx is None:
            c = self.cutoff
            R = jnp.asarray([[0.0, 0.0, 0.0], [0.5 * c, 0.0, 0.0], [0.0, 0.6 * c, 0.0]])
            idx = jnp.asarray([[1, 2], [0, 2], [0, 1]], jnp.int32)
            box = 10.0 * c
        @jax.jit
        def init(key, R, idx, box):
            species = jnp.zeros(R.shape[0], jnp.int32)
            d, mask, cos, tmask, ops = _dense_geometry(R, idx, box, self.cutoff, None)
            return self.module.init(key, species, d / self.cutoff, mask, cos, tmask, ops)
        return init(key, jnp.asarray(R), jnp.asarray(idx), jnp.asarray(box))

    def _species(self, R, species):
        return jnp.zeros(R.shape[0], jnp.int32) if species is None else jnp.asarray(species, jnp.int32)

    def atom_energies(self, params, R, idx, box, species=None, strain=None):
        """(N,) per-atom energies on a dense list (they sum to :meth:`energy`)."""
        d, mask, cos, tmask, ops = _dense_geometry(R, idx, box, self.cutoff, strain)
        return self.module.apply(params, self._species(R, species), d / self.cutoff, mask, cos, tmask, ops)

    def energy(self, params, R, idx, box, species=None, strain=None):
        """U(R) on a dense neighbour list ``idx`` (N, M) padded with N."""
        return jnp.sum(self.atom_energies(params, R, idx, box, species, strain))

    def energy_sparse(self, params, R, graph: SparseGraph, box, species=None, strain=None):
        """U(R) on a :class:`SparseGraph` (same value as :meth:`energy` on the list it came from)."""
        d, mask, cos, tmask, ops = _sparse_geometry(R, graph, box, self.cutoff, strain)
        e = self.module.apply(params, self._species(R, species), d / self.cutoff, mask, cos, tmask, ops)
        return jnp.sum(e)


def build(cfg) -> GNNModel:
    """The model from a config mapping ``{kind: dimenet, cutoff: 0.5, embed_size: 32, ...}``."""
    from ..checks import choice, mapping, number

    mapping(cfg, "model", "model: {kind: dimenet, cutoff: 0.5}")
    choice(cfg, "kind", ("dimenet",), prefix="model", what="model kind")
    known = {"kind", "cutoff", "custom_gradients", *DEFAULTS}
    unknown = sorted(str(k) for k in cfg if k not in known)
    if unknown:
        raise UserError(f"model: unknown key(s) {', '.join(unknown)} for kind dimenet",
                        f"remove them; the keys are {', '.join(['cutoff', *DEFAULTS, 'custom_gradients'])}")
    cutoff = number(cfg, "cutoff", prefix="model", lo=0.0, lo_open=True, example="0.5")
    kwargs = {}
    for key, default in DEFAULTS.items():
        lo, hi = _BOUNDS[key]
        kwargs[key] = number(cfg, key, prefix="model", integer=True, lo=lo, hi=hi, required=False,
                             default=default, example=str(default))
    custom = cfg.get("custom_gradients", True)
    if not isinstance(custom, bool):
        raise UserError(f"model.custom_gradients must be true or false, got {custom!r}",
                        "set model.custom_gradients=true (false for forward-mode derivatives)")
    return GNNModel(cutoff=cutoff, custom_gradients=custom, **kwargs)
