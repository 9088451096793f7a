"""Finite-temperature MD of a crystal in a general (possibly sheared) periodic box, with JAX MD.

For the classical many-body potentials of :mod:`.potentials.classical` (SW silicon, metal units:
Å, eV, amu) at constant strain (NVT): JAX MD's ``space.periodic_general`` with fractional
coordinates (the box h, columns are lattice vectors, may be any non-degenerate matrix, e.g. a
strained cubic cell), a dense ``partition.neighbor_list`` of radius cutoff + skin, and the
Langevin integrator ``simulate.nvt_langevin`` (BAOAB splitting; canonical sampling without the
ergodicity problems of a Nosé–Hoover thermostat on a nearly harmonic crystal).

JAX MD works in the unit system of its inputs: with Å, eV and amu its time unit is
sqrt(amu Å² / eV) = ``units.METAL_TIME_UNIT_FS`` ≈ 10.18 fs, so dt and the friction are converted
here; momenta are Cartesian (amu Å per that time unit), positions fractional.

Neighbours, two levels. A dense skin list (radius cutoff + skin + ``STEP_MARGIN``, rebuilt by
JAX MD when an atom has moved skin/2) and, at every energy evaluation, its compaction to the pairs
inside the cutoff (:meth:`SolidMD.within_cutoff`, ``cutoff_capacity`` slots per atom): in diamond
the skin list holds 16+ neighbours but only ~4 bonded ones are inside SW's cutoff, and the
three-body kernel costs slots², so this is ~10× fewer triplets; it is exact (SW and all its
derivatives vanish at the cutoff).

Sampling is done in jit-compiled segments (``lax.scan`` over snapshots, ``fori_loop`` over the
MD steps between snapshots). After each segment both levels are checked: JAX MD's overflow flag
of the skin list, and the largest number of neighbours inside the cutoff seen at any step against
``cutoff_capacity``. On either overflow the capacity is raised (the skin list re-allocated at the
segment's *starting* positions), the starting forces are recomputed and the whole segment is
recomputed from its saved starting state (same random numbers), so a result is never computed
with an incomplete list. Capacities grow on every retry and the retries are capped (then a
``RuntimeError``). Everything that depends on a capacity (the energy, JAX MD's jit-compiled
integrator, the segment) is built per capacity, never read from mutable state at trace time.

Friction: the default γ = 50 ps⁻¹ is strong on purpose. Langevin dynamics samples the canonical
distribution for any γ; the shear-stress fluctuations of diamond are dominated by the zone-centre
optical (Raman) mode, which a weak friction leaves ringing for picoseconds (σ_yz autocorrelation
oscillating with its 64 fs period), while γ ≈ 50 ps⁻¹ decorrelates it within ~40 fs and still
leaves the slowest acoustic mode of a 3×3×3 cell relaxing in ~0.1 ps.

``observe(frac, momentum, neighbor) -> pytree`` is called once per snapshot inside the compiled
segment (e.g. Born terms and kinetic stress, or just the positions for later reweighting); its
outputs are stacked along a leading snapshot axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import partition, simulate, space

from . import units


@dataclass(frozen=True)
class MDSettings:
    temperature: float                   # K
    dt_fs: float = 1.0                   # time step, fs
    friction_per_ps: float = 50.0        # Langevin friction γ, ps⁻¹ (see the module doc)
    skin: float = 0.5                    # neighbour-list skin, Å (rebuild after a move of skin/2)
    capacity_multiplier: float = 1.3     # neighbour-list slots per atom relative to the densest row
    cutoff_capacity: int = 8             # slots per atom for the neighbours inside the cutoff (see module doc)
    max_retries: int = 4                 # re-allocations of an overflowing list per segment
    steps_per_snapshot: int = 10
    snapshots_per_segment: int = 100

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


class MDState(NamedTuple):
    md: Any            # JAX MD's NVTLangevinState (position: fractional, momentum: Cartesian)
    neighbor: Any      # JAX MD dense neighbour list


class SolidMD:
    """NVT MD of ``potential`` (a :class:`~.potentials.classical.ClassicalPotential`, SW) in the
    box ``box`` (3, 3) Å, columns are lattice vectors; ``mass`` in amu; ``learn`` the values of
    learnable parameters to sample with (θ of a DiffTRe update; the cutoff must stay fixed)."""

    #: Å added to the list radius: the list is updated after each step, so the step's forces are
    #: evaluated up to one step's displacement (≪ 0.1 Å) past the rebuild criterion (skin/2).
    STEP_MARGIN = 0.1

    def __init__(self, potential, box, mass: float, settings: MDSettings, learn: dict | None = None):
        if not potential.neighbor_list_ok():
            raise ValueError("SolidMD needs a potential whose neighbour-list kernel is usable (SW, fixed cutoff)")
        self.potential, self.settings, self.mass = potential, settings, float(mass)
        self.box = jnp.asarray(box)
        self.volume = float(abs(np.linalg.det(np.asarray(box))))
        self.displacement, self.shift = space.periodic_general(self.box, fractional_coordinates=True)
        learn = dict(learn or {})
        disp = self.displacement

        self.cutoff = float(potential.cutoff(learn))
        self.cutoff_capacity = int(settings.cutoff_capacity)
        self._learn = learn
        self._neighbor_fn = partition.neighbor_list(
            disp, self.box, float(potential.cutoff(learn)) + self.STEP_MARGIN, dr_threshold=settings.skin,
            capacity_multiplier=settings.capacity_multiplier, disable_cell_list=True,
            fractional_coordinates=True, format=partition.NeighborListFormat.Dense)
        self._compiled: dict = {}
        self._extra = 0              # extra list slots, grown on every overflow and kept
        self.reallocations = 0

    # --------------------------------------------------------------------------------------
    def energy_with(self, capacity: int) -> Callable:
        """``E(frac, neighbor, **kwargs)`` in eV on the pairs inside the cutoff, ``capacity`` slots
        per atom (fixed in the closure: JAX MD's integrators are jit-compiled functions whose traces
        are cached by argument shapes, so a capacity read at trace time would go stale)."""
        pot, disp, learn = self.potential, self.displacement, self._learn

        def energy(frac, neighbor, **kwargs):
            inner, _ = self.within_cutoff(frac, neighbor, capacity)
            return pot.energy_fn(disp, learn, neighbor=inner)(frac, **kwargs)
        return energy

    @property
    def energy(self) -> Callable:
        """The energy with the current cutoff capacity (for observers; they are traced per capacity)."""
        return self.energy_with(self.cutoff_capacity)

    def integrator(self):
        """JAX MD's ``nvt_langevin`` (init, step) for the current cutoff capacity."""
        key = ("integrator", self.cutoff_capacity)
        if key not in self._compiled:
            s = self.settings
            self._compiled[key] = simulate.nvt_langevin(self.energy_with(self.cutoff_capacity), self.shift, s.dt, s.kT,
                                                        gamma=s.gamma)
        return self._compiled[key]

    def init(self, key, frac, extra_capacity: int = 0) -> MDState:
        """Maxwell–Boltzmann momenta at the set temperature, list allocated at ``frac``."""
        frac = jnp.asarray(frac)
        nbrs = self._neighbor_fn.allocate(frac, extra_capacity=max(extra_capacity, self._extra))
        init_fn = self.integrator()[0]
        init = self._cached("init", nbrs, lambda: jax.jit(lambda k, x, nb: init_fn(k, x, mass=self.mass, neighbor=nb)))
        return MDState(init(key, frac, nbrs), nbrs)

    def _cached(self, name, neighbor, build):
        """A jit-compiled function per list shape and cutoff capacity (both are read at trace time)."""
        key = (name, int(neighbor.idx.shape[1]), self.cutoff_capacity)
        if key not in self._compiled:
            self._compiled[key] = build()
        return self._compiled[key]

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
        n = frac.shape[0]
        x = jax.lax.stop_gradient(frac)
        dR = jax.vmap(lambda a, bs: jax.vmap(lambda b: self.displacement(a, b))(bs))(x, x[neighbor.idx])
        r2 = jnp.sum(dR * dR, axis=-1)
        inside = (neighbor.idx < n) & (r2 < self.cutoff ** 2)
        _, order = jax.lax.top_k(jnp.where(inside, -r2, -jnp.inf), k)
        idx = jnp.where(jnp.take_along_axis(inside, order, axis=1), jnp.take_along_axis(neighbor.idx, order, axis=1), n)
        return neighbor.set(idx=idx), jnp.max(jnp.sum(inside, axis=1))

    def kinetic_temperature(self, momentum) -> float:
        """2 K / (3 N k_B) in K: Langevin dynamics does not conserve the total momentum, so all
        3N momenta are thermalised."""
        n = momentum.shape[0]
        return float(jnp.sum(momentum ** 2) / self.mass / (3 * n) / units.KB_EV_PER_K)

    def _segment_fn(self, observe, n_snapshots: int, every: int, capacity: int):
        key = (id(observe), n_snapshots, every, capacity, self.cutoff_capacity)
        if key in self._compiled:
            return self._compiled[key]
        step = self.integrator()[1]

        def advance(carry):
            def body(_, c):
                md, nb, n_max = c
                md = step(md, neighbor=nb)
                nb = nb.update(md.position)
                # the step's forces (and an observation) used these positions
                return md, nb, jnp.maximum(n_max, self.within_cutoff(md.position, nb)[1])
            return jax.lax.fori_loop(0, every, body, carry)

        @jax.jit
        def segment(md, nb):
            def one(c, _):
                c = advance(c)
                out = observe(c[0].position, c[0].momentum, c[1]) if observe is not None else None
                return c, out
            n0 = self.within_cutoff(md.position, nb)[1]
            (md, nb, n_max), out = jax.lax.scan(one, (md, nb, n0), None, length=n_snapshots)
            return md, nb, n_max, out

        self._compiled[key] = segment
        return segment

    def _run_segment(self, state: MDState, observe, n_snapshots: int, every: int):
        start = state
        for _ in range(self.settings.max_retries + 1):
            seg = self._segment_fn(observe, n_snapshots, every, int(start.neighbor.idx.shape[1]))
            md, nb, n_max, out = seg(start.md, start.neighbor)
            list_over, cutoff_over = bool(nb.did_buffer_overflow), int(n_max) > self.cutoff_capacity
            if not list_over and not cutoff_over:
                return MDState(md, nb), out
            self.reallocations += 1
            if cutoff_over:                        # more slots for the neighbours inside the cutoff
                self.cutoff_capacity = max(int(n_max) + 2, self.cutoff_capacity + 2)
            if list_over:
                # a bigger list, built at the segment's starting positions; the whole segment is
                # recomputed from its saved starting state
                old = int(start.neighbor.idx.shape[1])
                self._extra = max(4, 2 * self._extra)
                nb_new = self._neighbor_fn.allocate(start.md.position, extra_capacity=self._extra)
                while ((int(nb_new.idx.shape[1]) <= old or bool(nb_new.did_buffer_overflow))
                       and int(nb_new.idx.shape[1]) < start.md.position.shape[0]):
                    self._extra *= 2
                    nb_new = self._neighbor_fn.allocate(start.md.position, extra_capacity=self._extra)
                start = MDState(start.md, nb_new)
            # the starting forces may come from an overflowing list (only possible right after
            # init): recompute them with the new capacities
            start = MDState(start.md.set(force=self._force(start.md.position, start.neighbor)), start.neighbor)
        raise RuntimeError(f"neighbour list still overflows after {self.settings.max_retries} re-allocations "
                           f"(capacity {int(start.neighbor.idx.shape[1])}, {self.cutoff_capacity} inside the "
                           "cutoff); the crystal has probably melted or the skin is too small")

    def _force(self, frac, neighbor):
        energy = self.energy
        force = self._cached("force", neighbor, lambda: jax.jit(lambda x, nb: -jax.grad(energy)(x, nb)))
        return force(frac, neighbor)

    def run(self, state: MDState, n_snapshots: int, observe: Callable | None = None):
        """``n_snapshots`` snapshots ``steps_per_snapshot`` steps apart; returns the final state and
        the stacked ``observe`` outputs (None without an observer)."""
        s = self.settings
        outs = []
        done = 0
        while done < n_snapshots:
            k = min(s.snapshots_per_segment, n_snapshots - done)
            state, out = self._run_segment(state, observe, k, s.steps_per_snapshot)
            outs.append(out)
            done += k
        if observe is None:
            return state, None
        return state, jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *outs)

    def equilibrate(self, state: MDState, steps: int) -> MDState:
        """``steps`` MD steps without observations (rounded up to whole snapshots)."""
        every = self.settings.steps_per_snapshot
        state, _ = self.run(state, -(-steps // every), None)
        return state
