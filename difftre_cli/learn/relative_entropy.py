"""Relative-entropy coarse-graining (Shell, J. Chem. Phys. 129, 144108, 2008), with DiffTRe's
trajectory reuse (Thaler et al., chemtrain, 2025).

The relative entropy of the CG model θ with respect to the mapped reference ensemble is, up to
θ-independent terms, S_rel(θ) = β⟨U_θ⟩_ref + ln Z_θ. Its gradient is

    ∂S_rel/∂θ = β (⟨∂U_θ/∂θ⟩_ref − ⟨∂U_θ/∂θ⟩_θ),

the first average over the mapped reference frames (reference/), the second over the CG
model's own ensemble. That one comes from a CG trajectory sampled at θ₀ and reweighted to θ
(w_i ∝ exp(−β(U_θ − U_θ₀))), reused while N_eff stays above ``reweight_ratio`` · S, exactly as
DiffTRe reuses its trajectories (the regime is DiffTRe's, learn/difftre.py). The objective
differentiated is the free-energy-perturbation estimate

    L(θ) = β⟨U_θ⟩_ref + ln (1/S) Σ_i exp(−β(U_θ(S_i) − U_θ₀(S_i)))  (= S_rel − ln Z_θ₀ + const),

whose gradient is the one above; its value is comparable between updates on one trajectory
(a resample changes the constant ln Z_θ₀). With ``trainer.precondition=fisher`` the step is
DiffTRe's natural-gradient step F⁻¹g (scaled to Fisher length lr); for the relative entropy the
Fisher matrix β² Cov_θ(∂U/∂θ) is also the Hessian of S_rel, so its direction is Newton's. The
targets, if any, are reweighted and reported (``loss_<target>``) but not trained on.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from .. import reweight
from ..observables.engine import Features
from ..sampler import Trajectory
from .difftre import DiffTRe


class RelativeEntropy(DiffTRe):
    """The relative-entropy learner on an observable engine: :meth:`set_reference` once with
    the mapped reference frames, then ``step`` on the CG trajectory's features like DiffTRe."""

    ref_feats: Features | None = None

    def set_reference(self, positions) -> None:
        """Features of the mapped reference frames (S_ref, N, 3) in the run's units."""
        positions = jnp.asarray(positions)
        s = positions.shape[0]
        zeros = jnp.zeros(s, positions.dtype)
        self.ref_feats = self.engine.featurize(Trajectory(positions, zeros, zeros, jnp.arange(s)))

    def objective(self, params, feats: Features, ref: Features):
        """(L(θ), (target losses, predictions, N_eff)) on the CG features and the reference's."""
        energy, over_states, beta = self.engine.energy, self.engine.over_states, self.beta
        u_ref_frames = over_states(lambda r_s: energy(params, r_s), ref.r)
        u_model = over_states(lambda r_s: energy(params, r_s), feats.r)
        log_w = -beta * (u_model - feats.u_ref)
        total = beta * jnp.mean(u_ref_frames) + logsumexp(log_w) - jnp.log(log_w.shape[0])
        preds, w = jax.lax.stop_gradient(self.engine.predict(params, feats))
        return total, (self.target_losses(preds), preds, reweight.effective_sample_size(w))

    loss = objective   # what DiffTRe's compiled step differentiates (the reference features as extra argument)

    def step(self, params, opt_state, feats, lr_scale=1.0):
        if self.ref_feats is None:
            raise RuntimeError("RelativeEntropy.set_reference must be called before step")
        return self._step(params, opt_state, feats, jnp.asarray(lr_scale, jnp.float32), self.ref_feats)
