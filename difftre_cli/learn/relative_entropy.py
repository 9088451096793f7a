"""Relative-entropy coarse-graining (Shell, J. Chem. Phys. 129, 144108, 2008), with DiffTRe's
trajectory reuse (Thaler et al., chemtrain, 2025).

The relative entropy of the CG model θ with respect to the mapped reference ensemble is, up to
θ-independent terms, S_rel(θ) = β⟨U_θ⟩_ref + ln Z_θ. Its gradient is

    ∂S_rel/∂θ = β (⟨∂U_θ/∂θ⟩_ref − ⟨∂U_θ/∂θ⟩_θ),

the first average over the mapped reference frames (reference/), the second over the CG
model's own ensemble. That one comes from a CG trajectory sampled at θ₀ and reweighted to θ
(w_i ∝ exp(−β(U_θ − U_θ₀))), reused while N_eff stays above ``reweight_ratio`` · S, exactly as
DiffTRe reuses its trajectories (the regime is DiffTRe's, learn/difftre_regime.py). The objective
differentiated is the free-energy-perturbation estimate

    L(θ) = β⟨U_θ⟩_ref + ln (1/S) Σ_i exp(−β(U_θ(S_i) − U_θ₀(S_i)))  (= S_rel − ln Z_θ₀ + const),

whose gradient is the one above; its value is comparable between updates on one trajectory
(a resample changes the constant ln Z_θ₀). With ``trainer.precondition=fisher`` the step is
DiffTRe's natural-gradient step F⁻¹g (scaled to Fisher length lr); for the relative entropy the
Fisher matrix β² Cov_θ(∂U/∂θ) is also the Hessian of S_rel, so its direction is Newton's. The
targets, if any, are reweighted and reported (``loss_<target>``) but not trained on.

The reference average is computed before each step, over the mapped reference frames in batches
(:meth:`RelativeEntropy.reference_average`: β⟨U_θ⟩_ref and its gradient at the current θ); the
step's objective holds it as its first-order expansion around that θ, so value and gradient at
θ are exact. The frames' features are computed once and kept (``reference.batch_frames`` null)
or read and featurized batch by batch at every step (``batch_frames`` N: memory for N frames).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from .. import reweight
from ..observables.engine import Features
from ..sampler import Trajectory
from .difftre import DiffTRe


class RefAverage(NamedTuple):
    """β⟨U_θ⟩_ref over the reference frames and its gradient, at the parameters ``params``."""

    value: Any
    grad: Any
    params: Any


class RelativeEntropy(DiffTRe):
    """The relative-entropy learner on an observable engine: :meth:`set_reference` once with
    the mapped reference frames, then ``step`` on the CG trajectory's features like DiffTRe."""

    ref_batches = None   # () -> iterable of (features r, weights) of the reference frames
    ref_feats: Features | None = None   # the features of every frame, when they are kept in memory

    def set_reference(self, positions=None, stream=None, batch: int | None = None) -> None:
        """The mapped reference frames: ``positions`` (S_ref, N, 3) in the run's units, kept as
        features; or ``stream``, a callable giving batches of positions (at most ``batch``
        frames each), read and featurized at every step."""
        self._ref_sum = jax.jit(self._ref_sum_impl)
        if stream is None:
            positions = jnp.asarray(positions)
            self.ref_feats = self._featurize(positions)
            one = [(self.ref_feats.r, jnp.ones(positions.shape[0], positions.dtype))]
            self.ref_batches = lambda: one
            return

        def batches():   # padded to ``batch`` frames (weight 0): one compiled shape
            for pos in stream():
                pos = np.asarray(pos)
                n, pad = len(pos), batch - len(pos)
                full = np.concatenate([pos, np.repeat(pos[:1], pad, 0)]) if pad else pos
                dtype = jnp.result_type(float)
                yield self._featurize(jnp.asarray(full, dtype)).r, jnp.asarray(np.r_[np.ones(n), np.zeros(pad)], dtype)
        self.ref_batches = batches

    def _featurize(self, positions) -> Features:
        s = positions.shape[0]
        zeros = jnp.zeros(s, positions.dtype)
        return self.engine.featurize(Trajectory(positions, zeros, zeros, jnp.arange(s)))

    def _ref_sum_impl(self, params, r, weight):
        energy = self.engine.energy

        def total(p):
            u = self.engine.over_states(lambda r_s: energy(p, r_s), r)
            return jnp.sum(weight * u)
        value, grad = jax.value_and_grad(total)(params)
        return value, grad, jnp.sum(weight)

    def reference_average(self, params) -> RefAverage:
        """β⟨U_θ⟩_ref and its gradient at ``params``, summed over the reference batches."""
        if self.ref_batches is None:
            raise RuntimeError("RelativeEntropy.set_reference must be called before step")
        value, grad, count = 0.0, None, 0.0
        for r, w in self.ref_batches():
            v, g, n = self._ref_sum(params, r, w)
            value, count = value + v, count + n
            grad = g if grad is None else jax.tree_util.tree_map(jnp.add, grad, g)
        scale = self.beta / count
        return RefAverage(value * scale, jax.tree_util.tree_map(lambda x: x * scale, grad), params)

    def objective(self, params, feats: Features, ref: RefAverage):
        """(L(θ), (target losses, predictions, N_eff)) on the CG features, with the reference
        term β⟨U⟩_ref expanded to first order around ``ref.params`` (exact value and gradient there)."""
        energy, over_states, beta = self.engine.energy, self.engine.over_states, self.beta
        shift = jax.tree_util.tree_map(jnp.subtract, params, ref.params)
        ref_term = ref.value + sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(ref.grad),
                                                                 jax.tree_util.tree_leaves(shift)))
        u_model = over_states(lambda r_s: energy(params, r_s), feats.r)
        log_w = -beta * (u_model - feats.u_ref)
        total = ref_term + logsumexp(log_w) - jnp.log(log_w.shape[0])
        preds, w = jax.lax.stop_gradient(self.engine.predict(params, feats))
        return total, (self.target_losses(preds), preds, reweight.effective_sample_size(w))

    loss = objective   # what DiffTRe's compiled step differentiates (the reference average as extra argument)

    def step_arguments(self, params, opt_state, feats, lr_scale, floor) -> tuple:   # (no line search: no floor)
        return (params, opt_state, feats, jnp.asarray(lr_scale, jnp.float32), self.floor_arg(None),
                self.reference_average(params))
