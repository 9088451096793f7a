"""The sampler: equilibration, production and subsampling of a whole reference trajectory
in one jit-compiled call, with reference energies U_ref(S_i) recorded for each kept snapshot.

Integrators come from JAX MD (NVT Langevin/BAOAB, NVT Nosé–Hoover chain, NVE). The
neighbour list is updated every step (rebuilt only when a particle moved more than half the
skin); after each segment its overflow flag is checked and, on overflow, the list is
re-allocated with more room and the segment recomputed from its starting state.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax_md import simulate as jmd_simulate
from jax_md import space

from . import neighbors
from .errors import UserError

log = logging.getLogger("difftre")

# JAX MD's Nosé–Hoover kinetic energy asks for a float64 sum (util.high_precision_sum); in
# float32 runs JAX truncates it and warns at every trace. The result is the float32 sum we use.
warnings.filterwarnings("ignore", message="Explicitly requested dtype float64 requested in",
                        category=UserWarning)


class Trajectory(NamedTuple):
    """Kept snapshots of one reference trajectory.

    positions: (S, N, 3) in the system's length unit; energies: (S,) U_ref in its energy
    unit; kT: (S,) instantaneous kinetic temperature (energy unit); step: (S,) MD step index.
    """

    positions: Any
    energies: Any
    kT: Any
    step: Any


class SampleResult(NamedTuple):
    trajectory: Trajectory
    state: Any
    neighbor: Any
    ok: bool          # False if unstable (see ``reason``)
    retries: int      # neighbour-list re-allocations needed
    reason: str = ""  # why not ok: non-finite energies/positions, hot, neighbour-list overflow


@dataclass(frozen=True)
class SamplerConfig:
    integrator: str = "langevin"      # langevin | nose_hoover | nve
    dt: float = 0.005
    gamma: float = 1.0                # Langevin friction (1/time)
    chain_length: int = 3             # Nosé–Hoover chain length
    tau_steps: float = 100.0          # Nosé–Hoover coupling time in units of dt
    equilibration_steps: int = 1000   # before each later trajectory
    first_equilibration_steps: int = 5000
    production_steps: int = 1000
    every: int = 10                   # keep one snapshot every `every` steps
    skin: float = 0.3
    capacity_multiplier: float = 1.25
    max_retries: int = 5
    max_kT_factor: float = 10.0       # kinetic kT above this × set kT counts as an exploding simulation

    @property
    def n_snapshots(self) -> int:
        return self.production_steps // self.every


def sampler_config(cfg) -> SamplerConfig:
    """:class:`SamplerConfig` from the ``simulator`` config group, every key range-checked."""
    from .checks import choice, number

    fields = SamplerConfig.__dataclass_fields__
    unknown = sorted(k for k in cfg if k not in fields and k != "kind")
    if unknown:
        raise UserError(f"simulator: unknown key(s) {unknown}", f"valid keys: {sorted(fields)}")
    P, d = "simulator", SamplerConfig()
    kw = {"integrator": choice(cfg, "integrator", ("langevin", "nose_hoover", "nve"), prefix=P,
                               default=d.integrator, what="integrator")}

    def num(key, example, **bounds):
        kw[key] = number(cfg, key, prefix=P, required=False, default=getattr(d, key), example=example, **bounds)

    num("dt", "0.005", lo=0.0, lo_open=True)
    num("gamma", "1.0", lo=0.0, lo_open=True)
    num("chain_length", "3", integer=True, lo=1)
    num("tau_steps", "100", lo=0.0, lo_open=True)
    num("equilibration_steps", "1000", integer=True, lo=0)
    num("first_equilibration_steps", "5000", integer=True, lo=0)
    num("production_steps", "1000", integer=True, lo=1)
    num("every", "10", integer=True, lo=1)
    num("skin", "0.3", lo=0.0)
    # A list allocated with fewer slots than the measured occupancy silently drops neighbours.
    num("capacity_multiplier", "1.25", lo=1.0)
    num("max_retries", "5", integer=True, lo=0)
    num("max_kT_factor", "10", lo=1.0, lo_open=True)
    sc = SamplerConfig(**kw)
    if sc.production_steps < sc.every:
        raise UserError(f"simulator.production_steps={sc.production_steps} is smaller than simulator.every="
                        f"{sc.every}: no snapshot would be kept",
                        "raise simulator.production_steps or lower simulator.every")
    return sc


class Sampler:
    """Samples reference trajectories of ``potential`` for ``system`` with parameters θ.

    ``init(key, params)`` gives the initial integrator state and neighbour list;
    ``sample(params, state, neighbor, first)`` runs equilibration + production in one
    compiled call and returns a :class:`SampleResult`.
    """

    def __init__(self, potential, system, cfg: SamplerConfig):
        self.potential = potential
        self.system = system
        self.cfg = cfg
        box = float(system.box_size)
        self.box = box
        _, self.shift = space.periodic(box)
        # a potential of a strained crystal lists pairs further out in its reference frame (manybody.py)
        list_cutoff = getattr(potential, "list_cutoff", potential.cutoff)
        self.neighbor_fn = neighbors.make_neighbor_fn(box, list_cutoff, cfg.skin, cfg.capacity_multiplier)
        # Potentials with capacities of their own (a graph network's edge and triplet lists)
        # get them measured on the first configuration they see, and grown on overflow.
        self._fit_capacity = hasattr(potential, "fit_capacity")
        self._bind(potential)

    def _bind(self, potential):
        """Force, energy, integrator and the compiled segment for ``potential``."""
        cfg, box = self.cfg, self.box
        self.potential = potential
        self.force = potential.force_fn(box)
        self.energy = potential.energy_fn(box)
        kT = float(self.system.kT)
        if cfg.integrator == "langevin":
            self._init, self._step = jmd_simulate.nvt_langevin(self.force, self.shift, cfg.dt, kT, gamma=cfg.gamma)
        elif cfg.integrator == "nose_hoover":
            self._init, self._step = jmd_simulate.nvt_nose_hoover(
                self.force, self.shift, cfg.dt, kT, chain_length=cfg.chain_length, tau=cfg.tau_steps * cfg.dt)
        else:
            self._init, self._step = jmd_simulate.nve(self.force, self.shift, cfg.dt)
        self._run = jax.jit(self._run_impl, static_argnames=("n_snapshots", "every"))

    def _capacity_overflow(self, R, nbrs):
        if not hasattr(self.potential, "capacity_overflow"):
            return jnp.asarray(False)
        return self.potential.capacity_overflow(R, nbrs.idx)

    def _ensure_capacity(self, R, nbrs):
        if self._fit_capacity:
            self._fit_capacity = False
            self._bind(self.potential.fit_capacity(R, nbrs.idx))
            log.info("graph capacities: %d edges, %d triplets", self.potential.max_edges, self.potential.max_triplets)

    # ----------------------------------------------------------------------------------
    def init(self, key, params, positions=None):
        R = jnp.asarray(self.system.positions if positions is None else positions)
        nbrs = self.neighbor_fn.allocate(R)
        # A lattice start has fewer neighbours than the liquid it melts into: allocate 30 % more
        # room now rather than overflow, re-allocate and recompile in the first segment.
        nbrs = self.neighbor_fn.allocate(R, extra_capacity=int(0.3 * nbrs.max_occupancy))
        self._ensure_capacity(R, nbrs)
        # Every JAX MD integrator takes kT (initial momenta; thermostat temperature) as a keyword.
        state = self._init(key, R, mass=self.system.mass, kT=self.system.kT, neighbor=nbrs, params=params)
        return state, nbrs

    def _run_impl(self, params, state, nbrs, n_equilibration, n_snapshots, every):
        # ``full``: a potential's own capacity overflowed at some position where it was
        # evaluated (every step's starting position is one: the previous step's forces).
        def one_step(carry, _=None):
            st, nb, full = carry
            nb = self.neighbor_fn.update(st.position, nb)
            full = full | self._capacity_overflow(st.position, nb)
            st = self._step(st, neighbor=nb, params=params)
            return st, nb, full

        def n_steps(carry, n):
            return lax.fori_loop(0, n, lambda i, c: one_step(c), carry)

        carry = n_steps((state, nbrs, jnp.asarray(False)), n_equilibration)

        def snapshot(carry, _):
            carry = n_steps(carry, every)
            st, nb, full = carry
            nb = self.neighbor_fn.update(st.position, nb)
            full = full | self._capacity_overflow(st.position, nb)
            u = self.energy(st.position, nb, params)
            kinetic = 0.5 * jnp.sum(st.momentum ** 2 / st.mass)
            kT_inst = 2.0 * kinetic / (3 * (st.position.shape[0] - 1))
            return (st, nb, full), (st.position, u, kT_inst)

        (state, nbrs, full), (pos, u, kT) = lax.scan(snapshot, carry, None, length=n_snapshots)
        return state, nbrs, full, pos, u, kT

    def sample(self, params, state, nbrs, first: bool = False) -> SampleResult:
        """Equilibrate then produce; on neighbour-list overflow re-allocate and recompute."""
        cfg = self.cfg
        n_eq = cfg.first_equilibration_steps if first else cfg.equilibration_steps
        self._ensure_capacity(state.position, nbrs)
        extra = 0
        overflowed = False
        for attempt in range(cfg.max_retries + 1):
            new_state, new_nbrs, full, pos, u, kT = self._run(params, state, nbrs, jnp.asarray(n_eq, jnp.int32),
                                                              n_snapshots=cfg.n_snapshots, every=cfg.every)
            list_full, graph_full = bool(new_nbrs.did_buffer_overflow), bool(full)
            overflowed = list_full or graph_full
            if not overflowed:
                break
            if attempt == cfg.max_retries:
                break
            if graph_full:
                self._bind(self.potential.grow_capacity())
                log.info("graph capacity overflowed; growing to %d edges, %d triplets and recomputing the "
                         "segment", self.potential.max_edges, self.potential.max_triplets)
            if list_full:
                extra = max(8, 2 * extra) if extra else 8
                log.info("neighbour list overflowed (capacity %d); re-allocating with %d extra slots and "
                         "recomputing the segment", int(nbrs.idx.shape[1]), extra)
                nbrs = self.neighbor_fn.allocate(state.position, extra_capacity=extra * (attempt + 1))
        return self.result(state, nbrs, (new_state, new_nbrs, pos, u, kT), n_eq, attempt, overflowed)

    def result(self, state, nbrs, out, n_eq: int, attempt: int, overflowed: bool) -> SampleResult:
        """The :class:`SampleResult` of a segment ``out`` = (state, neighbour list, positions,
        energies, kT) of ``_run_impl`` that started from ``state``/``nbrs`` after ``attempt``
        re-allocations (also used by the batched sampler, parallel.py)."""
        cfg = self.cfg
        new_state, new_nbrs, pos, u, kT = out
        steps = n_eq + cfg.every * (1 + np.arange(cfg.n_snapshots))
        traj = Trajectory(pos, u, kT, steps)
        if overflowed:
            # A list that keeps overflowing while its capacity grows means particles pile up:
            # the segment's results are not trustworthy, so it counts as an unstable simulation.
            return SampleResult(traj, state, nbrs, False, attempt,
                                f"neighbour list or graph still overflowing after {cfg.max_retries} re-allocations")
        # Unstable: non-finite energies or positions, or a kinetic temperature far above the
        # thermostat's (energies can stay finite in float32 while particles fly apart).
        finite = bool(jnp.all(jnp.isfinite(u)) & jnp.all(jnp.isfinite(pos)))
        cool = bool(jnp.all(kT < cfg.max_kT_factor * self.system.kT))
        ok = finite and cool
        reason = "" if ok else ("non-finite energies or positions" if not finite else
                                f"kinetic temperature above {cfg.max_kT_factor:g} x the thermostat's")
        return SampleResult(traj, new_state, new_nbrs, ok, attempt, reason)

