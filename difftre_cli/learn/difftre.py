"""Differentiable Trajectory Reweighting (Thaler & Zavadlav, Nat. Commun. 12, 6884, 2021).

Per reference trajectory (θ-independent, computed once): the observable engine's features
(observables/engine.py).
Per update (one jit call, compiled once per run):
    U_θ(S_i) and the virial from the stored features → weights w_i = softmax(−β(U_θ − U_ref))
    → reweighted observables ⟨O⟩ = Σ w_i O_i (the engine's ``predict``) → loss Σ_k γ_k MSE_k →
    gradient (through the weights and θ-dependent observables only, never through the
    integrator) → optax step.

:class:`DiffTRe` is the learner (loss, gradient, natural gradient, step);
:class:`DiffTReRegime` is its update rule for the outer loop (train.py): reuse the stored
trajectory while N_eff stays above ``reweight_ratio · S`` (and, with ``max_reuse``, for at most
that many updates after it was sampled), resample otherwise. The cap guards against what N_eff
cannot see: parameters that change U only where the trajectory has no snapshots leave every
weight as it was (N_eff = S) however far they move; a relative-entropy fit of a molecule whose
model never visited a reference basin ran away that way (README, Molecules). With
``max_loss_ratio``, a fresh trajectory whose loss rose above that factor times the loss before
the step refutes the step: the update is rejected and the loop rolls it back (regime.loss_rose).
"""
from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from .. import neighbors, reweight
from ..compile_ahead import CompileAhead
from ..errors import UserError
from ..observables.engine import Features, ObservableEngine
from . import gauss_newton
from .boltzmann import initial_params
from .regime import (
    LOSS_ROSE,
    Proposal,
    Regime,
    loss_before_attrs,
    loss_before_from_attrs,
    loss_rose,
)
from .step_rule import StepRule

log = logging.getLogger("difftre")


#: trainer.precondition of the reweighting learners: the optimiser sees the plain gradient, the
#: natural gradient F⁻¹g (Fisher) or the Gauss–Newton step (JᵀJ + λ)⁻¹ ½g (gauss_newton.py)
PRECONDITIONERS = ("none", "fisher", "gauss_newton")


class StepAux(NamedTuple):
    loss: Any
    losses: dict
    predictions: dict
    n_eff: Any
    n_eff_next: Any   # N_eff of the updated parameters on the same trajectory (the next reuse decision)
    grad_norm: Any
    finite: Any
    step_scale: Any = 1.0   # the factor the step rule chose (1: ``fixed``)
    exhausted: Any = False  # the step rule stopped at the snapshots' N_eff limit: resample next


