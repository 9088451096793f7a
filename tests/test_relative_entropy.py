"""trainer=relative_entropy (learn/relative_entropy.py).

* the gradient is β(⟨∂U/∂θ⟩_ref − ⟨∂U/∂θ⟩_θ) with the model average reweighted from the CG
  trajectory, computed here independently from per-state Jacobians; it is also the derivative
  of the objective the learner reports (central finite differences, float64);
* with the CG trajectory itself as the reference the gradient at the sampling parameters is
  zero (the two ensembles are the same);
* a short run trains (the loss falls on a reused trajectory), and without a reference it is a
  config error.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from jax.flatten_util import ravel_pytree

from difftre_cli import assemble, reference
from difftre_cli.config import validate
from difftre_cli.errors import UserError
from difftre_cli.train import train

ROOT = Path(__file__).resolve().parent.parent



@pytest.fixture(scope="module", autouse=True)
def _compiled_once(module_compilation_cache):
    """The tests here train the same small configs several times: compile each program once."""
    yield

def _cfg(lj_reference, *extra):
    file, n = lj_reference
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="train", overrides=[
            "config=lj_re", f"system.n_particles={n}", f"reference.file={file}", "simulator.production_steps=200",
            "simulator.every=10", "simulator.first_equilibration_steps=500", *extra])


@pytest.fixture(scope="module")
def setup(lj_reference):
    """Components in float64, the reference set, one CG trajectory's features at θ₀ and a θ ≠ θ₀."""
    with jax.enable_x64(True):
        cfg = _cfg(lj_reference, "precision=double")
        c = assemble.build(cfg)
        ref = reference.open_reference(cfg.reference, c.system.units, box=c.system.box_size,
                                       n_particles=c.system.n_particles)
        c.learner.set_reference(ref.load("train").positions)
        key = jax.random.PRNGKey(0)
        p0 = c.potential.init(key)
        state, nbrs = c.sampler.init(key, p0)
        res = c.sampler.sample(p0, state, nbrs, first=True)
        assert res.ok
        feats = c.engine.featurize(res.trajectory)
        flat, unravel = ravel_pytree(p0)
        theta = unravel(flat + 0.05 * jnp.sin(jnp.arange(flat.size)))
    # (returned, not yielded inside the context: x64 must not leak into the module's other tests)
    return c, feats, res.trajectory, p0, theta


_PER_STATE = {}   # the setup's components -> their jit-compiled per-state Jacobians (one tree of params)


def _per_state_grads(c, params, r):
    """(S, K) ∂U/∂θ of every stored state and U (S,)."""
    flat, unravel = ravel_pytree(params)
    if id(c) not in _PER_STATE:   # jit-compiled once per shape of r (op by op, seconds each)
        energy = lambda th, r_s: c.engine.energy(unravel(th), r_s)  # noqa: E731
        _PER_STATE[id(c)] = jax.jit(lambda th, r: (jax.vmap(lambda r_s: jax.grad(energy)(th, r_s))(r),
                                                   jax.vmap(lambda r_s: energy(th, r_s))(r)))
    return _PER_STATE[id(c)](flat, r)


def test_gradient_is_the_difference_of_the_two_averages(setup):
    c, feats, _, _, theta = setup
    with jax.enable_x64(True):
        L = c.learner
        ref = L.reference_average(theta)
        (_, _), grads = jax.jit(jax.value_and_grad(L.objective, has_aux=True))(theta, feats, ref)
        g = np.asarray(ravel_pytree(grads)[0])
        dref, _ = _per_state_grads(c, theta, L.ref_feats.r)
        dmod, u = _per_state_grads(c, theta, feats.r)
        logw = -c.engine.beta * (np.asarray(u) - np.asarray(feats.u_ref))
        w = np.exp(logw - logw.max())
        w /= w.sum()
        expected = c.engine.beta * (np.asarray(dref).mean(0) - w @ np.asarray(dmod))
        np.testing.assert_allclose(g, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())
        # ... and the derivative of the reported objective (central differences along g)
        flat, unravel = ravel_pytree(theta)
        d = g / np.linalg.norm(g)
        h = 1e-4
        objective = jax.jit(lambda th: L.objective(unravel(th), feats, L.reference_average(unravel(th)))[0])
        f = lambda t: float(objective(flat + t * d))  # noqa: E731
        assert (f(h) - f(-h)) / (2 * h) == pytest.approx(float(g @ d), rel=1e-6)


