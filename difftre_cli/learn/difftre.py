"""Differentiable Trajectory Reweighting (Thaler & Zavadlav, Nat. Commun. 12, 6884, 2021).

Per reference trajectory (θ-independent, computed once):
    the energy features of every kept state (pair potentials: distances on a neighbour list;
    one-body potentials: coordinates, see below), and the observables that depend on positions only.
Per update (one jit call, compiled once per run):
    U_θ(S_i) and the virial from the stored features → weights w_i = softmax(−β(U_θ − U_ref))
    → reweighted observables ⟨O⟩ = Σ w_i O_i → loss Σ_k γ_k MSE_k → gradient (through the
    weights and θ-dependent observables only, never through the integrator) → optax step.

Observables with ``needs`` (stress, stiffness; observables/mechanical.py) get per-snapshot Born
terms: σ^B = (1/Ω) ∂U_θ/∂e and, if asked for, C^B = (1/Ω) ∂²U_θ/∂e∂e at e = 0 (e the Voigt
Lagrangian strain, d ↦ F(e) d), by reverse-over-reverse autodiff of ``energy_from_features(...,
strain=F(e) − I)`` (DimeNet++'s hand-written triplet backward has no forward mode). Observables
with ``combine`` are functions of averages: every leaf of their per-snapshot pieces is reweighted
separately and ``combine`` maps the averages to the value (stress-fluctuation stiffness).

The potential's side of the protocol:
    ``energy_from_features(params, feats, scale=1.0[, strain=None]) -> U`` of one state from its
    stored features (``scale`` s: uniform strain, d/ds at 1 is the virial; ``strain`` a general
    (3, 3) ε, d ↦ (I + ε) d, needed by observables with Born terms);
    ``one_body`` (optional, default False): True for a sum of single-particle terms in an
    external field, U = Σ_n u_θ(x_n). Such a potential also provides ``features(positions)``
    (θ-independent, here the coordinates), no neighbour list is needed, and — because
    non-interacting particles are independent samples of the one-particle Boltzmann
    distribution — every (snapshot, particle) pair is reweighted as a state of its own, with its
    own reference energy (the sampler then records per-particle energies, shape (S, N)).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from .. import neighbors, reweight
from ..errors import UserError
from ..potentials import distances_on_list
from ..sampler import grown_extra
from .boltzmann import initial_params

#: re-allocations of the feature lists before a trajectory counts as unstable
FEATURE_RETRIES = 6

log = logging.getLogger("difftre")


BORN = ("born_stress", "born_stiffness")


def _takes_strain(potential) -> bool:
    """Whether ``potential.energy_from_features`` accepts a general ``strain``."""
    import inspect
    try:
        return "strain" in inspect.signature(potential.energy_from_features).parameters
    except (TypeError, ValueError):
        return False


class Features(NamedTuple):
    """θ-independent data of one reference trajectory."""

    r: Any            # energy features per state (a pytree with leading axis S): pair potentials
                      # (S, N, W) distances on a dense list, +inf padding (mixtures: with the
                      # (S, N, W) pair-type codes); one-body potentials (S·N, 1, d) coordinates
    static: dict      # name -> (S, ...) per-snapshot values of θ-independent observables
    u_ref: Any        # (S,)


class StepAux(NamedTuple):
    loss: Any
    losses: dict
    predictions: dict
    n_eff: Any
    n_eff_next: Any   # N_eff of the updated parameters on the same trajectory (the next reuse decision)
    grad_norm: Any
    finite: Any


def _per_state_bounded(one, batch: int):
    """``(params, feats) -> outputs`` of ``one(params, r_s)`` (a pytree) for every stored state,
    for potentials whose per-state intermediates are large (graph networks).

    Forward: ``batch`` states at a time (``lax.map``). Backward: the loss reaches θ only through
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


