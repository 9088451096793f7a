"""Direct differentiation through the simulation (trainer=direct_ad).

* the backpropagated gradient of the unrolled loss equals a central finite difference of the
  same loss (float64, 108 particles, 30 Langevin steps — the noise is fixed by the key in the
  state, so the loss is a deterministic function of θ);
* per-step rematerialisation (jax.checkpoint) gives the same gradient as storing everything;
* the fused update (simulate + backpropagate + optax) is traced once per run.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from jax.flatten_util import ravel_pytree

from difftre_cli import assemble
from difftre_cli.learn.direct_ad import DirectAD

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
STEPS = 30
OVERRIDES = ["config=tiny", "system.density=0.5", "system.kT=1.5", "trainer=direct_ad", "model.n_knots=12",
             "simulator.first_equilibration_steps=300", "simulator.production_steps=100", "simulator.every=10"]


def _cfg(extra=()):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="train", overrides=OVERRIDES + list(extra))


@pytest.fixture(scope="module")
def setup64():
    """Components, a melted state, its lists and non-trivial spline parameters, in float64."""
    with jax.enable_x64(True):
        c = assemble.build(_cfg())
        key = jax.random.PRNGKey(0)
        params = c.potential.init(key)
        params = {"model": {"knot_values": 0.2 * jax.random.normal(key, params["model"]["knot_values"].shape,
                                                                    jnp.float64)}}
        state, nbrs = c.sampler.init(jax.random.PRNGKey(1), params)
        res = c.sampler.sample(params, state, nbrs, first=True)
        assert res.ok and res.state.position.dtype == jnp.float64
    # returned outside the context: a module fixture that yields inside `jax.enable_x64` keeps
    # float64 on (a thread-local override) for every later test of the process
    return c, params, res.state, res.neighbor


@pytest.fixture(scope="module")
def remat_gradient(setup64):
    """The unrolled loss and its backpropagated gradient (per-step remat) at θ."""
    c, params, state, nbrs = setup64
    with jax.enable_x64(True):
        ad = DirectAD(c, steps=STEPS, every=5, remat=True)
        obs = ad.allocate_obs_list(state.position)
        theta, unravel = ravel_pytree(params)
        loss = jax.jit(lambda th: ad.loss(unravel(th), state, nbrs, obs)[0])
        grad = np.asarray(jax.jit(jax.grad(lambda th: ad.loss(unravel(th), state, nbrs, obs)[0]))(theta))
    return loss, theta, grad   # called in float64 by the tests


def test_gradient_equals_central_finite_difference(remat_gradient):
    loss, theta, grad = remat_gradient
    assert np.all(np.isfinite(grad)) and np.linalg.norm(grad) > 1e-4
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for v in [grad, rng.normal(size=theta.size)]:
            v = v / np.linalg.norm(v)
            eps = 1e-5
            fd = (float(loss(theta + eps * v)) - float(loss(theta - eps * v))) / (2 * eps)
            ad_dir = float(grad @ v)
            assert fd == pytest.approx(ad_dir, rel=1e-3, abs=1e-4 * np.linalg.norm(grad)), (fd, ad_dir)


def test_rematerialised_gradient_equals_stored(setup64, remat_gradient):
    c, params, state, nbrs = setup64
    with jax.enable_x64(True):
        ad = DirectAD(c, steps=STEPS, every=5, remat=False)
        obs = ad.allocate_obs_list(state.position)
        g = np.asarray(ravel_pytree(jax.jit(jax.grad(lambda p: ad.loss(p, state, nbrs, obs)[0]))(params))[0])
    np.testing.assert_allclose(g, remat_gradient[2], rtol=1e-9, atol=1e-12 * np.abs(g).max())


def test_update_compiled_once_and_state_continues(tmp_path, single_precision):
    from difftre_cli.config import validate
    from difftre_cli.train import Trainer

    cfg = _cfg(["trainer.updates=4", "trainer.steps=20", "trainer.every=5", "seed=0"])
    validate(cfg)
    trainer = Trainer(cfg, tmp_path, quiet=True)
    positions = []
    propose = trainer.regime.propose

    def spy(*a, **k):
        positions.append(np.asarray(trainer.regime.state.position) if trainer.regime.equilibrated else None)
        return propose(*a, **k)
    trainer.regime.propose = spy
    rows = trainer.run()["rows"]
    assert len(rows) == 4 and all(r["event"] == "ok" for r in rows), rows
    assert trainer.regime.ad.trace_count == 1
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in rows)
    # each update starts where the last one ended
    assert positions[0] is None and not np.array_equal(positions[1], positions[2])
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "trajectories" / "ref_00000.h5md").is_file()
