"""Tests for difftre_cli.neighbors and the pair kernels on its lists, difftre_cli.pair_kernels
(fast, fixed seeds)."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difftre_cli import neighbors as nbm
from difftre_cli import pair_kernels as pk
from difftre_cli.potentials import distances_on_list

CUTOFF, SKIN = 2.5, 0.3


def _u_param(params, r, j):
    """LJ with σ and ε from ``params``."""
    return _lj(r, params["sigma"], params["eps"])


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


def _u_lj(params, r, j):
    """LJ as a list kernel's pair function u(params, r, j) (parameters and neighbour indices unused)."""
    return _lj(r)


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


@pytest.mark.parametrize("n,method", [(300, "brute"), (3000, "cell")])
def test_measure_gives_the_capacities_allocate_builds(n, method):
    """``measure`` sizes a list without building it (what the feature lists, built per snapshot
    inside the featurisation, and the sampler's first sizing need): the capacities ``allocate``
    gives, with and without extra room, and the measured occupancy fits the built list."""
    R, box = _random_positions(n, seed=n)
    fns = nbm.make_neighbor_fn(box, CUTOFF, SKIN, method=method)
    for extra in (0, 40):
        nbrs = fns.allocate(R, extra_capacity=extra)
        assert fns.measure(R, extra_capacity=extra) == nbm.capacities(nbrs)
        occupied = int(np.max(np.sum(np.asarray(nbrs.idx) < n, axis=1)))
        assert occupied < nbrs.max_occupancy <= 1.25 * occupied + extra + 1


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
    # the positions of test_dense_list_matches_brute_force[1000-...]: its allocations' programs
    R, box = _random_positions(1000, seed=1000)
    fns = nbm.make_neighbor_fn(box, CUTOFF, SKIN, method=method)
    nbrs = fns.allocate(R)
    # squeeze: same capacities, much denser configuration (half of the particles in a corner)
    R2 = R.at[:500].multiply(0.6)
    rebuild = jax.jit(fns.rebuild)   # one program for both rebuilds
    n2 = rebuild(R2, nbrs)
    assert bool(n2.did_buffer_overflow)
    # sticky
    n3 = rebuild(R, n2)
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
    tiny = dataclasses.replace(nbrs, idx=nbrs.idx[:, :5], max_occupancy=5)
    out = jax.jit(fns.rebuild)(R, tiny)   # (op by op: ~80 small programs)
    assert out.idx.shape == (400, 5)
    assert bool(out.did_buffer_overflow)


# the list an argument: both methods' lists (one shape) share the programs
@functools.partial(jax.jit, static_argnums=2)
def _lj_forces_and_energy(R, idx, box):
    return pk.pair_forces_and_energy(_u_lj, {}, R, idx, box, CUTOFF)


@functools.partial(jax.jit, static_argnums=2)   # (op by op: ~70 small programs)
def _lj_energy_and_gradient(R, idx, box):
    return jax.value_and_grad(lambda R: pk.pair_energy(_u_lj, {}, R, idx, box, CUTOFF))(R)


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
    F, E = _lj_forces_and_energy(R, idx, box)
    E2, G = _lj_energy_and_gradient(R, idx, box)
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
        F, E = pk.pair_forces_and_energy(_u_param, params, R, idx, box, CUTOFF)
        return E + 1e-3 * jnp.sum(F ** 2)

    params = {"sigma": jnp.float32(0.9), "eps": jnp.float32(1.0)}
    # jit-compiled (op by op: ~80 small programs)
    g = jax.jit(jax.grad(energy))(params)
    assert np.isfinite(float(g["sigma"])) and np.isfinite(float(g["eps"]))
    g2 = jax.jit(jax.grad(lambda p: pk.pair_energy(_u_param, p, R, idx, box, CUTOFF)))(params)
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


