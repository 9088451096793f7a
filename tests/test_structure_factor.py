"""Static structure factor S(k) (observables/structure_factor.py): the factorised computation
equals the direct sum over wave vectors, S = 1 for an ideal gas, S(k) is the Fourier transform
of g(r) of the same configurations, the DiffTRe gradient of ⟨S(k)⟩ is the fluctuation formula
−β (⟨S ∂U/∂θ⟩ − ⟨S⟩⟨∂U/∂θ⟩), and the config group composes / rejects bad settings by key.
"""
from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from difftre_cli import potentials
from difftre_cli.config import validate
from difftre_cli.errors import UserError
from difftre_cli.observables.engine import ObservableEngine
from difftre_cli.observables import Context, build
from difftre_cli.observables.rdf import RDF
from difftre_cli.observables.structure_factor import StructureFactor, wave_vectors
from difftre_cli.sampler import SamplerConfig
from difftre_cli.simulate import Sampler
from difftre_cli.system import build_system

ROOT = Path(__file__).resolve().parent.parent


def _sk_many(obs, box, positions):
    ctx = Context(positions.shape[1], box ** 3, 1.0)
    return np.asarray(jax.jit(jax.vmap(lambda R: obs.snapshot(ctx, {"R": R, "box": box})))(jnp.asarray(positions)),
                      np.float64)


def test_factorised_sum_equals_direct_sum_over_wave_vectors():
    box, n = 6.0, 200
    R = np.random.default_rng(3).uniform(-box, 2 * box, (n, 3))   # unwrapped positions: k·L n periodic
    obs = StructureFactor("sk", k_max=7.0, n_bins=12, k_min=1.0)
    s = _sk_many(obs, box, R[None].astype(np.float32))[0]
    vec, b, counts = wave_vectors(1.0, 7.0, 12, box)
    ph = R @ (2 * np.pi / box * vec).T
    direct = np.bincount(b, (np.cos(ph).sum(0) ** 2 + np.sin(ph).sum(0) ** 2) / n, 12) / counts
    np.testing.assert_allclose(s, direct, rtol=2e-4, atol=2e-4)


def test_ideal_gas_structure_factor_is_one():
    """Uniform independent positions: every S(k) of an allowed k ≠ 0 has mean 1 and variance
    1 − 1/N (|ρ_k|²/N is exponential for large N); k and −k are the same, so a bin of K
    half-space vectors over M snapshots has standard error ≈ 1/√(K M)."""
    box, n, m = 10.0, 256, 100
    obs = StructureFactor("sk", k_max=8.0, n_bins=26, k_min=1.5)
    R = np.random.default_rng(0).uniform(0.0, box, (m, n, 3)).astype(np.float32)
    s = _sk_many(obs, box, R)
    _, _, counts = wave_vectors(1.5, 8.0, 26, box)
    mean = s.mean(0)
    se = 1.0 / np.sqrt(counts * m)
    z = (mean - 1.0) / se
    print(f"ideal gas: max |S-1| = {np.abs(mean - 1).max():.4f}, max |z| = {np.abs(z).max():.2f}, "
          f"chi2/bin = {np.mean(z ** 2):.2f}")
    assert np.all(np.abs(z) < 4.5)              # 26 bins: P(any |z| > 4.5) ~ 2e-4
    assert 0.4 < np.mean(z ** 2) < 1.9          # the error estimate is right, not just loose
    assert np.abs(mean - 1).max() < 0.08


KT, RHO, N = 1.5, 0.5, 500
N_KNOTS, CUTOFF = 10, 2.5


@pytest.fixture(scope="module")
def lj_run():
    """500 LJ particles (ρ = 0.5, kT = 1.5) + a small spline correction θ_ref ≠ 0, sampled with
    Langevin at θ_ref; RDF (fine bins, σ = 0.01) and S(k) of every snapshot from the engine."""
    system = build_system(OmegaConf.create({"units": "lj", "n_particles": N, "density": RHO, "kT": KT,
                                            "mass": 1.0, "lattice": "fcc"}))
    potential = potentials.build(OmegaConf.create({"kind": "lj", "epsilon": 1.0, "sigma": 1.0}),
                                 OmegaConf.create({"kind": "spline", "r_min": 0.8, "n_knots": N_KNOTS}), CUTOFF)
    knots = np.linspace(0.8, CUTOFF, N_KNOTS)[:-1]
    params = {"model": {"knot_values": jnp.asarray(0.1 * np.sin(3.0 * knots), jnp.float32)}}
    sampler = Sampler(potential, system, SamplerConfig(integrator="langevin", dt=0.005, first_equilibration_steps=1000,
                                                       production_steps=2000, every=20))
    state, nbrs = sampler.init(jax.random.PRNGKey(7), params)
    res = sampler.sample(params, state, nbrs, first=True)
    assert res.ok
    half = 0.5 * system.box_size
    obs = {"rdf": RDF(name="rdf", r_min=0.0, r_max=round(half - 0.1, 2), n_bins=int(round((half - 0.1) / 0.01)),
                      sigma=0.01),
           "sk": StructureFactor("sk", k_max=8.0, n_bins=28, k_min=1.0)}
    ctx = Context(system.n_particles, system.volume, system.kT)
    engine = ObservableEngine(potential, obs, ctx, system.box_size, 1.0 / system.kT)
    feats = engine.featurize(res.trajectory)
    return dict(system=system, params=params, engine=engine, feats=feats)


