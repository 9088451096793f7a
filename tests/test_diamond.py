"""Diamond: the Stillinger–Weber prior under DimeNet++ (potentials/sw_prior.py), stress and
stiffness as DiffTRe observables (observables/mechanical.py, observables/engine.py) and the preset.

* the SW prior in the many-body wrapper (sparse and dense format) equals classical.py's SW
  (JAX MD's ``stillinger_weber``) on the same configuration;
* the engine's per-snapshot Born terms equal ``stress.born_terms`` of JAX MD's SW on a
  ``periodic_general`` space with fractional coordinates (an independent strain path);
* at θ = θ_ref the reweighted stress-fluctuation C equals the direct (unweighted) one computed
  with forward-over-reverse Born terms of the plain-autodiff network;
* the gradient of the stress + stiffness loss equals a finite difference of the reweighted loss
  on fixed snapshots (float64);
* the preset composes; bad inputs are UserErrors; two updates of a 64-atom run (slow).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from jax_md import partition, space

from difftre_cli import assemble, plots, units
from difftre_cli.errors import UserError
from difftre_cli.observables import stiffness as stiff_mod
from difftre_cli.observables import stress as stress_mod
from difftre_cli.observables.mechanical import cubic_moduli
from difftre_cli.potentials.sw_prior import SWManyBodyPotential

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SMALL = ["config=diamond", "system.n_particles=64", "model.embed_size=8", "model.out_embed_size=8",
         "model.int_emb_size=4", "model.num_blocks=1", "model.num_spherical=3", "model.num_radial=3",
         "model.num_dense_out=1", "model.basis_emb_size=2", "model.snapshot_batch=2"]


def _components(extra=()):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return assemble.build(compose(config_name="train", overrides=SMALL + list(extra)))


def _noisy(params, scale, seed=1):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [p + scale * jax.random.normal(k, p.shape, p.dtype)
                                               for p, k in zip(leaves, keys)])


def _snapshots(c, n, amplitude=0.006, seed=3):
    """Thermal-like configurations: the lattice with Gaussian displacements (nm)."""
    # NumPy's generator: jax.random op by op compiles a program per shape
    R0 = np.asarray(c.system.positions)
    noise = amplitude * np.random.default_rng(seed).standard_normal((n,) + R0.shape)
    return jnp.asarray((R0[None] + noise) % c.system.box_size, jnp.result_type(float))


class _Traj:
    def __init__(self, positions, energies):
        self.positions, self.energies = positions, energies


def _features(c, params, positions):
    """Features with U_ref = U_θ(params) on every snapshot (θ_ref = params)."""
    feats = c.engine.featurize(_Traj(positions, jnp.zeros(positions.shape[0], positions.dtype)))
    u, _ = jax.jit(c.engine.snapshot_energies)(params, feats.r)   # (op by op: hundreds of small programs)
    return feats._replace(u_ref=u)


def _classical_sw(c):
    """classical.py's SW (JAX MD's stillinger_weber) with the prior's ε and σ."""
    from difftre_cli.potentials.classical import build_classical
    sw = c.potential.sw
    return build_classical({"kind": "sw", "params": {"epsilon": sw.epsilon, "sigma": sw.sigma},
                            "learnable": ["epsilon"]})


def test_sw_prior_equals_classical_sw(double_precision):
    from jax_md import space
    c = _components()
    pot = c.potential
    assert isinstance(pot, SWManyBodyPotential)
    assert pot.cutoff == pytest.approx(0.252) and pot.model.cutoff == pytest.approx(0.2)
    params = pot.init(jax.random.PRNGKey(0))          # the network's output layer starts at zero
    disp, _ = space.periodic(c.system.box_size)
    ref_fn = _classical_sw(c).energy_fn(disp, {})
    nbr_fn = c.engine.energy_nbr_fn
    positions = _snapshots(c, 2, amplitude=0.01)
    # one list shape and one set of capacities for both snapshots, so that each jit-compiled
    # function below is compiled once (compiling, not evaluating, is the cost here)
    nbrs = [nbr_fn.allocate(positions[0])]
    nbrs.append(nbr_fn.update(positions[1], nbrs[0]))
    assert not any(bool(nbr.did_buffer_overflow) for nbr in nbrs)
    fitted = [pot.fit_capacity(R, nbr.idx) for R, nbr in zip(positions, nbrs)]
    for f in fitted:
        assert f.sparse and f.sw_slots >= 4
    sparse = dataclasses.replace(fitted[0], **{k: max(getattr(f, k) for f in fitted)
                                               for k in ("max_edges", "max_degree", "sw_slots")})
    box = pot.box_size
    dense_u = jax.jit(lambda R, idx: pot.energy_from_features(params, pot.features_on_list(R, idx, box)))
    sparse_f = sparse.force_fn(box)
    # the sparse energy and forces in one program, the reference's too (its gradient pass
    # contains the energy: one compilation instead of two)
    sparse_uf = jax.jit(lambda R, nbr: (sparse.energy_from_features(params, sparse.features_on_list(R, nbr.idx, box)),
                                        sparse_f(R, nbr, params)))
    ref_ug = jax.jit(lambda R: (ref_fn(R), jax.grad(ref_fn)(R)))
    for R, nbr in zip(positions, nbrs):
        assert not bool(sparse.capacity_overflow(R, nbr.idx))
        u_ref, g_ref = ref_ug(R)
        u_ref = float(u_ref)
        assert abs(u_ref) > 1e3
        assert float(dense_u(R, nbr.idx)) == pytest.approx(u_ref, rel=1e-10)
        u_sparse, force = sparse_uf(R, nbr)
        assert float(u_sparse) == pytest.approx(u_ref, rel=1e-10)
        # forces too (the sampler's path)
        np.testing.assert_allclose(np.asarray(force), -np.asarray(g_ref), rtol=1e-8, atol=1e-6)


