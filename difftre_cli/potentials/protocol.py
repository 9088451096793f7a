"""What a potential is: the protocol of every potential the samplers (sampler.py, simulate.py,
onebody.py, parallel.py) and the observable engine (observables/engine.py) use.

Every potential derives from :class:`Potential` and is either a :class:`BoxPotential`
(particles in a periodic cubic box on neighbour lists: pair potentials, mixtures, graph
networks) or a :class:`OneBodyPotential` (independent particles in an external field). A box
potential with capacities of its own (a graph network's edge list and per-atom slots) is a
:class:`GraphCapacity`.

What a potential MUST provide is abstract here (or, for data, annotated). What it MAY provide
is declared here with its default, and a potential that provides it overrides the declaration;
callers read the declaration and never probe for attributes:

- ``one_body`` (False): it is a :class:`OneBodyPotential` (set there);
- ``has_graph_capacity`` (False): it is a :class:`GraphCapacity` (set there);
- ``takes_strain`` (False): ``energy_from_features(..., strain=ε)`` takes a general (3, 3)
  strain, so Born stress and stiffness can be computed (observables/mechanical.py);
- ``can_strain`` (False): :meth:`Potential.strained` gives the potential of the crystal under a
  fixed strain (the stress–strain curve, stress_strain.py);
- ``snapshot_batch`` (None): the engine evaluates stored states this many at a time
  (``lax.map``, bounded memory) instead of all at once (``vmap``);
- ``temperature_dependent`` (False): u depends on the state point's kT, bound by ``bind``;
- :meth:`Potential.bind` (itself): the potential at one state point (species, kT, box);
- :meth:`Potential.pair_terms` (()): the pair functions of a sum-of-pairs potential
  (:class:`PairTerm`: the pair curve of ``evaluate``, IBI, Boltzmann inversion).

tests/test_protocol.py builds every potential the presets can produce and checks it against
this protocol (and each declaration against what the potential does).
"""
from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, NamedTuple


class PairTerm(NamedTuple):
    """One pair function of a potential that is a sum of pair terms (:meth:`Potential.pair_terms`)."""

    key: str | None                 # its parameters: params["model"][key]; None: params["model"] itself
    species: tuple[str, str] | None  # the species pair (a, b) it acts between; None: every pair (one species)
    prior: Callable                 # u_prior(r), elementwise
    u: Callable                     # u(params, r) = u_prior(r) + u_θ(r), elementwise on the full parameters


class Potential(abc.ABC):
    """Base of every potential: what each one must provide and the declared optional parts."""

    one_body: ClassVar[bool] = False
    takes_strain: ClassVar[bool] = False
    can_strain: ClassVar[bool] = False
    has_graph_capacity: ClassVar[bool] = False
    snapshot_batch: int | None = None

    @abc.abstractmethod
    def init(self, key) -> Any:
        """The learnable parameters (a pytree); ``{}`` for a potential without a model."""

    @abc.abstractmethod
    def energy_from_features(self, params, feats, scale=1.0):
        """U_θ of one stored state from its θ-independent features (``features_on_list`` or
        ``features``); ``scale`` s a uniform strain (d/ds at 1: the virial). A potential with
        ``takes_strain`` also takes ``strain=None`` (a (3, 3) ε, d ↦ (I + ε) d)."""

    @property
    def temperature_dependent(self) -> bool:
        return False

    @property
    def linear_in_params(self) -> bool:
        """U_θ is affine in θ (U_0 + ⟨θ, h⟩): the observable engine then stores h = ∂U/∂θ per state
        (observables/linear.py). A declaration, tested per potential against its distances' energy."""
        return False

    def bind(self, system) -> "Potential":
        """The potential at one state point of ``system`` (species, kT, box); itself by default."""
        return self

    def strained(self, eps) -> "Potential":
        """The potential of the crystal under the fixed strain ε (3, 3); only with ``can_strain``."""
        raise NotImplementedError(f"{type(self).__name__} cannot be strained (can_strain is False)")

    def pair_terms(self) -> tuple[PairTerm, ...]:
        """The pair functions of a sum-of-pairs potential (one per species pair); () otherwise
        (graph networks, one-body fields): no pair curve, no IBI, no Boltzmann inversion."""
        return ()


class BoxPotential(Potential):
    """Particles in a periodic cubic box (simulate.Sampler, the engine's neighbour lists)."""

    cutoff: float   # interaction range (required data)

    @property
    def list_cutoff(self) -> float:
        """Radius of the neighbour lists the sampler and the engine build for it."""
        return self.cutoff

    @abc.abstractmethod
    def force_fn(self, box_size: float) -> Callable:
        """``force(R, neighbor, params) -> (N, 3)``."""

    def initial_force_fn(self, box_size: float) -> Callable:
        """The forces of the sampler's initial state, evaluated once per run: ``force_fn`` unless
        the potential has a program that is cheaper to build for a single call."""
        return self.force_fn(box_size)

    @abc.abstractmethod
    def energy_fn(self, box_size: float) -> Callable:
        """``energy(R, neighbor, params) -> scalar``."""

    @abc.abstractmethod
    def features_on_list(self, R, idx, box_size):
        """θ-independent energy features of one state on a dense neighbour list ``idx``."""


class GraphCapacity(BoxPotential):
    """A box potential with capacities of its own (fixed-shape graphs), kept honest by the
    sampler's overflow rule and the engine (potentials/manybody.py describes them)."""

    has_graph_capacity: ClassVar[bool] = True
    graph_format: str           # "sparse": capacities are fitted; "dense": never (checks)
    max_edges: int | None
    max_degree: int | None

    @property
    @abc.abstractmethod
    def sparse(self) -> bool:
        """Whether capacities are set (the graph is sparse)."""

    @abc.abstractmethod
    def fit_capacity(self, R, idx) -> "GraphCapacity":
        """The potential with capacities measured at R (× its capacity multiplier)."""

    @abc.abstractmethod
    def grow_capacity(self) -> "GraphCapacity":
        """The potential with larger capacities (after an overflow)."""

    @abc.abstractmethod
    def capacity_overflow(self, R, idx):
        """jit-able: True when the graph at R would not fit."""

    @abc.abstractmethod
    def features_overflow(self, feats):
        """jit-able: True when stored features overflowed their capacities."""


class OneBodyPotential(Potential):
    """U(R) = Σ_n u(x_n) of independent particles in an external field (onebody.OneBodySampler):
    no box, no neighbour list; every (snapshot, particle) is a state of its own in the engine."""

    one_body: ClassVar[bool] = True

    @abc.abstractmethod
    def features(self, positions):
        """θ-independent features of snapshots (..., N, d)."""

    @abc.abstractmethod
    def per_particle_energy(self, params, R):
        """(N,) energies of positions R (N, d)."""

    @abc.abstractmethod
    def force(self, params, R):
        """(N, d) forces −∂U/∂R."""
