"""Tests for difftre_cli.neighbors (fast, fixed seeds)."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from difftre_cli import neighbors as nbm

CUTOFF, SKIN = 2.5, 0.3


def _random_positions(n, density=0.7, seed=0):
    box = (n / density) ** (1.0 / 3.0)
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(0.0, box, (n, 3)), jnp.float32), box


def _brute_pairs(R, box, r):
    R = np.asarray(R, np.float64)
    dr = R[:, None, :] - R[None, :, :]
    dr -= box * np.round(dr / box)
    d = np.sqrt((dr ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return {(i, j) for i, j in zip(*np.nonzero(d < r))}


def _list_pairs(idx, n):
    idx = np.asarray(idx)
    return {(i, int(j)) for i in range(idx.shape[0]) for j in idx[i] if j < n}


def _lj(r, sigma=1.0, eps=1.0):
    x6 = (sigma / r) ** 6
    return 4.0 * eps * (x6 * x6 - x6)


@pytest.mark.parametrize("n,method", [(300, "brute"), (1000, "brute"), (1000, "cell"),
                                      (3000, "cell"), (3000, "auto")])
def test_dense_list_matches_brute_force(n, method):
    R, box = _random_positions(n, seed=n)
    fns = nbm.make_neighbor_fn(box, CUTOFF, SKIN, method=method)
    nbrs = fns.allocate(R)
    idx = np.asarray(nbrs.idx)
    assert idx.dtype == np.int32 and idx.shape[0] == n
    assert not bool(nbrs.did_buffer_overflow)
    # no duplicates in a row
    for row in idx:
        real = row[row < n]
        assert len(real) == len(set(real.tolist()))
    got = _list_pairs(idx, n)
    r = CUTOFF + SKIN
    want = _brute_pairs(R, box, r)
    # float32 vs float64 distances may disagree only within rounding of r
    R64 = np.asarray(R, np.float64)

    def dist(i, j):
        d = R64[i] - R64[j]
        d -= box * np.round(d / box)
        return np.sqrt((d ** 2).sum())

    for i, j in got ^ want:
        assert abs(dist(i, j) - r) < 1e-4
    assert all((j, i) in got for i, j in got)  # full (symmetric) list


def test_update_rebuilds_only_after_half_skin_and_moves_tracked():
    R, box = _random_positions(500, seed=1)
    fns = nbm.make_neighbor_fn(box, CUTOFF, SKIN)
    nbrs = fns.allocate(R)
    upd = jax.jit(fns.update)
    small = R.at[0, 0].add(0.4 * SKIN)
    n1 = upd(small, nbrs)
    assert int(n1.num_builds) == int(nbrs.num_builds)
    big = jnp.mod(R.at[0, 0].add(0.6 * SKIN), box)
    n2 = upd(big, nbrs)
    assert int(n2.num_builds) == int(nbrs.num_builds) + 1
    assert _list_pairs(n2.idx, 500) == _list_pairs(fns.allocate(big).idx, 500)


@pytest.mark.parametrize("method", ["brute", "cell"])
def test_overflow_detected(method):
    R, box = _random_positions(1000, seed=2)
    fns = nbm.make_neighbor_fn(box, CUTOFF, SKIN, method=method)
    nbrs = fns.allocate(R)
    # squeeze: same capacities, much denser configuration (half of the particles in a corner)
    R2 = R.at[:500].multiply(0.6)
    n2 = jax.jit(fns.rebuild)(R2, nbrs)
    assert bool(n2.did_buffer_overflow)
    # sticky
    n3 = jax.jit(fns.rebuild)(R, n2)
    assert bool(n3.did_buffer_overflow)
    # re-allocating fixes it
    n4 = fns.allocate(R2)
    assert not bool(n4.did_buffer_overflow)
    assert _list_pairs(n4.idx, 1000) == _list_pairs(nbm.make_neighbor_fn(
        box, CUTOFF, SKIN, method="brute").allocate(R2).idx, 1000)


def test_too_small_capacity_flags_overflow():
    R, box = _random_positions(400, seed=3)
    fns = nbm.make_neighbor_fn(box, CUTOFF, SKIN, method="brute")
    nbrs = fns.allocate(R)
    import dataclasses
    tiny = dataclasses.replace(nbrs, idx=nbrs.idx[:, :5], max_occupancy=5)
    out = fns.rebuild(R, tiny)
    assert out.idx.shape == (400, 5)
    assert bool(out.did_buffer_overflow)


@pytest.mark.parametrize("method", ["brute", "cell"])
def test_forces_equal_minus_grad_energy(method):
    R, box = _random_positions(1000, seed=4)
    # push apart overlapping random particles a bit: use a lattice + noise instead
    n_side = 10
    g = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    rng = np.random.default_rng(5)
    R = jnp.asarray(np.mod((g + 0.5) * box / n_side + rng.normal(0, 0.1, g.shape), box),
                    jnp.float32)
    fns = nbm.make_neighbor_fn(box, CUTOFF, SKIN, method=method)
    idx = fns.allocate(R).idx
    F, E = jax.jit(lambda R: nbm.pair_forces_and_energy(_lj, R, idx, box, CUTOFF))(R)
    E2 = nbm.pair_energy(_lj, R, idx, box, CUTOFF)
    G = jax.grad(lambda R: nbm.pair_energy(_lj, R, idx, box, CUTOFF))(R)
    np.testing.assert_allclose(float(E), float(E2), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(F), -np.asarray(G), rtol=1e-4, atol=1e-3)
    # brute-force energy in float64
    R64 = np.asarray(R, np.float64)
    dr = R64[:, None] - R64[None]
    dr -= box * np.round(dr / box)
    d = np.sqrt((dr ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    m = d < CUTOFF
    E_ref = 0.5 * np.sum(np.where(m, 4 * (d ** -12 - d ** -6), 0.0))
    np.testing.assert_allclose(float(E), E_ref, rtol=1e-4)


def test_param_gradient_finite_with_padding():
    R, box = _random_positions(200, seed=6)
    fns = nbm.make_neighbor_fn(box, CUTOFF, SKIN, capacity_multiplier=2.0, method="brute")
    idx = fns.allocate(R).idx
    assert np.any(np.asarray(idx) == 200)  # padded entries exist

    def energy(params):
        u = lambda r: _lj(r, params["sigma"], params["eps"])
        F, E = nbm.pair_forces_and_energy(u, R, idx, box, CUTOFF)
        return E + 1e-3 * jnp.sum(F ** 2)

    params = {"sigma": jnp.float32(0.9), "eps": jnp.float32(1.0)}
    g = jax.grad(energy)(params)
    assert np.isfinite(float(g["sigma"])) and np.isfinite(float(g["eps"]))
    g2 = jax.grad(lambda p: nbm.pair_energy(lambda r: _lj(r, p["sigma"], p["eps"]),
                                            R, idx, box, CUTOFF))(params)
    assert np.isfinite(float(g2["sigma"])) and np.isfinite(float(g2["eps"]))


def test_jax_md_compatible_format_attribute():
    from jax_md import partition
    R, box = _random_positions(300, seed=7)
    nbrs = nbm.make_neighbor_fn(box, CUTOFF, SKIN).allocate(R)
    assert nbrs.format == partition.NeighborListFormat.Dense


def test_open_space_lists_every_close_pair_without_minimum_image():
    """box_size None (a molecule in open space): the list holds exactly the pairs closer than
    cutoff + skin by plain Euclidean distance, however far the particles are from any origin
    (no wrapping), and minimum_image leaves displacements alone."""
    rng = np.random.default_rng(3)
    R = rng.uniform(-40.0, 40.0, size=(60, 3))
    R[:30] = R[0] + rng.normal(scale=0.6, size=(30, 3))   # a dense cluster among far-apart particles
    fns = nbm.make_neighbor_fn(None, 1.0, 0.2)
    nb = fns.allocate(jnp.asarray(R))
    got = {(i, int(j)) for i, row in enumerate(np.asarray(nb.idx)) for j in row if j < len(R)}
    d = np.linalg.norm(R[:, None] - R[None], axis=-1)
    want = {(i, j) for i in range(len(R)) for j in range(len(R)) if i != j and d[i, j] < 1.2}
    assert got == want and len(want) > 100
    dr = jnp.asarray([[30.0, -45.0, 0.1]])
    assert np.array_equal(np.asarray(nbm.minimum_image(dr, None)), np.asarray(dr))
    assert np.allclose(np.asarray(nbm.minimum_image(dr, 20.0)), [[-10.0, -5.0, 0.1]])
    with pytest.raises(ValueError, match="open space"):
        nbm.make_neighbor_fn(None, 1.0, 0.2, method="cell")