@pytest.mark.parametrize("n,method,box", [(1000, "brute", True), (2000, "cell", True), (300, "brute", False)])
def test_restricted_list_is_the_rebuild_at_the_shorter_cutoff(n, method, box):
    """A list at a shorter cutoff cut out of a longer one (the observable engine's energy list
    from its RDF list): a brute-force list's entries and their order are exactly a rebuild's, a
    cell list's the same pairs; a capacity too small for them is flagged as by a rebuild."""
    R, edge = _random_positions(n, density=0.5, seed=5)
    edge = edge if box else None
    long = nbm.make_neighbor_fn(edge, 3.08, 0.0, 1.3, method=method)
    short = nbm.make_neighbor_fn(edge, CUTOFF, 0.0, 1.3, method=method)
    nb_long, nb_short = long.allocate(R), short.allocate(R)
    R2 = R + 0.05   # rebuilt elsewhere than allocated
    want = jax.jit(short.rebuild)(R2, nb_short)
    wide = jax.jit(long.rebuild)(R2, nb_long)
    restrict = jax.jit(lambda nb: nbm.restrict(nb, R2, wide.idx, distances_on_list(R2, wide.idx, edge), CUTOFF))
    got = restrict(nb_short)
    assert got.idx.shape == want.idx.shape and not bool(got.did_buffer_overflow)
    assert int(got.num_builds) == int(want.num_builds)
    assert np.array_equal(np.asarray(got.reference_position), np.asarray(R2))
    if method == "brute":
        assert np.array_equal(np.asarray(got.idx), np.asarray(want.idx))
    rows = lambda nb: np.sort(np.asarray(nb.idx), axis=1)  # each row's set, padding last
    assert np.array_equal(rows(got), rows(want)) and int(np.sum(np.asarray(got.idx) < n)) > 10 * n
    tiny = dataclasses.replace(nb_short, idx=nb_short.idx[:, :5], max_occupancy=5)
    out = restrict(tiny)
    assert out.idx.shape == (n, 5) and bool(out.did_buffer_overflow)


def _fluid_list(n=216, extra=60, seed=11):
    """A random fluid (simple-cubic lattice of n = k^3 sites + noise: no overlaps) and its list
    with ``extra`` padding slots."""
    _, box = _random_positions(n, seed=seed)
    n_side = round(n ** (1 / 3))
    g = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    R = jnp.asarray(np.mod((g + 0.5) * box / n_side + rng.normal(0, 0.15, g.shape), box), jnp.float32)
    nbrs = nbm.make_neighbor_fn(box, CUTOFF, SKIN, method="brute").allocate(R, extra_capacity=extra)
    return R, box, nbrs.idx


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _kernel_jit(R, idx, box, block, u, cutoff):
    return pk.pair_forces_and_energy(u, {}, R, idx, box, cutoff, block=block)


def _kernel(R, idx, box, block, u=_u_lj, cutoff=CUTOFF):
    """The kernel with the list an argument (as in a run: lists of one shape share a program)."""
    return _kernel_jit(R, idx, float(box), block, u, float(cutoff))


def _soft(params, r, j):
    """A pair function that is finite at any distance (for lists of random pairs)."""
    return jnp.exp(-r)


def _assert_same(a, b):
    np.testing.assert_allclose(np.asarray(b[0]), np.asarray(a[0]), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(b[1]), float(a[1]), rtol=1e-6)


def test_blocked_forces_equal_full_width_on_a_padded_list():
    """The kernel on the occupied column blocks only equals the full-width kernel on a list with
    lots of padding, whether the occupied width is a multiple of the block or not, and in a
    list widened with more padding columns."""
    R, box, idx = _fluid_list()
    n, m = idx.shape
    w = int(pk.occupied_width(idx))
    counts = np.sum(np.asarray(idx) < n, axis=1)
    assert w == counts.max() and m - w >= 60            # compacted rows, lots of padding
    rc = CUTOFF + SKIN + 0.01                           # every listed pair counts (the last column too)
    full = _kernel(R, idx, box, None, cutoff=rc)
    for block in (w, w - 1, 24, m + 5):                 # occupied: 1 block, 2 (1 column in the 2nd), partial, all
        _assert_same(full, _kernel(R, idx, box, block, cutoff=rc))
    wide = jnp.pad(idx, ((0, 0), (0, 100)), constant_values=n)
    _assert_same(full, _kernel(R, wide, box, 40, cutoff=rc))


