"""The potential of coarse-grained molecules: bonded prior + non-bonded prior + learnable model.

    U(R) = U_bonded(R)                                   bonds, angles, dihedrals of the topology
         + Σ_d Σ_n [a_dn cos(nφ_d) + b_dn sin(nφ_d)]       a learnable dihedral correction (optional)
         + Σ_{pairs i<j not excluded, r < r_c} [u_prior(r_ij) + u_θ(r_ij)]   a pair prior (+ a pair model)
         + U_θ,graph(R)                                  a graph model (three-body, DimeNet++), all pairs

The dihedral correction (``model.dihedral_terms`` = M > 0: multiplicities 1..M, zero at the
start, parameters ``params["bonded"]["dihedral"]`` (D, M, 2)) is linear in its parameters, as the
cosine series it corrects; force matching fits it in one Gauss–Newton step. Pair and graph
models see φ only through distances (a 1-4 distance fixes |φ| but not its sign), so the
correction is what lets a coarse-grained backbone learn its (φ, ψ) landscape.

Exclusions follow force-field practice: pairs at most ``topology.exclusions`` bonds apart
(default 2: 1-2 and 1-3 pairs) get no non-bonded pair terms, neither the prior's nor a pair
model's; their interaction is the bonded terms'. A graph model sees every pair within its
cutoff, bonded ones included (its angles between bonded neighbours are what it learns from).
Excluded partners are a per-bead table, and an excluded slot of the dense neighbour list is
replaced by padding before the pair terms see it: no subtraction of large repulsive energies.

Works in a periodic box (minimum image) and in open space (``box_size`` None: a molecule in
vacuum or implicit solvent; neighbours.py lists all pairs without minimum image). A graph model
runs on the dense neighbour list here (``graph_format`` dense: a molecule has few beads and no
capacities to fit). ``scale`` (a uniform strain) scales every displacement, bonded ones too.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import number
from ..errors import UserError
from ..molecule import geometry
from . import manybody, pair, priors
from .manybody import ManyBodyPotential
from .pairwise import PairPotential
from .protocol import BoxPotential


def exclusion_table(pairs: np.ndarray, n: int) -> np.ndarray:
    """(N, K) the excluded partners of every bead (both directions), padded with −1."""
    partners = [[] for _ in range(n)]
    for i, j in np.asarray(pairs, int).reshape(-1, 2):
        partners[i].append(j)
        partners[j].append(i)
    k = max((len(p) for p in partners), default=0)
    table = np.full((n, k), -1, np.int32)
    for i, p in enumerate(partners):
        table[i, :len(p)] = sorted(p)
    return table


@dataclass(frozen=True)
class MoleculePotential(BoxPotential):
    """Bonded terms (``bonded``: molecule/bonded.BondedTerms or None) + the pair prior and pair model
    on the list without excluded pairs (``pair``) + a graph model on the full list (``graph`` or
    None). Exactly one of ``pair.model`` and ``graph`` may be learnable; parameters are
    ``{"model": ...}`` as for the other box potentials."""

    pair: PairPotential
    graph: ManyBodyPotential | None
    bonded: object | None
    excluded: np.ndarray = field(repr=False, compare=False)   # (N, K) exclusion_table
    box_size: float | None = None
    dihedrals: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int32), repr=False, compare=False)
    dihedral_terms: int = 0       # M of the learnable dihedral correction (0: none)

    @property
    def cutoff(self) -> float:
        return max(self.pair.cutoff, self.graph.cutoff if self.graph is not None else 0.0)

    @property
    def snapshot_batch(self):
        return None if self.graph is None else self.graph.snapshot_batch

    def init(self, key):
        params = self.graph.init(key) if self.graph is not None else self.pair.init(key)
        if self.dihedral_terms:
            params = {**params, "bonded": {"dihedral": jnp.zeros((len(self.dihedrals), self.dihedral_terms, 2))}}
        return params

    def dihedral_correction(self, params, R, box):
        """Σ_d Σ_n a_dn cos(nφ_d) + b_dn sin(nφ_d) (kJ/mol) of the learnable correction."""
        c = params["bonded"]["dihedral"]
        phi = geometry.dihedrals(R, self.dihedrals, box)
        n = jnp.arange(1, self.dihedral_terms + 1, dtype=R.dtype)
        return jnp.sum(c[..., 0] * jnp.cos(n * phi[:, None]) + c[..., 1] * jnp.sin(n * phi[:, None]))

    def bind(self, system) -> "MoleculePotential":
        box = None if system.box_size is None else float(system.box_size)
        graph = None if self.graph is None else self.graph.bind(system)
        return replace(self, graph=graph, box_size=box)

    def without_exclusions(self, idx):
        """The dense list ``idx`` (N, M) with every excluded partner replaced by padding (N)."""
        n = idx.shape[0]
        table = jnp.asarray(self.excluded)
        hit = jnp.any(idx[:, :, None] == table[:, None, :], axis=-1)
        return jnp.where(hit, n, idx)

    def features_on_list(self, R, idx, box_size):
        graph = None if self.graph is None else self.graph.features_on_list(R, idx, box_size)
        return R, self.pair.features_on_list(R, self.without_exclusions(idx), box_size), graph

    def energy_from_features(self, params, feats, scale=1.0):
        R, r, graph = feats
        energy = self.pair.energy_from_distances(params if self.graph is None else {}, r, scale)
        if self.graph is not None:
            energy = energy + self.graph.energy_from_features(params, graph, scale)
        box = None if self.box_size is None else self.box_size * scale
        if self.bonded is not None:
            energy = energy + self.bonded.energy(R * scale, box)
        if self.dihedral_terms:
            energy = energy + self.dihedral_correction(params, R * scale, box)
        return energy

    def energy_fn(self, box_size):
        pot = replace(self, box_size=None if box_size is None else float(box_size))
        graph = None if pot.graph is None else replace(pot.graph, box_size=pot.box_size)
        pot = replace(pot, graph=graph)

        def energy(R, neighbor, params, **unused):
            return pot.energy_from_features(params, pot.features_on_list(R, neighbor.idx, pot.box_size))
        return energy

    def force_fn(self, box_size):
        energy = self.energy_fn(box_size)

        def force(R, neighbor, params, **unused):
            return -jax.grad(energy)(R, neighbor, params)
        return force


def build(prior_cfg, model_cfg, cutoff: float, topology, bonded, exclusions: int) -> MoleculePotential:
    """The molecule potential of the ``prior`` group (a pair prior; its ``bonded`` key is the
    bonded prior, already built into ``bonded``), the ``model`` group (a pair model, a graph
    model or none) and the topology's exclusions (pairs at most ``exclusions`` bonds apart)."""
    prior = priors.build({k: v for k, v in prior_cfg.items() if k != "bonded"}, cutoff)
    terms = number(model_cfg, "dihedral_terms", prefix="model", integer=True, lo=0, hi=12, required=False,
                   default=0, example="3")
    if terms and not len(topology.dihedrals):
        raise UserError(f"model.dihedral_terms={terms} but the topology has no dihedrals",
                        "set model.dihedral_terms=0, or topology.dihedrals=auto")
    model_cfg = {k: v for k, v in model_cfg.items() if k != "dihedral_terms"}
    graph, pair_model = None, None
    if model_cfg.get("kind") in manybody.GRAPH_MODELS:
        if model_cfg.get("graph_format") == "sparse":
            raise UserError("model.graph_format=sparse: a molecule's graph model runs on the dense neighbour list",
                            "remove model.graph_format (molecules have few beads; nothing to fit)")
        graph = manybody.build(priors.none(cutoff), {**model_cfg, "graph_format": "dense"}, cutoff)
        k = len(topology.type_names)
        if graph.model.n_species != k:   # a species index beyond the model's tables would be clamped silently
            raise UserError(f"model.n_species={graph.model.n_species} but the topology has {k} bead types "
                            f"({', '.join(topology.type_names)})", f"set model.n_species={k}")
    else:
        pair_model = pair.build(model_cfg, cutoff)
    excluded = exclusion_table(topology.excluded_pairs(exclusions), topology.n_beads)
    return MoleculePotential(PairPotential(prior=prior, model=pair_model, cutoff=float(cutoff)), graph, bonded,
                             excluded, dihedrals=np.asarray(topology.dihedrals, np.int32), dihedral_terms=terms)
