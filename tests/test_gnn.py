"""DimeNet++ potential: bases vs scipy, invariances, forces and virial vs finite differences,
smoothness at the cutoff, dense = sparse, independence of the list's skin, config checks."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.special import spherical_jn as scipy_jn

from difftre_cli import neighbors
from difftre_cli.errors import UserError
from difftre_cli.potentials import dimenet_basis, gnn
from difftre_cli.potentials.graph import sparse_capacity, sparse_graph

CUTOFF = 0.5
# Small enough to compile fast; two blocks so that messages travel between blocks.
SMALL = {"kind": "dimenet", "cutoff": CUTOFF, "n_species": 2, "embed_size": 8, "out_embed_size": 8,
         "int_emb_size": 4, "basis_emb_size": 2, "num_blocks": 2, "num_spherical": 4, "num_radial": 4,
         "num_residual_after_skip": 1, "num_dense_out": 1}
# Every system has N atoms, a dense list of width M and, in sparse form, fixed capacities, and
# the box is a (3,) array: each jitted function below compiles once per dtype.
N, M, MAX_EDGES, MAX_DEGREE = 40, 36, 1280, 36
SPECIES = jnp.asarray(np.arange(N) % 2)


@pytest.fixture(scope="module")
def model():
    return gnn.build(SMALL)


@pytest.fixture(scope="module")
def init_params(model):
    """``model.init(PRNGKey(0))`` (each call of init compiles its program again: once here)."""
    return model.init(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def raw_params(init_params):
    """Initial parameters plus noise: the output layers start at zero, which would make every
    energy identically zero."""
    leaves, tree = jax.tree_util.tree_flatten(init_params)
    # NumPy's generator: jax.random op by op compiles a program per leaf shape (~10 s)
    rng = np.random.default_rng(1)
    leaves = [np.asarray(p) + 0.1 * rng.standard_normal(p.shape).astype(np.asarray(p).dtype) for p in leaves]
    return jax.tree_util.tree_unflatten(tree, leaves)


def _cast(params, dtype):
    return jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), params)


def _lattice(box, seed, jitter=0.12):
    """N sites of a jittered simple-cubic lattice filling a periodic box (no overlaps)."""
    rng = np.random.default_rng(seed)
    k = int(np.ceil(N ** (1 / 3)))
    sites = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = sites[rng.choice(len(sites), N, replace=False)] * (box / k)
    return (sites + rng.uniform(-jitter, jitter, sites.shape) * (box / k)) % box


def _cluster(seed, box=4.0, spacing=0.28):
    """A compact cluster in the middle of a big box: no periodic image within the cutoff."""
    rng = np.random.default_rng(seed)
    sites = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)[:N]
    sites = (sites - sites.mean(0)) * spacing + rng.uniform(-0.05, 0.05, (N, 3))
    return sites + 0.5 * box


def _idx(R, box, skin=0.05, width=M):
    """Dense full list (N, width) padded with N: pairs closer than cutoff + skin (minimum image)."""
    R, box = np.asarray(R, np.float64), np.broadcast_to(np.asarray(box, np.float64), (3,))
    d = R[None, :, :] - R[:, None, :]
    d -= box * np.round(d / box)
    close = (np.sum(d * d, -1) < (CUTOFF + skin) ** 2) & ~np.eye(len(R), dtype=bool)
    assert close.sum(1).max() <= width
    idx = np.full((len(R), width), len(R), np.int32)
    for i, row in enumerate(close):
        js = np.flatnonzero(row)
        idx[i, :len(js)] = js
    return jnp.asarray(idx)


def _graph(R, idx, box, cutoff=CUTOFF):
    graph, overflow = sparse_graph(idx, R, box, cutoff, MAX_EDGES, MAX_DEGREE)
    assert not bool(overflow)
    return graph


def _box(L):
    # not weakly typed, as the scaled boxes box * (1 + h) are: one program for both
    return jnp.full(3, L, jnp.result_type(float))


@functools.partial(jax.jit, static_argnums=(0, 7))
def _value_and_grads(model, params, R, idx, box, species, strain, param_grads):
    """U and (∂U/∂θ, ∂U/∂R, ∂U/∂ε) on a dense list (∂U/∂θ None unless ``param_grads``: the
    program without it compiles in ~20 % less time)."""
    if param_grads:
        return jax.value_and_grad(model.energy, argnums=(0, 1, 5))(params, R, idx, box, species, strain)
    e, (g, w) = jax.value_and_grad(model.energy, argnums=(1, 5))(params, R, idx, box, species, strain)
    return e, (None, g, w)


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grads_sparse(model, params, R, graph, box, species, strain):
    return jax.value_and_grad(model.energy_sparse, argnums=(0, 1, 5))(params, R, graph, box, species, strain)


def _evaluate(model, params, R, idx, box, species=SPECIES, strain=None, graph=None, param_grads=False):
    """(U, forces, virial ∂U/∂ε) as float / numpy, and ∂U/∂θ if asked."""
    R = jnp.asarray(R)
    strain = jnp.zeros((3, 3), R.dtype) if strain is None else strain
    if graph is None:
        e, (gp, g, w) = _value_and_grads(model, params, R, idx, box, species, strain, param_grads)
    else:
        e, (gp, g, w) = _value_and_grads_sparse(model, params, R, graph, box, species, strain)
    out = (float(e), -np.asarray(g), np.asarray(w))
    return out + (gp,) if param_grads else out


# ---------------------------------------------------------------------------------------
# bases
# ---------------------------------------------------------------------------------------
def test_spherical_bessel_matches_scipy_in_float32_and_float64(double_precision):
    x = np.linspace(0.0, 40.0, 8001)
    for l in range(11):                                   # num_spherical ≤ 11 is allowed
        ref = scipy_jn(l, x)
        err64 = np.abs(np.asarray(dimenet_basis.spherical_jn(l, jnp.asarray(x))) - ref).max()
        err32 = np.abs(np.asarray(dimenet_basis.spherical_jn(l, jnp.asarray(x, jnp.float32))) - ref).max()
        d = jax.vmap(jax.grad(lambda t, l=l: dimenet_basis.spherical_jn(l, t)))(jnp.asarray(x))
        derr = np.abs(np.asarray(d) - scipy_jn(l, x, derivative=True)).max()
        assert err64 < 1e-10 and derr < 1e-9, (l, err64, derr)
        assert err32 < 1e-6, (l, err32)
        assert np.all(np.isfinite(np.asarray(d)))           # including at x = 0


def test_bessel_roots_are_roots_and_the_radial_basis_is_orthonormal(double_precision):
    z = dimenet_basis.bessel_roots(7, 6)
    for l in range(7):
        assert np.all(np.diff(z[l]) > 0) and z[l, 0] > l
        np.testing.assert_allclose(scipy_jn(l, z[l]), 0.0, atol=1e-12)
    # the basis is φ_ln(x) u(x) with φ_ln = √2/|j_{l+1}(z_ln)| j_l(z_ln x), and the φ_ln of one l
    # are orthonormal: ∫_0^1 φ_ln φ_ln' x² dx = δ_nn'
    x = np.linspace(0.0, 1.0, 20001)
    phi = np.sqrt(2.0) / np.abs(scipy_jn(np.arange(1, 8)[:, None], z)) * scipy_jn(
        np.arange(7)[None, :, None], z[None] * x[:, None, None])                   # (x, l, n)
    basis = np.asarray(dimenet_basis.spherical_radial_basis(jnp.asarray(x), 7, 6, 5))
    u = np.asarray(dimenet_basis.envelope(jnp.asarray(x), 5))
    np.testing.assert_allclose(basis, phi * u[:, None, None], atol=1e-10)
    w = np.full_like(x, x[1] - x[0]) * x * x
    w[[0, -1]] *= 0.5
    for l in range(7):
        np.testing.assert_allclose(np.einsum("k,kn,km->nm", w, phi[:, l], phi[:, l]), np.eye(6), atol=1e-6)


def test_envelope_vanishes_smoothly_at_the_cutoff(double_precision):
    u = lambda x: dimenet_basis.envelope(x, 5)  # noqa: E731
    one = jnp.asarray(1.0)
    assert float(u(jnp.asarray(0.0))) == 1.0
    for f in (u, jax.grad(u), jax.grad(jax.grad(u))):
        assert abs(float(f(one))) < 1e-12
    assert float(jax.grad(jax.grad(jax.grad(u)))(one)) != 0.0


# ---------------------------------------------------------------------------------------
# invariances
# ---------------------------------------------------------------------------------------
def test_rotation_and_reflection_invariance(model, raw_params, double_precision):
    params = _cast(raw_params, jnp.float64)
    box = _box(4.0)
    R = _cluster(seed=3)
    q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(3, 3)))   # random orthogonal matrix
    R_rot = (R - 2.0) @ q.T + 2.0
    e0, f0, _ = _evaluate(model, params, R, _idx(R, box), box)
    e1, f1, _ = _evaluate(model, params, R_rot, _idx(R_rot, box), box)
    assert abs(e0) > 1e-2
    assert e1 == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(f1, f0 @ q.T, atol=1e-10 * np.abs(f0).max())


def test_translation_invariance_with_periodic_wrapping(model, raw_params, double_precision):
    params = _cast(raw_params, jnp.float64)
    box = _box(1.5)
    R = _lattice(1.5, seed=5)
    shifted = (R + np.array([0.731, -1.234, 2.917])) % 1.5
    e0, f0, w0 = _evaluate(model, params, R, _idx(R, box), box)
    e1, f1, w1 = _evaluate(model, params, shifted, _idx(shifted, box), box)
    assert e1 == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(f1, f0, atol=1e-10 * np.abs(f0).max())
    np.testing.assert_allclose(w1, w0, atol=1e-10 * np.abs(w0).max())


def test_permutation_invariance(model, raw_params, double_precision):
    params = _cast(raw_params, jnp.float64)
    box = _box(1.5)
    R = _lattice(1.5, seed=7)
    species = np.random.default_rng(8).integers(0, 2, N)
    perm = np.random.default_rng(9).permutation(N)
    # int32 as SPECIES (int64 would compile the program once more)
    e0, f0, _ = _evaluate(model, params, R, _idx(R, box), box, jnp.asarray(species, jnp.int32))
    e1, f1, _ = _evaluate(model, params, R[perm], _idx(R[perm], box), box, jnp.asarray(species[perm], jnp.int32))
    assert e1 == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(f1, f0[perm], atol=1e-10 * np.abs(f0).max())


def test_species_change_the_energy(model, raw_params, double_precision):
    params = _cast(raw_params, jnp.float64)
    box = _box(1.5)
    R = _lattice(1.5, seed=10)
    idx = _idx(R, box)
    species = np.zeros(N, int)
    e_all0 = _evaluate(model, params, R, idx, box, jnp.asarray(species, jnp.int32))[0]
    species[3] = 1
    e_one1 = _evaluate(model, params, R, idx, box, jnp.asarray(species, jnp.int32))[0]
    assert abs(e_one1 - e_all0) > 1e-3 * abs(e_all0)


# ---------------------------------------------------------------------------------------
# derivatives
# ---------------------------------------------------------------------------------------
def test_forces_are_minus_the_gradient_by_finite_differences(model, raw_params, double_precision):
    params = _cast(raw_params, jnp.float64)
    box = _box(1.5)
    R = _lattice(1.5, seed=11)
    idx = _idx(R, box, skin=0.1)
    _, forces, _ = _evaluate(model, params, R, idx, box)
    h = 1e-6                                       # truncation error ∝ h², measured ≈ 1e-9 relative
    rng = np.random.default_rng(12)
    for i, a in zip(rng.choice(N, 5, replace=False), rng.integers(0, 3, 5)):
        dR = np.zeros_like(R)
        dR[i, a] = h
        fd = -(_evaluate(model, params, R + dR, idx, box)[0] - _evaluate(model, params, R - dR, idx, box)[0]) / (2 * h)
        assert fd == pytest.approx(forces[i, a], rel=1e-6, abs=1e-8 * np.abs(forces).max())


def test_energy_and_forces_are_continuous_across_the_cutoff(model, raw_params, double_precision):
    """Atom A moves along x through the cutoff of atom B while C stays bonded to B (A–B–C is a
    triplet inside the cutoff only); the other atoms sit far away. The jumps of E and F vanish
    as the step shrinks, and beyond the cutoff A is exactly an isolated atom."""
    params = _cast(raw_params, jnp.float64)
    box = _box(6.0)
    B = np.array([1.5, 1.5, 1.5])
    C = B + np.array([-0.1, 0.25, 0.0])
    far = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)[:N - 3]
    far = 3.6 + 0.7 * far.astype(float)               # spaced by more than the cutoff

    def at(d):
        R = np.concatenate([np.stack([B + np.array([d, 0.0, 0.0]), B, C]), far])
        return _evaluate(model, params, R, _idx(R, box, skin=1.2), box)[:2]   # A–B listed throughout

    e_far, f_far = at(1.5)
    assert np.abs(f_far[0]).max() == 0.0
    e_in, f_in = at(0.8 * CUTOFF)
    assert abs(e_in - e_far) > 1e-3 and np.abs(f_in[0]).max() > 1e-3
    jumps = []
    for h in (1e-2, 1e-3, 1e-4):
        e_lo, f_lo = at(CUTOFF * (1 - h))
        e_hi, f_hi = at(CUTOFF * (1 + h))
        assert e_hi == pytest.approx(e_far, rel=1e-13, abs=1e-12)          # exactly masked
        jumps.append((abs(e_lo - e_hi), np.abs(f_lo - f_hi).max()))
    (e1, f1), (e2, f2), (e3, f3) = jumps
    assert e2 < 1e-2 * e1 and e3 < 1e-2 * e2 and e3 < 1e-9       # ΔE ∝ h³ (u, u', u'' vanish)
    assert f2 < 0.05 * f1 and f3 < 0.05 * f2 and f3 < 1e-6       # ΔF ∝ h²


def test_strain_derivative_is_the_finite_difference_of_a_scaled_box(model, raw_params, double_precision):
    params = _cast(raw_params, jnp.float64)
    box = _box(1.5)
    R = _lattice(1.5, seed=13)
    idx = _idx(R, box, skin=0.1)
    _, _, virial = _evaluate(model, params, R, idx, box)
    h = 1e-6
    for a in range(3):
        up, down = np.ones(3), np.ones(3)
        up[a], down[a] = 1 + h, 1 - h
        # positions and box scaled along one axis (an orthorhombic box, minimum image per axis)
        fd = (_evaluate(model, params, R * up, idx, box * up)[0]
              - _evaluate(model, params, R * down, idx, box * down)[0]) / (2 * h)
        assert virial[a, a] == pytest.approx(fd, rel=1e-6, abs=1e-8)
        # a finite diagonal strain is the same as the scaled box
        scale = np.ones(3)
        scale[a] = 1.01
        eps = jnp.diag(jnp.asarray(scale - 1.0))
        assert _evaluate(model, params, R, idx, box, strain=eps)[0] == pytest.approx(
            _evaluate(model, params, R * scale, idx, box * scale)[0], rel=1e-12)
    for a, b in ((0, 1), (1, 2), (2, 0)):                         # shear: autodiff = finite difference
        e = jnp.zeros((3, 3)).at[a, b].set(h)
        fd = (_evaluate(model, params, R, idx, box, strain=e)[0]
              - _evaluate(model, params, R, idx, box, strain=-e)[0]) / (2 * h)
        assert virial[a, b] == pytest.approx(fd, rel=1e-6, abs=1e-8)
    np.testing.assert_allclose(virial, virial.T, atol=1e-9 * np.abs(virial).max())   # rotation invariance
    assert np.abs(virial).max() > 1e-2


def test_forward_mode_derivative_of_the_virial_equals_finite_differences(model, raw_params, double_precision):
    """Forward mode (jvp, as for elastic constants) works through every block: d/dt ∂U/∂ε (tE)
    at t = 0 equals the central difference of the reverse-mode virial."""
    params = _cast(raw_params, jnp.float64)
    box = _box(1.5)
    R = _lattice(1.5, seed=14)
    idx = _idx(R, box)
    direction = jnp.asarray([[0.3, 0.1, 0.0], [0.1, -0.2, 0.05], [0.0, 0.05, 0.4]])
    virial = lambda eps: jax.grad(model.energy, argnums=5)(params, jnp.asarray(R), idx, box, SPECIES, eps)  # noqa: E731
    _, dw = jax.jit(lambda d: jax.jvp(virial, (jnp.zeros((3, 3)),), (d,)))(direction)
    h = 1e-6
    fd = (_evaluate(model, params, R, idx, box, strain=h * direction)[2]
          - _evaluate(model, params, R, idx, box, strain=-h * direction)[2]) / (2 * h)
    assert np.abs(fd).max() > 1e-2
    np.testing.assert_allclose(np.asarray(dw), fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())


# ---------------------------------------------------------------------------------------
# graph formats
# ---------------------------------------------------------------------------------------
def test_dense_and_sparse_agree_and_ignore_skin_and_padding(model, raw_params, single_precision):
    box = _box(1.5)
    R = jnp.asarray(_lattice(1.5, seed=16), jnp.float32)
    # our neighbour list (its own width) padded to M, and a much wider list (skin 0.25)
    nbrs = neighbors.make_neighbor_fn(1.5, CUTOFF, 0.05).allocate(R)
    idx = jnp.pad(nbrs.idx, ((0, 0), (0, M - nbrs.idx.shape[1])), constant_values=N)
    idx_wide = _idx(R, box, skin=0.25)
    assert int(jnp.sum(idx < N)) < int(jnp.sum(idx_wide < N))
    runs = [(idx, None), (idx_wide, None),
            (idx, _graph(R, idx, box)),                                    # only pairs within the cutoff
            (idx_wide, _graph(R, idx_wide, box, cutoff=CUTOFF + 0.25))]    # pairs within cutoff + skin
    results = [_evaluate(model, raw_params, R, i, box, graph=g, param_grads=True) for i, g in runs]
    e_ref, f_ref, w_ref, g_ref = results[0]
    assert abs(e_ref) > 1e-2
    for e, f, w, g in results[1:]:
        assert e == pytest.approx(e_ref, rel=2e-6)
        np.testing.assert_allclose(f, f_ref, atol=2e-5 * np.abs(f_ref).max())
        np.testing.assert_allclose(w, w_ref, atol=2e-5 * np.abs(w_ref).max())
        # parameter gradients (what DiffTRe differentiates) agree as well, and are finite
        # although the lists have padded and beyond-cutoff slots
        for a, b in zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g)):
            assert bool(jnp.all(jnp.isfinite(b)))
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5 * max(1.0, float(jnp.abs(a).max())))
    assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(g_ref)) > 0


def test_sparse_graph_slots_and_reverse_edges_and_overflow(single_precision):
    box = _box(1.5)
    R = jnp.asarray(_lattice(1.5, seed=17), jnp.float32)
    idx = _idx(R, box)
    n_e, k = sparse_capacity(idx, R, box, CUTOFF, multiplier=1.0)
    k -= 2                                                       # the capacity's margin: exact counts
    graph, overflow = sparse_graph(idx, R, box, CUTOFF, n_e, k)
    assert not bool(overflow)
    assert (int(graph.n_edges), int(graph.degree)) == (n_e, k)
    s, r = np.asarray(graph.senders), np.asarray(graph.receivers)
    slots, rev = np.asarray(graph.slots), np.asarray(graph.reverse)
    assert np.all(s < N) and np.all(np.diff(r) >= 0)
    # the edges within the cutoff, once each and in both directions
    d = np.asarray(R)[s] - np.asarray(R)[r]
    d -= 1.5 * np.round(d / 1.5)
    assert np.all(np.sum(d * d, -1) < CUTOFF ** 2)
    pairs = set(zip(s.tolist(), r.tolist()))
    assert len(pairs) == n_e and all((b, a) in pairs for a, b in pairs)
    # each atom's slots hold exactly the edges it receives; the reverse of j → i is the slot of i → j
    for j in range(N):
        own = slots[j][slots[j] < n_e]
        assert sorted(own.tolist()) == np.flatnonzero(r == j).tolist()
    f = slots.reshape(-1)[rev]
    assert np.all(rev < N * k) and np.all(s[f] == r) and np.all(r[f] == s)
    for e, kk in ((n_e - 1, k), (n_e, k - 1)):
        graph, overflow = sparse_graph(idx, R, box, CUTOFF, e, kk)
        assert bool(overflow)
        assert (int(graph.n_edges), int(graph.degree)) == (n_e, k)   # what was needed


# ---------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------
def test_config_file_builds_the_default_model():
    cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).parent.parent / "configs/model/dimenet.yaml"))
    for engine_key in ("graph_format", "capacity_multiplier", "snapshot_batch"):   # potentials/manybody.py
        cfg.pop(engine_key)
    model = gnn.build(cfg)
    assert model.cutoff == 0.5
    assert {k: getattr(model, k) for k in gnn.DEFAULTS} == gnn.DEFAULTS
    assert gnn.build({"kind": "dimenet", "cutoff": 0.2}) == dataclasses.replace(model, cutoff=0.2)
    # older runs' configs carry custom_gradients (the triplet sum's former hand-written backward)
    assert gnn.build({"kind": "dimenet", "cutoff": 0.5, "custom_gradients": True}) == model


@pytest.mark.parametrize("key, value, match", [
    ("cutoff", None, "model.cutoff is missing"),
    ("cutoff", -0.5, "model.cutoff must be a number > 0"),
    ("cutoff", "half", "model.cutoff must be"),
    ("kind", "schnet", "model.kind: unknown"),
    ("embed_size", 0, "model.embed_size must be an integer >= 1"),
    ("num_blocks", 2.5, "model.num_blocks must be an integer"),
    ("num_spherical", 12, r"model.num_spherical must be an integer in \[1, 11\]"),
    ("n_species", True, "model.n_species must be an integer"),
    ("num_residual_after_skip", -1, "model.num_residual_after_skip must be an integer >= 0"),
    ("embed_sise", 32, "unknown key"),
])
def test_bad_config_values_raise_user_errors(key, value, match):
    cfg = {"kind": "dimenet", "cutoff": 0.5}
    cfg[key] = value
    with pytest.raises(UserError, match=match) as err:
        gnn.build(cfg)
    assert "fix:" in str(err.value)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (6, 32)])
def test_glorot_orthogonal_is_orthogonal_with_the_glorot_variance_and_reproducible(shape):
    """The host-drawn initializer (gnn.host_initializer): orthogonal columns (rows when wider
    than tall), variance 2/(fan_in + fan_out), the same array for the same key under jit and
    outside, different arrays for different keys."""
    init = gnn.glorot_orthogonal()
    w = np.asarray(init(jax.random.PRNGKey(3), shape), np.float64)
    assert w.shape == shape
    gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-5 * np.abs(np.diag(gram)).max()
    assert np.allclose(np.diag(gram), np.diag(gram)[0], rtol=1e-5)
    assert np.mean(w * w) == pytest.approx(2.0 / (shape[0] + shape[1]), rel=1e-5)
    jitted = jax.jit(lambda k: init(k, shape))
    assert np.array_equal(np.asarray(jitted(jax.random.PRNGKey(3))), np.asarray(init(jax.random.PRNGKey(3), shape)))
    assert np.array_equal(np.asarray(init(jax.random.key(3), shape)), np.asarray(init(jax.random.PRNGKey(3), shape)))
    assert not np.allclose(np.asarray(init(jax.random.PRNGKey(4), shape)), w)


def test_model_init_is_reproducible_and_the_output_layer_starts_at_zero(model, init_params):
    p1, p2 = init_params, model.init(jax.random.PRNGKey(0))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
    p3 = model.init(jax.random.PRNGKey(1))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p3)) if a.size > 1 and np.any(a))
    emb = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(p1) if "embedding" in jax.tree_util.keystr(path)]
    assert emb and all(np.abs(e).max() <= np.sqrt(3.0) and np.var(e) > 0.3 for e in emb)
    R = _cluster(seed=5)
    # jit-compiled (the float32 program of test_dense_and_sparse_agree_...; op by op: ~20 s)
    energy = _evaluate(model, p1, jnp.asarray(R, jnp.float32), _idx(R, _box(4.0)), _box(4.0), param_grads=True)[0]
    assert energy == 0.0   # the last layer starts at zero (DimeNet++)
