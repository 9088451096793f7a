"""Several particle types and several state points: partial RDFs, per-pair potentials, the
multi-state loss, the temperature-dependent pair model."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from difftre_cli import assemble, neighbors
from difftre_cli.config import validate
from difftre_cli.errors import UserError
from difftre_cli.observables import Context
from difftre_cli.observables.rdf import RDF
from difftre_cli.potentials import distances_on_list, mixture, pair, priors
from difftre_cli.states import state_configs
from difftre_cli.system import species_from_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

# A small version of config=lj_mixture: 108 particles per state point, short trajectories.
SMALL = ["config=lj_mixture", "system.n_particles=108", "simulator.first_equilibration_steps=300",
         "simulator.equilibration_steps=50", "simulator.production_steps=100", "simulator.every=10",
         *[f"observables.rdf_{p}.r_max=2.4" for p in ("AA", "AB", "BB")]]


# Two of the three state points (x_A = 0.25, 0.75), for the tests whose checks hold for any
# number of them (sums over state points, every state point initialised): each state point
# compiles programs of its own (the species are constants in its MD chunk program, ~5-8 s).
TWO_STATES = ["~states.xA50"]


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="train", overrides=overrides)


def _random_mixture(n=80, box=5.0, seed=0):
    rng = np.random.default_rng(seed)
    R = rng.uniform(0, box, size=(n, 3))
    names, species = species_from_config({"A": 0.3, "B": 0.7}, n)
    return R, names, species


def test_partial_rdfs_add_up_to_the_total_rdf():
    R, names, species = _random_mixture()
    n, box = len(R), 5.0
    nbr = neighbors.make_neighbor_fn(box, 2.45, 0.0, 1.3).allocate(jnp.asarray(R))
    r = distances_on_list(jnp.asarray(R), nbr.idx, box)
    code = species[:, None] * 2 + species[np.minimum(np.asarray(nbr.idx), n - 1)]
    counts = tuple(int((species == k).sum()) for k in range(2))
    ctx = Context(n, box ** 3, 1.0, names, counts, species)
    q = {"r": r, "code": jnp.asarray(code)}
    g = {}
    for which in (None, ("A", "A"), ("A", "B"), ("B", "B")):
        obs = RDF(name="g", r_min=0.0, r_max=2.0, n_bins=40, sigma=0.05, pair=which)
        g[which] = np.asarray(obs.snapshot(ctx, q))
    na, nb = counts
    total = (na * (na - 1) * g[("A", "A")] + 2 * na * nb * g[("A", "B")] + nb * (nb - 1) * g[("B", "B")]) / (n * (n - 1))
    assert g[None].max() > 0.5     # not a trivially empty histogram
    np.testing.assert_allclose(total, g[None], rtol=1e-5, atol=1e-6)
    # each partial RDF is normalised by its own pair count: an ideal gas gives g_ab ≈ 1 at large r
    for which in (("A", "B"), ("B", "B")):
        assert 0.6 < g[which][-10:].mean() < 1.4


def test_mixture_potential_forces_and_single_species_limit():
    R, names, species = _random_mixture(n=60, box=5.0, seed=1)
    box, cutoff = 5.0, 2.0
    model = pair.SplinePair(r_min=0.7, cutoff=cutoff, n_knots=8)
    pri = (priors.repulsive(sigma=0.9, cutoff=cutoff), priors.repulsive(sigma=1.0, cutoff=cutoff),
           priors.repulsive(sigma=1.1, cutoff=cutoff))
    pot = mixture.MixturePairPotential(names, pri, model, cutoff).bind(
        type("S", (), {"species_names": names, "species": species, "kT": 1.0})())
    params = pot.init(jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda x: 0.1 * jax.random.normal(jax.random.PRNGKey(3), x.shape), params)
    nfn = neighbors.make_neighbor_fn(box, cutoff, 0.3, 1.3)
    Rj = jnp.asarray(R)
    nbr = nfn.allocate(Rj)
    energy = pot.energy_fn(box)
    force = pot.force_fn(box)
    f_auto = -jax.grad(lambda x: energy(x, nbr, params))(Rj)
    np.testing.assert_allclose(np.asarray(force(Rj, nbr, params)), np.asarray(f_auto), rtol=2e-3, atol=2e-3)
    # the energy from stored features equals the energy on the list
    feats = pot.features_on_list(Rj, nbr.idx, box)
    np.testing.assert_allclose(float(pot.energy_from_features(params, feats)), float(energy(Rj, nbr, params)),
                               rtol=1e-5)
    # the pair types matter: swapping the species changes the energy
    swapped = pot.bind(type("S", (), {"species_names": names, "species": 1 - species, "kT": 1.0})())
    assert abs(float(swapped.energy_fn(box)(Rj, nbr, params)) - float(energy(Rj, nbr, params))) > 1e-3
    # equal priors and equal models for every pair: the mixture is the one-species potential
    same = mixture.MixturePairPotential(names, (pri[1],) * 3, model, cutoff, species=species)
    p1 = model.init(None)
    p1 = {"knot_values": 0.1 * jnp.arange(p1["knot_values"].size, dtype=jnp.float32)}
    p_same = {"model": {name: p1 for name, _, _ in same.pairs}}
    from difftre_cli.potentials import PairPotential
    single = PairPotential(pri[1], model, cutoff)
    np.testing.assert_allclose(float(same.energy_fn(box)(Rj, nbr, p_same)),
                               float(single.energy_fn(box)(Rj, nbr, {"model": p1})), rtol=1e-5)


def test_thermal_model_reduces_to_u1_at_zero_temperature():
    u1 = pair.SplinePair(r_min=0.8, cutoff=2.5, n_knots=10)
    u2 = pair.SplinePair(r_min=0.8, cutoff=2.5, n_knots=10)
    model = pair.ThermalPair(u1, u2)
    params = {"u1": {"knot_values": jnp.linspace(1.0, 0.1, 9)}, "u2": {"knot_values": jnp.linspace(-0.5, 0.3, 9)}}
    r = jnp.linspace(0.85, 2.4, 50)
    np.testing.assert_allclose(np.asarray(model.at_kT(0.0)(params, r)), np.asarray(u1(params["u1"], r)))
    np.testing.assert_allclose(np.asarray(model.at_kT(1.7)(params, r)),
                               np.asarray(u1(params["u1"], r) - 1.7 * u2(params["u2"], r)), rtol=1e-6)
    with pytest.raises(RuntimeError):
        model(params, r)   # no temperature bound yet


def test_state_points_bind_their_own_temperature_and_composition():
    cfg = compose_cfg(["config=lj", "model=thermal", "system.n_particles=108", "observables.rdf.r_max=2.4",
                       "states={T15: {system: {kT: 1.5}}, T20: {system: {kT: 2.0, density: 0.4}}}"])
    subs = dict(state_configs(cfg))
    assert subs["T20"].system.kT == 2.0 and subs["T20"].system.density == 0.4 and subs["T15"].system.density == 0.5
    cs = dict(assemble.build_states(cfg))
    assert cs["T15"].potential.model.kT == 1.5 and cs["T20"].potential.model.kT == 2.0
    cfg = compose_cfg(SMALL)
    cs = dict(assemble.build_states(cfg))
    assert cs["xA25"].system.counts == (27, 81) and cs["xA75"].system.counts == (81, 27)
    assert cs["xA25"].ctx.counts == (27, 81)


def test_multistate_loss_and_gradient_are_sums_over_single_state_runs(persistent_compilation_cache):
    """The multi-state regime's loss and gradient equal the sums over separately configured
    single-state runs (states=null with the state point's system and targets) on the same
    trajectories; the update is one optimiser step with the summed gradient. The single-state
    runs load the programs they share with the multi-state run (featurisation, per-state
    gradient) from the persistent cache instead of compiling them again."""
    from difftre_cli.learn.multistate import MultiStateDiffTReRegime
    from difftre_cli.store import RunStore

    cfg = compose_cfg(SMALL + TWO_STATES + ["optimizer=sgd", "optimizer.lr=0.01", "optimizer.schedule=constant",
                                            "trainer.precondition=none", "trainer.step_rule=fixed"])
    validate(cfg)
    states = assemble.build_states(cfg)
    assert [name for name, _ in states] == ["xA25", "xA75"]
    regime = MultiStateDiffTReRegime(states, RunStore("/tmp/unused-test-mixture"), ratio=0.0)
    params, opt_state = regime.init(jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda x: x + 0.05, params)
    trajs = {}
    for (name, c), sub in zip(states, regime.subs):
        res = c.sampler.sample(params, sub.state, sub.nbrs, first=True)
        assert res.ok
        trajs[name] = res.trajectory
        sub.feats = c.engine.featurize(res.trajectory)
        sub.next_n_eff = float("inf")
    prop = regime.propose(params, opt_state, 1.0)
    assert prop.fields["reused"] == 1 and not prop.event
    total, grads = 0.0, None
    for name, _ in states:
        single = OmegaConf.create(OmegaConf.to_container(cfg))
        with open_dict(single):
            single.states = None
            single.system = OmegaConf.merge(cfg.system, cfg.states[name].system)
            single.targets = cfg.states[name].targets
        c = assemble.build(single)
        loss, losses, _, _, g = c.learner.grad(params, c.engine.featurize(trajs[name]))
        for t in c.targets:
            np.testing.assert_allclose(prop.fields[f"loss_{name}_{t}"], float(losses[t]), rtol=1e-5)
        total += float(loss)
        grads = g if grads is None else jax.tree_util.tree_map(jnp.add, grads, g)
    np.testing.assert_allclose(prop.fields["loss"], total, rtol=1e-5)
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, grads)
    for a, b in zip(jax.tree_util.tree_leaves(prop.params), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("override, message", [
    ("system.species={A:0.3,B:0.3}", "sum to"),
    ("system.species={A:0.001,B:0.999}", "at least one particle"),
    ("+prior.pairs.A-C={sigma:1.0}", "no such species pair"),
    ("observables.rdf_AB.pair=[A,C]", "no species 'C'"),
    ("+states.xA25.simulator={dt:0.001}", "unknown key"),
])
def test_mixture_config_errors(override, message):
    cfg = compose_cfg(SMALL + [override])
    with pytest.raises(UserError, match=message):
        validate(cfg)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


# difftre in the default suite; ibi and direct_ad (same code paths for checkpoints, ~2-4 min
# each on 2 cores) with -m slow
@pytest.mark.parametrize("trainer", [pytest.param("difftre", marks=pytest.mark.slow), pytest.param("ibi", marks=pytest.mark.slow),
                                     pytest.param("direct_ad", marks=pytest.mark.slow)])
def test_every_trainer_runs_on_the_mixture_and_resumes_exactly(tmp_path, trainer, persistent_compilation_cache):
    """2 updates of each trainer on three state points of the binary mixture: per-state metrics
    and trajectories, finite losses, moved parameters; 1 update + resume + 1 update gives the
    same parameters and metrics as 2 straight (the multi-state checkpoint holds every state
    point's simulation). The later runs load the first one's compiled programs (persistent
    cache, as a resumed `difftre train` does): three compilations of the same programs would
    dominate the test."""
    from difftre_cli.train import Trainer

    extra = {"difftre": [], "ibi": ["trainer=ibi", "model=table", "model.r_min=0.7", "model.cutoff=2.0", "model.n_points=27"],
             "direct_ad": ["trainer=direct_ad", "trainer.steps=20", "trainer.every=10"]}[trainer]
    # Roomy neighbour lists: a list re-allocation is built at the overflowing chunk's start, and
    # chunk boundaries follow the measured wall time (sampler.py), so on a loaded machine the two
    # runs could re-allocate at different steps (equally valid, not bit-identical). Resume with
    # re-allocations is covered by test_kill_resume / test_chunks.
    overrides = SMALL + extra + ["trainer.checkpoint_every=1", "optimizer.schedule=constant",
                                 "simulator.capacity_multiplier=2.0"]
    runs = {}
    for tag, plan in (("straight", [2]), ("resumed", [1, 2])):
        for k, n in enumerate(plan):
            cfg = compose_cfg(overrides + [f"trainer.updates={n}"])
            validate(cfg)
            runs[tag] = Trainer(cfg, tmp_path / tag, quiet=True).run(resume=k > 0)
    rows = runs["straight"]["rows"]
    assert len(rows) == 2 and all(r["event"] == "ok" for r in rows)
    for state in ("xA25", "xA50", "xA75"):
        for t in ("rdf_AA", "rdf_AB", "rdf_BB"):
            assert np.isfinite(rows[0][f"loss_{state}_{t}"])
        assert (tmp_path / "straight" / "trajectories" / f"{state}_ref_00000.h5md").is_file()
    init = Trainer(compose_cfg(overrides + ["trainer.updates=2"]), tmp_path / "init", quiet=True)
    p0 = init.regime.init(jax.random.PRNGKey(0))[0]
    assert any(np.abs(a - b).max() > 0 for a, b in zip(_leaves(p0), _leaves(runs["straight"]["params"])))
    for a, b in zip(_leaves(runs["straight"]["params"]), _leaves(runs["resumed"]["params"])):
        np.testing.assert_array_equal(a, b)
    for ra, rb in zip(rows, runs["resumed"]["rows"]):
        for key, v in ra.items():
            if key not in ("sample_time", "update_time") and isinstance(v, float):
                assert v == rb[key] or (np.isnan(v) and np.isnan(rb[key])), key


@pytest.mark.parametrize("trainer", ["direct_ad", "ibi"])
def test_multistate_regimes_other_than_difftre_initialise(tmp_path, trainer):
    """The multi-state direct_ad and ibi regimes share difftre's init, which asks for
    trainer.state_parallel; they must start (sequential) rather than fail with an
    AttributeError (`difftre train config=lj_mixture trainer=direct_ad` did)."""
    from difftre_cli.learn import multistate
    from difftre_cli.train import Trainer

    extra = {"ibi": ["trainer=ibi", "model=table", "model.r_min=0.7", "model.cutoff=2.0", "model.n_points=27"],
             "direct_ad": ["trainer=direct_ad", "trainer.steps=20", "trainer.every=10"]}[trainer]
    cfg = compose_cfg(SMALL + TWO_STATES + extra + ["trainer.updates=1"])
    validate(cfg)
    regime = Trainer(cfg, tmp_path / trainer, quiet=True).regime
    assert isinstance(regime, multistate.MultiStateDiffTReRegime)
    params, _ = regime.init(jax.random.PRNGKey(0))
    assert regime.state_parallel == "sequential" and len(regime.subs) == 2
    assert all(sub.state is not None for sub in regime.subs)
