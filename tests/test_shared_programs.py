"""State points that differ only in composition and target data (a data group, states.py) share
the DiffTRe learner's compiled programs (learn/shared_programs.py) and the samplers' chunk and
initial-state programs (simulate.share_programs): which ones are grouped, and that a shared
program computes what each state point's own program computes."""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from difftre_cli import assemble
from difftre_cli.config import validate
from difftre_cli.learn.registry import trainer_kind
from difftre_cli.shared_jit import Bound
from difftre_cli.states import data_groups, state_configs
from difftre_cli.store import RunStore

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# config=lj_mixture at 108 particles, two of its three compositions (as tests/test_mixture.py)
SMALL = ["config=lj_mixture", "system.n_particles=108", "simulator.first_equilibration_steps=300",
         "simulator.equilibration_steps=50", "simulator.production_steps=100", "simulator.every=10",
         *[f"observables.rdf_{p}.r_max=2.4" for p in ("AA", "AB", "BB")], "~states.xA50"]


def compose_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.parametrize("override, grouped", [
    ([], [[0, 1, 2]]),                                                   # compositions and target files differ
    (["+states.xA75.targets.rdf_AA.histogram=false"], [[0, 1, 2]]),      # a data key of a target
    (["+states.xA75.system.kT=1.2"], [[0, 1]]),                          # another temperature
    (["+states.xA75.targets.rdf_AA.gamma=2.0"], [[0, 1]]),               # another weight of a target's loss
    (["~states.xA50.targets.rdf_BB"], [[0, 2]]),                         # fewer targets
    (["+states.xA25.system.n_particles=256", "+states.xA75.system.n_particles=256"], [[0, 2]]),
])
def test_state_points_are_grouped_when_only_composition_and_target_data_differ(override, grouped):
    cfg = compose_cfg(["config=lj_mixture", *override])
    assert data_groups(state_configs(cfg)) == grouped


def test_shared_programs_compute_what_each_state_points_own_programs_do(tmp_path):
    """Two compositions of the mixture with the preset's Gauss–Newton step (J shrunk towards the
    local response, which reads the target values) and line search: on the same trajectory, the
    shared featurisation, gradient, Gauss–Newton matrix, trials and N_eff of each state point
    equal its own (unshared) learner's; each shared program is traced and compiled once for
    both, and their feature lists have one shape."""
    cfg = compose_cfg(SMALL)
    validate(cfg)
    states = assemble.build_states(cfg)
    own = dict(assemble.build_states(cfg))          # the same state points with programs of their own
    regime = trainer_kind("difftre").multistate(cfg, RunStore(tmp_path), states)
    learners = [c.learner for _, c in states]
    assert all(isinstance(learner.grad, Bound) for learner in learners)
    assert not isinstance(own["xA25"].learner.grad, Bound)
    params = jax.tree_util.tree_map(lambda x: x + 0.05, regime.init(jax.random.PRNGKey(0))[0])
    updates = jax.tree_util.tree_map(lambda x: 0.02 * np.ones_like(x), params)

    def close(a, b):   # float32 sums over other list widths: the same up to summation order
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=2e-4, atol=1e-4 * float(np.abs(b).max()) + 1e-7)
    for (name, c), sub in zip(states, regime.subs):
        res = c.sampler.sample(params, sub.state, sub.nbrs, first=True)
        assert res.ok
        mine = own[name]
        feats, theirs = c.engine.featurize(res.trajectory), mine.engine.featurize(res.trajectory)
        for obs in feats.static:
            close(feats.static[obs], theirs.static[obs])
        a, b = c.learner.grad(params, feats), mine.learner.grad(params, theirs)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            close(x, y)
        jtj, m, jtr = c.learner.gauss_newton(params, feats)
        jtj0, m0, jtr0 = mine.learner.gauss_newton(params, theirs)
        close(jtj, jtj0)
        close(jtr, jtr0)
        assert float(m) == float(m0)
        for x, y in zip(c.learner.trials(params, updates, feats), mine.learner.trials(params, updates, theirs)):
            close(x, y)
        close(c.learner.n_eff(params, feats), mine.learner.n_eff(params, theirs))
    template = learners[0]
    assert template.trace_count["grad"] == 1 and template.engine.trace_count["featurize"] == 1
    for learner in learners:
        for program in (learner.grad, learner.gauss_newton, learner.trials, learner.n_eff, learner.engine._featurize):
            assert program._cache_size() == 1
    assert learners[1].trace_count["grad"] == 0   # (its own programs never ran)
    # (mine's own learners differ: their state data are constants, and each compiled its own)
    assert own["xA25"].learner.trace_count["grad"] == 1 and own["xA75"].learner.trace_count["grad"] == 1


def test_samplers_of_a_data_group_share_one_chunk_program(tmp_path):
    """Two compositions: the shared chunk and initial-state programs give each state point the
    trajectory its own sampler gives (species as an argument instead of a constant); the chunk
    program is traced and compiled once, by the template, which alone compiles it ahead; the
    other sampler's trajectory neither traces nor compiles; both use one set of list builds."""
    cfg = compose_cfg(SMALL)
    validate(cfg)
    states = assemble.build_states(cfg)
    own = {name: assemble.build(sub) for name, sub in state_configs(cfg)}   # programs of their own
    samplers = [c.sampler for _, c in states]
    assert all(isinstance(s._chunk, Bound) for s in samplers) and not isinstance(own["xA25"].sampler._chunk, Bound)
    assert samplers[0]._chunk.leads and not samplers[1]._chunk.leads
    assert samplers[0].neighbor_fn is samplers[1].neighbor_fn            # memoised list functions
    assert np.any(samplers[0].potential.species != samplers[1].potential.species)
    params = jax.tree_util.tree_map(lambda x: x + 0.05, states[0][1].potential.init(jax.random.PRNGKey(0)))
    n = samplers[0].cfg.n_snapshots
    inits = [(s, *s.init(jax.random.PRNGKey(k), params, ahead=n)) for k, s in enumerate(samplers)]
    assert samplers[1]._ahead is samplers[0]._ahead
    results = [s.sample(params, st, nb, first=True) for s, st, nb in inits]
    assert samplers[0].trace_count == 1 and samplers[1].trace_count == 0
    assert samplers[0]._chunk._cache_size() == 1
    for k, ((name, c), res) in enumerate(zip(states, results)):
        mine = own[name].sampler
        st, nb = mine.init(jax.random.PRNGKey(k), params)
        ref = mine.sample(params, st, nb, first=True)
        assert res.ok and ref.ok
        np.testing.assert_allclose(np.asarray(res.trajectory.positions), np.asarray(ref.trajectory.positions),
                                   atol=1e-4)
        np.testing.assert_allclose(np.asarray(res.trajectory.energies), np.asarray(ref.trajectory.energies),
                                   rtol=1e-5)
