"""Sampler physics: thermostats reach the set temperature, NVE conserves energy, neighbour-list
overflow is caught and recomputed, and large jit-compiled float32 reductions are correct."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from difftre_cli import neighbors, pair_kernels, potentials
from difftre_cli.errors import UserError
from difftre_cli.sampler import SamplerConfig, sampler_config
from difftre_cli.simulate import Sampler
from difftre_cli.system import build_system

LJ_PRIOR = OmegaConf.create({"kind": "lj", "epsilon": 1.0, "sigma": 1.0})
NO_MODEL = OmegaConf.create({"kind": "none"})


def _lj_system(n=256, density=0.7, kT=1.0):
    system = build_system(OmegaConf.create({"units": "lj", "n_particles": n, "density": density, "kT": kT}))
    potential = potentials.build(LJ_PRIOR, NO_MODEL, 2.5)
    return system, potential


# ---------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")   # from inside jax_md's NHC
@pytest.mark.parametrize("integrator", ["langevin", "nose_hoover"])
def test_thermostat_gives_set_temperature(integrator):
    system, potential = _lj_system(256, 0.7, 1.0)
    sampler = Sampler(potential, system, SamplerConfig(integrator=integrator, dt=0.005,
                                                       first_equilibration_steps=1000, production_steps=3000,
                                                       every=10))
    state, nbrs = sampler.init(jax.random.PRNGKey(0), {})
    res = sampler.sample({}, state, nbrs, first=True)
    assert res.ok
    kT = np.asarray(res.trajectory.kT, np.float64)
    assert kT.shape == (300,)
    assert kT.mean() == pytest.approx(1.0, rel=0.03)
    # instantaneous fluctuations are canonical-sized (relative std ≈ sqrt(2/(3N)) ≈ 0.05), not frozen
    assert 0.02 < kT.std() < 0.1
    # the fluid melted from the lattice: potential energy per particle of a dense LJ liquid
    u = np.asarray(res.trajectory.energies) / system.n_particles
    assert -5.0 < u.mean() < -3.0


def test_the_initial_forces_are_one_all_columns_call_equal_to_the_samplers_kernel():
    """Sampler.init evaluates the forces once, with the all-columns kernel (tracing and lowering
    the occupied-blocks switch of the sampler's force cost ~1.4 s of every start for that one
    call): no branch in its program, and the forces the chunk program's kernel gives there."""
    system, potential = _lj_system(256, 0.7, 1.0)
    sampler = Sampler(potential, system, SamplerConfig(integrator="langevin", dt=0.005, first_equilibration_steps=10,
                                                       production_steps=10, every=5))
    key = jax.random.PRNGKey(0)
    R = jnp.asarray(system.positions + np.random.default_rng(0).normal(0.0, 0.05, system.positions.shape),
                    jnp.float32)                       # off the lattice: forces of order 10
    state, nbrs = sampler.init(key, {}, positions=R)
    assert nbrs.idx.shape[1] > pair_kernels.BLOCK      # the sampler's own kernel is a switch over blocks
    assert float(jnp.max(jnp.abs(state.force))) > 5.0
    assert " cond[" not in str(sampler._init_state.trace(key, R, nbrs, {}).jaxpr)
    assert " cond[" in str(jax.make_jaxpr(lambda x: sampler.force(x, nbrs, {}))(R))
    np.testing.assert_allclose(np.asarray(state.force), np.asarray(jax.jit(sampler.force)(R, nbrs, {})),
                               rtol=1e-5, atol=1e-4)


def test_nve_conserves_energy():
    system, potential = _lj_system(256, 0.7, 1.0)
    sampler = Sampler(potential, system, SamplerConfig(integrator="nve", dt=0.005, first_equilibration_steps=0,
                                                       production_steps=2000, every=10))
    state, nbrs = sampler.init(jax.random.PRNGKey(1), {})
    res = sampler.sample({}, state, nbrs, first=True)
    assert res.ok
    n = system.n_particles
    kinetic = 1.5 * n * np.asarray(res.trajectory.kT, np.float64)   # kT = Σ p²/m / (3N) (sampler.py)
    potential_energy = np.asarray(res.trajectory.energies, np.float64)
    total = kinetic + potential_energy
    e0 = float(sampler.energy(state.position, nbrs, {})) + 0.5 * float(jnp.sum(state.momentum ** 2 / state.mass))
    drift = np.max(np.abs(total - e0)) / abs(e0)
    assert drift < 1e-3, drift
    # kinetic and potential energy do exchange (the check is not vacuous)
    assert np.ptp(potential_energy) > 100 * np.max(np.abs(total - e0))
    # and the final state is consistent with the last snapshot
    k_end = 0.5 * float(jnp.sum(res.state.momentum ** 2 / res.state.mass))
    assert k_end == pytest.approx(kinetic[-1], rel=1e-5)


