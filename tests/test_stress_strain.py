"""Crystals at a finite strain (potentials/manybody.py ``strained``) and the stress–strain
evaluation (stress_strain.py).

* a strained many-body potential (DimeNet++ on a pair prior) evaluated in the cubic reference box
  equals the unstrained one on the really stretched orthorhombic box (float64);
* its lists reach every pair that the strain brings inside the cutoff (a negative control without
  the reach misses them);
* ∂U/∂δ of the strained crystal is the derivative of the stretched box's energy (composition
  (I + δ)(I + ε));
* a sheared SW prior equals JAX MD's ``stillinger_weber`` on the sheared ``periodic_general`` box;
* the weighted slope fit recovers a known polynomial's slope; settings are checked;
* (slow) the CLI's stress–strain curve of a 64-atom diamond agrees with its stress-fluctuation C.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from difftre_cli import assemble, neighbors, stress_strain
from difftre_cli.errors import UserError
from difftre_cli.potentials import manybody

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SMALL_NET = {"kind": "dimenet", "embed_size": 8, "out_embed_size": 8, "int_emb_size": 4, "num_blocks": 1,
             "num_spherical": 3, "num_radial": 3, "num_dense_out": 1, "basis_emb_size": 2}
L = (64 / 176.0866) ** (1 / 3)   # 2 × 2 × 2 diamond cells at 3512 kg/m³ (nm), as config=diamond


def _lattice(jitter=0.004, seed=0):
    from difftre_cli.crystal import DIAMOND_BASIS
    a = L / 2
    cells = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)], float)
    R = ((cells[:, None, :] + np.asarray(DIAMOND_BASIS)[None]) * a).reshape(-1, 3)
    R = R + jitter * np.random.default_rng(seed).normal(size=R.shape)
    return jnp.asarray(R % L)


def _all_pairs(R, r_max=0.3):
    """A dense list (N, K) of every atom's neighbours closer than ``r_max`` (minimum image),
    padded with N: every pair any cutoff here (≤ 0.252 nm, strained by ≤ 2 %) can reach."""
    R = np.asarray(R)
    d = R[None] - R[:, None]
    d -= L * np.round(d / L)
    near = (np.sum(d * d, -1) < r_max ** 2) & ~np.eye(len(R), dtype=bool)
    k = near.sum(1).max()
    idx = np.full((len(R), k), len(R), np.int32)
    for i, row in enumerate(near):
        js = np.flatnonzero(row)
        idx[i, :len(js)] = js
    return jnp.asarray(idx)


def _energy(pot, params, R, idx, **kw):
    """U of ``pot`` on the dense list ``idx``, jit-compiled (the network is slow op by op)."""
    return jax.jit(lambda prm, x: pot.energy_from_features(prm, (x, idx), **kw))(params, R)


def _potential(cutoff, prior=lambda r: 1.0 / r):
    pot = manybody.build(prior, {**SMALL_NET, "cutoff": cutoff, "graph_format": "sparse"}, cutoff)
    return dataclasses.replace(pot, box_size=L)


def _params(pot, scale=0.3):
    params = pot.init(jax.random.PRNGKey(0))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [p + scale * jax.random.normal(k, p.shape, p.dtype)
                                               for p, k in zip(leaves, keys)])


@pytest.mark.parametrize("e", [0.02, -0.02])
def test_strained_potential_equals_stretched_box(double_precision, e):
    """U_ε(R) in the cubic box = U((1 + e) x, y, z) in the box (L(1 + e), L, L)."""
    pot = _potential(0.2)
    params = _params(pot)
    R = _lattice()
    idx = _all_pairs(R)
    eps = np.diag([e, 0.0, 0.0])
    u_strained = _energy(pot.strained(eps), params, R, idx)
    stretched = dataclasses.replace(pot, box_size=jnp.asarray([L * (1 + e), L, L]))
    u_real = _energy(stretched, params, R * jnp.asarray([1 + e, 1.0, 1.0]), idx)
    u_plain = _energy(pot, params, R, idx)
    assert float(u_strained) == pytest.approx(float(u_real), rel=1e-11, abs=1e-11)
    # the strain matters: it moves U by ~1e-3 relative, eight orders above the identity's tolerance
    assert abs(float(u_strained) - float(u_plain)) > 1e-4 * abs(float(u_plain))


def test_strained_lists_reach_pairs_moved_inside(double_precision):
    """Cutoff 0.251 nm, just inside the second shell (0.2523 nm): a 2 % compression along x brings
    second neighbours inside. The strained potential's own neighbour list and sparse graph (built
    at cutoff × reach) give the all-pairs energy; without the reach they miss those pairs."""
    pot = _potential(0.251)
    params = _params(pot)
    R = _lattice(jitter=0.0)
    eps = np.diag([-0.02, 0.0, 0.0])
    ps = pot.strained(eps)
    assert ps.strain_reach == pytest.approx(1 / 0.98)
    u_all = _energy(ps, params, R, _all_pairs(R))

    def on_own_lists(p):
        nbr = neighbors.make_neighbor_fn(L, p.list_cutoff, 0.0, 1.25).allocate(R)
        p = p.fit_capacity(R, nbr.idx)
        return jax.jit(lambda prm, x: p.energy_from_features(prm, p.features_on_list(x, nbr.idx, L)))(params, R)

    assert float(on_own_lists(ps)) == pytest.approx(float(u_all), rel=1e-11)
    missed = on_own_lists(dataclasses.replace(ps, strain_reach=1.0))
    assert abs(float(missed) - float(u_all)) > 1e-2 * abs(float(u_all))


def test_strain_on_top_of_a_strained_crystal(double_precision):
    """∂U/∂δ_xx of the strained crystal = d/dt U(box L(1 + e)(1 + t)) at t = 0 (central
    difference): the further strain acts on the strained crystal, (I + δ)(I + ε)."""
    pot = _potential(0.2)
    params = _params(pot)
    R = _lattice()
    idx = _all_pairs(R)
    e = 0.015
    ps = pot.strained(np.diag([e, 0.0, 0.0]))
    g = jax.jit(jax.grad(lambda d: ps.energy_from_features(params, (R, idx), strain=d)))(jnp.zeros((3, 3)))

    @jax.jit
    def u_box(t):
        s = (1 + e) * (1 + t)
        p = dataclasses.replace(pot, box_size=jnp.stack([L * s, L, L]))
        return p.energy_from_features(params, (R * jnp.stack([s, 1.0, 1.0]), idx))
    h = 1e-5
    fd = (float(u_box(h)) - float(u_box(-h))) / (2 * h)
    assert float(g[0, 0]) == pytest.approx(fd, rel=1e-6)


def test_sheared_sw_prior_equals_jax_md(double_precision):
    """The SW prior of config=diamond (network output zeroed) under a shear e4 = 0.02 equals JAX
    MD's stillinger_weber on the sheared periodic_general box (fractional coordinates)."""
    from jax_md import energy, space
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="train", overrides=["config=diamond", "system.n_particles=64",
                                                       "model.graph_format=dense", "model.num_blocks=1"])
    c = assemble.build(cfg)
    params = jax.tree_util.tree_map(jnp.zeros_like, c.potential.init(jax.random.PRNGKey(0)))
    R = _lattice()
    eps = stress_strain.strain_matrix([0, 0, 0, 0.02, 0, 0])
    u = _energy(c.potential.strained(eps), params, R, _all_pairs(R))
    h = jnp.asarray((np.eye(3) + eps) * L)
    disp, _ = space.periodic_general(h, fractional_coordinates=True)
    sw = c.potential.sw
    u_ref = energy.stillinger_weber(disp, sigma=sw.sigma, epsilon=sw.epsilon, A=sw.A, B=sw.B, lam=sw.lam,
                                    gamma=sw.gamma, cutoff=sw.cutoff)(R / L)
    assert float(u) == pytest.approx(float(u_ref), rel=1e-10)


