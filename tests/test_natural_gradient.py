"""The Fisher-preconditioned (natural-gradient) DiffTRe step.

F = β² Cov_w(∂U/∂θ) is rebuilt here independently — per-snapshot energies by a brute-force
all-pairs sum — and the learner's step must (i) point along −F⁻¹∇L and (ii) have unit
Fisher length times the learning rate: Δθᵀ F Δθ = lr² (so the ensemble moves by KL ≈ lr²/2).
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from hydra import compose, initialize_config_dir
from jax.flatten_util import ravel_pytree

from difftre_cli import assemble

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_fisher_step_direction_and_length():
    lr = 0.2
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="train", overrides=[
            "config=tiny", "trainer.precondition=fisher", "trainer.fisher_damping=1e-6", "optimizer=sgd",
            f"optimizer.lr={lr}", "optimizer.schedule=constant"])
    c = assemble.build(cfg)
    key = jax.random.PRNGKey(3)
    params = c.potential.init(key)
    params = {"model": {"knot_values": 0.05 * jax.random.normal(key, params["model"]["knot_values"].shape)}}
    state, nbrs = c.sampler.init(jax.random.PRNGKey(1), params)
    res = c.sampler.sample(params, state, nbrs, first=True)
    feats = c.engine.featurize(res.trajectory)
    opt_state = c.optimizer.init(params)
    new_params, _, aux = c.learner.step(params, opt_state, feats)
    assert bool(aux.finite)

    theta, unravel = ravel_pytree(params)
    delta = np.asarray(ravel_pytree(new_params)[0] - theta, np.float64)

    box = c.system.box_size
    pos = jnp.asarray(res.trajectory.positions)

    def energy_all_pairs(th, R):
        d = R[:, None, :] - R[None, :, :]
        d = d - box * jnp.round(d / box)
        r2 = jnp.sum(d * d, -1)
        n = R.shape[0]
        off = ~jnp.eye(n, dtype=bool)
        r = jnp.sqrt(jnp.where(off, r2, 1.0))
        mask = off & (r < c.potential.cutoff)
        u = c.potential.pair(unravel(th), jnp.where(mask, r, 1.0))
        return 0.5 * jnp.sum(jnp.where(mask, u, 0.0))

    jac = np.asarray(jax.vmap(lambda R: jax.grad(energy_all_pairs)(theta, R))(pos), np.float64)   # (S, K)
    u = np.asarray(jax.vmap(lambda R: energy_all_pairs(theta, R))(pos), np.float64)
    beta = 1.0 / c.system.kT
    logw = -beta * (u - np.asarray(res.trajectory.energies, np.float64))
    w = np.exp(logw - logw.max())
    w /= w.sum()
    centred = jac - w @ jac
    fisher = beta ** 2 * (centred.T * w) @ centred

    grad = np.asarray(ravel_pytree(jax.grad(lambda p: c.learner.loss(p, feats)[0])(params))[0], np.float64)
    # (i) direction: F Δθ is anti-parallel to the loss gradient
    f_delta = fisher @ delta
    cos = f_delta @ grad / (np.linalg.norm(f_delta) * np.linalg.norm(grad))
    assert cos < -0.999, cos
    # (ii) length: Δθᵀ F Δθ = lr² (float32 covariances of pair counts: a few per cent)
    np.testing.assert_allclose(delta @ fisher @ delta, lr ** 2, rtol=5e-2)  # float32 covariance in the learner