class DiffTRe:
    """The DiffTRe learner on an observable engine: ``step`` many times on one trajectory's
    features (``engine.featurize``)."""

    def __init__(self, engine: ObservableEngine, targets: dict, optimizer: optax.GradientTransformation,
                 precondition: str = "none", fisher_damping: float = 1e-3, step_rule: StepRule | None = None,
                 damping: float = 1e-3, shrinkage: float = 0.0):
        self.engine = engine
        self.step_rule = step_rule or StepRule()
        self.targets = targets
        self.optimizer = optimizer
        self.beta = engine.beta
        if precondition not in PRECONDITIONERS:
            raise UserError(f"trainer.precondition: unknown {precondition!r}", f"use one of {', '.join(PRECONDITIONERS)}")
        self.precondition = precondition
        self.fisher_damping = float(fisher_damping)
        self.damping = float(damping)     # the Gauss–Newton step's (gauss_newton.py)
        self.shrinkage = float(shrinkage) if precondition == "gauss_newton" else 0.0   # J's (gauss_newton.py)
        gauss_newton.check_shrinkage(self.shrinkage, precondition, engine, targets)
        self.trace_count = {"step": 0, "grad": 0}
        self._step = jax.jit(self._step_impl)
        self.grad = jax.jit(self._grad_impl)
        self.trials = jax.jit(self._trials_impl)
        self.fisher = jax.jit(self._fisher_impl)
        self.gauss_newton = jax.jit(self._gauss_newton_impl)
        self.n_eff = jax.jit(engine.n_eff)
        self._ahead = CompileAhead()   # the update compiling while the first features are computed

    def target_losses(self, preds) -> dict:
        """γ · (weighted) MSE of every target against the predicted observables (Target.loss)."""
        return {name: t.loss(preds[t.observable], jnp) for name, t in self.targets.items()}

    def loss(self, params, feats: Features):
        preds, w = self.engine.predict(params, feats)
        losses = self.target_losses(preds)
        total = sum(losses.values())
        return total, (losses, preds, reweight.effective_sample_size(w))

    def _step_impl(self, params, opt_state, feats, lr_scale, floor, *extra):
        """One update; ``floor``: the least factor of a step the snapshots' N_eff stops
        (step_rule.py); ``extra``: further arguments of a subclass's ``loss`` (e.g. reference data)."""
        self.trace_count["step"] += 1
        (loss, (losses, preds, n_eff)), grads = jax.value_and_grad(self.loss, has_aux=True)(params, feats, *extra)
        if self.precondition == "fisher":
            grads = self._natural_gradient(params, feats, grads)
        elif self.precondition == "gauss_newton":
            r, jac = self._residual_jacobian(params, feats)
            if self.shrinkage > 0:    # the gradient of the shrunk J's model (gauss_newton.py)
                grads = gauss_newton.gradient(jac.T @ r, grads)
            grads = gauss_newton.direction(jac, r, grads, self.damping)
        chosen = {"scale": jnp.ones((), loss.dtype), "exhausted": jnp.zeros((), bool)}

        def rescale(updates):   # the step rule (step_rule.py), on the stored snapshots
            trial = lambda p: self._loss_and_n_eff(p, feats, *extra)  # noqa: E731
            chosen["scale"], chosen["exhausted"] = self.step_rule.scale(trial, params, updates, feats.u_ref.shape[0],
                                                                        floor)
            return jax.tree_util.tree_map(lambda u: (chosen["scale"] * u).astype(u.dtype), updates)
        new_params, new_opt_state, gnorm, finite = apply_update(
            self.optimizer, params, opt_state, grads, loss, lr_scale,
            rescale=rescale if self.step_rule.searches else None)
        return new_params, new_opt_state, StepAux(loss, losses, preds, n_eff, self.engine.n_eff(new_params, feats),
                                                  gnorm, finite, chosen["scale"], chosen["exhausted"])

    def _loss_and_n_eff(self, params, feats, *extra):
        loss, (_, _, n_eff) = self.loss(params, feats, *extra)
        return loss, n_eff

    def _trials_impl(self, params, updates, feats):
        """(loss, N_eff) of ``params + s · updates`` for every factor s of the step rule, on
        this trajectory (a multi-state regime sums the losses over state points)."""
        return self.step_rule.candidates(lambda p: self._loss_and_n_eff(p, feats), params, updates)

    def _grad_impl(self, params, feats):
        """Loss, per-target losses, predictions, N_eff and the gradient (no optimiser step):
        the part of an update a multi-state regime sums over state points."""
        self.trace_count["grad"] += 1
        (loss, (losses, preds, n_eff)), grads = jax.value_and_grad(self.loss, has_aux=True)(params, feats)
        return loss, losses, preds, n_eff, grads

    def _natural_gradient(self, params, feats, grads):
        """F⁻¹ g with the Fisher matrix of the Boltzmann ensemble, F = β² Cov_w(∂U/∂θ), from the
        stored snapshots (damped by ``fisher_damping`` × its mean diagonal). Directions the
        ensemble barely responds to (small F) — e.g. a shift of the whole first shell in a dense
        liquid — get proportionally larger steps. The result is normalised to unit Fisher
        length, so the optimiser's learning rate is the step's √(2 KL)."""
        return natural_step(self._fisher_impl(params, feats), grads, self.fisher_damping)

    def _residual_jacobian(self, params, feats):
        """(r, J = ∂r/∂θ) of the targets' residuals on the stored snapshots, J shrunk towards the
        local response by ``shrinkage`` (gauss_newton.py)."""
        r, jac = gauss_newton.residual_jacobian(self.engine, self.targets, params, feats)
        if self.shrinkage > 0:
            j_loc = gauss_newton.local_response_jacobian(self.engine.potential, self.engine.observables,
                                                         self.targets, params, self.beta)
            jac = gauss_newton.shrunk(jac, j_loc, self.shrinkage)
        return r, jac

    def _gauss_newton_impl(self, params, feats):
        """(JᵀJ, m, Jᵀr) on this trajectory: what a multi-state regime sums over state points."""
        gauss_newton.check_summable(ravel_pytree(params)[0].size)
        r, jac = self._residual_jacobian(params, feats)
        return jac.T @ jac, jnp.asarray(r.shape[0], jac.dtype), jac.T @ r

    def _fisher_impl(self, params, feats):
        """F = β² Cov_w(∂U/∂θ) (K × K) on this trajectory's snapshots, reweighted to ``params``
        (several state points: the regime sums them, learn/multistate.py)."""
        flat, unravel = ravel_pytree(params)
        energy, over_states = self.engine.energy, self.engine.over_states
        u_of = lambda th: over_states(lambda r_s: energy(unravel(th), r_s), feats.r)  # noqa: E731
        u = u_of(flat)
        if flat.size <= 8:    # few parameters: K forward-mode passes over the snapshots
            jac = jax.jacfwd(u_of)(flat)                                  # (S, K)
        else:                 # one reverse pass per snapshot (cheaper for K > ~3 when U is costly)
            jac = over_states(lambda r_s: jax.grad(lambda th: energy(unravel(th), r_s))(flat), feats.r)
        w = reweight.weights(self.beta, u, feats.u_ref)
        centred = jac - w @ jac
        return self.beta ** 2 * (centred.T * w) @ centred

    def step(self, params, opt_state, feats, lr_scale=1.0, floor=None):
        """One update (one jit call); ``floor``: the step rule's (None: its smallest factor)."""
        self._ahead.wait()
        return self._step(*self.step_arguments(params, opt_state, feats, lr_scale, floor))

    def step_arguments(self, params, opt_state, feats, lr_scale, floor) -> tuple:
        """The arguments of the compiled update (a subclass may add its own)."""
        return params, opt_state, feats, jnp.asarray(lr_scale, jnp.float32), self.floor_arg(floor)

    def compile_step_ahead(self, params, opt_state, feats, floor=None) -> None:
        """Compile the update for features of these shapes in the background (compile_ahead.py)."""
        self._ahead.start(self._step, *self.step_arguments(params, opt_state, feats, 1.0, floor))

    def floor_arg(self, floor):
        return jnp.asarray(self.step_rule.first_floor if floor is None else floor, jnp.float32)


