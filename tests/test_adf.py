"""Angular distribution function and tetrahedral order parameter against known answers:
the diamond lattice (q = 1, all angles 109.47°), the ideal gas (p(α) = sin α / 2, ⟨q⟩ = 0),
unit integral, finite position gradients that match finite differences, the smooth cutoff's
limit, the DiffTRe feature path, and angle target files in rad or deg."""
from __future__ import annotations

import math
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from difftre_cli import neighbors, observables, potentials, targets, units
from difftre_cli.errors import UserError
from difftre_cli.observables.engine import ObservableEngine
from difftre_cli.observables import Context
from difftre_cli.observables.adf import ADF, smooth_cutoff
from difftre_cli.observables.tetrahedral import TetrahedralQ
from difftre_cli.potentials import distances_on_list
from difftre_cli.sampler import Trajectory

TETRAHEDRAL = math.acos(-1.0 / 3.0)       # 109.47°


# every test here runs in float64 (conftest.double_precision restores the previous setting)
pytestmark = pytest.mark.usefixtures("double_precision")


@lru_cache(maxsize=None)
def _neighbor_fn(box, cutoff):
    return neighbors.make_neighbor_fn(box, cutoff, 0.0, 1.3)     # one compilation per (box, cutoff, shape)


def quantities(R, box, cutoff, extra=0):
    """The θ-independent inputs as learn/difftre.py builds them: a dense list at ``cutoff``."""
    R = jnp.asarray(R, jnp.float64)
    nb = _neighbor_fn(float(box), float(cutoff)).allocate(R, extra_capacity=extra)
    return {"r": distances_on_list(R, nb.idx, box), "R": R, "idx": nb.idx, "box": box}


def with_positions(q, R):
    """The same list, new positions (for derivatives)."""
    return dict(q, R=R, r=distances_on_list(R, q["idx"], q["box"]))


def one_width(qs):
    """The quantities of several configurations with one list width, the widest, the others'
    lists padded with empty slots (index N, as an allocated list's spare capacity): each
    observable then compiles once for all of them, not once per configuration's capacity."""
    width = max(q["idx"].shape[1] for q in qs)
    out = []
    for q in qs:
        n, m = q["idx"].shape
        idx = jnp.pad(q["idx"], ((0, 0), (0, width - m)), constant_values=n)
        out.append(dict(q, idx=idx, r=distances_on_list(q["R"], idx, q["box"])))
    return out


