"""The many-body potential on the engine (potentials/manybody.py): a pair prior plus DimeNet++,
sampled on a sparse graph whose capacities are measured and grown on overflow.

* stored-state energies and virials are the same in the dense and the sparse format, and the
  uniform-strain virial is the finite difference of a scaled box;
* a sampling segment with graph capacities too small for it is detected, the capacities grown
  and the segment recomputed: the trajectory equals one sampled with ample room;
* the observable engine's stored graphs: overflow grows them, the features do not change;
* a few DiffTRe updates of a small `config=water` run end to end (loss finite, N_eff ≤ S).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from difftre_cli import assemble
from difftre_cli.potentials.manybody import ManyBodyPotential

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# 64 water beads at 998 g/l (box 1.2415 nm), a small DimeNet++ (one block: every check here is an
# identity of the code paths a block takes; a second block adds ~8 % to each program's compile
# time here. Messages between two blocks: tests/test_gnn.py).
OVERRIDES = ["config=water", "system.n_particles=64", "system.box_size=1.2415", "system.lattice=sc",
             "model.embed_size=8", "model.out_embed_size=8", "model.int_emb_size=4", "model.num_blocks=1",
             "model.num_spherical=4", "model.num_radial=4", "model.num_dense_out=1",
             "simulator.first_equilibration_steps=100", "simulator.equilibration_steps=20",
             "simulator.production_steps=40", "simulator.every=10", "simulator.skin=0.05",
             "observables.rdf.r_max=0.55", "observables.rdf.n_bins=55", "targets.rdf.x_unit=nm",
             "evaluate.production_steps=40", "trainer.updates=2"]


def _components(extra=()):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return assemble.build(compose(config_name="train", overrides=OVERRIDES + list(extra)))


def _noisy(params, scale=0.05, seed=1):
    """The network's last layers start at zero (U_θ ≡ 0): add noise so it does something."""
    # NumPy's generator: jax.random op by op compiles a program per leaf shape (10 s here)
    leaves, tree = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_unflatten(
        tree, [jnp.asarray(np.asarray(p) + scale * rng.standard_normal(p.shape).astype(p.dtype)) for p in leaves])


@pytest.fixture(scope="module")
def melted():
    """(components, θ, the first segment from the lattice, the lattice's graph capacities). The
    segment starts with the sampler's graph capacities at the lattice's exact counts, which the
    liquid outgrows: they are grown on the way, and the sampler test's cramped segment (from the
    liquid, with the lattice's capacities) runs the two chunk programs compiled here (the run's
    compilation cache) instead of compiling two more (tens of seconds each)."""
    from difftre_cli.potentials.manybody import graph_counts
    c = _components()
    assert isinstance(c.potential, ManyBodyPotential)
    params = _noisy(c.potential.init(jax.random.PRNGKey(0)))
    state, nbrs = c.sampler.init(jax.random.PRNGKey(2), params)
    fitted = c.sampler.potential
    counts = graph_counts(nbrs.idx, state.position, fitted.box_size, fitted.list_cutoff)
    lattice = dataclasses.replace(fitted, **dict(zip(("max_edges", "max_degree"), (int(n) for n in counts))))
    c.sampler._bind(lattice)
    res = c.sampler.sample(params, state, nbrs, first=True)
    assert res.ok, res.reason
    return c, params, res, lattice


def test_dense_and_sparse_features_give_the_same_energy_and_virial(melted):
    c, params, res, _ = melted
    pot = c.sampler.potential
    assert pot.sparse and pot.max_degree > 0
    dense = dataclasses.replace(pot, max_edges=None, max_degree=None)
    box = pot.box_size

    # jit-compiled once for both configurations (op by op, each evaluation costs seconds)
    def energy_and_virials(p, R, idx):
        f = p.features_on_list(R, idx, box)
        u, w = jax.value_and_grad(lambda s: p.energy_from_features(params, f, s))(1.0)
        if p is dense:
            return u, w, None
        # the general strain gives the same derivative as the uniform one (trace)
        g = jax.grad(lambda e: p.energy_from_features(params, f, strain=e))(jnp.zeros((3, 3)))
        return u, w, jnp.trace(g)
    dense_fn = jax.jit(lambda R, idx: energy_and_virials(dense, R, idx))
    sparse_fn = jax.jit(lambda R, idx: energy_and_virials(pot, R, idx))
    nbrs = c.engine.energy_nbr_fn.allocate(res.trajectory.positions[-1])
    # (jit-compiled: op by op, the rebuild and the graph counts compile ~100 small programs)
    rebuild, overflow = jax.jit(c.engine.energy_nbr_fn.rebuild), jax.jit(pot.capacity_overflow)
    for R in res.trajectory.positions[-2:]:
        nb = rebuild(R, nbrs)
        assert not bool(overflow(R, nb.idx))
        ud, wd, _ = dense_fn(R, nb.idx)
        us, ws, trace = sparse_fn(R, nb.idx)
        assert abs(float(ud)) > 1.0
        assert float(us) == pytest.approx(float(ud), rel=1e-5)
        assert float(ws) == pytest.approx(float(wd), rel=1e-4, abs=1e-3)
        assert float(trace) == pytest.approx(float(ws), rel=1e-4, abs=1e-3)
    # the stored-state energy equals the sampler's energy of the same configuration (compiled:
    # op by op, ~200 small programs, ~10 s)
    assert float(jax.jit(c.sampler.energy)(res.state.position, res.neighbor, params)) == pytest.approx(
        float(res.trajectory.energies[-1]), rel=1e-6)


