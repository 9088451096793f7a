"""Differentiable Trajectory Reweighting (Thaler & Zavadlav, Nat. Commun. 12, 6884, 2021).

Per reference trajectory (θ-independent, computed once):
    pair distances of every kept snapshot, and the observables that depend on positions only.
Per update (one jit call, compiled once per run):
    U_θ(S_i) and the virial from the stored distances → weights w_i = softmax(−β(U_θ − U_ref))
    → reweighted observables ⟨O⟩ = Σ w_i O_i → loss Σ_k γ_k MSE_k → gradient (through the
    weights and θ-dependent observables only, never through the integrator) → optax step.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from .. import neighbors, reweight
from ..errors import UserError
from ..potentials import distances_on_list

log = logging.getLogger("difftre")


class Features(NamedTuple):
    """θ-independent data of one reference trajectory."""

    r: Any            # (S, N, W) distances < energy cutoff on a dense list, +inf padding
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
        self.box = float(box_size)
        reach = max([potential.cutoff] + [getattr(o, "reach", 0.0) for o in observables.values()])
        if reach > 0.5 * self.box:
            raise UserError(f"observable range {reach:.3g} exceeds half the box ({0.5 * self.box:.3g})",
                            "use more particles (system.n_particles) or a smaller r_max")
        self.feature_cutoff = reach
        self.feature_nbr_fn = neighbors.make_neighbor_fn(self.box, reach, 0.0, 1.3)
        self.energy_nbr_fn = neighbors.make_neighbor_fn(self.box, potential.cutoff, 0.0, 1.3)
        self._lists = None
        self.trace_count = {"featurize": 0, "step": 0}
        self._featurize = jax.jit(self._featurize_impl)
        self._step = jax.jit(self._step_impl)
        self.snapshot_observables_jit = jax.jit(self.snapshot_observables)

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
            r = distances_on_list(R, obs_nb.idx, self.box)
            static = {k: o.snapshot(self.ctx, {"r": r}) for k, o in self.observables.items()
                      if not o.depends_on_params}
            return {"obs": obs_nb, "energy": e_nb}, (distances_on_list(R, e_nb.idx, self.box), static)

        lists, (r, static) = lax.scan(one, lists, positions)
        overflow = lists["obs"].did_buffer_overflow | lists["energy"].did_buffer_overflow
        return Features(r, static, u_ref), overflow

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
        if self._lists is None:
            self._lists = self._allocate(positions)
        for attempt in range(6):
            feats, overflow = self._featurize(positions, self._lists, jnp.asarray(trajectory.energies))
            if not bool(overflow):
                return feats
            self._lists = self._allocate(positions, grow=8 * 2 ** attempt)
            log.info("feature neighbour lists re-allocated (capacities %s)",
                     {k: nb.max_occupancy for k, nb in self._lists.items()})
        raise UserError("the feature neighbour list kept overflowing", "the system is probably unstable")

    # -- per update --------------------------------------------------------------------
    def snapshot_energies(self, params, r):
        """U_θ (S,) and virial s·∂U/∂s (S,) from stored distances."""
        def one(r_s):
            return jax.value_and_grad(lambda s: self.potential.energy_from_distances(params, r_s, s))(1.0)
        return jax.vmap(one)(r)

    def _values(self, u, virial, feats: Features) -> dict:
        """Per-snapshot values (S, ...) of every observable: θ-dependent ones from the energies
        and virials, θ-independent ones from the trajectory's stored features."""
        return {name: jax.vmap(lambda e, v: obs.snapshot(self.ctx, {"energy": e, "virial": v}))(u, virial)
                if obs.depends_on_params else feats.static[name] for name, obs in self.observables.items()}

    def predict(self, params, feats: Features):
        """Reweighted averages ⟨O⟩ at ``params`` and the weights."""
        u, virial = self.snapshot_energies(params, feats.r)
        w = reweight.weights(self.beta, u, feats.u_ref)
        return {name: reweight.average(w, v) for name, v in self._values(u, virial, feats).items()}, w

    def snapshot_observables(self, params, feats: Features) -> dict:
        """Per-snapshot values (S, ...) of every observable at ``params`` (no reweighting)."""
        return self._values(*self.snapshot_energies(params, feats.r), feats)

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
        updates, new_opt_state = self.optimizer.update(grads, opt_state, params)
        updates = jax.tree_util.tree_map(lambda u: lr_scale * u, updates)
        new_params = optax.apply_updates(params, updates)
        gnorm = optax.tree.norm(grads) if hasattr(optax, "tree") else optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(gnorm) & jnp.all(
            jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(new_params)]))
        # Never let a NaN reach the parameters: keep the old ones if anything is not finite.
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_params = jax.tree_util.tree_map(keep, new_params, params)
        new_opt_state = jax.tree_util.tree_map(keep, new_opt_state, opt_state)
        u_next = jax.vmap(lambda r_s: self.potential.energy_from_distances(new_params, r_s))(feats.r)
        n_eff_next = reweight.effective_sample_size(reweight.weights(self.beta, u_next, feats.u_ref))
        return new_params, new_opt_state, StepAux(loss, losses, preds, n_eff, n_eff_next, gnorm, finite)

    def _natural_gradient(self, params, feats, grads):
        """F⁻¹ g with the Fisher matrix of the Boltzmann ensemble, F = β² Cov_w(∂U/∂θ), from the
        stored snapshots (damped by ``fisher_damping`` × its mean diagonal). Directions the
        ensemble barely responds to (small F) — e.g. a shift of the whole first shell in a dense
        liquid — get proportionally larger steps. The result is normalised to unit Fisher
        length, so the optimiser's learning rate is the step's √(2 KL)."""
        from jax.flatten_util import ravel_pytree
        flat, unravel = ravel_pytree(params)
        u_of = lambda th: jax.vmap(lambda r_s: self.potential.energy_from_distances(unravel(th), r_s))(feats.r)  # noqa: E731
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