def test_fit_slope_recovers_known_slope():
    e = np.array([-0.02, -0.01, 0.0, 0.01, 0.02])
    y = 3.0 + 100.0 * e - 400.0 * e ** 2 + 2000.0 * e ** 3
    slope, err = stress_strain.fit_slope(e, y, np.full(5, 0.1), 3)
    assert slope == pytest.approx(100.0, rel=1e-9)
    assert 0 < err < 10
    with pytest.raises(ValueError):
        stress_strain.fit_slope(e[:3], y[:3], np.ones(3), 3)


@pytest.mark.parametrize("raw, ok", [
    (None, False), (True, True), ({"strains": [0.01, 0.02]}, True), ({"strains": [0.5]}, False),
    ({"strains": [0.01], "fit_degree": 3}, False), ({"stains": [0.01]}, False), ({"strains": "x"}, False),
    ({"production_steps": 100, "every": 50}, False)])
def test_settings_checked(raw, ok):
    ev = {"stress_strain": raw}
    if raw is None:
        assert stress_strain.settings(ev) is None
    elif ok:
        assert isinstance(stress_strain.settings(ev), stress_strain.Settings)
    else:
        with pytest.raises(UserError):
            stress_strain.settings(ev)


@pytest.mark.slow
def test_cli_stress_strain_agrees_with_fluctuation(tmp_path):
    """64-atom diamond at 298 K, the prior alone (one update): the stress–strain slopes B11, B12, B44
    agree with the stress-fluctuation C of the same evaluation within 3 combined standard errors."""
    run = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    base = [sys.executable, "-m", "difftre_cli.cli"]
    small = ["config=diamond", "system.n_particles=64", "model.num_blocks=1", "model.embed_size=8",
             "model.out_embed_size=8", "model.int_emb_size=4"]
    subprocess.run(base + ["train", *small, "trainer.updates=1", "simulator.first_equilibration_steps=100",
                           "simulator.production_steps=100", f"hydra.run.dir={run}"], check=True, env=env)
    subprocess.run(base + ["evaluate", f"run={run}", "evaluate.equilibration_steps=2000",
                           "evaluate.production_steps=40000", "evaluate.every=20",
                           "evaluate.stress_strain={strains: [0.01, 0.02], production_steps: 20000, every: 20}"],
                   check=True, env=env)
    out = json.loads((run / "evaluation.json").read_text())
    for k, v in out["stress_strain"]["comparison"].items():
        assert abs(v["difference"]) < 3 * v["combined_error"], (k, v)