def natural_step(fisher, grads, damping: float):
    """F⁻¹ g (``grads`` a pytree), F damped by ``damping`` × its mean diagonal, normalised to
    unit Fisher length: a step of lr changes the ensemble by KL ≈ lr²/2, whatever the system
    size (N_eff falls predictably)."""
    g_flat, unravel = ravel_pytree(grads)
    fisher = fisher + damping * jnp.mean(jnp.diag(fisher)) * jnp.eye(g_flat.size, dtype=g_flat.dtype)
    nat = jnp.linalg.solve(fisher, g_flat)
    return unravel(nat / jnp.sqrt(jnp.maximum(g_flat @ nat, 1e-30)))


def apply_update(optimizer, params, opt_state, grads, loss, lr_scale, ok=True, rescale=None):
    """One optax step scaled by ``lr_scale`` (and then by ``rescale(updates)``, a step rule's
    choice, if given); parameters and optimiser state are kept unchanged (never a NaN in them)
    unless the loss, the gradient norm and the new parameters are finite and ``ok``. Returns
    (params, opt_state, gradient norm, finite)."""
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    updates = jax.tree_util.tree_map(lambda u: lr_scale * u, updates)
    if rescale is not None:
        updates = rescale(updates)
    new_params = optax.apply_updates(params, updates)
    gnorm = optax.tree.norm(grads) if hasattr(optax, "tree") else optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(gnorm) & jnp.all(
        jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(new_params)]))
    keep = lambda new, old: jnp.where(finite & ok, new, old)  # noqa: E731
    return (jax.tree_util.tree_map(keep, new_params, params), jax.tree_util.tree_map(keep, new_opt_state, opt_state),
            gnorm, finite)