def test_born_terms_equal_jax_md_periodic_general(double_precision):
    """Lagrangian Born stress and stiffness of the wrapper (network output zero) equal those of
    JAX MD's SW on a periodic_general space (strained box and fractional coordinates)."""
    from jax_md import space
    c = _components(["observables.stiffness.form=full", "targets.stiffness.value=500.0"])
    pot = c.potential
    params = pot.init(jax.random.PRNGKey(0))
    positions = _snapshots(c, 2)
    # (no reference energies: the Born terms do not depend on them)
    feats = c.engine.featurize(_Traj(positions, jnp.zeros(positions.shape[0], positions.dtype)))
    # each jit-compiled: op by op, these derivatives compile hundreds of small programs
    q = jax.jit(c.engine.snapshot_quantities)(params, feats.r)
    L = c.system.box_size
    box = L * jnp.eye(3)
    disp, _ = space.periodic_general(box, fractional_coordinates=True)
    energy = _classical_sw(c).energy_fn(disp, {})
    # (the fractional coordinates divided outside: JAX MD's SW of R / L compiled as one program
    # differs from it op by op, by 1e65 on these snapshots)
    born_terms = jax.jit(lambda frac: stress_mod.born_terms(stress_mod.energy_of_strain_fractional(energy, frac),
                                                            L ** 3))
    for s, R in enumerate(positions):
        sB, CB = born_terms(R / L)
        assert float(jnp.max(jnp.abs(CB))) > 1e4
        np.testing.assert_allclose(np.asarray(q["born_stress"][s]), np.asarray(sB), rtol=1e-8, atol=1e-6)
        np.testing.assert_allclose(np.asarray(q["born_stiffness"][s]), np.asarray(CB), rtol=1e-8, atol=1e-4)
        assert float(q["virial"][s]) == pytest.approx(float(L ** 3 * jnp.sum(sB[:3])), rel=1e-10)


@pytest.mark.slow   # ~100 s each on 2 cores (DimeNet++ Born stiffness in float64)
def test_reweighted_stiffness_at_reference_equals_direct(double_precision):
    c = _components(["observables.stiffness.form=full", "targets.stiffness.value=500.0",
                     "observables.stress.form=voigt"])
    pot = c.potential
    params = _noisy(pot.init(jax.random.PRNGKey(0)), 0.3)
    positions = _snapshots(c, 3)
    feats = _features(c, params, positions)
    preds, w = c.engine.predict(params, feats)
    np.testing.assert_allclose(np.asarray(w), 1.0 / 3.0, rtol=1e-12)
    # direct: forward-over-reverse Born terms of the network, plain averages
    plain = pot
    eye = jnp.eye(3)
    sB, CB = [], []
    for s in range(positions.shape[0]):
        r_s = jax.tree_util.tree_map(lambda x: x[s], feats.r)
        u_e = lambda e, r_s=r_s: plain.energy_from_features(params, r_s, strain=stress_mod.deformation(e) - eye)  # noqa: E731
        a, b = stress_mod.born_terms(u_e, c.system.volume)
        sB.append(a)
        CB.append(b)
    sB, CB = jnp.stack(sB), jnp.stack(CB)
    n, V, kT = c.system.n_particles, c.system.volume, c.system.kT
    C = stiff_mod.reweighted_stiffness(jnp.full(3, 1.0 / 3.0), sB, CB, n, V, kT)
    # the network matters: C differs from the prior's alone
    assert float(jnp.max(jnp.abs(CB - c.engine.snapshot_quantities(
        pot.init(jax.random.PRNGKey(0)), feats.r)["born_stiffness"]))) > 1.0
    iu = np.triu_indices(6)
    np.testing.assert_allclose(np.asarray(preds["stiffness"]), np.asarray(C)[iu], rtol=1e-7, atol=1e-3)
    np.testing.assert_allclose(np.asarray(preds["stress"]),
                               np.asarray(stiff_mod.stress_from_averages(jnp.mean(sB, 0), n, V, kT)),
                               rtol=1e-8, atol=1e-5)