class DiffTRe:
    """The DiffTRe learner: ``featurize`` a trajectory once, then ``step`` many times."""

    def __init__(self, potential, observables: dict, targets: dict, ctx, optimizer: optax.GradientTransformation,
                 box_size: float, beta: float, precondition: str = "none", fisher_damping: float = 1e-3):
        self.potential = potential
        self.observables = observables
        self.targets = targets
        self.ctx = ctx
        self.optimizer = optimizer
        self.beta = beta
        if precondition not in ("none", "fisher"):
            raise UserError(f"trainer.precondition: unknown {precondition!r}", "use none or fisher")
        self.precondition = precondition
        self.fisher_damping = float(fisher_damping)
        self._energy = potential.energy_from_features
        # per-snapshot strain derivatives the θ-dependent observables ask for (observables/__init__.py)
        self.needs = frozenset(q for o in observables.values() if o.depends_on_params for q in getattr(o, "needs", ()))
        unknown = self.needs - set(BORN)
        if unknown:
            raise ValueError(f"observables need unknown per-snapshot quantities {sorted(unknown)}")
        if self.needs and not _takes_strain(potential):
            names = [k for k, o in observables.items() if getattr(o, "needs", ())]
            raise UserError(f"observables {names} need strain derivatives of the energy, which this potential "
                            "(a pair potential) does not provide",
                            "use a many-body potential (model=dimenet), or drop stress/stiffness observables")
        self._lists = None
        self.trace_count = {"featurize": 0, "step": 0}
        self._step = jax.jit(self._step_impl)
        self.grad = jax.jit(self._grad_impl)
        self.n_eff = jax.jit(self._n_eff)
        self.snapshot_observables_jit = jax.jit(self.snapshot_observables)
        self.one_body = bool(getattr(potential, "one_body", False))
        if self.one_body:   # independent particles in an external field: no box, no neighbour lists
            self._featurize = jax.jit(self._featurize_one_body)
            return
        self.box = float(box_size)
        list_cutoff = potential.list_cutoff   # strained crystals list further out: manybody.py
        reach = max([list_cutoff] + [getattr(o, "reach", 0.0) for o in observables.values()])
        if reach > 0.5 * self.box:
            raise UserError(f"observable range {reach:.3g} exceeds half the box ({0.5 * self.box:.3g})",
                            "use more particles (system.n_particles) or a smaller r_max")
        self.feature_cutoff = reach
        self.feature_nbr_fn = neighbors.make_neighbor_fn(self.box, reach, 0.0, 1.3)
        self.energy_nbr_fn = neighbors.make_neighbor_fn(self.box, list_cutoff, 0.0, 1.3)
        self._featurize = jax.jit(self._featurize_impl)

    # -- per trajectory ----------------------------------------------------------------
    def _featurize_impl(self, positions, lists, u_ref):
        """Per snapshot: fresh lists at the observables' reach and at the energy cutoff; the
        θ-independent observables; distances within the energy cutoff. Fresh builds at fixed
        capacities make the features a function of the positions alone (bit-identical resume)."""
        self.trace_count["featurize"] += 1
        lists = {k: dataclasses.replace(nb, did_buffer_overflow=jnp.asarray(False)) for k, nb in lists.items()}

        def one(carry, R):
            obs_nb = self.feature_nbr_fn.rebuild(R, carry["obs"])
            e_nb = self.energy_nbr_fn.rebuild(R, carry["energy"])
            static = {k: o.snapshot(self.ctx, q) for q in [self.list_quantities(R, obs_nb.idx)]
                      for k, o in self.observables.items() if not o.depends_on_params}
            return {"obs": obs_nb, "energy": e_nb}, (self.potential.features_on_list(R, e_nb.idx, self.box), static)

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

    def _allocate(self, positions, grow: int = 0):
        n = positions.shape[1]
        if self._pending_caps is not None and not grow:
            return {k: neighbors.placeholder(n, caps, positions.dtype) for k, caps in self._pending_caps.items()}
        return {"obs": self.feature_nbr_fn.allocate(positions[-1], extra_capacity=grow),
                "energy": self.energy_nbr_fn.allocate(positions[-1], extra_capacity=grow)}

    def featurize(self, trajectory) -> Features:
        """Features of a trajectory (positions (S, N, 3), reference energies (S,))."""
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
        for attempt in range(FEATURE_RETRIES):   # the sampler's overflow rule (sampler.py)
            feats, (overflow, graph_full) = self._featurize(positions, self._lists, jnp.asarray(trajectory.energies))
            if not bool(overflow) and not bool(graph_full):
                return feats
            if bool(overflow):
                self._lists = self._allocate(positions, grow=grown_extra(attempt))
                log.info("feature neighbour lists re-allocated (capacities %s)",
                         {k: nb.max_occupancy for k, nb in self._lists.items()})
            if bool(graph_full):
                self._set_potential(self.potential.grow_capacity())
                log.info("feature graph capacities grown to %d edges, %d triplets",
                         self.potential.max_edges, self.potential.max_triplets)
        raise UserError("the feature neighbour list kept overflowing", "the system is probably unstable")

    def _set_potential(self, potential):
        """A potential with other capacities (same values): the features are re-traced, the
        per-update functions follow the features' shapes."""
        self.potential = potential
        self._energy = potential.energy_from_features
        self._featurize = jax.jit(self._featurize_impl)

    # -- per update --------------------------------------------------------------------
    def _over_states(self, fn, feats):
        """``fn`` of every stored state: vectorised (``vmap``), or ``snapshot_batch`` states at a
        time (``lax.map``) for potentials whose per-state intermediates are large (networks)."""
        batch = getattr(self.potential, "snapshot_batch", None)
        return lax.map(fn, feats, batch_size=batch) if batch else jax.vmap(fn)(feats)

    def snapshot_energies(self, params, r):
        """U_θ (S,) and virial s·∂U/∂s (S,) from stored features."""
        def one(p, r_s):
            return jax.value_and_grad(lambda s: self._energy(p, r_s, s))(1.0)
        return self._per_state(one, params, r)

    def _per_state(self, one, params, r):
        """``one(params, r_s)`` of every stored state: vectorised (``vmap``) for cheap potentials;
        ``snapshot_batch`` states at a time with a state-by-state backward for networks."""
        batch = getattr(self.potential, "snapshot_batch", None)
        if batch:
            return _per_state_bounded(one, batch)(params, r)
        return jax.vmap(lambda r_s: one(params, r_s))(r)

    def snapshot_quantities(self, params, r) -> dict:
        """Per-snapshot θ-dependent inputs of the observables: ``energy`` U_θ (S,), ``virial``
        s·∂U/∂s (S,) and, when an observable needs them, ``born_stress`` (S, 6) and
        ``born_stiffness`` (S, 6, 6) in energy/length³ (Voigt, Lagrangian strain; see
        observables/stress.py for the conventions)."""
        if not self.needs:
            u, virial = self.snapshot_energies(params, r)
            return {"energy": u, "virial": virial}
        from ..observables.stress import deformation
        volume, dtype = self.ctx.volume, jnp.result_type(float)
        e0, eye = jnp.zeros(6, dtype), jnp.eye(3, dtype=dtype)

        def one(p, r_s):
            u_of = lambda e: self._energy(p, r_s, 1.0, deformation(e) - eye)  # noqa: E731
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
        return self._per_state(one, params, r)

    def _values(self, q: dict, feats: Features) -> dict:
        """Per-snapshot values (S, ...) of every observable (pytrees for observables with
        ``combine``): θ-dependent ones from the quantities ``q`` of :meth:`snapshot_quantities`,
        θ-independent ones from the trajectory's stored features."""
        return {name: jax.vmap(lambda qs, obs=obs: obs.snapshot(self.ctx, qs))(q)
                if obs.depends_on_params else feats.static[name] for name, obs in self.observables.items()}

    def combine(self, averages: dict) -> dict:
        """Observables' values from their (weighted) per-snapshot averages: ``combine`` for
        observables that are functions of averages, the average itself otherwise."""
        return {name: self.observables[name].combine(self.ctx, v) if hasattr(self.observables[name], "combine")
                else v for name, v in averages.items()}

    def predict(self, params, feats: Features):
        """Reweighted averages ⟨O⟩ at ``params`` and the weights."""
        q = self.snapshot_quantities(params, feats.r)
        w = reweight.weights(self.beta, q["energy"], feats.u_ref)
        avg = {name: jax.tree_util.tree_map(lambda v: reweight.average(w, v), vals)
               for name, vals in self._values(q, feats).items()}
        return self.combine(avg), w

    def snapshot_observables(self, params, feats: Features) -> dict:
        """Per-snapshot values (S, ...) of every observable at ``params`` (no reweighting); for
        observables with ``combine`` the per-snapshot pieces (average them, then :meth:`combine`)."""
        return self._values(self.snapshot_quantities(params, feats.r), feats)

    def loss(self, params, feats: Features):
        preds, w = self.predict(params, feats)
        losses = {name: t.gamma * jnp.mean((preds[t.observable] - jnp.asarray(t.value)) ** 2)
                  for name, t in self.targets.items()}
        total = sum(losses.values())
        return total, (losses, preds, reweight.effective_sample_size(w))

    def _step_impl(self, params, opt_state, feats, lr_scale):
        self.trace_count["step"] += 1
        (loss, (losses, preds, n_eff)), grads = jax.value_and_grad(self.loss, has_aux=True)(params, feats)
        if self.precondition == "fisher":
            grads = self._natural_gradient(params, feats, grads)
        new_params, new_opt_state, gnorm, finite = apply_update(self.optimizer, params, opt_state, grads, loss,
                                                                lr_scale)
        return new_params, new_opt_state, StepAux(loss, losses, preds, n_eff, self._n_eff(new_params, feats),
                                                  gnorm, finite)

    def _n_eff(self, params, feats):
        """N_eff of ``params`` on the trajectory of ``feats`` (the reuse decision)."""
        u = self._over_states(lambda r_s: self._energy(params, r_s), feats.r)
        return reweight.effective_sample_size(reweight.weights(self.beta, u, feats.u_ref))

    def _grad_impl(self, params, feats):
        """Loss, per-target losses, predictions, N_eff and the gradient (no optimiser step):
        the part of an update a multi-state regime sums over state points."""
        self.trace_count["grad"] = self.trace_count.get("grad", 0) + 1
        (loss, (losses, preds, n_eff)), grads = jax.value_and_grad(self.loss, has_aux=True)(params, feats)
        return loss, losses, preds, n_eff, grads

    def _natural_gradient(self, params, feats, grads):
        """F⁻¹ g with the Fisher matrix of the Boltzmann ensemble, F = β² Cov_w(∂U/∂θ), from the
        stored snapshots (damped by ``fisher_damping`` × its mean diagonal). Directions the
        ensemble barely responds to (small F) — e.g. a shift of the whole first shell in a dense
        liquid — get proportionally larger steps. The result is normalised to unit Fisher
        length, so the optimiser's learning rate is the step's √(2 KL)."""
        from jax.flatten_util import ravel_pytree
        flat, unravel = ravel_pytree(params)
        u_of = lambda th: self._over_states(lambda r_s: self._energy(unravel(th), r_s), feats.r)  # noqa: E731
        u = u_of(flat)
        jac = jax.jacfwd(u_of)(flat)                                      # (S, K)
        w = reweight.weights(self.beta, u, feats.u_ref)
        centred = jac - w @ jac
        fisher = self.beta ** 2 * (centred.T * w) @ centred
        fisher = fisher + self.fisher_damping * jnp.mean(jnp.diag(fisher)) * jnp.eye(flat.size, dtype=flat.dtype)
        g_flat, _ = ravel_pytree(grads)
        nat = jnp.linalg.solve(fisher, g_flat)
        # Unit length in the Fisher metric: a step of lr changes the ensemble by KL ≈ lr²/2,
        # whatever the system size (N_eff falls predictably).
        return unravel(nat / jnp.sqrt(jnp.maximum(g_flat @ nat, 1e-30)))

    def step(self, params, opt_state, feats, lr_scale=1.0):
        return self._step(params, opt_state, feats, jnp.asarray(lr_scale, jnp.float32))