# ======================================================================================
class DiffTReRegime(Regime):
    """DiffTRe's update for the outer loop: resample when N_eff falls below ``ratio · S``
    (or no trajectory exists yet), then one reweighted gradient step.

    It owns the simulation state (integrator state, neighbour list), the current reference
    trajectory's features and the reuse decision; the outer loop owns parameters, rollback,
    metrics and checkpoints. Trajectories go to the run store as they are sampled.
    """

    def __init__(self, components, store, ratio: float, init_from: str | None = None, max_reuse: int | None = None,
                 max_loss_ratio: float | None = None):
        self.c = components
        self.max_loss_ratio = max_loss_ratio   # a fresh loss above this × loss_before rejects (regime.loss_rose)
        self.loss_before = None         # the last accepted update's loss: at the parameters of the step it took
        self.before_sample = None       # (state, neighbour list) before this update's trajectory (undo_sample)
        self.max_reuse = max_reuse      # updates a trajectory serves at most (None: while N_eff allows)
        self.uses = 0                   # updates the current trajectory has served
        self.init_from = init_from      # initial model: zeros | boltzmann_inversion (learn/boltzmann.py)
        self.store = store
        self.ratio = float(ratio)
        self.n_snapshots = components.sampler.cfg.n_snapshots
        self.state = self.nbrs = self.feats = None
        self.n_traj = 0
        self.next_n_eff = None
        self.length = 1                 # spacing factor of the snapshots (step_rule.next_length)
        self.floor = components.learner.step_rule.first_floor   # the step rule's floor (step_rule.next_floor)
        self.last_loss = None           # the last update's fresh loss (judges the step after it)
        self.step_ahead = None          # (params, opt_state) whose update compiles during featurisation

    # -- state ---------------------------------------------------------------------------
    def init(self, key):
        k_param, k_sim = jax.random.split(key)
        params = initial_params(self.c, k_param, self.init_from)
        opt_state = self.c.optimizer.init(params)
        self.state, self.nbrs = self.c.sampler.init(k_sim, params, ahead=self.n_snapshots)
        return params, opt_state

    def checkpoint(self) -> tuple[dict, dict]:
        attrs = {"n_trajectories": self.n_traj, "trajectory_uses": self.uses, "length_factor": self.length,
                 "trajectory_spent": int(self.next_n_eff is not None and self.next_n_eff < 0),
                 **floor_attrs(self.floor, self.last_loss), **loss_before_attrs(self.loss_before)}
        if self.nbrs is not None:   # samplers of independent particles keep no neighbour list
            attrs["neighbor_capacities"] = json.dumps(neighbors.capacities(self.nbrs))
        attrs.update(self.c.engine.capacity_attrs())
        return {"sim_state": self.state, "neighbor": self.nbrs}, attrs

    def templates(self, attrs: dict) -> dict:
        """Pytrees shaped like the checkpointed ones (the neighbour list at its recorded capacities)."""
        nbrs = None if self.nbrs is None else neighbors.placeholder(
            self.nbrs.idx.shape[0], json.loads(attrs["neighbor_capacities"]), self.nbrs.reference_position.dtype)
        return {"sim_state": self.state, "neighbor": nbrs}

    def restore(self, trees: dict, attrs: dict) -> None:
        self.state, self.nbrs = trees["sim_state"], trees["neighbor"]
        self.c.engine.set_capacity(attrs)
        self.n_traj = int(attrs["n_trajectories"])
        self.uses = int(attrs.get("trajectory_uses", 0))
        self.length = int(attrs.get("length_factor", 1))
        self.floor, self.last_loss = floor_from_attrs(attrs, self.c.learner.step_rule)
        self.loss_before = loss_before_from_attrs(attrs)
        self.feats = self.c.engine.featurize(self.store.read_trajectory(self.n_traj - 1)) if self.n_traj else None
        # a line-search step uses its trajectory up (step_rule.py): one that served a step is not
        # reused (checkpoints before "trajectory_spent": judged from the rule and the uses)
        spent = attrs.get("trajectory_spent", int(self.c.learner.step_rule.searches and self.uses > 0))
        self.next_n_eff = -1.0 if int(spent) else None

    def rejected(self) -> None:
        self.next_n_eff = None
        self.last_loss = None
        self.loss_before = None   # the next update starts where that loss was measured: no step to judge

    # -- one update ----------------------------------------------------------------------
    def _resample(self, params) -> tuple[bool, float]:
        t0 = time.perf_counter()
        sampler = self.c.sampler
        if self.n_traj == 0 or self.length == 1:
            res = sampler.sample(params, self.state, self.nbrs, first=(self.n_traj == 0))
        else:   # the step rule's longer trajectory: the same snapshots, further apart
            cfg = sampler.cfg
            res = sampler.run(params, self.state, self.nbrs, cfg.equilibration_steps, cfg.n_snapshots,
                              cfg.every * self.length)
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
        self.store.write_trajectory(self.n_traj, traj, c.system.box_size, c.sampler.cfg.dt, c.system.units,
                                    species=c.system.species, species_names=c.system.species_names)
        ahead, self.step_ahead = self.step_ahead, None
        self.feats = c.engine.featurize(res.trajectory, None if ahead is None else (
            lambda shapes: c.learner.compile_step_ahead(*ahead, shapes, self.floor)))
        jax.block_until_ready(self.feats.r)
        self.before_sample = (self.state, self.nbrs)
        self.state, self.nbrs, self.n_traj = res.state, res.neighbor, self.n_traj + 1
        self.uses = 0
        return True

    def undo_sample(self) -> None:
        """Continue the simulation from where it stood before this update's trajectory (a step
        that trajectory refuted is rolled back, and the parameters' next trajectory should not
        start from a configuration of the refuted ones, e.g. a crystal near an instability).
        The trajectory stays stored and featurised: reweighted, it still serves the next update."""
        if self.before_sample is not None:
            self.state, self.nbrs = self.before_sample
            self.before_sample = None

    def propose(self, params, opt_state, lr_scale: float) -> Proposal:
        c = self.c
        # states per trajectory: the kept snapshots, or snapshots × particles for one-body potentials
        n_states = self.n_snapshots if self.feats is None else int(self.feats.u_ref.shape[0])
        threshold = self.ratio * n_states
        event, sample_time, update_time, reused, fresh = "", 0.0, 0.0, True, False
        aux, n_eff = None, float("nan")
        new_params, new_opt = params, opt_state
        self.before_sample = None
        worn = self.max_reuse is not None and self.uses > self.max_reuse
        if self.feats is None or worn or (self.next_n_eff is not None and self.next_n_eff < threshold):
            if self.feats is None:   # the first trajectory: its update compiles while it is featurised
                self.step_ahead = (params, opt_state)
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
            new_params, new_opt, aux = jax.block_until_ready(c.learner.step(params, opt_state, self.feats, lr_scale,
                                                                            self.floor))
            update_time = time.perf_counter() - t0
            n_eff = float(aux.n_eff)
            if reused and n_eff < threshold:  # only when next_n_eff was unknown (resume, rollback)
                ok, dt = self._resample(params)
                sample_time += dt
                reused, fresh = False, ok
                if ok:
                    t0 = time.perf_counter()
                    new_params, new_opt, aux = jax.block_until_ready(
                        c.learner.step(params, opt_state, self.feats, lr_scale, self.floor))
                    update_time += time.perf_counter() - t0
                    n_eff = float(aux.n_eff)
                else:
                    event = "unstable_simulation"
        rule, used, floor = c.learner.step_rule, self.length, self.floor
        if not event and not bool(aux.finite):
            event = "non_finite_loss"
        if not event and fresh and loss_rose(self.max_loss_ratio, self.loss_before, float(aux.loss)):
            event = LOSS_ROSE   # the last step is refuted: the loop rolls it back; the floor sinks as after any rise
            self.floor = rule.next_floor(self.floor, self.last_loss, float(aux.loss))
            self.undo_sample()
        if not event:
            self.uses += 1
            self.loss_before = float(aux.loss)
        self.next_n_eff = None if event else float(aux.n_eff_next)
        if not event and rule.searches:   # every line-search step ends this trajectory's use (step_rule.py)
            self.length = rule.next_length(self.length, bool(aux.exhausted))
            self.next_n_eff = -1.0
            # the fresh loss judges the previous step: the floor of the next one (step_rule.next_floor)
            self.floor, self.last_loss = rule.next_floor(self.floor, self.last_loss, float(aux.loss)), float(aux.loss)
        nan = float("nan")
        shown = event in ("", LOSS_ROSE)   # a refuted step's fresh losses are logged: they are why
        fields = {"loss": float(aux.loss) if shown else nan}
        for name in c.targets:
            fields[f"loss_{name}"] = float(aux.losses[name]) if shown else nan
        fields.update({"n_eff": n_eff, "reused": int(reused), "sample_time": sample_time, "update_time": update_time,
                       "grad_norm": nan if aux is None else float(aux.grad_norm), "n_trajectories": self.n_traj})
        if rule.searches:
            fields["step_scale"] = nan if aux is None else float(aux.step_scale)
            fields["length_factor"] = used   # the spacing factor of this update's trajectory
            if rule.adapt:
                fields["step_floor"] = floor
        return Proposal(new_params, new_opt, fields, event, fresh)


def floor_attrs(floor: float, last_loss: float | None) -> dict:
    """The step rule's progress state (step_rule.next_floor) as checkpoint attributes."""
    attrs = {"step_floor": float(floor)}
    if last_loss is not None:   # (absent rather than NaN: attributes compare equal across runs)
        attrs["step_last_loss"] = float(last_loss)
    return attrs


def floor_from_attrs(attrs: dict, rule) -> tuple[float, float | None]:
    """(floor, last loss) from checkpoint attributes (older checkpoints: the first floor, unknown)."""
    floor = float(attrs.get("step_floor", rule.first_floor))
    last = float(attrs.get("step_last_loss", float("nan")))
    return floor, (last if math.isfinite(last) else None)