@pytest.mark.slow   # ~100 s each on 2 cores (DimeNet++ Born stiffness in float64)
def test_stiffness_loss_gradient_matches_finite_difference(double_precision):
    c = _components()
    pot = c.potential
    theta_ref = _noisy(pot.init(jax.random.PRNGKey(0)), 0.3)
    feats = _features(c, theta_ref, _snapshots(c, 4))
    # away from θ_ref (non-uniform weights); float64 parameters (Flax initialises float32 ones,
    # and a step of 1e-6 on a float32 parameter is mostly rounding)
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), _noisy(theta_ref, 0.02, seed=7))
    loss = lambda p: c.learner.loss(p, feats)[0]    # noqa: E731
    (value, (losses, _, n_eff)), grads = jax.value_and_grad(c.learner.loss, has_aux=True)(params, feats)
    assert float(n_eff) < 3.999 and float(losses["stiffness"]) > 0 and float(losses["stress"]) > 0
    direction = _noisy(jax.tree_util.tree_map(jnp.zeros_like, params), 1.0, seed=11)
    h = 1e-5
    shift = lambda t: jax.tree_util.tree_map(lambda p, d: p + t * d, params, direction)  # noqa: E731
    f = {k: float(loss(shift(k * h))) for k in (-2, -1, 1, 2)}
    fd = (8.0 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12.0 * h)     # five-point stencil
    analytic = float(sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grads),
                                                          jax.tree_util.tree_leaves(direction))))
    assert abs(analytic) > 1e-3 * float(value)
    assert analytic == pytest.approx(fd, rel=1e-6)


def test_diamond_preset_composes():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="train", overrides=["config=diamond"])
    c = assemble.build(cfg)
    assert c.system.n_particles == 1000 and c.system.box_size == pytest.approx(1.78412, abs=1e-4)
    assert c.system.kT == pytest.approx(298.0 * 0.0083144626)
    assert isinstance(c.potential, SWManyBodyPotential)
    assert c.potential.sw.epsilon == 200.0 and c.potential.sw.sigma == 0.14 and c.potential.sw.lam == 21.0
    from difftre_cli.units import GPA_PER_KJ_MOL_NM3
    np.testing.assert_allclose(c.targets["stiffness"].value * GPA_PER_KJ_MOL_NM3, [1079.0, 124.0, 578.0])
    assert c.targets["stress"].value.shape == (9,) and not np.any(c.targets["stress"].value)
    assert c.engine.needs == {"born_stress", "born_stiffness"}
    from difftre_cli.system import min_image_distance
    d, _, _ = min_image_distance(c.system.positions, c.system.box_size)
    assert d == pytest.approx(np.sqrt(3) / 4 * c.system.box_size / 5)   # the C–C bond