def test_blocked_kernel_runs_only_the_occupied_blocks():
    """The taken branch computes ceil(w / B) * B columns (w the occupied width), however wide the
    list is allocated."""
    # (padding of a few blocks: the compiled switch has a branch per block of the allocated
    # width, ~0.7 s each; the taken branch is the same however many there are)
    R, box, idx = _fluid_list(n=125, extra=20)
    n = idx.shape[0]
    w = int(pk.occupied_width(idx))
    assert idx.shape[1] - w >= 32          # occupied blocks of 8 and 16 columns leave more unused
    seen = []

    def u(params, r, j):
        jax.debug.callback(lambda c: seen.append(int(c)), jnp.int32(r.shape[1]))
        return _lj(r)

    for extra, block in ((0, 8), (30, 16), (0, w)):
        wide = jnp.pad(idx, ((0, 0), (0, extra)), constant_values=n)
        seen.clear()
        jax.block_until_ready(_kernel(R, wide, box, block, u))
        assert seen == [-(-w // block) * block], (extra, block, seen)


def test_blocked_kernel_keeps_a_lone_crowded_row_and_empty_lists():
    """One particle with far more neighbours than the others (97 = 6 x 16 + 1: its last one alone
    in the last occupied block), a row whose only neighbour sits in the last column behind padding
    (not compacted), and an empty list: the blocked kernel equals the full-width one (and is zero
    on the empty list). Every listed pair is within the kernel's cutoff here."""
    R, box = _random_positions(150, seed=12)
    n, m, rc = 150, 120, float(box)
    rng = np.random.default_rng(12)
    idx = np.full((n, m), n, np.int32)
    idx[0, :97] = np.arange(1, 98)
    for i in range(1, n):
        others = np.setdiff1d(np.arange(n), [i])
        idx[i, :3] = rng.choice(others, 3, replace=False)
    crowded = jnp.asarray(idx)
    assert int(pk.occupied_width(crowded)) == 97
    full = _kernel(R, crowded, box, None, _soft, rc)
    for block in (8, 16, 32):
        _assert_same(full, _kernel(R, crowded, box, block, _soft, rc))
    gap = np.array(idx)
    gap[:, 3:] = n
    gap[5, 1:3], gap[5, m - 1] = n, 77                    # padding, then a neighbour in the last column
    gap = jnp.asarray(gap)
    assert int(pk.occupied_width(gap)) == m
    _assert_same(_kernel(R, gap, box, None, _soft, rc), _kernel(R, gap, box, 16, _soft, rc))
    empty = jnp.full((n, m), n, jnp.int32)
    assert int(pk.occupied_width(empty)) == 0
    blocked = _kernel(R, empty, box, 16, _soft, rc)
    assert float(jnp.abs(blocked[0]).max()) == 0.0 and float(blocked[1]) == 0.0


def test_blocked_kernel_gradients_equal_full_width():
    """Reverse- and forward-mode derivatives through the blocked kernel (direct AD through the
    integrator and gradients of forces take them) equal the full-width kernel's, and are the
    full-width kernel's: no switch in the gradient's program (its reverse mode would carry every
    branch's residuals), one in the forward program."""
    R, box, idx = _fluid_list(n=125, extra=50)
    params = {"sigma": jnp.float32(0.95), "eps": jnp.float32(1.1)}

    def loss(p, R, block):
        F, E = pk.pair_forces_and_energy(_u_param, p, R, idx, box, CUTOFF, block=block)
        return 1e-3 * jnp.sum(F ** 2) + E

    def derivatives(block):
        g = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(params, R, block)
        # jit-compiled (op by op: the forward-mode pass compiles a program per operation)
        t = jax.jit(lambda: jax.jvp(lambda s: loss(params, R * s, block), (jnp.float32(1.0),),
                                    (jnp.float32(1.0),))[1])()
        return g, t

    ref, ref_t = derivatives(None)
    g, t = derivatives(32)
    np.testing.assert_allclose(float(g[0]["sigma"]), float(ref[0]["sigma"]), rtol=1e-4)
    np.testing.assert_allclose(float(g[0]["eps"]), float(ref[0]["eps"]), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(g[1]), np.asarray(ref[1]), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(float(t), float(ref_t), rtol=1e-4)
    assert "cond[" not in str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(params, R, 32))
    assert "cond[" in str(jax.make_jaxpr(loss, static_argnums=2)(params, R, 32))
