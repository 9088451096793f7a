"""The Stillinger–Weber-form three-body model (potentials/three_body.py): with SW's form and
parameters it is JAX MD's ``stillinger_weber``; its tensor identity equals the explicit sum over
triplets; invariances; forces and the virial are the finite differences of the energy;
continuous at its cutoffs; bad config values are UserErrors."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import _x64

from difftre_cli.errors import UserError
from difftre_cli.potentials import three_body
from difftre_cli.potentials.classical import SW_PARAMS, StillingerWeber

CUTOFF = 0.5
N, M = 40, 36
SPECIES = jnp.asarray(np.arange(N) % 2)
# a flexible two-species model: spline pair, degree-4 angular series, SW pair term switched on
FLEX = {"kind": "three_body", "cutoff": CUTOFF, "n_species": 2, "sigma": 0.25, "a": 1.9, "A": 2.0,
        "lam": 5.0, "pair_knots": 8, "pair_r_min": 0.15, "angle_degree": 4}


def _noisy(params, scale=0.3, seed=1):
    # NumPy's generator: jax.random op by op compiles a program per leaf shape (~10 s in all here)
    leaves, tree = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(tree, [np.asarray(p) + scale * rng.standard_normal(np.shape(p))
                                               for p in leaves])


@pytest.fixture(scope="module")
def flex():
    return three_body.build(FLEX)


@pytest.fixture(scope="module")
def flex_params(flex):
    return _noisy(flex.init())


def _cast(params, dtype):
    return jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), params)


def _lattice(box, seed, jitter=0.12):
    rng = np.random.default_rng(seed)
    k = int(np.ceil(N ** (1 / 3)))
    sites = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = sites[rng.choice(len(sites), N, replace=False)] * (box / k)
    return (sites + rng.uniform(-jitter, jitter, sites.shape) * (box / k)) % box


def _cluster(seed, box=4.0, spacing=0.28):
    rng = np.random.default_rng(seed)
    sites = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)[:N]
    sites = (sites - sites.mean(0)) * spacing + rng.uniform(-0.05, 0.05, (N, 3))
    return sites + 0.5 * box


def _idx(R, box, cutoff=CUTOFF, skin=0.05, width=M):
    R, box = np.asarray(R, np.float64), np.broadcast_to(np.asarray(box, np.float64), (3,))
    d = R[None, :, :] - R[:, None, :]
    d -= box * np.round(d / box)
    close = (np.sum(d * d, -1) < (cutoff + skin) ** 2) & ~np.eye(len(R), dtype=bool)
    assert close.sum(1).max() <= width
    idx = np.full((len(R), width), len(R), np.int32)
    for i, row in enumerate(close):
        js = np.flatnonzero(row)
        idx[i, :len(js)] = js
    return jnp.asarray(idx)


@functools.partial(jax.jit, static_argnums=(0, 7))
def _value_and_grads(model, params, R, idx, box, species, strain, param_grads):
    """U and (∂U/∂θ, ∂U/∂R, ∂U/∂ε); ∂U/∂θ None unless ``param_grads`` (a smaller program)."""
    if param_grads:
        return jax.value_and_grad(model.energy, argnums=(0, 1, 5))(params, R, idx, box, species, strain)
    e, (g, w) = jax.value_and_grad(model.energy, argnums=(1, 5))(params, R, idx, box, species, strain)
    return e, (None, g, w)


def _evaluate(model, params, R, idx, box, species=SPECIES, param_grads=False):
    """``box``: the edge of a cubic box or the three edges of an orthorhombic one."""
    R = jnp.asarray(R)
    box = jnp.asarray(np.broadcast_to(box, (3,)), R.dtype)
    e, (gp, g, w) = _value_and_grads(model, params, R, idx, box, species, jnp.zeros((3, 3), R.dtype), param_grads)
    return float(e), -np.asarray(g), np.asarray(w), gp


# ---------------------------------------------------------------------------------------
# SW's form and parameters: JAX MD's stillinger_weber
# ---------------------------------------------------------------------------------------
def _silicon(cells=2, jitter=0.08, seed=0):
    """A jittered diamond-cubic silicon cell (Å), ``cells``³ conventional cells."""
    base = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                     [.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]])
    a0 = 5.431
    grid = np.stack(np.meshgrid(*[np.arange(cells)] * 3, indexing="ij"), -1).reshape(-1, 3)
    R = ((grid[:, None, :] + base[None]) .reshape(-1, 3)) * a0
    R = R + np.random.default_rng(seed).normal(0.0, jitter, R.shape)
    return R % (cells * a0), cells * a0


@functools.partial(jax.jit, static_argnums=3)
def _sw_reference(R, B, gamma, box):
    """U and ∂U/∂R of JAX MD's ``stillinger_weber`` (SW's parameters, B and γ as arguments): one
    compiled program for the reference energy, its forces and the finite differences in B and γ
    (op by op, ~180 small programs)."""
    from jax_md import space
    p = {k: v[0] for k, v in SW_PARAMS.items()}
    sw = StillingerWeber(epsilon=p["epsilon"], sigma=p["sigma"], B=B, gamma=gamma)
    return jax.value_and_grad(sw.energy_fn(space.periodic(box)[0]))(R)


@pytest.mark.parametrize("degree", [2, 5])
def test_sw_form_and_parameters_are_jax_md_stillinger_weber(degree, double_precision):
    p = {k: v[0] for k, v in SW_PARAMS.items()}
    model = three_body.build({"kind": "three_body", "cutoff": p["a"] * p["sigma"], "sigma": p["sigma"], "a": p["a"],
                              "epsilon": p["epsilon"], "A": p["A"], "B": p["B"], "lam": p["lam"],
                              "gamma": p["gamma"], "angle_degree": degree, "pair_knots": 0})
    params = model.init()
    R, box = _silicon()
    n = len(R)
    idx = _idx(R, box, cutoff=model.cutoff, skin=0.3, width=n - 1)

    def ref(**changed):
        return _sw_reference(jnp.asarray(R), *(float(changed.get(k, p[k])) for k in ("B", "gamma")), float(box))
    u, f, _, grads = _evaluate(model, params, R, idx, box, species=jnp.zeros(n, jnp.int32), param_grads=True)
    u_ref, g_ref = ref()
    u_ref = float(u_ref)
    assert abs(u_ref) > 100.0
    # JAX MD adds 1e-7 Å to both bond lengths in cos θ (quantity.cosine_angle_between_two_vectors):
    # a relative change of ~1e-7 in cos θ, larger in (cos θ + 1/3)² near the tetrahedral angle
    assert u == pytest.approx(u_ref, rel=1e-8, abs=2e-6)
    np.testing.assert_allclose(f, -np.asarray(g_ref), rtol=1e-6, atol=1e-5)
    # the energy is linear in λ (three-body) and in A (pair): ∂U/∂λ λ + ∂U/∂A A = U
    lam_part = float(grads["lam"].sum()) * p["lam"]
    pair_part = float(grads["A"].sum()) * p["A"]
    assert lam_part + pair_part == pytest.approx(u, rel=1e-10)
    assert lam_part > 0 > pair_part
    # B and γ, learned as logarithms: ∂U/∂log B = B ∂U/∂B, by a central difference of the reference
    h = 1e-6
    for name in ("B", "gamma"):
        up, down = (float(ref(**{name: p[name] * np.exp(s)})[0]) for s in (h, -h))
        fd = (up - down) / (2 * h)
        assert float(grads[name].sum()) == pytest.approx(fd, rel=1e-6)


def test_learn_selects_the_parameters_and_values_reports_every_part():
    model = three_body.build({"kind": "three_body", "cutoff": 0.5, "lam": 3.0, "learn": ["lam", "angle"]})
    params = model.init()
    assert sorted(params) == ["angle", "lam"]
    v = model.values(params)
    assert float(v["gamma"][0]) == pytest.approx(1.2) and float(v["B"][0]) == pytest.approx(0.6022245584)
    assert float(v["lam"][0, 0]) == 3.0
    # (c − cos θ₀)² from its Legendre coefficients
    c = jnp.linspace(-1, 1, 7)
    h = jnp.sum(three_body.legendre(c, 4) * v["angle"][0, 0], -1)
    np.testing.assert_allclose(np.asarray(h), np.asarray((c + 1 / 3) ** 2), atol=1e-6)


def test_initial_angle_and_spline_values_from_the_config():
    """``angle`` and ``pair_values`` set the starting h(cos θ) and spline (config=diamond_cpu's
    0 K start): the learned and the fixed parts both carry them, and the spline passes through
    its knots (zero at the cutoff)."""
    knots = [0.3, -1.0, 2.0, -0.5]
    cfg = {"kind": "three_body", "cutoff": 0.5, "n_species": 2, "angle_degree": 3, "angle": [0.5, 1.5],
           "pair_knots": 5, "pair_r_min": 0.3, "pair_values": knots}
    model = three_body.build({**cfg, "learn": ["angle", "pair"]})
    params = model.init()
    np.testing.assert_allclose(np.asarray(params["angle"]), np.broadcast_to([0.5, 1.5, 0.0, 0.0], (2, 3, 4)), rtol=1e-7)
    np.testing.assert_allclose(np.asarray(params["pair"]), np.broadcast_to(knots, (3, 4)), rtol=1e-7)
    fixed = three_body.build({**cfg, "learn": ["lam"]})
    np.testing.assert_array_equal(np.asarray(fixed.values(fixed.init())["pair"]), np.asarray(params["pair"]))
    r = jnp.linspace(0.3, 0.5, 5)
    np.testing.assert_allclose(np.asarray(model._spline(params["pair"][0], r)), [*knots, 0.0], atol=1e-5)


# ---------------------------------------------------------------------------------------
# invariances, derivatives, smoothness
# ---------------------------------------------------------------------------------------
def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_rotation_translation_and_permutation_invariance(flex, flex_params, double_precision):
    params, box = _cast(flex_params, jnp.float64), 4.0
    R = _cluster(2)
    u0, f0, _, _ = _evaluate(flex, params, R, _idx(R, box), box)
    assert abs(u0) > 1e-2
    rot = _rotation(3)
    R_rot = (R - 0.5 * box) @ rot.T + 0.5 * box
    u1, f1, _, _ = _evaluate(flex, params, R_rot, _idx(R_rot, box), box)
    assert u1 == pytest.approx(u0, rel=1e-10)
    np.testing.assert_allclose(f1, f0 @ rot.T, atol=1e-8)
    # periodic: a translation that wraps atoms across the box
    L = 1.9
    Rp = _lattice(L, 4)
    up, fp, _, _ = _evaluate(flex, params, Rp, _idx(Rp, L), L)
    Rt = (Rp + np.array([0.7, -0.3, 1.1])) % L
    ut, ft, _, _ = _evaluate(flex, params, Rt, _idx(Rt, L), L)
    assert ut == pytest.approx(up, rel=1e-10)
    np.testing.assert_allclose(ft, fp, atol=1e-8)
    perm = np.random.default_rng(5).permutation(N)
    Rq = Rp[perm]
    uq, fq, _, _ = _evaluate(flex, params, Rq, _idx(Rq, L), L, species=SPECIES[perm])
    assert uq == pytest.approx(up, rel=1e-10)
    np.testing.assert_allclose(fq, fp[perm], atol=1e-8)
    # species matter
    us, _, _, _ = _evaluate(flex, params, Rp, _idx(Rp, L), L, species=1 - SPECIES)
    assert abs(us - up) > 1e-3 * abs(up)


def test_forces_and_virial_are_finite_differences_of_the_energy(flex, flex_params, double_precision):
    params, L = _cast(flex_params, jnp.float64), 1.9
    R = _lattice(L, 6)
    idx = _idx(R, L)
    u, f, w, _ = _evaluate(flex, params, R, idx, L)

    def energy(R, box):   # the energy of the program above (compiled once for every test here)
        return _evaluate(flex, params, R, idx, np.asarray(box))[0]
    h = 1e-6   # the central difference converges as h² (SW's r⁻⁴ between close neighbours)
    rng = np.random.default_rng(0)
    for _ in range(4):
        i, a = rng.integers(N), rng.integers(3)
        e = np.zeros((N, 3))
        e[i, a] = h
        fd = -(float(energy(jnp.asarray(R + e), jnp.full(3, L))) - float(energy(jnp.asarray(R - e), jnp.full(3, L)))) / (2 * h)
        assert f[i, a] == pytest.approx(fd, rel=1e-6, abs=1e-8)
    # ∂U/∂ε_xx: stretch x of positions and box together
    def stretched(s):
        scale = np.array([1.0 + s, 1.0, 1.0])
        return float(energy(jnp.asarray(R * scale), jnp.asarray(L * scale)))
    fd = (stretched(h) - stretched(-h)) / (2 * h)
    assert w[0, 0] == pytest.approx(fd, rel=1e-6, abs=1e-8)
    assert abs(w[0, 0]) > 1e-3


def test_energy_and_forces_are_continuous_at_both_cutoffs(flex, flex_params, double_precision):
    """Two and three atoms: the pair crossing the cutoff (0.5) and the three-body range a σ (0.475).
    The other N − 3 atoms sit far away from them and from each other (the N-atom program of the
    other tests, compiled once)."""
    params = _cast(flex_params, jnp.float64)
    box = 10.0
    species = SPECIES.at[:3].set(jnp.asarray([0, 1, 0], SPECIES.dtype))
    idx = np.full((N, M), N, np.int32)
    idx[:3, :2] = [[1, 2], [0, 2], [0, 1]]
    idx = jnp.asarray(idx)
    far = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)[:N - 3]
    far = 6.5 + 0.9 * far.astype(float)            # spaced by more than the cutoff, > 1 from the three

    def curve(r_c):
        out = []
        for r in (r_c - 1e-9, r_c + 1e-9):
            R = np.array([[5.0, 5.0, 5.0], [5.0 + r, 5.0, 5.0], [5.0 + 0.2, 5.0 + 0.25, 5.0]])
            u, f, _, _ = _evaluate(flex, params, np.concatenate([R, far]), idx, box, species=species)
            assert np.abs(f[3:]).max() == 0.0
            out.append((u, f[:3]))
        return out
    for r_c in (flex.cutoff, flex.a * flex.sigma):
        (u_in, f_in), (u_out, f_out) = curve(r_c)
        # no jump beyond the work of the force over the 2 nm·1e-9 step
        assert abs(u_in - u_out) < 2e-9 * np.abs(f_in).max() + 1e-10
        np.testing.assert_allclose(f_in, f_out, atol=1e-5)


def _brute_force(model, params, R, box, species):
    """U_θ by explicit loops over pairs and triplets (numpy, float64)."""
    v = {k: np.asarray(x, float) for k, x in model.values(params).items()}
    table = three_body._pair_index(model.n_species)
    n = len(R)
    d = R[None, :, :] - R[:, None, :]
    d -= box * np.round(d / box)
    r = np.linalg.norm(d, axis=-1)
    sg, a = model.sigma, model.a
    if model.pair_knots:   # the spline of every pair type at every distance (not pair by pair, op by op)
        spline = np.stack([np.asarray(model._spline(jnp.asarray(v["pair"][p]), jnp.asarray(r)))
                           for p in range(len(v["pair"]))])
    u = 0.0
    for i in range(n):
        near = [j for j in range(n) if j != i and r[i, j] < model.cutoff]
        for j in near:
            p = table[species[i], species[j]]
            if r[i, j] < a * sg:
                u += 0.5 * v["epsilon"] * v["A"][p] * (v["B"][p] * (r[i, j] / sg) ** -4 - 1) * np.exp(1 / (r[i, j] / sg - a))
            if model.pair_knots:
                u += 0.5 * spline[p, i, j]
        for j in near:
            for k in near:
                if k == j or r[i, j] >= a * sg or r[i, k] >= a * sg:
                    continue
                pj, pk, pjk = table[species[i], species[j]], table[species[i], species[k]], table[species[j], species[k]]
                cos = d[i, j] @ d[i, k] / (r[i, j] * r[i, k])
                h = np.polynomial.legendre.legval(cos, v["angle"][species[i], pjk])
                u += 0.5 * v["epsilon"] * v["lam"][species[i], pjk] * np.exp(
                    v["gamma"][pj] / (r[i, j] / sg - a) + v["gamma"][pk] / (r[i, k] / sg - a)) * h
    return u


def test_tensor_identity_equals_the_sum_over_triplets(flex, flex_params, double_precision):
    params, L = _cast(flex_params, jnp.float64), 1.9
    R = _lattice(L, 7)
    u, _, _, _ = _evaluate(flex, params, R, _idx(R, L), L)
    assert u == pytest.approx(_brute_force(flex, params, R, L, np.asarray(SPECIES)), rel=1e-10)


def test_float32_energy_and_forces_match_float64(flex, flex_params, single_precision):
    """The tensor identity subtracts the diagonal a = b: check that float32 keeps the digits."""
    L = 1.9
    R = _lattice(L, 8)
    u32, f32, _, _ = _evaluate(flex, _cast(flex_params, jnp.float32), jnp.asarray(R, jnp.float32), _idx(R, L), L)
    with _x64(True):
        u64, f64, _, _ = _evaluate(flex, _cast(flex_params, jnp.float64), jnp.asarray(R, jnp.float64), _idx(R, L), L)
    assert u32 == pytest.approx(u64, rel=1e-5)
    np.testing.assert_allclose(f32, f64, rtol=1e-3, atol=1e-4 * np.abs(f64).max())


# ---------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("update, match", [
    ({"sigma": 0.3}, "reaches beyond model.cutoff"),
    ({"learn": ["lam", "kappa"]}, "unknown part"),
    ({"learn": []}, "nothing to learn"),
    ({"pair_knots": 2}, "pair_knots"),
    ({"pair_knots": 0, "learn": ["pair"]}, "no spline"),
    ({"angle_degree": 1}, "angle_degree"),
    ({"gamma": -1.0}, "model.gamma"),
    ({"widht": 3}, "unknown key"),
    ({"angle": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "angle_degree": 4}, "at most 5"),
    ({"angle": "steep"}, "list of numbers"),
    ({"pair_knots": 6, "pair_values": [1.0, 2.0]}, "exactly 5"),
    ({"pair_knots": 0, "pair_values": [1.0]}, "no spline"),
])
def test_bad_config_values_raise_user_errors(update, match):
    with pytest.raises(UserError, match=match):
        three_body.build({"kind": "three_body", "cutoff": 0.5, **update})


# ---------------------------------------------------------------------------------------
# the preset trains
# ---------------------------------------------------------------------------------------
@pytest.mark.slow   # suite time (issue: default suite <= 15 min on 2 cores): a training run, not an identity
def test_a_small_water_cpu_run_lowers_its_loss(tmp_path):
    """config=water_cpu at 64 beads: the natural-gradient steps (per-snapshot reverse-mode
    Jacobian, difftre.py) on the SW-form model lower the loss."""
    import csv

    from conftest import train_in_process
    small = ["config=water_cpu", "system.n_particles=64", "system.box_size=1.2415",
             "simulator.first_equilibration_steps=300", "simulator.equilibration_steps=50",
             "simulator.production_steps=600", "simulator.every=10", "trainer.updates=3", "seed=2", "optimizer.lr=0.2",
             "observables.rdf.r_max=0.6", "observables.rdf.n_bins=180"]
    train_in_process(small, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 3 and all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_born_stress_under_the_sw_prior_is_the_strain_derivative(double_precision):
    """Diamond with SW prior + three-body model: the engine's Born stress (1/Ω) ∂U/∂η (Voigt,
    reverse mode through the strain hook) equals central differences of U under F = I + η."""
    from hydra import compose, initialize_config_dir

    from difftre_cli import assemble
    from difftre_cli.config_files import CONFIG_DIR
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=["config=diamond", "model=three_body", "model.cutoff=0.2",
                                                       "model.lam=50.0", "model.A=5.0", "system.n_particles=64"])
    c = assemble.build(cfg)
    params = _noisy(c.potential.init(jax.random.PRNGKey(0)), scale=0.2)
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), params)
    R0 = np.asarray(c.system.positions, np.float64)
    R = jnp.asarray((R0 + 0.006 * np.random.default_rng(3).standard_normal(R0.shape)) % c.system.box_size)

    class _Traj:
        positions, energies = R[None], jnp.zeros(1)
    feats = c.engine.featurize(_Traj())
    # one compiled program (op by op, the per-state map and its strain derivatives compile ~600
    # small programs: ~50 s)
    born = np.asarray(jax.jit(c.engine.snapshot_quantities)(params, feats.r)["born_stress"][0])
    one = jax.tree_util.tree_map(lambda x: x[0], feats.r)
    energy = jax.jit(lambda eta: c.potential.energy_from_features(params, one, strain=eta))
    volume, h = float(c.system.box_size) ** 3, 1e-6
    for k, (a, b) in enumerate(((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))):
        eta = np.zeros((3, 3))
        eta[a, b] = eta[b, a] = h if a == b else h / 2     # Voigt: engineering shear
        fd = (float(energy(jnp.asarray(eta))) - float(energy(jnp.asarray(-eta)))) / (2 * h) / volume
        assert born[k] == pytest.approx(fd, rel=1e-5, abs=1e-6 * np.abs(born).max())
    assert np.abs(born[:3]).max() > 1.0
