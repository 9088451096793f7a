"""Pair potentials: spline and MLP models, priors, forces = −∇U, finite parameter gradients."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from difftre_cli import neighbors, potentials
from difftre_cli.errors import UserError
from difftre_cli.potentials import distances_on_list, pair, priors
from difftre_cli.system import lattice_positions

CUTOFF = 2.5


def _spline(n_knots=12, r_min=0.8):
    return pair.SplinePair(r_min=r_min, cutoff=CUTOFF, n_knots=n_knots)


def _random_knots(model, seed=0):
    return {"knot_values": jnp.asarray(np.random.default_rng(seed).normal(size=model.n_knots - 1), jnp.float32)}


# ---------------------------------------------------------------------------------------
# spline
# ---------------------------------------------------------------------------------------
def test_spline_interpolates_its_knot_values():
    model = _spline()
    params = _random_knots(model)
    u = model(params, jnp.asarray(model.knots, jnp.float32))
    expect = np.append(np.asarray(params["knot_values"]), 0.0)
    np.testing.assert_allclose(np.asarray(u), expect, atol=2e-6)
    # and it is not just piecewise linear in between: midpoints differ from the chords
    mid = 0.5 * (model.knots[1:] + model.knots[:-1])
    u_mid = np.asarray(model(params, jnp.asarray(mid, jnp.float32)))
    assert np.abs(u_mid - 0.5 * (expect[1:] + expect[:-1])).max() > 1e-2


def test_spline_is_smooth_between_segments():
    """Value, slope and curvature are continuous across interior knots (a cubic spline)."""
    model = _spline()
    params = _random_knots(model, 1)
    with jax.enable_x64(True):
        p64 = {"knot_values": jnp.asarray(params["knot_values"], jnp.float64)}
        f = lambda r: model(p64, r)  # noqa: E731
        d1 = jax.grad(f)
        d2 = jax.grad(d1)
        d3 = jax.grad(d2)
        derivs = jax.jit(jax.vmap(lambda r: jnp.stack([f(r), d1(r), d2(r), d3(r)])))
        knots = jnp.asarray(model.knots[1:-1], jnp.float64)
        lo, hi = np.asarray(derivs(knots - 1e-9)), np.asarray(derivs(knots + 1e-9))
    # value, slope and curvature continuous ...
    jumps = np.abs(hi[:, :3] - lo[:, :3]) / np.maximum(1.0, np.abs(lo[:, :3]))
    assert jumps.max() < 1e-6
    # ... the third derivative jumps (piecewise cubic, not one polynomial)
    assert np.abs(hi[:, 3] - lo[:, 3]).max() > 1e-3


def test_spline_vanishes_with_zero_slope_at_cutoff():
    model = _spline()
    params = _random_knots(model, 2)
    assert float(model(params, jnp.float32(CUTOFF))) == 0.0
    with jax.enable_x64(True):
        p64 = {"knot_values": jnp.asarray(params["knot_values"], jnp.float64)}
        slope = jax.grad(lambda r: model(p64, r))
        assert abs(float(slope(jnp.float64(CUTOFF - 1e-9)))) < 1e-6
        # u(r_c − δ) ∝ δ²: value and slope both vanish (a non-zero slope would give ∝ δ)
        v1, v2 = (float(model(p64, jnp.float64(CUTOFF - d))) for d in (1e-4, 2e-4))
        assert v1 != 0.0 and v2 / v1 == pytest.approx(4.0, rel=1e-2)
        # … while one knot-spacing inside the slope is generically non-zero
        assert abs(float(slope(jnp.float64(CUTOFF - 0.1)))) > 1e-3
    r = jnp.asarray([CUTOFF, CUTOFF + 0.01, 3.0, 10.0, jnp.inf], jnp.float32)
    np.testing.assert_array_equal(np.asarray(model(params, r)), 0.0)


def test_spline_is_linear_in_knot_values():
    model = _spline()
    p1, p2 = _random_knots(model, 3), _random_knots(model, 4)
    a, b = 0.7, -1.9
    r = jnp.linspace(0.5, 3.0, 301)
    combo = {"knot_values": a * p1["knot_values"] + b * p2["knot_values"]}
    np.testing.assert_allclose(np.asarray(model(combo, r)),
                               a * np.asarray(model(p1, r)) + b * np.asarray(model(p2, r)), atol=1e-5)
    zero = model.init(jax.random.PRNGKey(0))
    assert zero["knot_values"].shape == (model.n_knots - 1,)
    np.testing.assert_array_equal(np.asarray(model(zero, r)), 0.0)


def test_spline_bad_settings_raise_user_error():
    with pytest.raises(UserError):
        pair.SplinePair(r_min=3.0, cutoff=CUTOFF)
    with pytest.raises(UserError):
        pair.SplinePair(r_min=0.8, cutoff=CUTOFF, n_knots=3)
    with pytest.raises(UserError):
        pair.build({"kind": "gaussian_process"}, CUTOFF)


@pytest.mark.parametrize("cfg, message", [
    ({"kind": "spline", "r_min": 2.6}, r"model.r_min must be a number in \(0, 2.5\), got 2.6"),
    ({"kind": "spline", "n_knots": 3}, "model.n_knots must be an integer >= 4, got 3"),
    ({"kind": "table", "n_points": 4.5}, "model.n_points must be an integer >= 4, got 4.5"),
    ({"kind": "table", "interpolation": "quadratic"}, "model.interpolation: unknown interpolation 'quadratic'"),
    ({"kind": "mlp", "hidden": [32, 0]}, r"model.hidden must be a list of integers >= 1, got \[32, 0\]"),
    ({"kind": "mlp", "n_basis": 0}, "model.n_basis must be an integer >= 1, got 0"),
    ({"kind": "thermal", "u1": 3}, "model.u1 must be a group of keys, got 3"),
    ({"kind": "thermal", "u1": {"kind": "spline"}, "u2": {"kind": "none"}},
     "model.u2.kind must be spline, table or mlp, got 'none'"),
    ({"kind": "thermal", "u1": {"kind": "spline"}, "u2": {"kind": "table", "n_points": 2}},
     "model.u2.n_points must be an integer >= 4, got 2"),
], ids=lambda v: v["kind"] if isinstance(v, dict) else None)
def test_each_pair_model_checks_its_own_keys(cfg, message):
    with pytest.raises(UserError, match=message) as err:
        pair.build(OmegaConf.create(cfg), CUTOFF)
    assert err.value.fix


def test_thermal_combines_any_two_registered_models():
    model = pair.build(OmegaConf.create({"kind": "thermal", "u1": {"kind": "mlp", "hidden": [4], "n_basis": 6},
                                         "u2": {"kind": "table", "r_min": 0.9, "n_points": 8}}), CUTOFF)
    assert isinstance(model, pair.ThermalPair) and model.temperature_dependent
    assert model.u1 == pair.MODELS["mlp"](cutoff=CUTOFF, hidden=(4,), n_basis=6)
    assert model.u2 == pair.TablePair(r_min=0.9, cutoff=CUTOFF, n_points=8)
    params = model.init(jax.random.PRNGKey(0))
    r = jnp.linspace(0.5, 3.0, 11)
    assert model.at_kT(1.3)(params, r).shape == r.shape


# ---------------------------------------------------------------------------------------
# MLP
# ---------------------------------------------------------------------------------------
def test_mlp_is_zero_at_init_and_finite():
    model = pair.build(OmegaConf.create({"kind": "mlp", "hidden": [16, 16], "n_basis": 12}), CUTOFF)
    params = model.init(jax.random.PRNGKey(0))
    apply = jax.jit(model.__call__)
    r = jnp.linspace(0.01, 3.0, 200).reshape(20, 10)
    u = apply(params, r)
    assert u.shape == r.shape
    np.testing.assert_array_equal(np.asarray(u), 0.0)
    # gradients w.r.t. the parameters are finite and not all zero (the model can learn)
    g = jax.jit(jax.grad(lambda p: jnp.sum(model(p, r) * r)))(params)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    assert sum(float(jnp.abs(x).sum()) for x in leaves) > 0
    # after perturbing all weights the model is non-zero, finite, and vanishes at the cutoff
    leaves = jax.tree_util.tree_leaves(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    perturbed = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params),
                                             [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    u = apply(perturbed, r)
    assert bool(jnp.all(jnp.isfinite(u))) and float(jnp.abs(u).max()) > 1e-3
    np.testing.assert_array_equal(np.asarray(apply(perturbed, jnp.asarray([CUTOFF, CUTOFF + 0.1, 4.0]))), 0.0)
    # the cosine envelope: u(r_c − δ) ∝ δ², so the slope vanishes at the cutoff
    with jax.enable_x64(True):
        edge = np.asarray(model(perturbed, jnp.asarray([CUTOFF - 1e-4, CUTOFF - 2e-4], jnp.float64)))
    assert edge[0] != 0.0 and edge[1] / edge[0] == pytest.approx(4.0, rel=1e-2)


# ---------------------------------------------------------------------------------------
# priors
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    {"kind": "lj", "epsilon": 1.3, "sigma": 0.9},
    {"kind": "repulsive", "epsilon": 1.0, "sigma": 1.0, "exponent": 12},
    {"kind": "harmonic", "k": 5.0, "r0": 1.1},
    {"kind": "morse", "epsilon": 1.2, "sigma": 1.15, "alpha": 4.0},
    {"kind": "none"},
], ids=lambda c: c["kind"])
def test_priors_vanish_at_cutoff(cfg):
    u = priors.build(cfg, CUTOFF)
    assert float(u(jnp.float32(CUTOFF))) == pytest.approx(0.0, abs=1e-6)
    if cfg["kind"] == "lj":
        # shifted LJ: u(r) = 4ε[(σ/r)^12 − (σ/r)^6] − u_LJ(r_c)
        e, s = cfg["epsilon"], cfg["sigma"]
        lj = lambda r: 4 * e * ((s / r) ** 12 - (s / r) ** 6)  # noqa: E731
        for r in (0.95, 1.1, 1.5, 2.0):
            assert float(u(jnp.float32(r))) == pytest.approx(lj(r) - lj(CUTOFF), rel=1e-5, abs=1e-6)
        r_min = 2 ** (1 / 6) * s
        assert float(jax.grad(u)(jnp.float32(r_min))) == pytest.approx(0.0, abs=1e-4)
    if cfg["kind"] == "morse":
        # ε[(1 − e^{−α(r − σ)})² − 1] − u(r_c): minimum −ε (before the shift) at r = σ
        e, s, a = cfg["epsilon"], cfg["sigma"], cfg["alpha"]
        morse = lambda r: e * ((1 - np.exp(-a * (r - s))) ** 2 - 1)  # noqa: E731
        for r in (0.8, 1.0, 1.15, 1.6, 2.2):
            assert float(u(jnp.float32(r))) == pytest.approx(morse(r) - morse(CUTOFF), rel=1e-5, abs=1e-6)
        assert float(jax.grad(u)(jnp.float32(s))) == pytest.approx(0.0, abs=1e-5)


def test_unknown_prior_raises_user_error():
    with pytest.raises(UserError):
        priors.build({"kind": "buckingham"}, CUTOFF)
    with pytest.raises(UserError):
        priors.build({"kind": "lj", "epsilonn": 1.0}, CUTOFF)


# ---------------------------------------------------------------------------------------
# PairPotential on a neighbour list
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def configuration():
    n, density = 108, 0.8
    box = (n / density) ** (1 / 3)
    rng = np.random.default_rng(5)
    R = np.mod(lattice_positions(n, box, "fcc") + rng.normal(0.0, 0.08, (n, 3)), box).astype(np.float32)
    potential = potentials.build(OmegaConf.create({"kind": "lj"}),
                                 OmegaConf.create({"kind": "spline", "r_min": 0.8, "n_knots": 12}), CUTOFF)
    params = {"model": _random_knots(potential.model, 6)}
    params["model"]["knot_values"] = 0.3 * params["model"]["knot_values"]
    nbr_fn = neighbors.make_neighbor_fn(box, CUTOFF, 0.3, 1.5)
    nbrs = nbr_fn.allocate(jnp.asarray(R))
    return potential, params, jnp.asarray(R), box, nbrs


def test_forces_are_minus_gradient_of_energy(configuration):
    potential, params, R, box, nbrs = configuration
    force = jax.jit(potential.force_fn(box))(R, nbrs, params)
    energy_fn = potential.energy_fn(box)
    minus_grad = -jax.jit(jax.grad(energy_fn))(R, nbrs, params)
    scale = float(jnp.abs(minus_grad).max())
    assert scale > 1.0
    np.testing.assert_allclose(np.asarray(force), np.asarray(minus_grad), atol=1e-4 * scale, rtol=1e-4)
    # Newton's third law: the total force vanishes
    np.testing.assert_allclose(np.asarray(force.sum(0)), 0.0, atol=1e-4 * scale)
    # the energy on the list equals the energy from stored distances
    r = distances_on_list(R, nbrs.idx, box)
    e_list = float(energy_fn(R, nbrs, params))
    assert float(potential.energy_from_distances(params, r)) == pytest.approx(e_list, rel=1e-5)


def test_parameter_gradients_finite_with_padded_slots(configuration):
    potential, params, R, box, nbrs = configuration
    n = R.shape[0]
    assert bool(jnp.any(nbrs.idx == n))          # the list does have padded slots
    energy_fn = potential.energy_fn(box)
    force_fn = potential.force_fn(box)
    r = distances_on_list(R, nbrs.idx, box)
    assert bool(jnp.any(jnp.isinf(r)))           # padded slots have distance +inf

    @jax.jit
    def grads(params):
        g_list = jax.grad(energy_fn, argnums=2)(R, nbrs, params)
        g_force = jax.grad(lambda p: jnp.sum(force_fn(R, nbrs, p) ** 2))(params)
        e, (g_dist, g_s) = jax.value_and_grad(potential.energy_from_distances, argnums=(0, 2))(params, r, 1.0)
        return g_list, g_force, e, g_dist, g_s

    g_list, g_force, e, g_dist, g_s = grads(params)
    g = g_list["model"]["knot_values"]
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0
    assert bool(jnp.all(jnp.isfinite(g_force["model"]["knot_values"])))
    assert np.isfinite(float(e)) and np.isfinite(float(g_s))
    # the energy from stored distances has the same parameter gradient as the one on the list
    np.testing.assert_allclose(np.asarray(g_dist["model"]["knot_values"]), np.asarray(g), rtol=1e-4,
                               atol=1e-4 * float(jnp.abs(g).max()))
    # an MLP model too
    mlp = potentials.build(OmegaConf.create({"kind": "lj"}), OmegaConf.create({"kind": "mlp", "hidden": [8]}),
                           CUTOFF)
    p_mlp = mlp.init(jax.random.PRNGKey(0))
    g_mlp = jax.jit(lambda p: (jax.grad(mlp.energy_from_distances)(p, r),
                               jax.grad(mlp.energy_fn(box), argnums=2)(R, nbrs, p)))(p_mlp)
    leaves = jax.tree_util.tree_leaves(g_mlp)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    assert sum(float(jnp.abs(leaf).sum()) for leaf in leaves) > 0