def apply_update(optimizer, params, opt_state, grads, loss, lr_scale, ok=True):
    """One optax step scaled by ``lr_scale``; parameters and optimiser state are kept unchanged
    (never a NaN in them) unless the loss, the gradient norm and the new parameters are finite
    and ``ok``. Returns (params, opt_state, gradient norm, finite)."""
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    updates = jax.tree_util.tree_map(lambda u: lr_scale * u, updates)
    new_params = optax.apply_updates(params, updates)
    gnorm = optax.tree.norm(grads) if hasattr(optax, "tree") else optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(gnorm) & jnp.all(
        jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(new_params)]))
    keep = lambda new, old: jnp.where(finite & ok, new, old)  # noqa: E731
    return (jax.tree_util.tree_map(keep, new_params, params), jax.tree_util.tree_map(keep, new_opt_state, opt_state),
            gnorm, finite)


# ======================================================================================
class Proposal(NamedTuple):
    """What one update of a learning regime proposes to the outer loop (train.py)."""

    params: Any
    opt_state: Any
    fields: dict         # metrics columns of this regime (same keys every update; NaN when failed)
    event: str           # "" if the update can be accepted, else why not ("unstable_simulation", ...)
    fresh_sample: bool   # a new, stable simulation was run (ends a run of failures)
    done: str | None = None   # the regime has finished (e.g. converged), why: the loop accepts this
                              # proposal, checkpoints and ends as at trainer.updates


