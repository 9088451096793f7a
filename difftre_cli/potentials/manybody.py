"""Many-body potential U(R) = Σ_pairs u_prior(r_ij) + U_θ(R) with a graph model U_θ: DimeNet++
(potentials/gnn.py) or the Stillinger–Weber-form three-body model (potentials/three_body.py),
both on the graph layer potentials/graph.py (:data:`GRAPH_MODELS`).

Two graph formats, same values (tests/test_gnn.py):

- dense: the network runs on the dense neighbour list (N, M); every list slot and every
  (slot, slot) pair is computed, padding included. Used while no capacity is set.
- sparse: the pairs closer than the cutoff as an edge list, their angles in atom-centred slots
  (:func:`graph.sparse_graph`), with fixed capacities ``max_edges`` (edges) and ``max_degree``
  (slots per atom) measured on a configuration (:meth:`ManyBodyPotential.fit_capacity`).
  Coarse-grained water (N = 901, cutoff 0.5 nm) has ~16 neighbours per molecule within the
  cutoff (at most ~21) but ~45-58 list slots (cutoff + skin, capacity margin), so the sparse
  graph has ~6x fewer slot pairs than the dense list.

Capacities are shapes, so they live on the (immutable) potential; the sampler and the engine
keep them honest through the hooks of a :class:`~.protocol.GraphCapacity` potential
(``has_graph_capacity``):

- ``fit_capacity(R, idx) -> potential``: capacities measured at R (× ``capacity_multiplier``);
- ``capacity_overflow(R, idx) -> bool``: jit-able, True when the graph at R would not fit;
  the sampler checks it at every position where it evaluated a force, and on overflow
  grows the capacities (``grow_capacity``) and recomputes the segment, exactly as for the
  neighbour list: never a silently truncated graph;
- ``features_overflow(feats) -> bool``: the same for the observable engine's stored graphs.

The observable engine's side of the protocol (protocol.py; ``takes_strain``, ``snapshot_batch``):

- θ-independent features of a stored state are its positions and its graph ``(R, graph)``
  (or ``(R, idx)`` without capacities); U_θ is re-evaluated from them at every update;
- ``energy_from_features(params, feats, scale=1.0, strain=None)`` applies a uniform strain s
  (every minimum-image displacement becomes s·d) or a general (3, 3) strain ε
  (d → (I + ε) d), so ∂U/∂s at s = 1 is the virial including the box term — valid for
  many-body potentials, unlike a pair-only formula;
- ``snapshot_batch``: stored states are evaluated ``snapshot_batch`` at a time (``lax.map``),
  not all at once, which bounds the memory of a network's per-triplet intermediates.

Forces for the sampler are −∇_R U by autodiff.

A crystal at a fixed finite strain ε (the stress–strain curve, stress_strain.py) is simulated in
*reference* coordinates: :meth:`ManyBodyPotential.strained` (``can_strain``) gives the potential
U_ε(R) = U((I + ε) R, (I + ε) h), i.e. every minimum-image displacement of the cubic reference box
becomes (I + ε) d before anything is computed from it. Positions sampled from exp(−βU_ε) are the
strained crystal's configurations mapped back by (I + ε)⁻¹ (a constant Jacobian), so the cubic
box, its neighbour lists and the sampler stay as they are. Exactness: lists and graphs are built
in the reference frame at the cutoff × ``strain_reach`` = 1/s_min(I + ε) (every pair whose
strained distance is inside the cutoff is listed) and all cutoff masks act on strained
distances. Strain derivatives then act on top: a further strain δ gives the total deformation
(I + δ)(I + ε), so ∂U/∂δ at δ = 0 is Ω(ε) times the Born stress of the strained crystal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import choice, number
from ..errors import UserError
from ..neighbors import minimum_image
from . import gnn, three_body
from .graph import SparseGraph, graph_counts, sparse_capacity, sparse_graph
from .protocol import GraphCapacity


def _strain(scale, strain, dtype, fixed=None):
    """The strain of the displacements: uniform ``scale`` and/or ``strain`` δ, on top of a fixed
    strain ε of the box (``fixed``, nested tuples or None): (I + δ)(I + ε) − I."""
    eps = (jnp.asarray(scale, dtype) - 1.0) * jnp.eye(3, dtype=dtype)
    eps = eps if strain is None else eps + jnp.asarray(strain, dtype)
    if fixed is None:
        return eps
    e0 = jnp.asarray(fixed, dtype)
    return e0 + eps + eps @ e0


def strain_reach(eps) -> float:
    """1 / smallest singular value of I + ε: a pair at reference distance d ends up no closer than
    d / reach, so lists at cutoff × reach hold every pair inside the cutoff after the strain."""
    return float(1.0 / np.linalg.svd(np.eye(3) + np.asarray(eps, float), compute_uv=False).min())


def _edge_vectors(R, senders, receivers, box):
    n = R.shape[0]
    return minimum_image(R[jnp.minimum(senders, n - 1)] - R[jnp.minimum(receivers, n - 1)], box)


def _dense_vectors(R, idx, box):
    n = R.shape[0]
    return minimum_image(R[jnp.minimum(idx, n - 1)] - R[:, None, :], box)


@dataclass(frozen=True)
class ManyBodyPotential(GraphCapacity):
    prior: Callable          # pair prior u(r), elementwise
    model: object            # a graph model (GRAPH_MODELS): GNNModel, ThreeBodyModel
    cutoff: float
    box_size: float | None = None
    species: np.ndarray | None = None
    snapshot_batch: int = 8
    max_edges: int | None = None          # sparse-graph capacities (None: dense format)
    max_degree: int | None = None
    capacity_multiplier: float = 1.25
    graph_format: str = "sparse"          # "dense": never fit capacities (checks, benchmarks)
    deformation: tuple | None = None      # fixed strain ε of the box, (3, 3) nested tuples (module doc)
    strain_reach: float = 1.0             # lists and graphs at cutoff × this (module doc)
    takes_strain = True      # energy_from_features(..., strain=ε): Born terms (module doc)
    can_strain = True        # strained(ε): the crystal under a fixed strain (module doc)

    @property
    def list_cutoff(self) -> float:
        """Reference-frame radius of the neighbour lists: every pair inside the cutoff after the
        fixed strain (the cutoff itself when there is none)."""
        return self.cutoff * self.strain_reach

    @property
    def graph_cutoff(self) -> float:
        """Reference-frame radius of the model's graph (the list's, unless a subclass's lists
        reach further than its model)."""
        return self.list_cutoff

    def strained(self, eps) -> "ManyBodyPotential":
        """This potential for the crystal strained by ε (3, 3): U_ε(R) = U of the displacements
        (I + ε) d of the reference box (module doc). Capacities are measured again."""
        eps = np.asarray(eps, float)
        if np.allclose(eps, 0.0):
            return replace(self, deformation=None, strain_reach=1.0, max_edges=None, max_degree=None)
        return replace(self, deformation=tuple(map(tuple, eps.tolist())), strain_reach=strain_reach(eps),
                       max_edges=None, max_degree=None)

    def init(self, key):
        return {"model": self.model.init(key)}

    def bind(self, system) -> "ManyBodyPotential":
        species = np.asarray(system.species, np.int32) if len(system.species_names) > 1 else None
        box = None if system.box_size is None else float(system.box_size)   # None: open space
        return replace(self, box_size=box, species=species)

    # -- sparse-graph capacities ----------------------------------------------------------
    @property
    def sparse(self) -> bool:
        return self.max_edges is not None

    def fit_capacity(self, R, idx) -> "ManyBodyPotential":
        """Capacities for the graph of the configuration R (dense list ``idx``) × the multiplier."""
        if self.graph_format == "dense":
            return self
        ne, nd = sparse_capacity(idx, R, self.box_size, self.graph_cutoff, self.capacity_multiplier)
        return replace(self, max_edges=ne, max_degree=nd)

    def grow_capacity(self) -> "ManyBodyPotential":
        return replace(self, max_edges=math.ceil(1.25 * self.max_edges),
                       max_degree=math.ceil(1.25 * self.max_degree))

    def graph(self, R, idx):
        """(SparseGraph, overflow) of the pairs of ``idx`` closer than the cutoff at R."""
        return sparse_graph(idx, R, self.box_size, self.graph_cutoff, self.max_edges, self.max_degree)

    def capacity_overflow(self, R, idx):
        if not self.sparse:
            return jnp.asarray(False)
        # counts only: the force call builds the graph itself, at the same positions
        n_edges, degree = graph_counts(idx, R, self.box_size, self.graph_cutoff)
        return (n_edges > self.max_edges) | (degree > self.max_degree)

    def features_overflow(self, feats):
        if not self.sparse:
            return jnp.asarray(False)
        g = feats[1]
        return jnp.any(g.n_edges > self.max_edges) | jnp.any(g.degree > self.max_degree)

    # -- energies -------------------------------------------------------------------------
    def features_on_list(self, R, idx, box_size):
        return (R, self.graph(R, idx)[0]) if self.sparse else (R, idx)

    def _prior_energy(self, dr, valid, eps):
        """½ Σ over directed pairs of u_prior(|(I + ε) d|) for pairs whose strained distance is
        inside the cutoff."""
        dr = dr + dr @ eps.T
        mask = valid & (jnp.sum(dr * dr, -1) < self.cutoff ** 2)
        dr = jnp.where(mask[..., None], dr, jnp.zeros(3, dr.dtype).at[0].set(0.5 * self.cutoff))
        r = jnp.sqrt(jnp.sum(dr * dr, -1))
        return 0.5 * jnp.sum(jnp.where(mask, self.prior(r), 0.0))

    def energy_from_features(self, params, feats, scale=1.0, strain=None):
        R, g = feats
        box, n = self.box_size, R.shape[0]
        eps = _strain(scale, strain, R.dtype, self.deformation)
        species = None if self.species is None else jnp.asarray(self.species)
        if isinstance(g, SparseGraph):
            valid = (g.senders < n) & (g.receivers < n)
            u_prior = self._prior_energy(_edge_vectors(R, g.senders, g.receivers, box), valid, eps)
            return u_prior + self.model.energy_sparse(params["model"], R, g, box, species, eps)
        if getattr(self.model, "graph_free", False) and self.model.cutoff == self.cutoff:
            # one pass over the list: the model adds the prior to its pair term (same cutoff)
            return self.model.energy(params["model"], R, g, box, species, eps, pair_prior=self.prior)
        u_prior = self._prior_energy(_dense_vectors(R, g, box), g < n, eps)
        return u_prior + self.model.energy(params["model"], R, g, box, species, eps)

    def energy_fn(self, box_size: float | None):
        pot = replace(self, box_size=None if box_size is None else float(box_size))

        def energy(R, neighbor, params, **unused):
            return pot.energy_from_features(params, pot.features_on_list(R, neighbor.idx, box_size))
        return energy

    def force_fn(self, box_size: float):
        energy = self.energy_fn(box_size)

        def force(R, neighbor, params, **unused):
            return -jax.grad(energy)(R, neighbor, params)
        return force


#: the graph models a many-body potential hosts: ``model.kind`` -> build(model config)
GRAPH_MODELS = {"dimenet": gnn.build, "three_body": three_body.build}


def build(prior_fn, model_cfg, cutoff: float, cls=ManyBodyPotential, **fields) -> ManyBodyPotential:
    """The many-body potential (``cls``: ManyBodyPotential or a subclass taking ``fields`` too) with
    a graph ``model`` group (:data:`GRAPH_MODELS`: DimeNet++ or the SW-form three-body model) over
    the pair prior ``prior_fn``."""
    batch = number(model_cfg, "snapshot_batch", prefix="model", integer=True, lo=1, required=False, default=8,
                   example="8")
    mult = number(model_cfg, "capacity_multiplier", prefix="model", lo=1.0, required=False, default=1.25,
                  example="1.25")
    graph_format = choice(model_cfg, "graph_format", ("sparse", "dense"), prefix="model", default="sparse",
                          what="graph format")
    own = ("snapshot_batch", "capacity_multiplier", "graph_format")
    model = GRAPH_MODELS[model_cfg.get("kind")]({k: v for k, v in model_cfg.items() if k not in own})
    if getattr(model, "graph_free", False):   # works on the neighbour list itself: nothing to fit
        if model_cfg.get("graph_format") == "sparse":
            raise UserError(f"model.graph_format=sparse: model.kind={model_cfg.get('kind')} needs no edge/triplet "
                            "graph (it runs on the neighbour list)", "remove model.graph_format")
        graph_format = "dense"
    return cls(prior=prior_fn, model=model, cutoff=float(cutoff), snapshot_batch=batch,
               capacity_multiplier=float(mult), graph_format=graph_format, **fields)