# ---------------------------------------------------------------------------------------
def test_neighbour_list_overflow_is_recomputed():
    system, potential = _lj_system(128, 0.8, 1.0)
    cfg = SamplerConfig(integrator="langevin", dt=0.005, first_equilibration_steps=0, production_steps=100, every=10)
    small = Sampler(potential, system, cfg)
    state, _ = small.init(jax.random.PRNGKey(2), {})
    # a list allocated from a dilute configuration (same N, 8x the volume): far too few slots
    dilute_fn = neighbors.make_neighbor_fn(2.0 * system.box_size, potential.cutoff, cfg.skin, cfg.capacity_multiplier)
    dilute = dilute_fn.allocate(jnp.asarray(system.positions) * 2.0)
    ok_list = small.neighbor_fn.allocate(state.position)
    assert dilute.max_occupancy < ok_list.max_occupancy / 4
    res = small.sample({}, state, dilute, first=True)
    assert res.retries > 0
    assert not bool(res.neighbor.did_buffer_overflow)
    assert res.neighbor.max_occupancy > dilute.max_occupancy

    big = Sampler(potential, system, dataclasses.replace(cfg, capacity_multiplier=3.0))
    big_list = big.neighbor_fn.allocate(state.position)
    assert big_list.max_occupancy > res.neighbor.max_occupancy
    ref = big.sample({}, state, big_list, first=True)
    assert ref.retries == 0
    # same forces → the same trajectory, up to round-off (different summation order over the
    # padded slots) that the chaotic dynamics amplify ~10x per 50 steps
    np.testing.assert_allclose(np.asarray(res.trajectory.positions), np.asarray(ref.trajectory.positions),
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(res.trajectory.energies), np.asarray(ref.trajectory.energies),
                               rtol=1e-4)
    # with no re-allocation allowed, the overflow is reported as an unstable segment (the
    # trainer rejects the update), never silently accepted; the input state is handed back
    strict = Sampler(potential, system, dataclasses.replace(cfg, max_retries=0))
    bad = strict.sample({}, state, dilute, first=True)
    assert not bad.ok and "overflowing" in bad.reason
    np.testing.assert_array_equal(np.asarray(bad.state.position), np.asarray(state.position))


def test_sampler_config_validation():
    assert sampler_config({"kind": "langevin", "dt": 0.002}).dt == 0.002
    for bad in ({"dt": 0.0}, {"kind": "verlet"}, {"every": 0}, {"production_steps": 5, "every": 10},
                {"equilibration_steps": -1}, {"tau": 1.0}, {"integrator": "langevin"},   # the old name of kind
                # fewer slots than the measured occupancy would silently drop neighbours
                {"capacity_multiplier": 0.5}):
        with pytest.raises(UserError):
            sampler_config(bad)


# ---------------------------------------------------------------------------------------
def test_large_float32_reductions_jit_equals_eager():
    """JAX 0.10.2 miscompiles jit-compiled vmapped mat-vec + sum reductions on CPU
    (jax-ml/jax#39103); this must fail on such a build."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0.0, 1.0, size=(8, 100_000)).astype(np.float32)
    x = rng.uniform(0.0, 1.0, size=(100_000,)).astype(np.float32)
    vals = rng.uniform(0.0, 1.0, size=(100_000,)).astype(np.float32)

    def matvec_sum(a, x):
        rows = jax.vmap(lambda row: jnp.sum(row * x))(a)       # vmapped reduction over 1e5 elements
        return rows, jnp.sum(rows)

    expect_rows = a.astype(np.float64) @ x.astype(np.float64)
    for fn in (jax.jit(matvec_sum), matvec_sum):
        rows, total = fn(jnp.asarray(a), jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(rows, np.float64), expect_rows, rtol=1e-5)
        assert float(total) == pytest.approx(expect_rows.sum(), rel=1e-5)
    with jax.disable_jit():
        rows_eager, _ = matvec_sum(jnp.asarray(a), jnp.asarray(x))
    rows_jit, _ = jax.jit(matvec_sum)(jnp.asarray(a), jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(rows_jit), np.asarray(rows_eager), rtol=1e-5)
    # plain sums above and below the 32768-element boundary, and a mat-vec through dot
    for size in (32_767, 32_768, 32_769, 65_537, 100_000):
        v = jnp.asarray(vals[:size])
        assert float(jax.jit(jnp.sum)(v)) == pytest.approx(float(vals[:size].astype(np.float64).sum()), rel=1e-5)
    mv = jax.jit(jax.vmap(jnp.dot, in_axes=(0, None)))(jnp.asarray(a), jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(mv, np.float64), expect_rows, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["lj", "softcore", "lj_mixture"])
def test_first_equilibration_of_the_lj_presets_reaches_the_fluid(preset):
    """The presets equilibrate 1000 steps from the lattice (configs/config/lj.yaml): the first
    trajectory's RDF (under the initial model) must then be the fluid's, i.e. as close to one
    sampled after 20000 steps as two such independent runs are to each other (~0.006-0.009;
    the mixture's partial RDFs of its first state point, x_A = 0.25: ~0.08)."""
    from hydra import compose, initialize_config_dir

    from difftre_cli import assemble, states
    from difftre_cli.config_files import CONFIG_DIR
    from difftre_cli.learn.boltzmann import initial_params

    def first_rdf(seed, steps=None):
        extra = [] if steps is None else [f"simulator.first_equilibration_steps={steps}"]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name="train", overrides=[f"config={preset}", *extra])
        sub = states.state_configs(cfg)[0][1] if states.is_multistate(cfg) else cfg
        c = assemble.build(sub)
        params = initial_params(c, jax.random.PRNGKey(1), None)
        state, nbrs = c.sampler.init(jax.random.PRNGKey(seed), params)
        res = c.sampler.sample(params, state, nbrs, first=True)
        feats = c.engine.featurize(res.trajectory).static
        rdf = np.concatenate([np.asarray(feats[k]).mean(0) for k in sorted(feats) if k.startswith("rdf")])
        return rdf, cfg

    long = [first_rdf(seed, 20000)[0] for seed in (10, 11)]
    noise = np.sqrt(np.mean((long[0] - long[1]) ** 2))
    for seed in (0, 1):
        rdf, cfg = first_rdf(seed)
        assert cfg.simulator.first_equilibration_steps == 1000
        dev = min(np.sqrt(np.mean((rdf - ref) ** 2)) for ref in long)
        assert dev < max(1.5 * noise, 0.012), (dev, noise)
