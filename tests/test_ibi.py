"""Tabulated pair model, Boltzmann inversion and iterative Boltzmann inversion (IBI).

* the table reproduces the function it tabulates (exactly at its points, to interpolation
  accuracy in between);
* Boltzmann inversion of a dilute gas, g(r) = exp(−β u(r)), recovers u;
* IBI's fixed point: with the true potential as the table and the target RDF of that same
  potential, one IBI update changes u by less than the statistical noise bound propagated
  from the block standard errors of both RDFs — while a wrong potential is moved by more.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from difftre_cli import assemble
from difftre_cli.learn.boltzmann import boltzmann_inversion
from difftre_cli.learn.ibi import IBI, trajectory_means
from difftre_cli.observables.rdf import RDF
from difftre_cli.potentials import PairPotential, priors
from difftre_cli.potentials.pair import SplinePair, TablePair
from difftre_cli.targets import Target

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RC = 2.5


def _lj(eps=1.0):
    return priors.lennard_jones(epsilon=eps, sigma=1.0, cutoff=RC)


def _table_of(fn, model: TablePair):
    return {"table": jnp.asarray(np.asarray(fn(jnp.asarray(model.grid)))[:-1])}


@pytest.mark.parametrize("interpolation", ["cubic", "linear"])
def test_table_matches_the_function_it_tabulates(interpolation):
    with jax.enable_x64(True):
        model = TablePair(r_min=0.85, cutoff=RC, n_points=131, interpolation=interpolation)
        u = _lj()
        params = _table_of(u, model)
        # exact at the table's points (the last one is the fixed zero at the cutoff)
        np.testing.assert_allclose(np.asarray(model(params, jnp.asarray(model.grid))),
                                   np.asarray(u(jnp.asarray(model.grid))), atol=1e-12)
        # between them: interpolation error only. Linear: |e| <= h²/8 max|u''| on the interval
        # (the classical bound); cubic spline: far smaller than the linear bound (O(h⁴) inside,
        # the clamped end u'(rc) = 0 vs u'(rc) ≈ 0.04 costs O(h · 0.04) near the cutoff).
        r = np.linspace(0.9, RC - 1e-6, 997)
        err = np.abs(np.asarray(model(params, jnp.asarray(r))) - np.asarray(u(jnp.asarray(r))))
        h = model.spacing
        curv = jax.vmap(jax.grad(jax.grad(u)))
        k = np.clip(np.floor((r - model.r_min) / h).astype(int), 0, model.n_points - 2)
        fine = np.linspace(0.0, 1.0, 9)
        pts = model.grid[:-1, None] + h * fine[None, :]
        u2 = np.abs(np.asarray(curv(jnp.asarray(pts.ravel())))).reshape(pts.shape).max(1)
        linear_bound = h * h / 8.0 * u2[k] + 1e-12
        if interpolation == "linear":
            assert np.all(err <= linear_bound), np.max(err / linear_bound)
            assert err.max() > 0.1 * linear_bound.max()       # the bound is not vacuous
        else:
            assert err.max() < 0.05 * linear_bound.max() and err.max() < 3e-3, err.max()
        # zero at and beyond the cutoff; repulsive continuation below r_min
        np.testing.assert_array_equal(np.asarray(model(params, jnp.asarray([RC, RC + 0.1, 5.0]))), 0.0)
        below = np.asarray(model(params, jnp.asarray([0.6, 0.7, 0.8])))
        assert np.all(np.diff(below) < 0) and below[-1] > float(u(jnp.asarray(0.85)))


def test_table_is_differentiable_in_its_values():
    model = TablePair(r_min=0.8, cutoff=RC, n_points=20)
    params = model.init(None)
    g = jax.grad(lambda p: jnp.sum(model(p, jnp.linspace(0.5, 3.0, 50))))(params)
    assert np.all(np.isfinite(np.asarray(g["table"]))) and np.abs(np.asarray(g["table"])).sum() > 0


def _fake_components(potential, g_of_r, kT):
    obs = RDF(name="rdf", r_min=0.0, r_max=3.0, n_bins=150, sigma=0.02)
    target = Target("rdf", "rdf", np.asarray(g_of_r(obs.grid)), 1.0, "test")
    return SimpleNamespace(potential=potential, targets={"rdf": target}, observables={"rdf": obs},
                           system=SimpleNamespace(kT=kT))


@pytest.mark.parametrize("prior, model", [
    ("none", TablePair(r_min=0.8, cutoff=RC, n_points=69)),
    ("repulsive", SplinePair(r_min=0.8, cutoff=RC, n_knots=40)),
])
def test_boltzmann_inversion_of_a_dilute_gas_recovers_u(prior, model):
    """In the dilute limit g(r) = exp(−β u(r)) exactly, so −kT ln g is u itself."""
    kT = 1.5
    with jax.enable_x64(True):
        u = _lj()
        prior_fn = priors.build({"kind": prior, **({"epsilon": 1.0, "sigma": 1.0, "exponent": 12}
                                                   if prior == "repulsive" else {})}, RC)
        pot = PairPotential(prior=prior_fn, model=model, cutoff=RC)
        c = _fake_components(pot, lambda r: np.exp(-np.asarray(u(jnp.asarray(r))) / kT), kT)
        params = boltzmann_inversion(c, pot.init(None))
        r = np.linspace(0.95, RC - 0.01, 300)     # g > 1e-3 from r ≈ 0.9 on
        fit = np.asarray(pot.pair(params, jnp.asarray(r)))
        err = np.abs(fit - np.asarray(u(jnp.asarray(r))))
        assert err.max() < 5e-3, err.max()
        # and the fit is not trivially good: the prior alone is far off
        assert np.abs(np.asarray(prior_fn(jnp.asarray(r))) - np.asarray(u(jnp.asarray(r)))).max() > 0.5


# ----------------------------------------------------------------------------------------
def _components():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="train", overrides=[
            "config=tiny", "system.density=0.5", "system.kT=1.5", "prior=none", "model=table",
            "model.r_min=0.8", "model.n_points=35", "trainer=ibi", "trainer.alpha=1.0", "trainer.smoothing=0.04",
            "trainer.g_min=0.05", "observables.rdf.r_max=2.6",
            "observables.rdf.n_bins=65", "observables.rdf.sigma=0.04", "simulator.production_steps=1000",
            "simulator.every=10", "simulator.first_equilibration_steps=2000", "simulator.equilibration_steps=0"])
    return cfg, assemble.build(cfg)


def _block_rdfs(c, params, seed, n_blocks):
    state, nbrs = c.sampler.init(jax.random.PRNGKey(seed), params)
    out = []
    for i in range(n_blocks):
        res = c.sampler.sample(params, state, nbrs, first=(i == 0))
        assert res.ok
        state, nbrs = res.state, res.neighbor
        out.append(trajectory_means(c, params, res.trajectory)["rdf"])
    return np.asarray(out)


def test_ibi_leaves_the_true_potential_unchanged_up_to_noise():
    n_blocks = 8
    cfg, c = _components()
    ibi = IBI(c, cfg.trainer)
    truth = _table_of(_lj(), c.potential.model)
    target_blocks = _block_rdfs(c, {"model": truth}, seed=1, n_blocks=n_blocks)
    g_target = target_blocks.mean(0)
    g_blocks = _block_rdfs(c, {"model": truth}, seed=2, n_blocks=n_blocks)
    g_t = g_blocks.mean(0)

    _, aux = ibi.update(truth["table"], g_t, g_target=g_target)   # target: RDF of the true potential
    du = np.asarray(aux.correction, np.float64)

    # Noise bound: Δu = α kT S[ln g_t − ln g_target] (S: the normalised Gaussian smoothing over
    # resolved bins), linearised: var(ln g_j) = se_j² / g_j² for each independent run, with se
    # the block standard error. Interpolation onto the table is a convex combination (its std
    # is at most the interpolated std), the core copies the first resolved bin, and the tail
    # shift subtracts the value at the cutoff: σ_i ≤ s_i + s_rc. Bound: 5 σ (Gaussian,
    # 35 points: a false alarm has probability ~1e-5).
    def se(blocks):
        return blocks.std(0, ddof=1) / np.sqrt(blocks.shape[0])
    valid = g_target > ibi.g_min
    var_ln = np.where(valid, (se(g_blocks) ** 2 + se(target_blocks) ** 2) / np.maximum(g_target, 1e-12) ** 2, 0.0)
    kern = ibi.kernel * valid[None, :]
    s_bins = ibi.alpha * ibi.kT * np.sqrt(kern ** 2 @ var_ln) / np.maximum(kern.sum(1), 1e-30)
    first = int(np.argmax(valid))
    s_bins = np.where(np.arange(s_bins.size) < first, s_bins[first], s_bins)
    s_tab = np.interp(c.potential.model.grid, np.asarray(ibi.rdf.grid), s_bins)
    bound = 5.0 * (s_tab + s_tab[-1])
    assert bound.max() < 0.2 * ibi.kT, bound.max()          # the bound itself is tight
    assert np.all(np.abs(du) <= bound), np.max(np.abs(du) / bound)

    # The same update with a wrong potential (ε = 1.5) moves u by far more than the bound.
    wrong = _table_of(_lj(1.5), c.potential.model)
    g_wrong = _block_rdfs(c, {"model": wrong}, seed=3, n_blocks=2).mean(0)
    _, aux_wrong = ibi.update(wrong["table"], g_wrong, g_target=g_target)
    assert np.max(np.abs(np.asarray(aux_wrong.correction)) / bound) > 3.0
    # ... in the right direction: the well is too deep, so the first shell is overpopulated
    # and IBI raises u there
    peak = np.argmin(np.abs(c.potential.model.grid - 1.12))
    assert float(aux_wrong.correction[peak]) > 0


def test_ibi_update_compiled_once():
    cfg, c = _components()
    ibi = IBI(c, cfg.trainer)
    table = _table_of(_lj(), c.potential.model)["table"]
    g = np.asarray(ibi.target.value)
    for k in range(3):
        table, aux = ibi.update(table, g * (1.0 + 0.01 * k), lr_scale=0.5 ** k)
        assert bool(aux.finite)
    assert ibi.trace_count == 1
