"""Differentiable Trajectory Reweighting (Thaler & Zavadlav, Nat. Commun. 12, 6884, 2021): the learner.

Per reference trajectory (θ-independent, computed once): the observable engine's features
(observables/engine.py).
Per update (one jit call, compiled once per run):
    U_θ(S_i) and the virial from the stored features → weights w_i = softmax(−β(U_θ − U_ref))
    → reweighted observables ⟨O⟩ = Σ w_i O_i (the engine's ``predict``) → loss Σ_k γ_k MSE_k →
    gradient (through the weights and θ-dependent observables only, never through the
    integrator) → optax step.

:class:`DiffTRe` is the learner (loss, gradient, natural gradient, step); its update rule for the
outer loop (when to resample, when a step is refuted) is difftre_regime.py.
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from .. import reweight
from ..compile_ahead import CompileAhead
from ..errors import UserError
from ..observables.engine import Features, ObservableEngine
from . import gauss_newton
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
