"""Finite-temperature MD of a crystal in a general (possibly sheared) periodic box, with JAX MD:
the case of the sampler interface (sampler.py) for general boxes in fractional coordinates.

For the classical many-body potentials of :mod:`.potentials.classical` (SW silicon, metal units:
Å, eV, amu) at constant strain (NVT): JAX MD's ``space.periodic_general`` with fractional
coordinates (the box h, columns are lattice vectors, may be any non-degenerate matrix, e.g. a
strained cubic cell), a dense ``partition.neighbor_list`` of radius cutoff + skin, and the
Langevin integrator ``simulate.nvt_langevin`` (BAOAB splitting; canonical sampling without the
ergodicity problems of a Nosé–Hoover thermostat on a nearly harmonic crystal).

JAX MD works in the unit system of its inputs: with Å, eV and amu its time unit is
sqrt(amu Å² / eV) = ``units.METAL_TIME_UNIT_FS`` ≈ 10.18 fs, so dt and the friction are converted
here (:class:`MDSettings`); momenta are Cartesian (amu Å per that time unit), positions
fractional (so are the trajectory's positions), kT in eV.

Neighbours, two levels. A dense skin list (radius cutoff + skin + ``STEP_MARGIN``, rebuilt by
JAX MD when an atom has moved skin/2) and, at every energy evaluation, its compaction to the pairs
inside the cutoff (:meth:`SolidMD.within_cutoff`, ``cutoff_capacity`` slots per atom): in diamond
the skin list holds 16+ neighbours but only ~4 bonded ones are inside SW's cutoff, and the
three-body kernel costs slots², so this is ~10× fewer triplets; it is exact (SW and all its
derivatives vanish at the cutoff).

Both levels are capacities under the sampler's one overflow rule
(``ChunkedSampler.overflow_rule``): the skin list's is JAX MD's overflow flag, and
``cutoff_capacity`` is the potential's own capacity flag, raised when more neighbours than that
are inside the cutoff at a position where a step evaluated its forces (checked after every
step, so every force carried in a state was computed from a complete list). On overflow the
capacity grows (the skin list re-allocated at the chunk's starting positions, or
``cutoff_capacity`` raised and the chunk program rebuilt for it) and the chunk is recomputed from
its starting state (same random numbers), so a result is never computed with an incomplete list;
at most ``max_retries`` times per chunk, after which the result is not ``ok``. The cutoff
capacity is first fitted to the starting configuration in :meth:`SolidMD.init`, before the
initial forces are computed, as ``simulate.Sampler`` fits graph capacities.

Kinetic temperature: the sampler's convention kT = Σ p²/m / (N·d) with d = 3: Langevin dynamics
does not conserve the total momentum, so all 3N momenta are thermalised.

Friction: the default γ = 50 ps⁻¹ is strong on purpose. Langevin dynamics samples the canonical
distribution for any γ; the shear-stress fluctuations of diamond are dominated by the zone-centre
optical (Raman) mode, which a weak friction leaves ringing for picoseconds (σ_yz autocorrelation
oscillating with its 64 fs period), while γ ≈ 50 ps⁻¹ decorrelates it within ~40 fs and still
leaves the slowest acoustic mode of a 3×3×3 cell relaxing in ~0.1 ps.

``observe(md, frac, momentum, neighbor, params) -> dict`` (optional; ``md`` the sampler, whose
``energy`` has the current cutoff capacity) is called at every snapshot inside the compiled
chunk (e.g. Born terms and kinetic stress); its outputs are stacked along a leading snapshot
axis in the trajectory's records (``SampleResult.trajectory.energies``, with the reference
energy U_ref under "energy").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition, simulate, space

from . import units
from .jax_setup import RUN_ONCE_COMPILER_OPTIONS
from .overflow import grown_extra
from .sampler import ChunkedSampler, SamplerConfig

log = logging.getLogger("difftre")


@dataclass(frozen=True)
class MDSettings:
    temperature: float                   # K
    dt_fs: float = 1.0                   # time step, fs
    friction_per_ps: float = 50.0        # Langevin friction γ, ps⁻¹ (see the module doc)
    skin: float = 0.5                    # neighbour-list skin, Å (rebuild after a move of skin/2)
    capacity_multiplier: float = 1.3     # neighbour-list slots per atom relative to the densest row
    cutoff_capacity: int = 8             # slots per atom for the neighbours inside the cutoff (see module doc)
    max_retries: int = 4                 # re-allocations of an overflowing list per chunk
    steps_per_snapshot: int = 10
    chunk_seconds: float = 5.0           # wall time of one compiled chunk (sampler.py)

    def __post_init__(self):
        # the list allocated at the start must hold every pair there: the initial forces use it
        if not self.capacity_multiplier >= 1.0:
            raise ValueError(f"capacity_multiplier={self.capacity_multiplier} must be >= 1")

    @property
    def kT(self) -> float:
        return self.temperature * units.KB_EV_PER_K

    @property
    def dt(self) -> float:
        """Time step in JAX MD's metal time unit."""
        return self.dt_fs / units.METAL_TIME_UNIT_FS

    @property
    def gamma(self) -> float:
        """Friction in the inverse of JAX MD's metal time unit."""
        return self.friction_per_ps * units.METAL_TIME_UNIT_FS * 1e-3

    def sampler_config(self) -> SamplerConfig:
        """The sampler interface's settings, in JAX MD's metal units."""
        return SamplerConfig(integrator="langevin", dt=self.dt, gamma=self.gamma, every=self.steps_per_snapshot,
                             skin=self.skin, capacity_multiplier=self.capacity_multiplier,
                             max_retries=self.max_retries, chunk_seconds=self.chunk_seconds)


