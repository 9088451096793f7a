"""Particles in a periodic box, or a molecule in open space (``system.box_size`` None: JAX MD's
``space.free()``, all-pairs lists without minimum image): the case of the sampler interface
(sampler.py) that carries neighbour lists and, for graph networks, graph capacities of its own.

In open space every step translates the particles so that their centre stays at the origin:
U is translation-invariant and the momenta are untouched, so the dynamics is the same, but a
molecule that diffuses for nanoseconds would otherwise drift to where float32 positions are
coarse (at 50 nm their spacing, 4e-6 nm, already quadruples the NVE energy drift).

Integrators come from JAX MD (NVT Langevin/BAOAB, NVT Nosé–Hoover chain, NVE). The neighbour
list is updated every step (rebuilt only when a particle moved more than half the skin). A
potential of a strained crystal (``potentials/manybody.py``) simulates it in the cubic
reference box and lists pairs out to its ``list_cutoff``. Potentials with capacities of their
own (a graph network's edge list and per-atom slots) have them measured on the first configuration
they see and grown on overflow under the sampler's one overflow rule.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import simulate as jmd_simulate
from jax_md import space

from . import neighbors
from .jax_setup import RUN_ONCE_COMPILER_OPTIONS
from .overflow import grown_extra
from .sampler import ChunkedSampler, SamplerConfig
from .shared_jit import Bound

log = logging.getLogger("difftre")


class Sampler(ChunkedSampler):
    """Samples reference trajectories of ``potential`` for ``system`` with parameters θ:
    ``init(key, params) -> (state, nbrs)``, ``sample(params, state, nbrs, first) -> SampleResult``."""

    def __init__(self, potential, system, cfg: SamplerConfig):
        self.potential = potential
        self.system = system
        self.cfg = cfg
        box = None if system.box_size is None else float(system.box_size)
        self.box = box
        _, self.shift = space.free() if box is None else space.periodic(box)
        self.neighbor_fn = neighbors.make_neighbor_fn(box, potential.list_cutoff, cfg.skin, cfg.capacity_multiplier)
        self._fit_capacity = potential.has_graph_capacity
        self._bind(potential)

    def _bind(self, potential):
        """Force, energy, integrator and the compiled programs for ``potential``."""
        self._set_potential(potential)
        # the initial state: one force evaluation, by the program cheapest to build for it
        self._init_state = jax.jit(self._init_impl, compiler_options=RUN_ONCE_COMPILER_OPTIONS)
        self._compile()

    def _set_potential(self, potential) -> None:
        """Force, energy and the integrator's functions for ``potential`` (nothing compiled)."""
        box, kT = self.box, float(self.system.kT)
        self.potential = potential
        self.force = potential.force_fn(box)
        self.energy = potential.energy_fn(box)
        _, self._step = self._integrator(self.force, kT)
        self._init, _ = self._integrator(potential.initial_force_fn(box), kT)

    def _init_impl(self, key, R, nbrs, params):
        # Every JAX MD integrator takes kT (initial momenta; thermostat temperature) as a keyword.
        return self._init(key, R, mass=self.system.mass, kT=float(self.system.kT), neighbor=nbrs, params=params)

    # -- one program for a data group (states.py) ---------------------------------------
    def program_data(self) -> dict | None:
        """The arrays by which this sampler's programs differ from those of a state point of its
        data group: the species of its particles ({} for one species); None if its programs
        cannot take them as arguments (a graph network grows capacities of its own)."""
        if self.potential.has_graph_capacity:
            return None
        species = getattr(self.potential, "species", None)
        return {} if species is None else {"species": np.asarray(species, np.int32)}

    def with_program_data(self, data: dict) -> Sampler:
        """A shallow copy whose potential holds ``data`` (traced inside a shared program)."""
        new = copy.copy(self)
        if data:
            new._set_potential(replace(self.potential, species=data["species"]))
        return new

    def _integrator(self, force, kT: float):
        """JAX MD's (init, step) of ``simulator.integrator`` with ``force``."""
        cfg = self.cfg
        if cfg.integrator == "langevin":
            return jmd_simulate.nvt_langevin(force, self.shift, cfg.dt, kT, gamma=cfg.gamma)
        if cfg.integrator == "nose_hoover":
            return jmd_simulate.nvt_nose_hoover(force, self.shift, cfg.dt, kT, chain_length=cfg.chain_length,
                                                tau=cfg.tau_steps * cfg.dt)
        return jmd_simulate.nve(force, self.shift, cfg.dt)

    def _capacity_overflow(self, R, nbrs):
        if not self.potential.has_graph_capacity:
            return jnp.asarray(False)
        return self.potential.capacity_overflow(R, nbrs.idx)

    def _prepare(self, positions, nbrs) -> None:
        if self._fit_capacity:
            self._fit_capacity = False
            self._bind(self.potential.fit_capacity(positions, nbrs.idx))
            log.info("graph capacities: %d edges, %d slots per atom", self.potential.max_edges, self.potential.max_degree)

    def _grow(self, state, nbrs, attempt: int, list_full: bool, graph_full: bool):
        if graph_full:
            self._bind(self.potential.grow_capacity())
            log.info("graph capacity overflowed; growing to %d edges, %d slots per atom and recomputing the chunk",
                     self.potential.max_edges, self.potential.max_degree)
        if list_full:
            extra = grown_extra(attempt)
            log.info("neighbour list overflowed (capacity %d); re-allocating with %d extra slots and "
                     "recomputing the chunk", int(nbrs.idx.shape[1]), extra)
            nbrs = self.neighbor_fn.allocate(state.position, extra_capacity=extra)
        return nbrs

    # ----------------------------------------------------------------------------------
    def init(self, key, params, positions=None, ahead: int = 0):
        R = jnp.asarray(self.system.positions if positions is None else positions)
        # A lattice start has fewer neighbours than the liquid it melts into: allocate 30 % more
        # room now rather than overflow, re-allocate and recompile in the first chunk.
        extra = int(0.3 * self.neighbor_fn.measure(R)["max_occupancy"])
        nbrs = self.neighbor_fn.allocate(R, extra_capacity=extra)
        self._prepare(R, nbrs)
        if ahead:   # the chunk program compiles while the initial forces do (sampler.py)
            self.compile_chunk_ahead(params, self._init_state.eval_shape(key, R, nbrs, params), nbrs, ahead)
        state = self._init_state(key, R, nbrs, params)
        return state, nbrs

    def _advance(self, params, st, nb):
        # ``full``: a potential's own capacity overflowed at a position where it was evaluated
        # (every step's starting position is one: the step computes its forces there)
        nb = self.neighbor_fn.update(st.position, nb)
        full = self._capacity_overflow(st.position, nb)
        st = self._step(st, neighbor=nb, params=params)
        if self.box is None:   # open space: keep the centre at the origin, where float32 is finest
            st = st.set(position=st.position - jnp.mean(st.position, axis=0))
        return st, nb, full

    def _observe(self, params, st, nb):
        nb = self.neighbor_fn.update(st.position, nb)
        return nb, self._capacity_overflow(st.position, nb), self.energy(st.position, nb, params)


