"""Reweighting identities: uniform weights at θ = θ_ref, the stable softmax, and the DiffTRe
gradient equal to the thermodynamic fluctuation formula

    ∂⟨O⟩/∂θ = ⟨∂O/∂θ⟩ − β (⟨O ∂U/∂θ⟩ − ⟨O⟩⟨∂U/∂θ⟩)      (at θ = θ_ref).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from difftre_cli import potentials, reweight
from difftre_cli.observables.engine import ObservableEngine
from difftre_cli.observables import Context
from difftre_cli.observables.pressure import Pressure
from difftre_cli.observables.rdf import RDF
from difftre_cli.sampler import SamplerConfig
from difftre_cli.simulate import Sampler
from difftre_cli.system import build_system


# ---------------------------------------------------------------------------------------
# weights and effective sample size
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_uniform_weights_and_full_sample_size_when_energies_agree(beta):
    u = jnp.asarray(np.random.default_rng(0).normal(-500.0, 20.0, size=64), jnp.float32)
    w = reweight.weights(beta, u, u)
    np.testing.assert_allclose(np.asarray(w), 1.0 / 64, rtol=1e-6)
    assert float(reweight.effective_sample_size(w)) == pytest.approx(64.0, rel=1e-5)
    assert reweight.reuse(reweight.effective_sample_size(w), 64, 0.9)


def test_weights_are_boltzmann_factors_and_shift_invariant():
    rng = np.random.default_rng(1)
    u_ref = rng.normal(0.0, 5.0, 20)
    du = rng.normal(0.0, 1.0, 20)
    beta = 0.7
    w = np.asarray(reweight.weights(beta, jnp.asarray(u_ref + du), jnp.asarray(u_ref)), np.float64)
    expect = np.exp(-beta * du) / np.exp(-beta * du).sum()
    np.testing.assert_allclose(w, expect, rtol=1e-5)
    # a constant energy offset does not change the weights
    w2 = reweight.weights(beta, jnp.asarray(u_ref + du + 1234.5), jnp.asarray(u_ref))
    np.testing.assert_allclose(np.asarray(w2), w, rtol=2e-3)
    # lower energy under θ → larger weight (sign of the exponent)
    assert np.argmax(w) == np.argmin(du)


def test_effective_sample_size_drops_when_energies_differ():
    rng = np.random.default_rng(2)
    n = 100
    u_ref = jnp.asarray(rng.normal(0.0, 5.0, n))
    previous = float(n)
    for scale in (0.1, 0.5, 1.0, 3.0):
        w = reweight.weights(1.0, u_ref + scale * jnp.asarray(rng.normal(size=n)), u_ref)
        n_eff = float(reweight.effective_sample_size(w))
        assert 1.0 <= n_eff < previous
        previous = n_eff
    assert previous < 0.5 * n
    # Gaussian energy differences βΔU ~ N(0, s²): the entropy estimate gives N_eff/N → exp(−s²/2)
    du = jnp.asarray(rng.normal(size=100_000)) * 0.5
    w = reweight.weights(1.0, du, jnp.zeros_like(du))
    assert float(reweight.effective_sample_size(w)) / 100_000 == pytest.approx(np.exp(-0.125), rel=0.01)
    # one snapshot dominating → N_eff = 1
    w = reweight.weights(1.0, jnp.asarray([0.0, 100.0, 200.0, 300.0]), jnp.zeros(4))
    assert float(reweight.effective_sample_size(w)) == pytest.approx(1.0, abs=1e-6)
    assert not reweight.reuse(reweight.effective_sample_size(w), 4, 0.5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weights_finite_for_huge_energy_differences(dtype):
    with jax.enable_x64(dtype == "float64"):
        u_ref = jnp.zeros(5, dtype)
        u = jnp.asarray([1e4, 1e6, -1e7, 3e30, -2e30], dtype)
        w = reweight.weights(1.0, u, u_ref)
        assert bool(jnp.all(jnp.isfinite(w)))
        np.testing.assert_allclose(np.asarray(w), [0, 0, 0, 0, 1], atol=1e-12)
        n_eff = reweight.effective_sample_size(w)
        assert np.isfinite(float(n_eff)) and float(n_eff) == pytest.approx(1.0)
        # gradient through the weights stays finite as well
        g = jax.grad(lambda x: reweight.average(reweight.weights(1.0, x, u_ref), jnp.arange(5.0, dtype=dtype)))(u)
        assert bool(jnp.all(jnp.isfinite(g)))


def test_average_over_snapshot_axis():
    w = jnp.asarray([0.25, 0.75])
    vals = jnp.asarray([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]])
    np.testing.assert_allclose(np.asarray(reweight.average(w, vals)), [4.0, 5.0, 6.0])


# ---------------------------------------------------------------------------------------
# DiffTRe on a real (short) trajectory of a small LJ-like fluid
# ---------------------------------------------------------------------------------------
KT = 1.2          # β = 1/1.2: distinguishes β from kT
N_KNOTS = 10
CUTOFF = 2.5


@pytest.fixture(scope="module")
def lj_spline_run():
    """108 LJ particles + a spline correction with θ_ref ≠ 0, sampled with Langevin at θ_ref."""
    cfg = OmegaConf.create({"units": "lj", "n_particles": 108, "density": 0.7, "kT": KT, "mass": 1.0,
                            "lattice": "fcc"})
    system = build_system(cfg)
    potential = potentials.build(OmegaConf.create({"kind": "lj", "epsilon": 1.0, "sigma": 1.0}),
                                 OmegaConf.create({"kind": "spline", "r_min": 0.8, "n_knots": N_KNOTS}), CUTOFF)
    knots = np.linspace(0.8, CUTOFF, N_KNOTS)[:-1]
    params = {"model": {"knot_values": jnp.asarray(0.1 * np.sin(3.0 * knots), jnp.float32)}}
    sampler = Sampler(potential, system, SamplerConfig(integrator="langevin", dt=0.005,
                                                       first_equilibration_steps=400, production_steps=600,
                                                       every=10))
    state, nbrs = sampler.init(jax.random.PRNGKey(1), params)
    res = sampler.sample(params, state, nbrs, first=True)
    assert res.ok
    obs = {"rdf": RDF(name="rdf", r_min=0.0, r_max=2.4, n_bins=48, sigma=0.05), "pressure": Pressure("pressure")}
    ctx = Context(system.n_particles, system.volume, system.kT)
    engine = ObservableEngine(potential, obs, ctx, system.box_size, 1.0 / system.kT)
    feats = engine.featurize(res.trajectory)
    return dict(system=system, potential=potential, params=params, traj=res.trajectory, engine=engine,
                feats=feats, ctx=ctx)


def _all_pairs(potential, box):
    """Independent per-snapshot U(θ) and P(θ) by brute force over all minimum-image pairs."""
    def distances(R):
        d = R[:, None, :] - R[None, :, :]
        d = d - box * jnp.round(d / box)
        r2 = jnp.sum(d * d, -1)
        mask = (r2 < potential.cutoff ** 2) & ~jnp.eye(R.shape[0], dtype=bool)
        return jnp.sqrt(jnp.where(mask, r2, 1.0)), mask

    def energy(params, R):
        r, mask = distances(R)
        return 0.5 * jnp.sum(jnp.where(mask, potential.pair(params, r), 0.0))

    def pressure(params, R, n, volume, kT):
        r, mask = distances(R)
        _, du = jax.jvp(lambda x: potential.pair(params, x), (r,), (jnp.ones_like(r),))
        virial = 0.5 * jnp.sum(jnp.where(mask, r * du, 0.0))        # Σ_{i<j} r u'(r)
        return n * kT / volume - virial / (3.0 * volume)

    return energy, pressure


def test_reference_energies_reproduced_from_stored_distances(lj_spline_run):
    run = lj_spline_run
    engine, feats, params = run["engine"], run["feats"], run["params"]
    u_ref = np.asarray(run["traj"].energies, np.float64)
    assert u_ref.shape == (60,) and np.all(u_ref < 0)
    u, _ = jax.jit(engine.snapshot_energies)(params, feats.r)
    np.testing.assert_allclose(np.asarray(u, np.float64), u_ref, rtol=1e-5)
    # ... and both equal a brute-force all-pairs sum over the stored positions
    energy, _ = _all_pairs(run["potential"], run["system"].box_size)
    u_bf = jax.jit(jax.vmap(energy, (None, 0)))(params, jnp.asarray(run["traj"].positions))
    np.testing.assert_allclose(np.asarray(u_bf, np.float64), u_ref, rtol=1e-5)
    predict = jax.jit(engine.predict)
    _, w = predict(params, feats)
    np.testing.assert_allclose(np.asarray(w), 1.0 / 60, rtol=5e-3)
    n_eff = float(reweight.effective_sample_size(w))
    assert n_eff == pytest.approx(60.0, rel=1e-4)
    # ... while away from θ_ref the weights are no longer uniform
    shifted = {"model": {"knot_values": params["model"]["knot_values"] + 0.3}}
    _, w2 = predict(shifted, feats)
    assert float(reweight.effective_sample_size(w2)) < 0.99 * n_eff


def test_reweighted_gradient_equals_fluctuation_formula(lj_spline_run):
    run = lj_spline_run
    engine, feats, params, system = run["engine"], run["feats"], run["params"], run["system"]
    beta = 1.0 / system.kT
    energy, pressure = _all_pairs(run["potential"], system.box_size)
    n, volume, kT = system.n_particles, system.volume, system.kT
    rdf = engine.observables["rdf"]
    b = int(np.argmin(np.abs(rdf.grid - 1.1)))     # an RDF bin at the first peak

    @jax.jit
    def per_snapshot(params, positions):
        """U, ∂U/∂θ, P, ∂P/∂θ of every snapshot, independently of the engine."""
        def one(R):
            u, du = jax.value_and_grad(energy)(params, R)
            p, dp = jax.value_and_grad(pressure)(params, R, n, volume, kT)
            return u, du["model"]["knot_values"], p, dp["model"]["knot_values"]
        return jax.vmap(one)(positions)

    @jax.jit
    def reweighted_grads(params):
        g_p = jax.grad(lambda p: engine.predict(p, feats)[0]["pressure"])(params)
        g_g = jax.grad(lambda p: engine.predict(p, feats)[0]["rdf"][b])(params)
        return g_p["model"]["knot_values"], g_g["model"]["knot_values"], engine.predict(params, feats)[0]

    U, dU, P, dP = (np.asarray(x, np.float64) for x in per_snapshot(params, jnp.asarray(run["traj"].positions)))
    g_p, g_g, preds = (jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), x)
                       for x in reweighted_grads(params))
    assert np.all(np.abs(dU).sum(0) > 0)   # every knot matters

    def fluctuation(O, dO):
        cov = (O[:, None] * dU).mean(0) - O.mean() * dU.mean(0)
        return dO.mean(0) - beta * cov

    # θ-dependent observable: the virial pressure
    expect_p = fluctuation(P, dP)
    scale = np.abs(expect_p).max()
    assert scale > 0
    np.testing.assert_allclose(g_p, expect_p, rtol=2e-3, atol=2e-3 * scale)
    # both terms matter here: neither the direct nor the covariance part alone matches
    assert np.abs(dP.mean(0) - expect_p).max() > 0.05 * scale
    assert np.abs(beta * ((P[:, None] * dU).mean(0) - P.mean() * dU.mean(0))).max() > 0.05 * scale
    # the reweighted value itself is the plain mean at θ_ref
    assert float(preds["pressure"]) == pytest.approx(P.mean(), rel=1e-4, abs=1e-4)

    # θ-independent observable: pure covariance term
    g_b = np.asarray(feats.static["rdf"][:, b], np.float64)
    assert g_b.mean() > 1.5          # it is the first peak
    expect_g = fluctuation(g_b, np.zeros_like(dU))
    scale = np.abs(expect_g).max()
    assert scale > 0
    np.testing.assert_allclose(g_g, expect_g, rtol=2e-3, atol=2e-3 * scale)