@dataclass(frozen=True)
class CrystalSystem:
    """What the sampler interface reads of the system: kT (eV), mass (amu), the box (3, 3) Å."""

    kT: float
    mass: float
    box: Any
    dimension: int = 3


class SolidMD(ChunkedSampler):
    """NVT MD of ``potential`` (a :class:`~.potentials.classical.ClassicalPotential`, SW) in the
    box ``box`` (3, 3) Å, columns are lattice vectors; ``mass`` in amu; ``observe`` see the module
    doc. The sampler interface's calls: ``init(key, params, frac) -> (state, nbrs)`` and
    ``run(params, state, nbrs, n_eq, n_snapshots, every) -> SampleResult``, ``params`` the values
    of learnable parameters to sample with (θ of a DiffTRe update; the cutoff must stay fixed)."""

    #: Å added to the list radius: the list is updated before each step, so the step's forces are
    #: evaluated up to one step's displacement (≪ 0.1 Å) past the rebuild criterion (skin/2).
    STEP_MARGIN = 0.1

    def __init__(self, potential, box, mass: float, settings: MDSettings, observe: Callable | None = None):
        if not potential.neighbor_list_ok():
            raise ValueError("SolidMD needs a potential whose neighbour-list kernel is usable (SW, fixed cutoff)")
        self.potential, self.settings, self.mass, self.observe = potential, settings, float(mass), observe
        self.cfg = settings.sampler_config()
        self.box = jnp.asarray(box)
        self.system = CrystalSystem(settings.kT, self.mass, self.box)
        self.volume = float(abs(np.linalg.det(np.asarray(box))))
        self.displacement, self.shift = space.periodic_general(self.box, fractional_coordinates=True)
        self.cutoff = float(potential.cutoff())
        self.cutoff_capacity = int(settings.cutoff_capacity)
        self.neighbor_fn = partition.neighbor_list(
            self.displacement, self.box, self.cutoff + self.STEP_MARGIN, dr_threshold=settings.skin,
            capacity_multiplier=settings.capacity_multiplier, disable_cell_list=True,
            fractional_coordinates=True, format=partition.NeighborListFormat.Dense)
        self.grown = {"list": 0, "cutoff": 0}     # re-allocations of each capacity so far
        self._fit_capacity = True
        self._count = jax.jit(lambda frac, nb: jnp.max(jnp.sum(self._inside(frac, nb)[0], axis=1)))
        self._bind()

    def _bind(self) -> None:
        """Energy, integrator and the compiled chunk for the current ``cutoff_capacity`` (a shape)."""
        s = self.settings
        self._init, self._step = simulate.nvt_langevin(self.energy_with(self.cutoff_capacity), self.shift, s.dt, s.kT,
                                                       gamma=s.gamma)
        self._init_jit = jax.jit(lambda k, x, nb, p: self._init(k, x, mass=self.mass, neighbor=nb, params=p),
                                 compiler_options=RUN_ONCE_COMPILER_OPTIONS)
        self._compile()

    # --------------------------------------------------------------------------------------
    def energy_with(self, capacity: int) -> Callable:
        """``E(frac, neighbor, params=None, **kwargs)`` in eV on the pairs inside the cutoff,
        ``capacity`` slots per atom (fixed in the closure: a shape)."""
        pot, disp = self.potential, self.displacement

        def energy(frac, neighbor, params=None, **kwargs):
            inner, _ = self.within_cutoff(frac, neighbor, capacity)
            return pot.energy_fn(disp, params or {}, neighbor=inner)(frac, **kwargs)
        return energy

    @property
    def energy(self) -> Callable:
        """The energy with the current cutoff capacity (observers are traced per capacity)."""
        return self.energy_with(self.cutoff_capacity)

    def _inside(self, frac, neighbor):
        """(mask (N, M) of the list's pairs inside the cutoff, their squared distances)."""
        x = jax.lax.stop_gradient(frac)
        dR = jax.vmap(lambda a, bs: jax.vmap(lambda b: self.displacement(a, b))(bs))(x, x[neighbor.idx])
        r2 = jnp.sum(dR * dR, axis=-1)
        return (neighbor.idx < frac.shape[0]) & (r2 < self.cutoff ** 2), r2

    def within_cutoff(self, frac, neighbor, capacity: int | None = None):
        """The list reduced to the pairs inside the cutoff: ``(list with idx (N, capacity), n_max)``.

        The skin list of a diamond crystal holds the 4 bonded neighbours *and* the 12 second
        neighbours (3.84 Å, just outside SW's 3.77 Å cutoff), so the three-body kernel would loop
        over ~24² slots per atom for ~4² real triplets. The pairs inside the cutoff are moved to the
        front of each row (``lax.top_k`` on the distances, selection without gradient) and the rest
        dropped: exact, since SW and all its derivatives vanish at the cutoff. ``n_max`` is the
        largest number of neighbours inside the cutoff: the list is incomplete when it exceeds
        ``capacity``."""
        k = self.cutoff_capacity if capacity is None else capacity
        inside, r2 = self._inside(frac, neighbor)
        _, order = jax.lax.top_k(jnp.where(inside, -r2, -jnp.inf), k)
        idx = jnp.where(jnp.take_along_axis(inside, order, axis=1), jnp.take_along_axis(neighbor.idx, order, axis=1),
                        frac.shape[0])
        return neighbor.set(idx=idx), jnp.max(jnp.sum(inside, axis=1))

    # -- the sampler interface --------------------------------------------------------------
    def init(self, key, params, positions=None, ahead: int = 0):   # (ahead: not used)
        """Maxwell–Boltzmann momenta at the set temperature, the list allocated at ``positions``
        (fractional, (N, 3)); the cutoff capacity fitted there before the forces are computed."""
        if positions is None:
            raise ValueError("SolidMD.init needs the starting fractional positions")
        frac = jnp.asarray(positions)
        nbrs = self.neighbor_fn.allocate(frac)
        self._prepare(frac, nbrs)
        return self._init_jit(key, frac, nbrs, params), nbrs

    def _prepare(self, positions, nbrs) -> None:
        if self._fit_capacity:   # once, on the first configuration
            self._fit_capacity = False
            n_max = int(self._count(positions, nbrs))
            if n_max > self.cutoff_capacity:
                self.cutoff_capacity = n_max
                self._bind()
                log.info("cutoff capacity fitted to the starting configuration: %d", n_max)

    def _advance(self, params, st, nb):
        nb = nb.update(st.position)
        st = self._step(st, neighbor=nb, params=params)
        # the step evaluated its forces at the new st.position with this list (complete there by
        # STEP_MARGIN unless it overflowed): were all pairs inside the cutoff kept?
        return st, nb, self._count(st.position, nb) > self.cutoff_capacity

    def _observe(self, params, st, nb):
        record = {"energy": self.energy(st.position, nb, params)}
        if self.observe is not None:
            record.update(self.observe(self, st.position, st.momentum, nb, params))
        return nb, jnp.asarray(False), record

    def _grow(self, state, nbrs, attempt: int, list_full: bool, graph_full: bool):
        if graph_full:
            self.grown["cutoff"] += 1
            self.cutoff_capacity += grown_extra(attempt) // 2
            log.info("more neighbours inside the cutoff than its capacity; growing it to %d and recomputing "
                     "the chunk", self.cutoff_capacity)
            self._bind()
        if list_full:
            self.grown["list"] += 1
            old, extra = int(nbrs.idx.shape[1]), grown_extra(attempt)
            new = self.neighbor_fn.allocate(state.position, extra_capacity=extra)
            if int(new.idx.shape[1]) <= old:   # allocated at a sparser configuration: still grow
                new = self.neighbor_fn.allocate(state.position, extra_capacity=extra + old + 1 - int(new.idx.shape[1]))
            log.info("neighbour list overflowed (capacity %d); re-allocated with %d slots and recomputing the chunk",
                     old, int(new.idx.shape[1]))
            nbrs = new
        return nbrs

    def step_fn(self, state, nbrs, params):
        """One Langevin step, without the list update (the script measures its cost)."""
        return self._step(state, neighbor=nbrs, params=params)