def share_programs(samplers: list[Sampler]) -> bool:
    """Let the samplers of one data group (states.data_groups) call one compiled chunk program
    and one initial-state program with their own species as an argument (shared_jit.py),
    instead of one program per composition (three compilations of 4–6 s each for
    config=lj_mixture). The first one is the template: it compiles the chunk program ahead
    (``init``), and the others wait for that compilation (one background compilation for the
    group). A trace counts in the ``trace_count`` of the sampler that called. False (nothing
    shared) if a sampler's programs cannot take its data as arguments."""
    data = [s.program_data() if type(s) is Sampler else None for s in samplers]
    if len(samplers) < 2 or any(d is None for d in data):
        return False
    template = samplers[0]
    current = {"owner": template}

    def chunk(d, *args):
        current["owner"].trace_count += 1
        return template.with_program_data(d)._chunk_impl(*args)

    def init_state(d, *args):
        return template.with_program_data(d)._init_impl(*args)

    chunk.__name__, init_state.__name__ = "shared_chunk", "shared_init_state"   # (JAX's compilation logs)
    chunk_program = jax.jit(chunk)
    init_program = jax.jit(init_state, compiler_options=RUN_ONCE_COMPILER_OPTIONS)
    for s, d in zip(samplers, data):
        s._chunk = Bound(chunk_program, d, s, current, leads=s is template)
        s._init_state = Bound(init_program, d)
        s.__dict__["_ahead"] = template._ahead   # one background compilation for the group
    return True