def test_structure_factor_is_fourier_transform_of_rdf(lj_run):
    """S(k) = 1 + 4π ρ' ∫_0^{r_max} r² (g − 1) sin(kr)/(kr) dr, ρ' = (N − 1)/V (g is normalised
    by N(N − 1)), evaluated at every wave vector's |k| and shell-averaged like S(k).

    Tolerance 0.05 per bin (and 0.02 on the mean over bins): the truncation at r_max = L/2 − 0.1
    = 3.87 σ leaves ~4πρ r_max |g − 1|/k ≲ 0.01 at k ≥ 3.5 (|g − 1| ≲ 0.005 beyond 3.5 σ here),
    the σ = 0.01 smoothing of g scales S − 1 by exp(−k²σ²/2) ≥ 0.997, and the statistical error
    of S (100 correlated snapshots) is ≲ 0.01 per bin (measured), so 0.05 is ~4 standard errors
    plus the truncation; small k (< 3.5) is not compared (truncation and finite-size errors,
    and few wave vectors per bin)."""
    sysm, engine, feats = lj_run["system"], lj_run["engine"], lj_run["feats"]
    rdf, sk = engine.observables["rdf"], engine.observables["sk"]
    g = np.asarray(feats.static["rdf"], np.float64).mean(0)
    s = np.asarray(feats.static["sk"], np.float64)
    s_mean, s_err = s.mean(0), s.std(0, ddof=1) / np.sqrt(len(s))
    r, dr = rdf.grid, rdf.grid[1] - rdf.grid[0]
    rho = (sysm.n_particles - 1) / sysm.volume
    vec, b, counts = wave_vectors(sk.k_min, sk.k_max, sk.n_bins, sysm.box_size)
    kv = 2 * np.pi / sysm.box_size * np.sqrt((vec ** 2).sum(1))
    ft_v = 1 + 4 * np.pi * rho * (r ** 2 * (g - 1) * np.sinc(np.outer(kv, r) / np.pi)).sum(1) * dr
    ft = np.bincount(b, ft_v, sk.n_bins) / counts
    sel = sk.grid >= 3.5
    dev = np.abs(s_mean - ft)
    print("k, S, S_FT:", " ".join(f"{k:.2f}:{a:.3f}/{c:.3f}" for k, a, c in zip(sk.grid, s_mean, ft)))
    print(f"RDF-FT: max |S - S_FT| at k >= 3.5 = {dev[sel].max():.4f} (max SE of S {s_err[sel].max():.4f}); "
          f"mean {dev[sel].mean():.4f}; S peak {s_mean.max():.3f} at k = {sk.grid[np.argmax(s_mean)]:.2f}")
    assert s_mean.max() > 1.2                   # a structured liquid, not an ideal gas
    assert dev[sel].max() < 0.05 and dev[sel].mean() < 0.02
    assert abs(s_mean[np.argmax(ft)] - ft.max()) < 0.05   # the main peak agrees in height


def test_reweighted_gradient_equals_fluctuation_formula(lj_run):
    engine, feats, params = lj_run["engine"], lj_run["feats"], lj_run["params"]
    beta = 1.0 / lj_run["system"].kT
    s = np.asarray(feats.static["sk"], np.float64)                      # (S, n_bins), fixed by positions
    dU = jax.jit(jax.jacrev(lambda p: engine.snapshot_energies(p, feats.r)[0]))(params)
    dU = np.asarray(dU["model"]["knot_values"], np.float64)             # (S, n_knots)
    jac = jax.jit(jax.jacrev(lambda p: engine.predict(p, feats)[0]["sk"]))(params)
    jac = np.asarray(jac["model"]["knot_values"], np.float64)           # (n_bins, n_knots)
    value = np.asarray(jax.jit(engine.predict)(params, feats)[0]["sk"], np.float64)
    np.testing.assert_allclose(value, s.mean(0), rtol=1e-4)             # uniform weights at θ_ref
    expect = -beta * (np.einsum("sb,sk->bk", s, dU) / len(s) - np.outer(s.mean(0), dU.mean(0)))
    scale = np.abs(expect).max()
    err = np.abs(jac - expect).max()
    print(f"gradient: max |d<S>/dθ| = {scale:.4g}, max |reweighted - fluctuation| = {err:.3g}")
    assert scale > 0
    np.testing.assert_allclose(jac, expect, rtol=2e-3, atol=3e-3 * scale)


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


def test_yaml_composes_and_bad_settings_name_the_key(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = _compose("config=lj", "observables=[rdf,sk]", "targets=[lj_rdf,lj_sk]")
    validate(cfg)
    from difftre_cli import targets
    obs = build(cfg.observables)
    assert isinstance(obs["sk"], StructureFactor) and obs["sk"].reach == 0.0 and not obs["sk"].depends_on_params
    tg = targets.build(cfg.targets, obs, build_system(cfg.system).units)
    assert tg["sk"].value.shape == (38,) and 0.0 < tg["sk"].value.min() and tg["sk"].value.max() > 1.2
    box = (1000 / 0.5) ** (1 / 3)                                         # 2π/L = 0.499
    for bad, key in [("observables.sk.k_max=0.45", "observables.sk.k_max"),
                     ("observables.sk.n_bins=0", "observables.sk.n_bins"),
                     ("observables.sk.k_min=0.0", "observables.sk"),      # (0, 0.2] has no vector
                     ("observables.sk.k_min=9.0", "observables.sk.k_max")]:
        with pytest.raises(UserError) as exc:
            validate(_compose("config=lj", "observables=[rdf,sk]", "targets=[lj_rdf,lj_sk]", bad))
        assert key in str(exc.value), str(exc.value)
    assert 2 * math.pi / box < 0.5
    with pytest.raises(UserError, match="targets.sk.x_unit"):            # a length is not a wave number
        validate(_compose("config=lj", "observables=[rdf,sk]", "targets=[lj_rdf,lj_sk]", "targets.sk.x_unit=sigma"))