def test_gradient_vanishes_when_the_reference_is_the_model_ensemble(setup):
    c, feats, traj, p0, _ = setup
    with jax.enable_x64(True):
        L = c.learner
        own = type(L)(c.engine, c.targets, c.optimizer)
        own.set_reference(traj.positions)
        (_, _), grads = jax.value_and_grad(own.objective, has_aux=True)(p0, feats, own.reference_average(p0))
        g = np.asarray(ravel_pytree(grads)[0])
        scale = c.engine.beta * np.abs(np.asarray(_per_state_grads(c, p0, feats.r)[0])).mean(0).max()
        assert np.abs(g).max() < 1e-10 * scale


def test_streamed_reference_gives_the_in_memory_average(setup, lj_reference):
    """reference.batch_frames: the frames read and featurized 7 at a time (the last batch padded
    with weight 0) give β⟨U⟩_ref and its gradient of the features kept in memory."""
    c, _, _, _, theta = setup
    with jax.enable_x64(True):
        cfg = _cfg(lj_reference, "precision=double", "reference.batch_frames=7")
        ref = reference.open_reference(cfg.reference, c.system.units, box=c.system.box_size,
                                       n_particles=c.system.n_particles)
        assert len(ref.split["train"]) % 7 != 0     # a padded last batch
        streamed = type(c.learner)(c.engine, c.targets, c.optimizer)
        streamed.set_reference(stream=lambda: (m.positions for m in ref.batches("train", 7)), batch=7)
        a, b = c.learner.reference_average(theta), streamed.reference_average(theta)
        assert float(b.value) == pytest.approx(float(a.value), rel=1e-12)
        np.testing.assert_allclose(ravel_pytree(b.grad)[0], ravel_pytree(a.grad)[0], rtol=1e-10)


def test_a_short_run_reuses_trajectories_and_lowers_the_objective(lj_reference, tmp_path):
    out = train(_cfg(lj_reference, "trainer.updates=6", "optimizer.lr=0.3"), tmp_path / "run", quiet=True)
    rows = out["rows"]
    assert len(rows) == 6 and all(r["event"] == "ok" for r in rows)
    reused = [i for i, r in enumerate(rows) if r["reused"]]
    assert reused, "no update reused its trajectory"
    i = reused[0]   # on one trajectory, the objective of the proposed step is lower
    assert rows[i]["loss"] < rows[i - 1]["loss"]


def test_no_reference_is_a_config_error(lj_reference):
    file, n = lj_reference
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="train", overrides=["config=lj_re", f"system.n_particles={n}", "reference=none"])
    with pytest.raises(UserError, match="learns from a reference trajectory"):
        validate(cfg)


def test_resume_is_bit_identical(lj_reference, tmp_path):
    """Stopped after 2 updates and resumed to 5 = 5 straight (a constant learning rate: an
    exponential schedule spans trainer.updates, which differs between the two runs)."""
    extra = ("optimizer.schedule=constant", "optimizer.lr=0.3")
    straight = train(_cfg(lj_reference, *extra, "trainer.updates=5"), tmp_path / "a", quiet=True)
    train(_cfg(lj_reference, *extra, "trainer.updates=2"), tmp_path / "b", quiet=True)
    resumed = train(_cfg(lj_reference, *extra, "trainer.updates=5"), tmp_path / "b", resume=True, quiet=True)
    for x, y in zip(jax.tree_util.tree_leaves(straight["params"]), jax.tree_util.tree_leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert [r["loss"] for r in straight["rows"]] == [r["loss"] for r in resumed["rows"]]
