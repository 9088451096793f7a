"""Observables against known answers: the ideal gas, the explicit virial sum and the
neighbour-count integral of g(r)."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.special import erf

from difftre_cli import observables, potentials
from difftre_cli.observables.engine import ObservableEngine
from difftre_cli.observables import Context
from difftre_cli.observables.pressure import Pressure
from difftre_cli.observables.rdf import RDF
from difftre_cli.sampler import SamplerConfig, Trajectory
from difftre_cli.simulate import Sampler
from difftre_cli.system import build_system, lattice_positions


def _trajectory(positions, energies=None):
    positions = np.asarray(positions, np.float32)
    s = positions.shape[0]
    energies = np.zeros(s, np.float32) if energies is None else energies
    return Trajectory(positions, energies, np.ones(s, np.float32), np.arange(s))


def _engine(potential, obs, n, box, kT):
    ctx = Context(n, box ** 3, kT)
    return ObservableEngine(potential, obs, ctx, box, 1.0 / kT), ctx


def _pair_distances(R, box):
    """All i ≠ j minimum-image distances of one configuration (float64, flat)."""
    R = np.asarray(R, np.float64)
    d = R[:, None, :] - R[None, :, :]
    d -= box * np.round(d / box)
    r = np.sqrt((d * d).sum(-1))
    return r[~np.eye(len(R), dtype=bool)]


# ---------------------------------------------------------------------------------------
def test_ideal_gas_rdf_is_one_and_pressure_is_rho_kT():
    n, box, kT, s = 256, 7.0, 1.3, 24
    rng = np.random.default_rng(0)
    positions = rng.uniform(0.0, box, size=(s, n, 3))
    potential = potentials.build(OmegaConf.create({"kind": "none"}), OmegaConf.create({"kind": "none"}), 2.5)
    obs = observables.build(OmegaConf.create({"rdf": {"kind": "rdf", "r_min": 0.0, "r_max": 3.0, "n_bins": 30,
                                                      "sigma": 0.1},
                                              "pressure": {"kind": "pressure"}}))
    engine, ctx = _engine(potential, obs, n, box, kT)
    feats = engine.featurize(_trajectory(positions))
    params = potential.init(jax.random.PRNGKey(0))
    preds, w = engine.predict(params, feats)
    rdf = obs["rdf"]
    g = np.asarray(preds["rdf"])
    sel = (rdf.grid >= 1.0) & (rdf.grid <= 2.5)
    assert sel.sum() >= 14
    np.testing.assert_allclose(g[sel], 1.0, atol=0.04)
    assert g[sel].mean() == pytest.approx(1.0, abs=0.01)
    # the pressure of the ideal gas is exactly ρ k_B T, in every snapshot
    per_snapshot = engine.snapshot_observables(params, feats)["pressure"]
    np.testing.assert_allclose(np.asarray(per_snapshot), n * kT / box ** 3, rtol=1e-6)
    assert float(preds["pressure"]) == pytest.approx(n * kT / box ** 3, rel=1e-6)
    np.testing.assert_allclose(np.asarray(w), 1.0 / s, rtol=1e-6)


# ---------------------------------------------------------------------------------------
def _lj_derivative(r, epsilon=1.0, sigma=1.0):
    return 4.0 * epsilon * (-12.0 * sigma ** 12 / r ** 13 + 6.0 * sigma ** 6 / r ** 7)


@pytest.mark.parametrize("density", [0.5, 0.85])
def test_virial_pressure_equals_explicit_pair_sum(density):
    n, kT, cutoff = 256, 0.9, 2.5
    box = (n / density) ** (1.0 / 3.0)
    rng = np.random.default_rng(1)
    base = lattice_positions(n, box, "fcc")
    positions = np.mod(base[None] + rng.normal(0.0, 0.06, size=(3, n, 3)), box)
    potential = potentials.build(OmegaConf.create({"kind": "lj", "epsilon": 1.0, "sigma": 1.0}),
                                 OmegaConf.create({"kind": "none"}), cutoff)
    obs = {"pressure": Pressure("pressure")}
    engine, ctx = _engine(potential, obs, n, box, kT)
    feats = engine.featurize(_trajectory(positions))
    got = np.asarray(engine.snapshot_observables({}, feats)["pressure"], np.float64)
    volume = box ** 3
    for k in range(3):
        r = _pair_distances(positions[k], box)
        r = r[r < cutoff]
        virial_sum = np.sum(r * _lj_derivative(r))                     # Σ_{i≠j} r u'(r)
        expect = n * kT / volume - virial_sum / (6.0 * volume)
        scale = abs(virial_sum) / (6.0 * volume)
        assert scale > 0.1 * n * kT / volume                           # interactions matter
        assert got[k] == pytest.approx(expect, rel=1e-4, abs=1e-4 * scale)


# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lj_liquid():
    """Snapshots of a 108-particle LJ liquid (ρ = 0.75, kT = 1.2) from a short Langevin run."""
    cfg = OmegaConf.create({"units": "lj", "n_particles": 108, "density": 0.75, "kT": 1.2})
    system = build_system(cfg)
    potential = potentials.build(OmegaConf.create({"kind": "lj"}), OmegaConf.create({"kind": "none"}), 2.5)
    sampler = Sampler(potential, system, SamplerConfig(first_equilibration_steps=600, production_steps=1000,
                                                       every=25))
    state, nbrs = sampler.init(jax.random.PRNGKey(3), {})
    res = sampler.sample({}, state, nbrs, first=True)
    assert res.ok
    return system, potential, res.trajectory


def test_rdf_integral_counts_neighbours(lj_liquid):
    system, potential, traj = lj_liquid
    n, box = system.n_particles, system.box_size
    rdf = RDF(name="rdf", r_min=0.0, r_max=2.5, n_bins=250, sigma=0.02)
    engine, ctx = _engine(potential, {"rdf": rdf}, n, box, system.kT)
    feats = engine.featurize(traj)
    g = np.asarray(engine.predict({}, feats)[0]["rdf"], np.float64)
    assert g.max() > 2.0                           # a liquid's first peak, not an ideal gas
    dr = rdf.grid[1] - rdf.grid[0]
    # (N−1)/V: the RDF is normalised by the number of *other* particles
    rho = (n - 1) / box ** 3
    cumulative = np.cumsum(4.0 * np.pi * rho * rdf.grid ** 2 * g * dr)     # ∫_0^{edge} at bin edges
    edges = rdf.grid + 0.5 * dr
    radii = (1.05, 1.1, 1.3, 1.6, 2.0, 2.3)
    raw = dict.fromkeys(radii, 0.0)          # mean number of neighbours within R
    smoothed = dict.fromkeys(radii, 0.0)     # the same count with each pair blurred by the RDF kernel
    positions = np.asarray(traj.positions)
    for k in range(len(positions)):
        r = _pair_distances(positions[k], box)
        for R in radii:
            raw[R] += np.sum(r < R) / n / len(positions)
            smoothed[R] += np.sum(0.5 * (1.0 + erf((R - r) / (np.sqrt(2.0) * rdf.sigma)))) / n / len(positions)
    for R in radii:
        b = int(np.argmin(np.abs(edges - R)))
        assert abs(edges[b] - R) < 1e-6
        assert raw[R] > 1.0
        # exact up to the quadrature of the fine grid
        assert cumulative[b] == pytest.approx(smoothed[R], rel=1e-3), R
        # the brute-force count, up to the smoothing (which matters only on the steep
        # rising edge of the first peak, ≈ σ²/2 · dn/dr there)
        assert cumulative[b] == pytest.approx(raw[R], rel=0.03 if R < 1.1 else 0.004), R


def test_registry_is_collected_from_the_modules_and_covers_every_yaml():
    """Each observables/*.py module lists its kinds in ``KINDS``; the registry is their union
    (adding an observable is one module + one YAML), and every YAML's kind is in it."""
    import importlib
    import pkgutil
    from pathlib import Path

    from difftre_cli.observables import OBSERVABLES

    pkg = importlib.import_module("difftre_cli.observables")
    declared = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        declared.update(vars(importlib.import_module(f"difftre_cli.observables.{info.name}")).get("KINDS", {}))
    assert declared == OBSERVABLES and len(OBSERVABLES) >= 9
    for cls in OBSERVABLES.values():
        assert callable(cls.from_config) and callable(cls.snapshot)
    for yaml in (Path(__file__).parents[1] / "configs" / "observables").glob("*.yaml"):
        for name, sub in OmegaConf.load(yaml).items():
            assert sub.get("kind", name) in OBSERVABLES, (yaml.name, name)


def test_without_theta_dependent_observables_only_the_energy_is_computed(lj_liquid):
    """RDF alone: U_θ is the only per-snapshot quantity (no virial pass); the reweighted RDF and
    the weights are those of an engine that also carries the pressure (and so the virial)."""
    system, potential, traj = lj_liquid
    box = float(system.box_size)
    rdf = {"rdf": RDF("rdf", r_min=0.0, r_max=2.5, n_bins=50, sigma=0.02)}
    alone, _ = _engine(potential, rdf, 108, box, 1.2)
    both, _ = _engine(potential, {**rdf, "pressure": Pressure("pressure")}, 108, box, 1.2)
    assert alone.energy_only and not both.energy_only
    feats = alone.featurize(traj)
    lj = potentials.build(OmegaConf.create({"kind": "lj", "epsilon": 1.1, "sigma": 0.98}),
                          OmegaConf.create({"kind": "none"}), 2.5)   # other energies: weights ≠ 1/S
    alone.potential = both.potential = lj
    assert set(alone.snapshot_quantities({}, feats.r)) == {"energy"}
    assert {"energy", "virial"} <= set(both.snapshot_quantities({}, feats.r))
    (p_alone, w_alone), (p_both, w_both) = alone.predict({}, feats), both.predict({}, both.featurize(traj))
    assert float(np.max(np.asarray(w_alone))) > 1.5 / len(w_alone)
    np.testing.assert_allclose(np.asarray(w_alone), np.asarray(w_both), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(p_alone["rdf"]), np.asarray(p_both["rdf"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["one", "mixture", "thermal"])
def test_linear_features_give_the_energy_and_virial_of_the_pair_distances(lj_liquid, kind):
    """A spline model is linear in its knot values: U_θ and the virial from the features the
    engine stores once per trajectory (U_0 + ⟨θ, ∂U/∂θ⟩, observables/linear.py) equal those from
    the pair distances at a random θ, for one species, for a mixture and for the thermal model
    u₁ − kT u₂ of two splines (bound at the state's kT). Without a θ-dependent observable the
    features carry no virial, and asking for one is an error."""
    system, _, traj = lj_liquid
    box = float(system.box_size)
    mixture = kind == "mixture"
    prior = OmegaConf.create({"kind": "repulsive", "epsilon": 1.0, "sigma": 1.0, "exponent": 12})
    model = OmegaConf.create({"kind": "spline", "n_knots": 12, "r_min": 0.8})
    if kind == "thermal":
        model = OmegaConf.create({"kind": "thermal", "u1": dict(model), "u2": {**model, "n_knots": 9}})
        pot = potentials.build(prior, model, 2.5).bind(system)
        assert pot.model.kT == pytest.approx(float(system.kT))
    elif mixture:
        binary = build_system(OmegaConf.create({"units": "lj", "n_particles": 108, "density": 0.75, "kT": 1.2,
                                                "species": {"A": 0.25, "B": 0.75}}))
        pot = potentials.build(prior, model, 2.5, species_names=("A", "B")).bind(binary)
    else:
        pot = potentials.build(prior, model, 2.5)
    assert pot.linear_in_params
    rdf = {"rdf": RDF("rdf", r_min=0.0, r_max=2.5, n_bins=50, sigma=0.02)}
    obs = {**rdf, "pressure": Pressure("pressure")}
    leaves, tree = jax.tree_util.tree_flatten(pot.init(jax.random.PRNGKey(0)))
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    theta = tree.unflatten([0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])

    linear, _ = _engine(pot, obs, 108, box, 1.2)
    plain, _ = _engine(pot, obs, 108, box, 1.2)
    plain.linear = False          # the distances' path, for reference
    assert linear.linear
    feats, ref = linear.featurize(traj), plain.featurize(traj)
    assert np.asarray(ref.r[0] if mixture else ref.r).ndim == 3       # distances (S, N, M)
    u, w = jax.jit(linear.snapshot_energies)(theta, feats.r)
    u_ref, w_ref = jax.jit(plain.snapshot_energies)(theta, ref.r)
    assert float(np.std(np.asarray(u_ref))) > 1.0                     # θ matters, states differ
    np.testing.assert_allclose(np.asarray(u), np.asarray(u_ref), rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(np.asarray(w), np.asarray(w_ref), rtol=1e-4, atol=1e-1)

    alone, _ = _engine(pot, rdf, 108, box, 1.2)
    only = alone.featurize(traj)
    assert only.r.g is None
    u_alone, w_alone = jax.jit(alone.snapshot_energies)(theta, only.r)
    assert w_alone is None
    np.testing.assert_allclose(np.asarray(u_alone), np.asarray(u_ref), rtol=1e-5, atol=1e-2)
    first = jax.tree_util.tree_map(lambda x: x[0], only.r)
    with pytest.raises(ValueError, match="no virial"):
        jax.grad(lambda s: alone.energy(theta, first, s))(1.0)