def _zero_kelvin_stress_gpa(overrides):
    """σ_xx of the perfect 64-atom lattice (1/V ∂U/∂ε, prior + model, float64) in GPa."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        c = assemble.build(compose(config_name="train", overrides=["config=diamond_cpu", "system.n_particles=64",
                                                                   *overrides]))
    pot, box = c.potential, float(c.system.box_size)
    R = jnp.asarray(c.system.positions, jnp.float64)
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), pot.init(jax.random.PRNGKey(0)))
    disp, _ = space.periodic(box)
    idx = partition.neighbor_list(disp, box, pot.cutoff + 0.04, format=partition.Dense,
                                  capacity_multiplier=1.0).allocate(R).idx
    # jit-compiled (op by op, ~100 small programs each), the parameters an argument: the two
    # presets' programs are the same (the second loaded from the run's compilation cache)
    grad = jax.jit(jax.grad(lambda e, p: pot.energy_from_features(p, (R, idx), strain=e)))(jnp.zeros((3, 3)), params)
    return float(grad[0, 0]) / box ** 3 * units.GPA_PER_KJ_MOL_NM3, c


def test_diamond_cpu_preset_starts_from_its_zero_kelvin_fit(double_precision):
    """config=diamond_cpu's recorded start (λ, h, spline) is the 0 K fit: the perfect lattice is
    at zero stress (−0.000 GPa in the fit); without the model's spline and λ it is at −17.8 GPa
    (the prior's), so a changed prior, model or preset value shows here."""
    stress, c = _zero_kelvin_stress_gpa([])
    assert c.system.n_particles == 64 and c.potential.model.learn == ("lam", "angle", "pair")
    assert abs(stress) < 0.01
    bare, _ = _zero_kelvin_stress_gpa(["model.lam=2.0", "model.angle=null", "model.pair_values=null"])
    assert bare == pytest.approx(-17.76, abs=0.02)


@pytest.mark.parametrize("override, match", [
    (["system.n_particles=100"], "whole 8-atom cells"),
    (["model=spline"], "stillinger_weber is a many-body prior"),
    (["~targets.stiffness.value", "+targets.stiffness.value=[1.0,2.0]"], "has 2 numbers"),
    (["~targets.stiffness.value", "+targets.stiffness.value={C11: 1.0, C12: 2.0, C33: 3.0}"], "do not match"),
    (["targets.stiffness.unit=furlong"], "targets.stiffness.unit"),
    (["observables.stiffness.form=triclinic"], "observables.stiffness.form"),
    (["+prior.p=5"], "hard-codes"),
])
def test_bad_diamond_inputs_are_user_errors(override, match):
    with pytest.raises(UserError, match=match):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            assemble.build(compose(config_name="train", overrides=["config=diamond", "system.n_particles=64",
                                                                   *override]))


def test_stress_observable_needs_a_many_body_potential():
    with pytest.raises(UserError, match="strain derivatives"):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            assemble.build(compose(config_name="train", overrides=[
                "config=lj", "+observables.stress={kind: stress}"]))


def test_cubic_moduli_of_an_isotropic_solid():
    lam, mu = 50.0, 30.0             # Lamé constants: C11 = λ + 2μ, C12 = λ, C44 = μ
    m = cubic_moduli(lam + 2 * mu, lam, mu)
    E, nu = mu * (3 * lam + 2 * mu) / (lam + mu), lam / (2 * (lam + mu))
    assert m["young_100"] == pytest.approx(E) and m["young_hill"] == pytest.approx(E)
    assert m["poisson_100"] == pytest.approx(nu) and m["poisson_hill"] == pytest.approx(nu)
    assert m["shear_hill"] == pytest.approx(mu) and m["bulk"] == pytest.approx(lam + 2 * mu / 3)


@pytest.mark.slow
def test_two_updates_of_a_64_atom_diamond_run(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "difftre_cli.cli", "train", *SMALL, "simulator.first_equilibration_steps=200",
           "simulator.equilibration_steps=50", "simulator.production_steps=200", "simulator.every=50",
           "trainer.updates=2", f"hydra.run.dir={run}"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    import csv
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 2
    for r in rows:
        assert np.isfinite(float(r["loss"])) and float(r["loss_stiffness"]) > 0 and float(r["loss_stress"]) > 0
    # evaluate: stress and stiffness in GPa, the cubic moduli
    res = subprocess.run([sys.executable, "-m", "difftre_cli.cli", "evaluate", f"run={run}",
                          "evaluate.equilibration_steps=50", "evaluate.production_steps=200", "evaluate.every=50"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    import json
    ev = json.load(open(run / "evaluation.json"))
    stiff = ev["observables"]["stiffness"]
    assert set(stiff["value_GPa"]) == {"C11", "C12", "C44"}
    m = stiff["moduli_GPa"]
    c11, c12 = stiff["value_GPa"]["C11"], stiff["value_GPa"]["C12"]
    assert m["poisson_100"] == pytest.approx(c12 / (c11 + c12))
    assert len(ev["observables"]["stress"]["value_GPa"]) == 9


def test_stress_and_stiffness_plots_are_in_gpa(tmp_path, monkeypatch):
    """Real units: the bar charts show GPa (as the evaluation table does), not kJ mol⁻¹ nm⁻³."""
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    kj = 1.0 / units.GPA_PER_KJ_MOL_NM3          # kJ/mol/nm³ per GPa
    target = {"grid": None, "unit": "kJ/mol/nm^3", "components": ["C11", "C12", "C44"], "rmse": 1.0,
              "target": [1079.0 * kj, 124.0 * kj, 578.0 * kj], "observable": [1000.0 * kj, 130.0 * kj, 570.0 * kj]}
    ev = {"units": {"length": "nm"}, "targets": {"stiffness": target}, "potential": {"kind": "many_body"},
          "observables": {"stiffness": {"value_GPa": {"C11": 1000.0, "C12": 130.0, "C44": 570.0}}}}
    plots.plot_all(tmp_path, ev, [])
    ax = figures[0].axes[0]
    assert ax.get_ylabel() == "stiffness [GPa]"
    heights = sorted(round(b.get_height(), 6) for b in ax.patches)
    assert heights == [124.0, 130.0, 570.0, 578.0, 1000.0, 1079.0]


def test_evaluation_table_names_units_and_prints_them(capsys):
    """The summary table: stress/moduli RMSE in GPa, other RMSEs in the target's unit, and unit
    labels such as "[bar]" printed (not swallowed as rich markup)."""
    from difftre_cli.evaluate_md import _summary
    gpa = 1.0 / units.GPA_PER_KJ_MOL_NM3
    out = {"run": "r", "potential": {}, "mean_kinetic_kT": 2.5, "snapshots": 10, "wall_time_s": 1.0,
           "targets": {"stiffness": {"rmse": 2.0 * gpa, "rmse_at_start": 20.0 * gpa, "unit": "kJ/mol/nm^3"},
                       "pressure": {"rmse": 2.0, "rmse_at_start": None, "unit": "kJ/mol/nm^3",
                                    "error_bar": 34.0, "error_bar_at_start": None}},
           "observables": {"stiffness": {"grid": None, "value_GPa": {"C11": 1077.0}},
                           "pressure": {"grid": None, "value": 2.0, "value_bar": 35.0}}}
    _summary(out)
    text = capsys.readouterr().out
    assert "RMSE stiffness [GPa]" in text and "2 (start 20)" in text
    assert "RMSE pressure [kJ/mol/nm^3]" in text and "|error| pressure [bar]" in text and "wall time [s]" in text


@pytest.mark.parametrize("model", [
    pytest.param(SMALL, id="dimenet", marks=pytest.mark.slow),   # ~165 s on 2 cores (compiling the Born terms' J)
    pytest.param(["config=diamond", "system.n_particles=64", "model=three_body", "model.cutoff=0.2", "model.lam=1.0"],
                 id="three_body", marks=pytest.mark.slow)])   # ~40 s (tests/test_gauss_newton.py: the same paths on LJ)
def test_gauss_newton_step_of_the_network_is_the_minimum_norm_one(monkeypatch, model):
    """config=diamond's step (learn/gauss_newton.py): J of the 12 residuals (9 stress components,
    C11, C12, C44) directly through the loss (the per-snapshot Born terms have 44 entries; for
    DimeNet++ 12 reverse passes), and the m x m solve, Δθ = −Jᵀ(JJᵀ + λ)⁻¹ r, against J formed
    independently (jax.jacrev of the residuals)."""
    from jax.flatten_util import ravel_pytree

    from difftre_cli.learn import gauss_newton as gn
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        c = assemble.build(compose(config_name="train",
                                   overrides=[*model, "trainer.step_rule=fixed", "trainer.damping=1e-3"]))
    theta_ref = _noisy(c.potential.init(jax.random.PRNGKey(0)), 0.3)
    feats = _features(c, theta_ref, _snapshots(c, 3))
    params = _noisy(theta_ref, 0.02, seed=7)
    theta, unravel = ravel_pytree(params)
    monkeypatch.setattr(gn, "MAX_PRIMAL", min(gn.MAX_PRIMAL, theta.size - 1))   # the network's form
    residual = lambda th: gn.residuals(c.learner.targets, c.engine.predict(unravel(th), feats)[0], th.dtype)  # noqa: E731
    r = np.asarray(residual(theta), np.float64)
    jac = np.asarray(jax.jacrev(residual)(theta), np.float64)
    assert jac.shape == (12, theta.size)
    new_params, _, aux = c.learner.step(params, c.optimizer.init(params), feats)
    assert bool(aux.finite)
    delta = np.asarray(ravel_pytree(new_params)[0] - theta, np.float64)
    jjt = jac @ jac.T
    want = -jac.T @ np.linalg.solve(jjt + 1e-3 * np.trace(jjt) / 12 * np.eye(12), r)
    cos = delta @ want / (np.linalg.norm(delta) * np.linalg.norm(want))
    assert cos > 0.999 and np.linalg.norm(delta) == pytest.approx(np.linalg.norm(want), rel=2e-2)
