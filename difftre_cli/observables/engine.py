"""The observable engine: what every trainer, ``evaluate`` and the stress–strain runs use to
turn a trajectory into observables.

Per trajectory (θ-independent, computed once, :meth:`ObservableEngine.featurize`):
    the energy features of every kept state (pair potentials: distances on a neighbour list;
    many-body potentials: their graphs; one-body potentials: coordinates, see below), the
    observables that depend on positions only, and the reference energies.
Per parameter set (θ-dependent, inside the callers' compiled programs):
    U_θ and the virial of every stored state from its features (:meth:`snapshot_quantities`),
    the θ-dependent observables' per-snapshot values, reweighted averages with
    w_i = softmax(−β(U_θ − U_ref)) (:meth:`predict`), and observables that are functions of
    averages combined after reweighting (:meth:`combine`).

The DiffTRe learner (learn/difftre.py) differentiates :meth:`predict` through the weights; IBI
and direct AD compute their observables here (:meth:`snapshot_observables`,
:meth:`list_quantities`); ``evaluate`` averages :meth:`snapshot_observables` over a production
run (production.py).

Observables with ``needs`` (stress, stiffness; observables/mechanical.py) get per-snapshot Born
terms: σ^B = (1/Ω) ∂U_θ/∂e and, if asked for, C^B = (1/Ω) ∂²U_θ/∂e∂e at e = 0 (e the Voigt
Lagrangian strain, d ↦ F(e) d), by reverse-over-reverse autodiff of ``energy_from_features(...,
strain=F(e) − I)`` (reverse mode only is asked of a potential's energy).

The potential's side is the protocol of potentials/protocol.py:
    ``energy_from_features(params, feats, scale=1.0[, strain=None]) -> U`` of one state from its
    stored features (``scale`` s: uniform strain, d/ds at 1 is the virial; ``strain`` a general
    (3, 3) ε, d ↦ (I + ε) d, for potentials that declare ``takes_strain``, needed by observables
    with Born terms); ``features_on_list`` and ``list_cutoff`` of a box potential, the capacity
    hooks of a ``GraphCapacity`` one, ``snapshot_batch``;
    ``one_body``: a sum of single-particle terms in an external field, U = Σ_n u_θ(x_n). Such a
    potential provides ``features(positions)`` (θ-independent, here the coordinates), no
    neighbour list is needed, and — because non-interacting particles are independent samples
    of the one-particle Boltzmann distribution — every (snapshot, particle) pair is reweighted
    as a state of its own, with its own reference energy (the sampler then records per-particle
    energies, shape (S, N)).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import neighbors, reweight
from ..errors import UserError
from ..jax_setup import FEATURIZE_COMPILER_OPTIONS
from ..overflow import grown_extra, recompute_on_overflow
from ..potentials import distances_on_list
from .linear import linear_energy, linearize
from .stress import deformation

#: computations of a trajectory's features (the first and its re-allocations) before it counts as unstable
FEATURE_RETRIES = 6

#: the feature lists of state points that share their programs (learn/shared_programs.py) get this
#: much more room than the first one needs, in multiples of SHARED_WIDTH_STEP slots: the compositions
#: of config=lj_mixture need 121, 124 and 127 slots, and all get 144, one shape, one compilation
SHARED_HEADROOM = 1.1
SHARED_WIDTH_STEP = 16

#: the per-snapshot strain derivatives an observable may ask for with ``needs``
BORN = ("born_stress", "born_stiffness")

log = logging.getLogger("difftre")


class Features(NamedTuple):
    """θ-independent data of one reference trajectory."""

    r: Any            # energy features per state (a pytree with leading axis S): pair potentials
                      # (S, N, W) distances on a dense list, +inf padding (mixtures: with the
                      # (S, N, W) pair-type codes), or, for a potential linear in θ, its
                      # linear.LinearFeatures; one-body potentials (S·N, 1, d) coordinates
    static: dict      # name -> (S, ...) per-snapshot values of θ-independent observables
    u_ref: Any        # (S,)


def _per_state_bounded(one, batch: int):
    """``(params, feats) -> outputs`` of ``one(params, r_s)`` (a pytree) for every stored state,
    for potentials whose per-state intermediates are large (graph networks).

    Forward: ``batch`` states at a time (``lax.map``). Backward: a loss reaches θ only through
    these per-state outputs y_i, so ∂L/∂θ = Σ_i (∂L/∂y_i)ᵀ ∂y_i/∂θ is accumulated over the states
    one at a time (a ``lax.scan`` of per-state VJPs), and only one state's residuals are alive at
    once. Autodiff through ``lax.map`` keeps every state's residuals until the backward pass:
    measured 48 GB for 30 water snapshots (N = 901, DimeNet++).
    """
    @jax.custom_vjp
    def per_state(params, feats):
        return lax.map(lambda r_s: one(params, r_s), feats, batch_size=batch)

    def fwd(params, feats):
        return per_state(params, feats), (params, feats)

    def bwd(res, ct):
        params, feats = res

        def body(acc, x):
            r_s, g_s = x
            _, vjp = jax.vjp(lambda p: one(p, r_s), params)
            (g,) = vjp(g_s)
            return jax.tree_util.tree_map(jnp.add, acc, g), None

        zero = jax.tree_util.tree_map(jnp.zeros_like, params)
        grads, _ = lax.scan(body, zero, (feats, ct))
        no_ct = jax.tree_util.tree_map(
            lambda x: jnp.zeros_like(x) if jnp.issubdtype(x.dtype, jnp.inexact)
            else np.zeros(x.shape, jax.dtypes.float0), feats)
        return grads, no_ct

    per_state.defvjp(fwd, bwd)
    return per_state


def _shared_capacities(own: dict, floor: dict | None) -> dict:
    """The capacities of a list that needs ``own``, shared with lists whose capacities are
    ``floor`` (None: none yet): ``floor`` if it is large enough, else ``own`` with headroom."""
    if floor is not None and all(v <= floor[name] for name, v in own.items()):
        return floor
    grown = {name: max(v, 0 if floor is None else floor[name]) for name, v in own.items()}
    width = int(np.ceil(SHARED_HEADROOM * grown["max_occupancy"] / SHARED_WIDTH_STEP)) * SHARED_WIDTH_STEP
    return {**grown, "max_occupancy": width}


class ObservableEngine:
    """``featurize`` a trajectory once; then observables of it at any parameters."""

    def __init__(self, potential, observables: dict, ctx, box_size: float, beta: float):
        self.potential = potential
        self.observables = observables
        self.ctx = ctx
        self.beta = beta
        # per-snapshot strain derivatives the θ-dependent observables ask for (observables/__init__.py)
        self.needs = frozenset(q for o in observables.values() if o.depends_on_params for q in o.needs)
        # no θ-dependent observable (RDF, ADF, S(k), densities...): U_θ (for the weights) is the
        # only per-snapshot quantity, and the virial's derivative pass is skipped
        self.energy_only = not any(o.depends_on_params for o in observables.values())
        unknown = self.needs - set(BORN)
        if unknown:
            raise ValueError(f"observables need unknown per-snapshot quantities {sorted(unknown)}")
        if self.needs and not potential.takes_strain:
            names = [k for k, o in observables.items() if o.needs]
            raise UserError(f"observables {names} need strain derivatives of the energy, which this potential "
                            "(a pair potential) does not provide",
                            "use a many-body potential (model=three_body or dimenet), or drop stress/stiffness observables")
        self._lists = None
        self.linear = False
        self.trace_count = {"featurize": 0}
        self.snapshot_observables_jit = jax.jit(self.snapshot_observables)
        self.one_body = potential.one_body
        if self.one_body:   # independent particles in an external field: no box, no neighbour lists
            self._featurize = jax.jit(self._featurize_one_body, compiler_options=FEATURIZE_COMPILER_OPTIONS)
            return
        self.box = None if box_size is None else float(box_size)   # None: open space (a molecule)
        list_cutoff = potential.list_cutoff   # strained crystals list further out: manybody.py
        reach = max([list_cutoff] + [o.reach for o in observables.values()])
        if self.box is not None and reach > 0.5 * self.box:
            raise UserError(f"observable range {reach:.3g} exceeds half the box ({0.5 * self.box:.3g})",
                            "use more particles (system.n_particles) or a smaller r_max")
        self.feature_cutoff = reach
        # a potential linear in θ (a pair spline): U_θ of a stored state is a dot product with
        # features computed once (linear.py) instead of a pass over its pair distances
        self.linear = potential.linear_in_params and not self.needs
        self.feature_nbr_fn = neighbors.make_neighbor_fn(self.box, reach, 0.0, 1.3)
        self.energy_nbr_fn = neighbors.make_neighbor_fn(self.box, list_cutoff, 0.0, 1.3)
        self._featurize = jax.jit(self._featurize_impl, compiler_options=FEATURIZE_COMPILER_OPTIONS)

    @property
    def energy(self):
        """U_θ of one stored state from its features: ``energy(params, feats, scale=1.0[, strain])``."""
        return linear_energy if self.linear else self.potential.energy_from_features

    def _energy_features(self, R, idx):
        """The energy features of one state on the energy's list ``idx``."""
        r = self.potential.features_on_list(R, idx, self.box)
        if not self.linear:
            return r
        zero = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype),
                                      jax.eval_shape(self.potential.init, jax.random.PRNGKey(0)))
        return linearize(self.potential.energy_from_features, zero, r, virial=not self.energy_only)

    # -- per trajectory ----------------------------------------------------------------
    def _featurize_impl(self, positions, lists, u_ref):
        """Per snapshot: fresh lists at the observables' reach and at the energy cutoff; the
        θ-independent observables; distances within the energy cutoff. Fresh builds at fixed
        capacities make the features a function of the positions alone (bit-identical resume)."""
        self.trace_count["featurize"] += 1
        lists = {k: dataclasses.replace(nb, did_buffer_overflow=jnp.asarray(False)) for k, nb in lists.items()}

        def one(carry, R):
            obs_nb = self.feature_nbr_fn.rebuild(R, carry["obs"])
            q = self.list_quantities(R, obs_nb.idx)
            # the energy's list (cutoff <= reach) from the observables' list, not from all pairs again
            e_nb = neighbors.restrict(carry["energy"], R, obs_nb.idx, q["r"], self.energy_nbr_fn.cutoff)
            static = {k: o.snapshot(self.ctx, q) for k, o in self.observables.items() if not o.depends_on_params}
            return {"obs": obs_nb, "energy": e_nb}, (self._energy_features(R, e_nb.idx), static)

        lists, (r, static) = lax.scan(one, lists, positions)
        overflow = lists["obs"].did_buffer_overflow | lists["energy"].did_buffer_overflow
        graph_full = self.potential.features_overflow(r) if self.potential.has_graph_capacity else jnp.asarray(False)
        return Features(r, static, u_ref), (overflow, graph_full)

    def list_quantities(self, R, idx) -> dict:
        """What θ-independent observables see of one snapshot on a dense list ``idx``: the
        distances ``r`` (N, M) (+inf on padding), the positions ``R``, the list ``idx`` and the
        box edge ``box`` (for angles), and, for mixtures, the ordered species-pair code
        s_i · n_species + s_j of every entry (``code``)."""
        q = {"r": distances_on_list(R, idx, self.box), "R": R, "idx": idx, "box": self.box}
        if self.ctx.species is not None and len(self.ctx.species_names) > 1:
            s = jnp.asarray(self.ctx.species)
            q["code"] = s[:, None] * len(self.ctx.species_names) + s[jnp.minimum(idx, s.shape[0] - 1)]
        return q

    def _featurize_one_body(self, positions, u_ref):
        """One-body potential: (S, N, d) positions and (S, N) per-particle reference energies
        become S·N states of one particle each (independent samples of the one-particle
        Boltzmann distribution), with their θ-independent observables."""
        self.trace_count["featurize"] += 1
        x = self.potential.features(positions)
        states = x.reshape(-1, 1, x.shape[-1])
        static = {k: jax.vmap(lambda xs, o=o: o.snapshot(self.ctx, {"x": xs}))(states)
                  for k, o in self.observables.items() if not o.depends_on_params}
        return Features(states, static, u_ref.reshape(-1)), jnp.asarray(False)

    def capacity_attrs(self) -> dict:
        """The feature lists' capacities, for the checkpoint."""
        if self._lists is None:
            return {}
        return {"feature_lists": json.dumps({k: neighbors.capacities(nb) for k, nb in self._lists.items()})}

    def set_capacity(self, attrs: dict) -> None:
        """Restore the feature lists' capacities recorded in a checkpoint (bit-identical resume)."""
        if "feature_lists" in attrs:
            self._pending_caps = json.loads(attrs["feature_lists"])

    _pending_caps = None
    #: the least capacities of the feature lists, {list: capacities}, a dict shared with the engines of
    #: state points that share this one's programs (learn/shared_programs.py): equal list shapes
    #: are one compiled featurisation (SHARED_HEADROOM); None: the lists' own
    capacity_floor = None

    def _allocate(self, positions, grow: int = 0):
        n = positions.shape[1]
        if self._pending_caps is not None and not grow:
            return {k: neighbors.placeholder(n, caps, positions.dtype) for k, caps in self._pending_caps.items()}
        # shapes only (the featurisation builds its lists per snapshot): measured, not built
        caps = own = {"obs": self.feature_nbr_fn.measure(positions[-1], extra_capacity=grow),
                      "energy": self.energy_nbr_fn.measure(positions[-1], extra_capacity=grow)}
        if self.capacity_floor is not None:
            caps = {k: _shared_capacities(c, self.capacity_floor.get(k)) for k, c in own.items()}
            self.capacity_floor.update(caps)
        return {k: neighbors.placeholder(n, c, positions.dtype) for k, c in caps.items()}

    def featurize(self, trajectory, on_shapes=None) -> Features:
        """Features of a trajectory (positions (S, N, 3), reference energies (S,)).
        ``on_shapes``: called with the features' shapes (``jax.ShapeDtypeStruct`` leaves) before
        they are computed, e.g. to compile the update meanwhile (compile_ahead.py)."""
        positions = jnp.asarray(trajectory.positions)
        if self.one_body:
            energies = jnp.asarray(trajectory.energies)
            if energies.shape != positions.shape[:2]:
                raise ValueError(f"a one-body potential needs per-particle reference energies of shape "
                                 f"{positions.shape[:2]}, got {energies.shape}")
            return self._featurize(positions, energies)[0]
        if self._lists is None:
            self._lists = self._allocate(positions)
        if self.potential.has_graph_capacity and not self.potential.sparse \
                and self.potential.graph_format == "sparse":
            # a graph network's edge/triplet capacities, measured on the last snapshot
            idx = self.energy_nbr_fn.allocate(positions[-1]).idx
            self._set_potential(self.potential.fit_capacity(positions[-1], idx))
        energies = jnp.asarray(trajectory.energies)
        if on_shapes is not None:
            on_shapes(self._featurize.eval_shape(positions, self._lists, energies)[0])
        (feats, _), ok = recompute_on_overflow(   # the sampler's overflow rule (sampler.py)
            lambda: self._featurize(positions, self._lists, energies),
            lambda out: (bool(out[1][0]), bool(out[1][1])),
            lambda attempt, list_full, graph_full: self._grow(positions, attempt, list_full, graph_full),
            FEATURE_RETRIES - 1)
        if not ok:
            raise UserError("the feature neighbour list kept overflowing", "the system is probably unstable")
        return feats

    def _grow(self, positions, attempt: int, list_full: bool, graph_full: bool) -> None:
        """More room for what overflowed while featurising (the sampler's growth rule)."""
        if list_full:
            self._lists = self._allocate(positions, grow=grown_extra(attempt))
            log.info("feature neighbour lists re-allocated (capacities %s)",
                     {k: nb.max_occupancy for k, nb in self._lists.items()})
        if graph_full:
            self._set_potential(self.potential.grow_capacity())
            log.info("feature graph capacities grown to %d edges, %d slots per atom",
                     self.potential.max_edges, self.potential.max_degree)

    def _set_potential(self, potential):
        """A potential with other capacities (same values): the features are re-traced, the
        per-update functions follow the features' shapes."""
        self.potential = potential
        self._featurize = jax.jit(self._featurize_impl, compiler_options=FEATURIZE_COMPILER_OPTIONS)

    # -- per parameter set -------------------------------------------------------------
    def over_states(self, fn, feats):
        """``fn`` of every stored state: vectorised (``vmap``), or ``snapshot_batch`` states at a
        time (``lax.map``) for potentials whose per-state intermediates are large (networks)."""
        batch = self.potential.snapshot_batch
        return lax.map(fn, feats, batch_size=batch) if batch else jax.vmap(fn)(feats)

    def snapshot_energies(self, params, r):
        """U_θ (S,) and virial s·∂U/∂s (S,) from stored features (the virial None where the
        features carry none: a linear potential featurised with no θ-dependent observable)."""
        if self.linear and self.energy_only:
            return self._per_state(self._energy_only, params, r)["energy"], None
        q = self._per_state(self._energy_and_virial, params, r)
        return q["energy"], q["virial"]

    def _energy_and_virial(self, p, r_s):
        u, virial = jax.value_and_grad(lambda s: self.energy(p, r_s, s))(1.0)
        return {"energy": u, "virial": virial}

    def _energy_only(self, p, r_s):
        return {"energy": self.energy(p, r_s)}

    def _per_state(self, one, params, r):
        """``one(params, r_s)`` of every stored state: vectorised (``vmap``) for cheap potentials;
        ``snapshot_batch`` states at a time with a state-by-state backward for networks."""
        batch = self.potential.snapshot_batch
        if batch:
            return _per_state_bounded(one, batch)(params, r)
        return jax.vmap(lambda r_s: one(params, r_s))(r)

    def quantity_fn(self):
        """``one(params, r_s) -> dict``: the quantities of :meth:`snapshot_quantities` for one
        stored state (learn/gauss_newton.py differentiates it state by state)."""
        if not self.needs:
            return self._energy_only if self.energy_only else self._energy_and_virial
        energy, volume, dtype = self.energy, self.ctx.volume, jnp.result_type(float)
        e0, eye = jnp.zeros(6, dtype), jnp.eye(3, dtype=dtype)

        def one(p, r_s):
            u_of = lambda e: energy(p, r_s, 1.0, deformation(e) - eye)  # noqa: E731
            if "born_stiffness" in self.needs:
                def grad_aux(e):
                    u, g = jax.value_and_grad(u_of)(e)
                    return g, (u, g)
                H, (u, g) = jax.jacrev(grad_aux, has_aux=True)(e0)     # reverse over reverse
                out = {"born_stiffness": 0.5 * (H + H.T) / volume}
            else:
                (u, g), out = jax.value_and_grad(u_of)(e0), {}
            # a uniform scale s is e = (s − 1)(1, 1, 1, 0, 0, 0) to first order: ∂U/∂s = Σ_a<3 ∂U/∂e_a
            return {"energy": u, "virial": g[0] + g[1] + g[2], "born_stress": g / volume, **out}
        return one

    def snapshot_quantities(self, params, r) -> dict:
        """Per-snapshot θ-dependent inputs of the observables: ``energy`` U_θ (S,), ``virial``
        s·∂U/∂s (S,) (unless no observable depends on θ: ``energy_only``) and, when an
        observable needs them, ``born_stress`` (S, 6) and
        ``born_stiffness`` (S, 6, 6) in energy/length³ (Voigt, Lagrangian strain; see
        observables/stress.py for the conventions)."""
        return self._per_state(self.quantity_fn(), params, r)

    def _values(self, q: dict, feats: Features) -> dict:
        """Per-snapshot values (S, ...) of every observable (pytrees for observables with
        ``combine``): θ-dependent ones from the quantities ``q`` of :meth:`snapshot_quantities`,
        θ-independent ones from the trajectory's stored features."""
        return {name: jax.vmap(lambda qs, obs=obs: obs.snapshot(self.ctx, qs))(q)
                if obs.depends_on_params else feats.static[name] for name, obs in self.observables.items()}

    def combine(self, averages: dict) -> dict:
        """Observables' values from their (weighted) per-snapshot averages: ``combine`` for
        observables that are functions of averages, the average itself otherwise."""
        return {name: v if self.observables[name].combine is None else self.observables[name].combine(self.ctx, v)
                for name, v in averages.items()}

    def predict(self, params, feats: Features):
        """Reweighted averages ⟨O⟩ at ``params`` and the weights."""
        return self.predict_from_quantities(self.snapshot_quantities(params, feats.r), feats)

    def predict_from_quantities(self, q: dict, feats: Features):
        """:meth:`predict` from the per-snapshot quantities ``q`` (:meth:`snapshot_quantities`)."""
        w = reweight.weights(self.beta, q["energy"], feats.u_ref)
        avg = {name: jax.tree_util.tree_map(lambda v: reweight.average(w, v), vals)
               for name, vals in self._values(q, feats).items()}
        return self.combine(avg), w

    def snapshot_observables(self, params, feats: Features) -> dict:
        """Per-snapshot values (S, ...) of every observable at ``params`` (no reweighting); for
        observables with ``combine`` the per-snapshot pieces (average them, then :meth:`combine`)."""
        return self._values(self.snapshot_quantities(params, feats.r), feats)

    def n_eff(self, params, feats: Features):
        """Effective sample size of ``params`` on the trajectory of ``feats``."""
        u = self.over_states(lambda r_s: self.energy(params, r_s), feats.r)
        return reweight.effective_sample_size(reweight.weights(self.beta, u, feats.u_ref))