def test_virial_is_the_derivative_of_a_scaled_box(melted, double_precision):
    c, params, res, _ = melted
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), params)
    pot = c.sampler.potential
    R = jnp.asarray(res.trajectory.positions[-1], jnp.float64)
    nb = c.engine.energy_nbr_fn.allocate(R)
    h = 1e-5

    @jax.jit
    def scaled(R, box_size):   # the box size traced: both scaled boxes and the virial share one program
        p = dataclasses.replace(pot, box_size=box_size)
        f = p.features_on_list(R, nb.idx, box_size)
        return jax.value_and_grad(lambda s: p.energy_from_features(params, f, s))(1.0)
    _, w = scaled(R, pot.box_size)
    fd = (float(scaled(R * (1 + h), pot.box_size * (1 + h))[0])
          - float(scaled(R * (1 - h), pot.box_size * (1 - h))[0])) / (2 * h)
    assert float(w) == pytest.approx(fd, rel=1e-6)


def test_sampler_grows_an_overflowing_graph_and_recomputes_the_segment(melted, caplog):
    c, params, res, small = melted
    roomy = c.sampler.potential
    ample = c.sampler.sample(params, res.state, res.neighbor)
    # the same segment from the same state with capacities that cannot hold the graph: the
    # lattice's (the fixture's start), below the largest graph among the ample run's snapshots
    from difftre_cli.potentials.manybody import graph_counts
    counts = np.array([[int(n) for n in graph_counts(c.sampler.neighbor_fn.allocate(R).idx, R, roomy.box_size,
                                                        roomy.list_cutoff)]
                       for R in ample.trajectory.positions])
    n_edges, degree = counts.max(0)
    assert n_edges <= roomy.max_edges and degree <= roomy.max_degree
    assert small.max_edges < n_edges or small.max_degree < degree    # too small for the segment
    c.sampler._bind(small)
    with caplog.at_level(logging.INFO, logger="difftre"):
        cramped = c.sampler.sample(params, res.state, res.neighbor)
    assert "graph capacity overflowed" in caplog.text
    assert cramped.ok and cramped.retries >= 1
    grown = c.sampler.potential
    assert grown.max_edges >= n_edges and grown.max_degree >= degree and grown.max_degree > small.max_degree
    np.testing.assert_allclose(np.asarray(cramped.trajectory.positions), np.asarray(ample.trajectory.positions),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(cramped.trajectory.energies), np.asarray(ample.trajectory.energies),
                               rtol=1e-5)
    c.sampler._bind(roomy)


def test_state_by_state_backward_equals_autodiff(melted):
    """The learner's gradient for networks accumulates per-state VJPs (bounded memory); it must
    equal plain autodiff through a vmap over the states."""
    c, params, res, _ = melted
    engine, learner = c.engine, c.learner
    feats = engine.featurize(res.trajectory)
    fitted = engine.potential
    grads = []
    for batch in (3, None):
        engine._set_potential(dataclasses.replace(fitted, snapshot_batch=batch))
        (loss, _), g = jax.jit(jax.value_and_grad(learner.loss, has_aux=True))(params, feats)
        grads.append((float(loss), g))
    engine._set_potential(fitted)
    (l1, g1), (l2, g2) = grads
    assert l1 == pytest.approx(l2, rel=1e-5)
    flat1, flat2 = (np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)]) for g in (g1, g2))
    assert np.abs(flat2).max() > 0
    np.testing.assert_allclose(flat1, flat2, rtol=1e-4, atol=1e-5 * np.abs(flat2).max())


@pytest.mark.slow
def test_learner_grows_its_stored_graphs(melted, caplog):
    c, params, res, _ = melted
    engine = c.engine
    feats = engine.featurize(res.trajectory)
    assert engine.potential.sparse
    u0, _ = engine.snapshot_energies(params, feats.r)
    fitted = engine.potential
    engine._set_potential(dataclasses.replace(fitted, max_edges=fitted.max_edges // 2,
                                               max_degree=fitted.max_degree // 2))
    with caplog.at_level(logging.INFO, logger="difftre"):
        feats2 = engine.featurize(res.trajectory)
    assert "feature graph capacities grown" in caplog.text
    assert not bool(engine.potential.features_overflow(feats2.r))
    u1, _ = engine.snapshot_energies(params, feats2.r)
    np.testing.assert_allclose(np.asarray(u1), np.asarray(u0), rtol=1e-5)


@pytest.mark.slow
def test_a_small_water_run_trains(tmp_path):
    from difftre_cli.cli import main
    run = tmp_path / "run"
    code = main(["train", *OVERRIDES, f"hydra.run.dir={run}"])
    assert code == 0
    import csv
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 2
    for r in rows:
        assert np.isfinite(float(r["loss"])) and np.isfinite(float(r["grad_norm"]))
        assert 1.0 <= float(r["n_eff"]) <= 4.0 + 1e-3
    assert float(rows[0]["grad_norm"]) > 0
