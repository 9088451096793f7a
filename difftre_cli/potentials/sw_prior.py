"""Stillinger–Weber prior under a graph model: U(R) = U_SW(R) + U_θ(R) (DimeNet++ or three_body).

Stillinger & Weber, PRB 31, 5262 (1985), in the form of ``jax_md.energy.stillinger_weber``::

    U_SW = ε [ A/2 Σ_{i≠j} φ₂(r_ij) + λ/2 Σ_i Σ_{j≠k} φ₃(r_ij, r_ik) ]
    φ₂(r) = (B (r/σ)^-4 − 1) exp(1/(r/σ − a))
    φ₃    = exp(γ/(r_ij/σ − a) + γ/(r_ik/σ − a)) (cos θ_jik + 1/3)²

The SW is the package's one, :class:`.classical.StillingerWeber` (that of the 0 K fits): its
pair term is JAX MD's own kernel (``energy._sw_radial_interaction``, p = 4, q = 0), its
three-body term (cos θ₀ = −1/3 as in JAX MD) is summed per atom by a factorised identity
(:func:`three_body`), both on the many-body potential's stored graph instead of all N² pairs;
tests/test_diamond.py checks the sum against ``jax_md.energy.stillinger_weber`` itself. The dimensionless parameters default to
silicon's (``classical.SW_PARAMS``); ε (energy unit) and σ (length unit) must be given, e.g.
ε = 200 kJ/mol and σ = 0.14 nm for the DiffTRe diamond prior.

Cutoffs. SW reaches a σ (0.252 nm for diamond), further than the network may (0.2 nm: each
carbon sees its four bonds). The neighbour lists are built at the larger of the two
(:attr:`ManyBodyPotential.cutoff`); the network's edge/triplet graph at its own cutoff (it masks
d ≥ that cutoff exactly, potentials/graph.py) and SW's neighbour table at a σ (its kernels vanish
beyond), see :class:`SWManyBodyPotential`. Under a strain
(``energy_from_features(..., strain=ε)``) every displacement d becomes (I + ε) d in both parts,
so strain derivatives (virial, Born stress and stiffness) include the prior.

Three-body sum: over the pairs of slots (a, b), a ≠ b, of every atom of a neighbour table (both
orders appear, hence the ½), the SW table of the sparse format or the dense list, evaluated per
atom without forming the pairs (:func:`three_body`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp

from ..checks import number
from ..errors import UserError
from .classical import SW_HARD_CODED, SW_PARAMS, StillingerWeber
from .manybody import GRAPH_MODELS, ManyBodyPotential, _dense_vectors, _strain
from .manybody import build as build_many_body
from .three_body import angular_sum, monomial_coefficients, monomials

DIMENSIONLESS = ("a", "lam", "gamma", "A", "B")
#: SW's angular function (c + 1/3)² as a power series 1/9 + ⅔ c + c²
_SW_ANGLE = (1.0 / 9.0, 2.0 / 3.0, 1.0)


def three_body(sw: StillingerWeber, R, idx, box, eps):
    """½ Σ_i Σ_{a≠b} ε λ φ₃ over the slots (a, b) of every atom i of a neighbour list or table
    ``idx`` (N, K), padded with N; displacements mapped by (I + ε).

    Not as a sum over the K² slot pairs: with g_a = exp(γ/(r_a/σ − a)) and unit vectors u_a,
    (u_a·u_b + 1/3)² = (u_a·u_b)² + ⅔ u_a·u_b + 1/9, so that
    Σ_{a,b} g_a g_b (u_a·u_b + 1/3)² = ‖Σ g u⊗u‖² + ⅔ ‖Σ g u‖² + (Σ g)²/9, and the diagonal
    a = b is subtracted term by term: O(K) per atom instead of O(K²) (its gradient for a 216-atom
    diamond with 26 slots: 17.5 -> 2.1 ms on 2 CPU cores). It is the learnable model's sum
    (:func:`.three_body.angular_sum`) with h(c) = (c + 1/3)², one species; tests/test_diamond.py checks the sum against
    ``jax_md.energy.stillinger_weber`` (JAX MD's pairwise kernel, float64, rel 1e-10)."""
    n = idx.shape[0]
    d = _dense_vectors(R, idx, box)                                   # x_j − x_i at slot (i, a)
    d = d + d @ eps.T
    r2 = jnp.sum(d * d, -1)
    # inside by the sign of r/σ − a itself, the quantity under exp(γ/x) (diamond's second shell
    # sits at aσ): the first version, inside by r² < (aσ)², went unstable within 5 s of the
    # 216-atom config=diamond_cpu probe (float32); this one ran it (4 updates, same loss at θ_ref)
    x = jnp.sqrt(jnp.where(r2 > 0, r2, 1.0)) / sw.sigma - sw.a
    inside = (idx < n) & (r2 > 0) & (x < 0)
    d = jnp.where(inside[..., None], d, jnp.zeros(3, d.dtype).at[0].set(0.5 * sw.cutoff))   # double-where
    r = jnp.sqrt(jnp.sum(d * d, -1))
    x = jnp.where(inside, r / sw.sigma - sw.a, -1.0)
    g = jnp.where(inside, jnp.exp(sw.gamma / x), 0.0)                 # (N, K)
    u = d / (r[..., None] + 1e-7)   # JAX MD's cosine (quantity.cosine_angle_between_two_vectors) adds 1e-7 to r
    coef = monomial_coefficients(jnp.asarray(_SW_ANGLE, d.dtype), 2)
    coef = jnp.broadcast_to(coef, (n, 1, 1, coef.shape[-1]))         # one species
    three = angular_sum(g, monomials(u, 2), jnp.ones(g.shape + (1,), g.dtype), coef)
    return 0.5 * sw.epsilon * sw.lam * jnp.sum(three)


@dataclass
class SWTable:
    """Neighbours within SW's cutoff, ``slots`` per atom (a pytree): ``idx`` (N, K) padded with
    N, first the neighbours inside a σ; ``count`` the most any atom needed (> K on overflow)."""

    idx: jax.Array
    count: jax.Array


jax.tree_util.register_dataclass(SWTable, data_fields=["idx", "count"], meta_fields=[])


def sw_table(idx, R, box, cutoff: float, slots: int) -> tuple[SWTable, jax.Array]:
    """Compact a dense list ``idx`` (N, M) to the neighbours closer than ``cutoff``, ``slots``
    per atom; returns (table, overflow)."""
    n, m = idx.shape
    d = _dense_vectors(R, idx, box)
    mask = (idx < n) & (jnp.sum(d * d, -1) < cutoff * cutoff)
    if slots > m:
        idx = jnp.concatenate([idx, jnp.full((n, slots - m), n, idx.dtype)], 1)
        mask = jnp.concatenate([mask, jnp.zeros((n, slots - m), bool)], 1)
    order = jnp.argsort(~mask, axis=1, stable=True)[:, :slots]
    table = jnp.where(jnp.take_along_axis(mask, order, 1), jnp.take_along_axis(idx, order, 1), n).astype(jnp.int32)
    count = jnp.max(jnp.sum(mask, 1)).astype(jnp.int32)
    return SWTable(table, count), count > slots


@dataclass(frozen=True)
class SWManyBodyPotential(ManyBodyPotential):
    """SW prior + DimeNet++. ``cutoff`` (neighbour lists) is max(a σ, network cutoff).

    Sparse format: the features of a state are ``(R, graph, table)``: the network's edge/triplet
    graph at *its* cutoff (capacities ``max_edges``/``max_degree``) and the SW neighbour table
    at a σ (``sw_slots`` per atom). Two structures because in diamond a σ = 0.252 nm falls on the
    second-neighbour shell (0.2523 nm): a graph at a σ would carry ~10 fluctuating neighbours per
    atom and ~7x the network's 12 triplets per atom, for SW terms of order e⁻⁷⁰ there. Dense
    format (checks): ``(R, idx)``, both parts on the list. Capacity hooks as in
    :mod:`.manybody`; the SW table is sized on the neighbours within 1.1 a σ (× the multiplier),
    so a crystal whose next shell sits at the cutoff does not overflow at its first vibration."""

    sw: StillingerWeber | None = None
    sw_slots: int | None = None

    @property
    def graph_cutoff(self) -> float:
        """The network's graph at the network's cutoff, not at the lists' (a σ may be larger)."""
        return self.model.cutoff * self.strain_reach

    def fit_capacity(self, R, idx) -> "SWManyBodyPotential":
        if self.graph_format == "dense":
            return self
        n = R.shape[0]
        d = _dense_vectors(jnp.asarray(R), jnp.asarray(idx), self.box_size)
        near = (jnp.asarray(idx) < n) & (jnp.sum(d * d, -1) < (1.1 * self.sw.cutoff * self.strain_reach) ** 2)
        k = math.ceil(int(jnp.max(jnp.sum(near, 1))) * self.capacity_multiplier)
        return replace(super().fit_capacity(R, idx), sw_slots=max(1, k))

    def grow_capacity(self) -> "SWManyBodyPotential":
        return replace(super().grow_capacity(), sw_slots=math.ceil(1.25 * self.sw_slots) + 1)

    def table(self, R, idx):
        """(SWTable, overflow) at SW's cutoff (× ``strain_reach`` under a fixed strain)."""
        return sw_table(idx, R, self.box_size, self.sw.cutoff * self.strain_reach, self.sw_slots)

    def strained(self, eps) -> "SWManyBodyPotential":
        return replace(super().strained(eps), sw_slots=None)

    def capacity_overflow(self, R, idx):
        if not self.sparse:
            return jnp.asarray(False)
        return super().capacity_overflow(R, idx) | self.table(R, idx)[1]

    def features_overflow(self, feats):
        if not self.sparse:
            return jnp.asarray(False)
        return super().features_overflow(feats) | jnp.any(feats[2].count > self.sw_slots)

    def features_on_list(self, R, idx, box_size):
        if not self.sparse:
            return (R, idx)
        return (R, self.graph(R, idx)[0], self.table(R, idx)[0])

    def sw_energy(self, R, idx, eps):
        """SW two- and three-body energy on a dense list or table ``idx`` (N, K)."""
        n = R.shape[0]
        two = self._prior_energy(_dense_vectors(R, idx, self.box_size), idx < n, eps)
        return two + three_body(self.sw, R, idx, self.box_size, eps)

    def energy_from_features(self, params, feats, scale=1.0, strain=None):
        R = feats[0]
        eps = _strain(scale, strain, R.dtype, self.deformation)
        species = None if self.species is None else jnp.asarray(self.species)
        if len(feats) == 3:
            _, g, table = feats
            return self.sw_energy(R, table.idx, eps) + self.model.energy_sparse(
                params["model"], R, g, self.box_size, species, eps)
        idx = feats[1]
        return self.sw_energy(R, idx, eps) + self.model.energy(params["model"], R, idx, self.box_size, species, eps)


def build(prior_cfg, model_cfg, model_cutoff: float) -> SWManyBodyPotential:
    """From ``prior: {kind: stillinger_weber, epsilon:, sigma:, [a, lam, gamma, A, B]}`` and a
    graph ``model`` group (DimeNet++ or three_body)."""
    if model_cfg.get("kind") not in GRAPH_MODELS:
        raise UserError(f"prior.kind=stillinger_weber is a many-body prior for a graph model "
                        f"({' or '.join(GRAPH_MODELS)}), got model.kind={model_cfg.get('kind')!r}",
                        "select model=three_body or model=dimenet (or another prior)")
    allowed = {"kind", "epsilon", "sigma", *DIMENSIONLESS, *SW_HARD_CODED}
    unknown = sorted(set(prior_cfg) - allowed)
    if unknown:
        raise UserError(f"prior: unknown key(s) {unknown} for kind stillinger_weber",
                        f"use {', '.join(sorted(allowed - {'kind'}))}")
    for k in SW_HARD_CODED:
        if prior_cfg.get(k) is not None and abs(float(prior_cfg[k]) - SW_PARAMS[k][0]) > 1e-6:
            raise UserError(f"prior.{k}={prior_cfg[k]}: JAX MD's Stillinger–Weber hard-codes {k} = "
                            f"{SW_PARAMS[k][0]:.6g}", f"remove prior.{k}")
    kw = {"epsilon": number(prior_cfg, "epsilon", prefix="prior", lo=0.0, lo_open=True, example="200.0"),
          "sigma": number(prior_cfg, "sigma", prefix="prior", lo=0.0, lo_open=True, example="0.14")}
    for k in DIMENSIONLESS:
        kw[k] = number(prior_cfg, k, prefix="prior", lo=0.0, lo_open=True, required=False,
                       default=SW_PARAMS[k][0], example=str(SW_PARAMS[k][0]))
    sw = StillingerWeber(**kw)
    return build_many_body(sw.pair, model_cfg, max(float(model_cutoff), sw.cutoff), cls=SWManyBodyPotential, sw=sw)