class DiffTReRegime:
    """DiffTRe's update for the outer loop: resample when N_eff falls below ``ratio · S``
    (or no trajectory exists yet), then one reweighted gradient step.

    It owns the simulation state (integrator state, neighbour list), the current reference
    trajectory's features and the reuse decision; the outer loop owns parameters, rollback,
    metrics and checkpoints. Trajectories go to the run store as they are sampled.
    """

    def __init__(self, components, store, ratio: float, init_from: str | None = None):
        self.c = components
        self.init_from = init_from      # initial model: zeros | boltzmann_inversion (learn/boltzmann.py)
        self.store = store
        self.ratio = float(ratio)
        self.n_snapshots = components.sampler.cfg.n_snapshots
        self.state = self.nbrs = self.feats = None
        self.n_traj = 0
        self.next_n_eff = None

    # -- state ---------------------------------------------------------------------------
    def init(self, key):
        k_param, k_sim = jax.random.split(key)
        params = initial_params(self.c, k_param, self.init_from)
        opt_state = self.c.optimizer.init(params)
        self.state, self.nbrs = self.c.sampler.init(k_sim, params)
        return params, opt_state

    def checkpoint(self) -> tuple[dict, dict]:
        attrs = {"n_trajectories": self.n_traj}
        if self.nbrs is not None:   # samplers of independent particles keep no neighbour list
            attrs["neighbor_capacities"] = json.dumps(neighbors.capacities(self.nbrs))
        attrs.update(self.c.learner.capacity_attrs())
        return {"sim_state": self.state, "neighbor": self.nbrs}, attrs

    def templates(self, attrs: dict) -> dict:
        """Pytrees shaped like the checkpointed ones (the neighbour list at its recorded capacities)."""
        nbrs = None if self.nbrs is None else neighbors.placeholder(
            self.nbrs.idx.shape[0], json.loads(attrs["neighbor_capacities"]), self.nbrs.reference_position.dtype)
        return {"sim_state": self.state, "neighbor": nbrs}

    def restore(self, trees: dict, attrs: dict) -> None:
        self.state, self.nbrs = trees["sim_state"], trees["neighbor"]
        self.c.learner.set_capacity(attrs)
        self.n_traj = int(attrs["n_trajectories"])
        self.feats = self.c.learner.featurize(self.store.read_trajectory(self.n_traj - 1)) if self.n_traj else None
        self.next_n_eff = None

    def rejected(self) -> None:
        self.next_n_eff = None

    # -- one update ----------------------------------------------------------------------
    def _resample(self, params) -> tuple[bool, float]:
        t0 = time.perf_counter()
        res = self.c.sampler.sample(params, self.state, self.nbrs, first=(self.n_traj == 0))
        return self.accept_sample(res), time.perf_counter() - t0

    def accept_sample(self, res) -> bool:
        """Keep a finished segment (a :class:`sampler.SampleResult` from this state): store its
        trajectory, featurize it and continue the simulation from its end. False (nothing kept)
        if the segment was unstable."""
        c = self.c
        if not res.ok:
            log.warning("simulation unstable (%s)", res.reason)
            return False
        traj = jax.tree_util.tree_map(np.asarray, res.trajectory)
        self.store.write_trajectory(self.n_traj, traj, c.system.box_size, c.sampler.cfg.dt, c.system.units)
        self.feats = c.learner.featurize(res.trajectory)
        jax.block_until_ready(self.feats.r)
        self.state, self.nbrs, self.n_traj = res.state, res.neighbor, self.n_traj + 1
        return True

    def propose(self, params, opt_state, lr_scale: float) -> Proposal:
        c = self.c
        # states per trajectory: the kept snapshots, or snapshots × particles for one-body potentials
        n_states = self.n_snapshots if self.feats is None else int(self.feats.u_ref.shape[0])
        threshold = self.ratio * n_states
        event, sample_time, update_time, reused, fresh = "", 0.0, 0.0, True, False
        aux, n_eff = None, float("nan")
        new_params, new_opt = params, opt_state
        if self.feats is None or (self.next_n_eff is not None and self.next_n_eff < threshold):
            ok, sample_time = self._resample(params)
            reused, fresh = False, ok
            if not ok:
                if self.feats is None:  # nothing to fall back on: the start itself is unstable
                    raise UserError("the simulation with the current parameters is unstable (non-finite energies, "
                                    "exploding temperature or a neighbour list that keeps overflowing)",
                                    "lower simulator.dt, check the prior and the initial structure")
                event = "unstable_simulation"
        if not event:
            t0 = time.perf_counter()
            new_params, new_opt, aux = jax.block_until_ready(c.learner.step(params, opt_state, self.feats, lr_scale))
            update_time = time.perf_counter() - t0
            n_eff = float(aux.n_eff)
            if reused and n_eff < threshold:  # only when next_n_eff was unknown (resume, rollback)
                ok, dt = self._resample(params)
                sample_time += dt
                reused, fresh = False, ok
                if ok:
                    t0 = time.perf_counter()
                    new_params, new_opt, aux = jax.block_until_ready(
                        c.learner.step(params, opt_state, self.feats, lr_scale))
                    update_time += time.perf_counter() - t0
                    n_eff = float(aux.n_eff)
                else:
                    event = "unstable_simulation"
        if not event and not bool(aux.finite):
            event = "non_finite_loss"
        self.next_n_eff = None if event else float(aux.n_eff_next)
        nan = float("nan")
        fields = {"loss": nan if event else float(aux.loss)}
        for name in c.targets:
            fields[f"loss_{name}"] = nan if event else float(aux.losses[name])
        fields.update({"n_eff": n_eff, "reused": int(reused), "sample_time": sample_time, "update_time": update_time,
                       "grad_norm": nan if aux is None else float(aux.grad_norm), "n_trajectories": self.n_traj})
        return Proposal(new_params, new_opt, fields, event, fresh)
