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
    On a :class:`~difftre_cli.potentials.graph.SparseGraph` from ``graph.sparse_graph``.
``DimeNetPP`` the Flax module (per-atom energies from reduced distances, masks, cos α and a
    graph's gather/sum maps).

Conventions: R (N, 3) positions in a periodic box of edge ``box`` (a float, or a (3,) array
for an orthorhombic box) with minimum image (so cutoff < box/2); species (N,) ints in
[0, n_species) (None = all 0); ``strain`` an optional (3, 3) ε mapping every minimum-image
displacement d → (I + ε) d before the network sees it, so ∂U/∂ε at ε = 0 is the virial
(box term included). Energies are in the caller's unit, lengths in the unit of ``cutoff``.
Everything is jit-able, vmap-able, without Python loops over atoms; gradients with respect to
R, ε and the parameters are finite on padded slots (double-``where``).

Derivatives: plain autodiff, every mode (forces, virial, parameter gradients, forward mode
for elastic constants, second derivatives).

Module layout: the bases are in potentials/dimenet_basis.py, the graph geometry, the
atom-centred slots and the sparse graph in potentials/graph.py (why that layout, with timings,
there), the triplet sum in potentials/triplet_messages.py; this module holds the Flax network
and :class:`GNNModel`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ..checks import choice, mapping, number
from ..errors import UserError
from .dimenet_basis import envelope, spherical_radial_basis
from .graph import SparseGraph, dense_geometry, sparse_geometry
from .triplet_messages import triplet_messages

__all__ = ["DimeNetPP", "GNNModel", "build", "DEFAULTS"]


# Recomputed in the backward pass (cheap, per edge) instead of keeping the series' terms.
_basis_fn = jax.checkpoint(spherical_radial_basis, static_argnums=(1, 2, 3))


# ---------------------------------------------------------------------------------------
# Flax modules
# ---------------------------------------------------------------------------------------
def host_initializer(draw):
    """A Flax initializer whose array NumPy draws on the host: ``draw(rng, shape) -> ndarray``,
    ``rng`` a ``numpy.random.Generator`` seeded from the key's bits, so the values are the same on
    every backend. Why: drawn with JAX, the ~150 initialisers of the water model (threefry, erf⁻¹,
    QR per layer) made one XLA program that took 6.5 s of a cold start to compile on 2 CPU
    cores; as host callbacks they compile in ~1.5 s (jax_setup.py's module doc)."""
    def init(key, shape, dtype=jnp.float32):
        bits = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key

        def host(b):
            rng = np.random.default_rng(np.asarray(b, np.uint64).tolist())
            return np.asarray(draw(rng, tuple(shape)), dtype)
        return jax.pure_callback(host, jax.ShapeDtypeStruct(tuple(shape), dtype), bits)
    return init


def glorot_orthogonal(scale: float = 2.0):
    """Orthogonal matrix (QR of a Gaussian one, signs fixed by R's diagonal) rescaled to the
    Glorot variance scale / (fan_in + fan_out)."""
    def draw(rng, shape):
        fan_in, fan_out = int(np.prod(shape[:-1])), shape[-1]
        a = rng.standard_normal((max(fan_in, fan_out), min(fan_in, fan_out)))
        q, r = np.linalg.qr(a)
        q = q * np.sign(np.diag(r))
        w = (q if fan_in >= fan_out else q.T).reshape(shape)
        return w * np.sqrt(scale / ((fan_in + fan_out) * np.mean(w * w)))
    return host_initializer(draw)


def _dense(features, bias=True, init=None, name=None):
    return nn.Dense(features, use_bias=bias, kernel_init=init or glorot_orthogonal(), name=name)


class _Residual(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        y = nn.swish(_dense(self.features)(x))
        return x + nn.swish(_dense(self.features)(y))


#: U(−√3, √3): unit variance
_sqrt3_uniform = host_initializer(lambda rng, shape: rng.uniform(-math.sqrt(3.0), math.sqrt(3.0), shape))


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
        x_kj = triplet_messages(x_kj, rad, cos, tmask, w2.astype(rad.dtype), ops)
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
    pair of an atom's slots and its mask, and ``ops`` the graph's maps (dense or sparse).
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
                             self.num_residual_after_skip)(m, rbf, sbf_rad, cos_angle, triplet_mask, ops)
            energies = energies + _Output(self.embed_size, self.out_embed_size, self.num_dense_out)(m, rbf, ops)
        return energies

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

    @property
    def module(self) -> DimeNetPP:
        return DimeNetPP(**{k: getattr(self, k) for k in DEFAULTS})

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
            d, mask, cos, tmask, ops = dense_geometry(R, idx, box, self.cutoff, None)
            return self.module.init(key, species, d / self.cutoff, mask, cos, tmask, ops)
        return init(key, jnp.asarray(R), jnp.asarray(idx), jnp.asarray(box))

    def _species(self, R, species):
        return jnp.zeros(R.shape[0], jnp.int32) if species is None else jnp.asarray(species, jnp.int32)

    def atom_energies(self, params, R, idx, box, species=None, strain=None):
        """(N,) per-atom energies on a dense list (they sum to :meth:`energy`)."""
        d, mask, cos, tmask, ops = dense_geometry(R, idx, box, self.cutoff, strain)
        return self.module.apply(params, self._species(R, species), d / self.cutoff, mask, cos, tmask, ops)

    def energy(self, params, R, idx, box, species=None, strain=None):
        """U(R) on a dense neighbour list ``idx`` (N, M) padded with N."""
        return jnp.sum(self.atom_energies(params, R, idx, box, species, strain))

    def energy_sparse(self, params, R, graph: SparseGraph, box, species=None, strain=None):
        """U(R) on a :class:`SparseGraph` (same value as :meth:`energy` on the list it came from)."""
        d, mask, cos, tmask, ops = sparse_geometry(R, graph, box, self.cutoff, strain)
        e = self.module.apply(params, self._species(R, species), d / self.cutoff, mask, cos, tmask, ops)
        return jnp.sum(e)


def build(cfg) -> GNNModel:
    """The model from a config mapping ``{kind: dimenet, cutoff: 0.5, embed_size: 32, ...}``."""
    mapping(cfg, "model", "model: {kind: dimenet, cutoff: 0.5}")
    choice(cfg, "kind", ("dimenet",), prefix="model", what="model kind")
    # custom_gradients: read from the configs of runs made before the triplet sum lost its
    # hand-written backward (plain autodiff is now the faster one); it changes nothing
    known = {"kind", "cutoff", "custom_gradients", *DEFAULTS}
    unknown = sorted(str(k) for k in cfg if k not in known)
    if unknown:
        raise UserError(f"model: unknown key(s) {', '.join(unknown)} for kind dimenet",
                        f"remove them; the keys are {', '.join(['cutoff', *DEFAULTS])}")
    cutoff = number(cfg, "cutoff", prefix="model", lo=0.0, lo_open=True, example="0.5")
    kwargs = {}
    for key, default in DEFAULTS.items():
        lo, hi = _BOUNDS[key]
        kwargs[key] = number(cfg, key, prefix="model", integer=True, lo=lo, hi=hi, required=False,
                             default=default, example=str(default))
    return GNNModel(cutoff=cutoff, **kwargs)