def diamond(cells: int, a: float = 1.0):
    base = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    basis = np.concatenate([base, base + 0.25])
    cell = np.stack(np.meshgrid(*[np.arange(cells)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    return ((cell + basis[None]).reshape(-1, 3) * a), cells * a


def ideal_gas(n, box, seed):
    return np.random.default_rng(seed).uniform(0.0, box, size=(n, 3))


CTX = Context(1, 1.0, 1.0)     # the ADF and q do not use the context


@partial(jax.jit, static_argnums=0)
def _snapshot_jit(obs, q):
    return obs.snapshot(CTX, q)


def snap(obs, q):
    """``obs.snapshot`` compiled (one compilation per observable settings and shapes)."""
    return _snapshot_jit(obs, q)


# ---------------------------------------------------------------------------------------
def test_diamond_lattice_has_q_one_and_all_angles_tetrahedral():
    R, box = diamond(3)                     # nearest neighbours at √3/4 = 0.433, next at 0.707
    adf = ADF("adf", r_cut=0.55, n_bins=180)
    tq = TetrahedralQ("q", reach=0.6)
    Rn = R + np.random.default_rng(0).normal(0.0, 0.03, R.shape)   # distorted, below
    q, qn = one_width([quantities(R, box, max(adf.reach, tq.reach)), quantities(Rn, box, 0.6)])
    assert float(snap(tq, q)) == pytest.approx(1.0, abs=1e-12)
    qi, ok = tq.per_particle(q)
    assert bool(jnp.all(ok)) and np.allclose(qi, 1.0)
    p = np.asarray(snap(adf, q))
    assert np.sum(p) * (np.pi / adf.n_bins) == pytest.approx(1.0, abs=1e-12)
    assert abs(adf.grid[np.argmax(p)] - TETRAHEDRAL) <= np.pi / adf.n_bins
    mean_angle = np.sum(adf.grid * p) * np.pi / adf.n_bins
    assert mean_angle == pytest.approx(TETRAHEDRAL, abs=2e-3)
    # a distorted lattice is less tetrahedral
    assert 0.5 < float(snap(tq, qn)) < 0.99


def test_ideal_gas_adf_is_half_sine_and_q_is_zero():
    n, box = 2000, 2000 ** (1 / 3)          # ρ = 1: 7.2 neighbours within r_cut = 1.2 on average
    adf = ADF("adf", r_cut=1.2, n_bins=30, max_neighbors=24)
    tq = TetrahedralQ("q", reach=1.8)       # P(fewer than 4 within 1.8) ~ 1e-7
    ps, qs = [], []
    for q in one_width([quantities(ideal_gas(n, box, seed), box, tq.reach) for seed in range(3)]):
        ps.append(np.asarray(snap(adf, q)))
        qs.append(float(snap(tq, q)))
        assert bool(jnp.all(tq.per_particle(q)[1]))
    p = np.mean(ps, 0)
    # the exact answer smoothed with the same Gaussian and renormalised on the grid
    a = np.linspace(0.0, np.pi, 4001)
    kern = np.exp(-0.5 * ((adf.grid[:, None] - a[None]) / adf.sigma) ** 2)
    expect = np.trapezoid(kern * 0.5 * np.sin(a)[None], a, axis=1)
    expect /= expect.sum() * np.pi / adf.n_bins
    np.testing.assert_allclose(p, expect, atol=0.02)        # peak 0.5; ~5000 triplets per bin
    assert np.abs(p - expect).mean() < 0.006
    assert np.mean(qs) == pytest.approx(0.0, abs=0.02)       # q_i has sd ≈ 0.3; 6000 particles


def test_adf_has_unit_integral_and_is_zero_without_triplets():
    box = 4.0
    adf = ADF("adf", r_cut=0.9, n_bins=50, sigma=0.2)        # wide smoothing: tails beyond 0 and π
    for q in one_width([quantities(ideal_gas(100, box, seed), box, adf.reach) for seed in range(3)]):
        p = np.asarray(snap(adf, q))
        assert np.sum(p) * np.pi / adf.n_bins == pytest.approx(1.0, rel=1e-10)
    # two isolated particles: no triplet, p = 0 (not NaN)
    R = np.array([[0.5, 0.5, 0.5], [2.5, 2.5, 2.5]])
    p = np.asarray(snap(adf, quantities(R, box, adf.reach)))
    assert np.all(p == 0.0)


def test_truncated_neighbour_selection_is_nan_not_silent():
    box = 6.0
    q = quantities(ideal_gas(300, box, 1), box, 1.1)   # ~7 neighbours within r_cut = 1
    assert np.all(np.isfinite(np.asarray(snap(ADF("adf", r_cut=1.0, n_bins=20), q))))
    assert np.all(np.isnan(np.asarray(snap(ADF("adf", r_cut=1.0, n_bins=20, max_neighbors=3), q))))


def test_q_with_too_few_neighbours_is_left_out_without_nan():
    box = 5.0
    R = ideal_gas(100, box, 3)                         # ρ = 0.8: many particles lack 4 within 0.7
    tq = TetrahedralQ("q", reach=0.7)
    q = quantities(R, box, 0.7)
    qi, ok = tq.per_particle(q)
    assert 0 < int(ok.sum()) < 100
    value = float(snap(tq, q))
    assert value == pytest.approx(float(jnp.sum(jnp.where(ok, qi, 0.0)) / ok.sum()))
    g = jax.grad(lambda R_: snap(tq, with_positions(q, R_)))(jnp.asarray(R))
    assert np.all(np.isfinite(np.asarray(g)))
    # nobody has 4 neighbours: 0, finite gradient
    lonely = TetrahedralQ("q", reach=0.05)
    q0 = quantities(R, box, 0.7)
    assert float(snap(lonely, q0)) == 0.0
    g0 = jax.grad(lambda R_: snap(lonely, with_positions(q0, R_)))(jnp.asarray(R))
    assert np.all(np.isfinite(np.asarray(g0)))


def _jittered_lattice(seed):
    """64 particles, a distorted simple cubic lattice (spacing 0.5): well-defined triplets."""
    g = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3) * 0.5 + 0.25
    return g + np.random.default_rng(seed).normal(0.0, 0.06, g.shape), 2.0


def test_position_gradients_are_finite_and_match_finite_differences():
    R, box = _jittered_lattice(4)
    R[7] = R[3] + np.array([0.0, 0.0, 1e-9])        # a (nearly) zero vector: no NaN either
    adf = ADF("adf", r_cut=0.6, n_bins=40, sigma=0.1, cdf_width=0.02)
    tq = TetrahedralQ("q", reach=0.8)
    q = quantities(R, box, 0.95, extra=10)           # wider list than needed: padding slots
    assert bool(jnp.any(q["idx"] == len(R)))
    proj = jnp.asarray(np.random.default_rng(5).normal(size=adf.n_bins))

    def f_adf(R_):
        return jnp.dot(proj, snap(adf, with_positions(q, R_)))

    def f_q(R_):
        return snap(tq, with_positions(q, R_))

    R = jnp.asarray(R)
    for f in (f_adf, f_q):
        g = np.asarray(jax.grad(f)(R))
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
    # finite differences on a clean configuration (no coincident pair)
    R2 = jnp.asarray(_jittered_lattice(6)[0])
    h = 1e-6
    for f in (f_adf, f_q):
        g = np.asarray(jax.grad(f)(R2))
        for i, a in [(0, 0), (5, 1), (21, 2), (42, 0), (63, 1)]:
            e = jnp.zeros_like(R2).at[i, a].set(h)
            fd = (float(f(R2 + e)) - float(f(R2 - e))) / (2 * h)
            assert g[i, a] == pytest.approx(fd, rel=1e-4, abs=1e-7)


def _hard_adf(R, box, r_cut, grid, sigma):
    """Reference: every triplet with both neighbours strictly inside r_cut, direct Gaussian
    sum on the grid, normalised on the grid (numpy, no neighbour list)."""
    d = R[None, :, :] - R[:, None, :]
    d -= box * np.round(d / box)
    r = np.sqrt((d * d).sum(-1))
    np.fill_diagonal(r, np.inf)
    angles = []
    for i in range(len(R)):
        nb = np.flatnonzero(r[i] < r_cut)
        u = d[i, nb] / r[i, nb, None]
        c = np.clip(u @ u.T, -1, 1)
        angles.append(np.arccos(c[np.triu_indices(len(nb), 1)]))
    a = np.concatenate(angles)
    h = np.exp(-0.5 * ((grid[:, None] - a[None]) / sigma) ** 2).sum(1)
    return h / (h.sum() * (grid[1] - grid[0])), len(a)


def test_smooth_cutoff_converges_to_the_hard_count():
    box = 5.0
    R = ideal_gas(500, box, 7)
    r_cut = 0.9
    q = quantities(R, box, 1.2)
    r = np.asarray(q["r"])
    hard = np.sum(r < r_cut)
    errs = []
    for w in (0.05, 0.01, 0.002, 1e-5):
        soft = float(jnp.sum(smooth_cutoff(q["r"], r_cut, w)))
        errs.append(abs(soft - hard) / hard)
    assert errs[0] < 0.05 and errs[1] < 0.005 and errs[3] < 1e-4
    # the whole ADF: soft → hard triplet weights and histogram
    adf = ADF("adf", r_cut=r_cut, n_bins=60, cdf_width=1e-6)
    ref, n_triplets = _hard_adf(R, box, r_cut, adf.grid, adf.sigma)
    alpha, weight, _ = adf.triplets(q)
    assert float(jnp.sum(weight)) == pytest.approx(n_triplets, rel=1e-6)
    p = np.asarray(snap(adf, q))
    np.testing.assert_allclose(p, ref, atol=2e-3 * ref.max())     # linear deposit + kernel vs direct sum
    default = ADF("adf", r_cut=r_cut, n_bins=60)                  # w = r_cut/64: close to the hard ADF
    assert np.abs(np.asarray(snap(default, q)) - ref).max() < 0.05 * ref.max()


# ---------------------------------------------------------------------------------------
def test_config_builds_both_and_reach_covers_the_smooth_cutoff():
    obs = observables.build(OmegaConf.create({"adf": {"kind": "adf", "r_cut": 0.318},
                                              "q": {"kind": "tetrahedral_q"}}))
    adf, tq = obs["adf"], obs["q"]
    assert adf.n_bins == 150 and adf.unit_kind == "angle" and not adf.depends_on_params
    assert adf.sigma == pytest.approx(np.pi / 150) and adf.cdf_width == pytest.approx(0.318 / 64)
    assert adf.reach == pytest.approx(0.318 + 5 * 0.318 / 64)
    assert float(smooth_cutoff(jnp.asarray(adf.reach), adf.r_cut, adf.cdf_width)) < 1e-6
    assert tq.reach == 0.45 and tq.grid is None and not tq.depends_on_params
    with pytest.raises(UserError, match="observables.adf.r_cut is missing"):
        observables.build(OmegaConf.create({"adf": {"kind": "adf"}}))
    with pytest.raises(UserError, match="observables.q.reach"):
        observables.build(OmegaConf.create({"q": {"kind": "tetrahedral_q", "reach": -1}}))


def test_difftre_features_carry_positions_and_list_to_the_observables():
    n, box, s = 300, 4.0, 3
    pos = np.stack([ideal_gas(n, box, 10 + i) for i in range(s)])
    potential = potentials.build(OmegaConf.create({"kind": "none"}), OmegaConf.create({"kind": "none"}), 1.0)
    obs = observables.build(OmegaConf.create({"adf": {"kind": "adf", "r_cut": 0.9, "n_bins": 30},
                                              "q": {"kind": "tetrahedral_q", "reach": 1.2},
                                              "rdf": {"kind": "rdf", "r_max": 1.5, "n_bins": 30}}))
    ctx = Context(n, box ** 3, 1.0)
    engine = ObservableEngine(potential, obs, ctx, box, 1.0)
    feats = engine.featurize(Trajectory(pos, np.zeros(s), np.ones(s), np.arange(s)))
    assert feats.static["adf"].shape == (s, 30) and feats.static["q"].shape == (s,)
    for i, q in enumerate(one_width([quantities(pos[i], box, 1.2) for i in range(s)])):
        np.testing.assert_allclose(np.asarray(feats.static["adf"][i]), np.asarray(snap(obs["adf"], q)),
                                   rtol=1e-4, atol=1e-5)
        assert float(feats.static["q"][i]) == pytest.approx(float(snap(obs["q"], q)), abs=1e-5)


# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("x_unit,scale,sep", [("rad", 1.0, " "), ("deg", 180.0 / np.pi, ","), ("deg", 180.0 / np.pi, "\t")])
def test_angle_target_files_in_rad_or_deg(tmp_path, x_unit, scale, sep):
    obs = observables.build(OmegaConf.create({"adf": {"kind": "adf", "r_cut": 0.318, "n_bins": 150}}))
    x = np.linspace(0.0, np.pi, 301)
    y = np.sin(x) / 2
    path = tmp_path / f"adf_{x_unit}.txt"
    path.write_text("# experimental ADF\n" + "\n".join(f"{a * scale}{sep}{b}" for a, b in zip(x, y)))
    t = targets.build(OmegaConf.create({"adf": {"file": str(path), "x_unit": x_unit}}), obs, units.REAL)
    np.testing.assert_allclose(t["adf"].value, np.sin(obs["adf"].grid) / 2, atol=1e-4)
    with pytest.raises(UserError, match=r"targets.adf.x_unit='nm'"):
        targets.build(OmegaConf.create({"adf": {"file": str(path), "x_unit": "nm"}}), obs, units.REAL)


def test_validation_names_an_adf_reaching_beyond_half_the_box():
    from difftre_cli import commands
    from difftre_cli.config import validate

    cfg = commands._precompose(["config=tiny", "+observables.adf={kind: adf, r_cut: 1.2}",
                                "+observables.q={kind: tetrahedral_q, reach: 1.5}"])
    validate(cfg)                                        # 108 LJ particles: half the box is ~2.7 σ
    cfg = commands._precompose(["config=tiny", "+observables.adf={kind: adf, r_cut: 3.0}"])
    with pytest.raises(UserError, match=r"observables.adf needs neighbours up to 3.23.*half the box") as exc:
        validate(cfg)
    assert "observables.adf.r_cut" in exc.value.fix


def test_evaluation_plots_label_angle_grids_in_rad(tmp_path, monkeypatch):
    import matplotlib.axes

    from difftre_cli import plots

    labels = []
    real = matplotlib.axes.Axes.set_xlabel
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel", lambda ax, s, *a, **k: labels.append(s) or real(ax, s, *a, **k))
    grid = [0.5, 1.5, 2.5]
    pot = {"r": [0.3, 0.5, 0.9], "prior": [1.0, 0.0, 0.0], "total": [1.0, -0.5, 0.0]}
    ev = {"units": {"length": "nm", "energy": "kJ/mol"}, "potential": pot, "targets": {
        "adf": {"grid": grid, "grid_unit": "rad", "target": [0.1, 0.5, 0.2], "observable": [0.2, 0.4, 0.2], "rmse": 0.1},
        "rdf": {"grid": grid, "grid_unit": "nm", "target": [0, 1, 1], "observable": [0, 1, 1], "rmse": 0.0}}}
    paths = plots.plot_all(tmp_path, ev, [])
    assert [p.name for p in paths][:2] == ["adf.png", "rdf.png"] and labels[:2] == ["x [rad]", "x [nm]"]
