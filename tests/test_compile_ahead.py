"""Programs compiled ahead in a background thread (compile_ahead.py): the MD chunk program while
the sampler computes its initial state, DiffTRe's update while the first trajectory is
featurised. The later call must find the executable (no second compilation) and give the same
numbers as without compiling ahead; a compilation that fails in the thread must surface as the
call's own error."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from difftre_cli import assemble
from difftre_cli.compile_ahead import CompileAhead
from difftre_cli.config_files import CONFIG_DIR
from difftre_cli.learn.difftre_regime import DiffTReRegime
from difftre_cli.store import RunStore


@contextlib.contextmanager
def compilations_here():
    """Names of the programs XLA compiles in this thread inside the block (JAX's compile event)."""
    names, me = [], threading.get_ident()

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration" and threading.get_ident() == me:
            names.append(str(kwargs.get("fun_name", "")))
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _components(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=["config=tiny", *overrides])
    return assemble.build(cfg)


def test_chunk_program_compiled_during_init_is_the_one_the_trajectory_runs():
    ahead, plain = _components(), _components()
    params = ahead.potential.init(jax.random.PRNGKey(0))
    n = ahead.sampler.cfg.n_snapshots
    state, nbrs = ahead.sampler.init(jax.random.PRNGKey(1), params, ahead=n)
    with compilations_here() as compiled:
        res = ahead.sampler.sample(params, state, nbrs, first=True)
    assert not any("chunk" in name for name in compiled), compiled   # it was compiled during init
    assert ahead.sampler.trace_count == 1
    state0, nbrs0 = plain.sampler.init(jax.random.PRNGKey(1), params)
    with compilations_here() as compiled:
        ref = plain.sampler.sample(params, state0, nbrs0, first=True)
    assert any("chunk" in name for name in compiled), compiled       # (the probe sees a compilation)
    assert res.ok and ref.ok
    np.testing.assert_array_equal(np.asarray(res.trajectory.positions), np.asarray(ref.trajectory.positions))
    np.testing.assert_array_equal(np.asarray(res.trajectory.energies), np.asarray(ref.trajectory.energies))


@pytest.mark.parametrize("overrides", [[], ["optimizer=adam", "trainer.precondition=none"]])
def test_first_update_compiled_during_featurisation_is_the_one_that_runs(tmp_path, overrides):
    """Line search + Gauss–Newton (the lj preset's step) and plain Adam: one trace of the update,
    whose first call found it compiled; the same parameters as an update compiled on the call."""
    results = []
    for name, ahead in (("ahead", True), ("plain", False)):
        c = _components("trainer.precondition=gauss_newton", "+trainer.step_rule.kind=line_search", *overrides)
        regime = DiffTReRegime(c, RunStore(tmp_path / name), ratio=0.3)
        params, opt_state = regime.init(jax.random.PRNGKey(0))
        if not ahead:   # compile on the call: the regime's first trajectory without the ahead request
            c.learner.compile_step_ahead = lambda *a, **k: None
        with compilations_here() as compiled:   # (this thread's: not the background one's)
            prop = regime.propose(params, opt_state, 1.0)
        assert not prop.event
        assert c.learner.trace_count["step"] == 1
        assert any("_step_impl" in name for name in compiled) == (not ahead), compiled
        results.append(prop.params)
    for a, b in zip(jax.tree_util.tree_leaves(results[0]), jax.tree_util.tree_leaves(results[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_failed_ahead_compilation_leaves_the_error_to_the_call():
    def bad(x):
        if x.shape[0] == 3:
            raise ValueError("cannot compile this shape")
        return x + 1
    fn = jax.jit(bad)
    ahead = CompileAhead()
    ahead.start(fn, jax.ShapeDtypeStruct((3,), jnp.float32))
    ahead.wait()                                   # no exception from the thread
    with pytest.raises(ValueError, match="cannot compile this shape"):
        fn(jnp.zeros(3))
    ahead.start(fn, jax.ShapeDtypeStruct((2,), jnp.float32))
    ahead.wait()
    with compilations_here() as compiled:
        np.testing.assert_array_equal(np.asarray(fn(jnp.zeros(2))), [1.0, 1.0])
    assert not any("bad" in name for name in compiled), compiled


def test_a_run_that_stops_while_compiling_ahead_exits_with_its_own_code():
    """A user error raised while a program compiles in the background ends the process with the
    error's exit code and message, not an abort from XLA's thread at interpreter shutdown."""
    code = """
import sys, jax, jax.numpy as jnp
from difftre_cli.compile_ahead import CompileAhead
def slow(x):
    for i in range(300):
        x = jnp.sin(x) * 1.0001 + jnp.cos(x * i)
    return x
CompileAhead().start(jax.jit(slow), jax.ShapeDtypeStruct((1000,), jnp.float32))
print("error: the config is wrong", file=sys.stderr)
sys.exit(2)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", "DIFFTRE_COMPILATION_CACHE": "off"})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error: the config is wrong" in out.stderr
    assert "Traceback" not in out.stderr and "terminate" not in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("trainer", ["difftre", "ibi"])
def test_every_state_points_chunk_program_compiles_during_init(tmp_path, trainer):
    """Several state points (a small config=lj_mixture, one data group: one shared chunk program,
    simulate.share_programs): the chunk program compiles in the background while the state
    points initialise, so no state point's first trajectory compiles it on its call, and it is
    traced once for the three (DiffTRe's and IBI's multi-state regimes)."""
    from difftre_cli.learn.registry import trainer_kind

    extra = [f"observables.rdf_{p}.r_max=2.6" for p in ("AA", "AB", "BB")]   # < half the box, > the table's
    extra += ["trainer=ibi", "model=table"] if trainer == "ibi" else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=[
            "config=lj_mixture", "system.n_particles=108", "simulator.first_equilibration_steps=100",
            "simulator.equilibration_steps=20", "simulator.production_steps=50", "simulator.every=10", *extra])
    regime = trainer_kind(cfg.trainer.kind).multistate(cfg, RunStore(tmp_path), assemble.build_states(cfg))
    params, _ = regime.init(jax.random.PRNGKey(0))
    assert len(regime.subs) == 3
    for sub in regime.subs:
        with compilations_here() as compiled:
            res = sub.c.sampler.sample(params, sub.state, sub.nbrs, first=True)
        assert res.ok
        assert not any("chunk" in name for name in compiled), compiled
    assert [sub.c.sampler.trace_count for sub in regime.subs] == [1, 0, 0]


def test_several_state_points_run_one_executable_of_each_program(tmp_path):
    """Two state points resampled at every update, Gauss–Newton and the line search (the summed
    matrices and trial losses travel between state points): each state point's chunk,
    featurisation, gradient, Gauss–Newton and trial programs keep ONE executable. Moving a
    result onto the device it is already on commits it, and JAX compiles every program again
    for committed inputs: the parameters, then the simulation state, became committed after the
    first update and the chunk program compiled three times per state point (the one compiled
    ahead unused)."""
    from difftre_cli.learn.multistate import MultiStateDiffTReRegime

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=[
            "config=tiny", "states={T10: {system: {kT: 1.0}}, T12: {system: {kT: 1.2}}}",
            "trainer.precondition=gauss_newton", "trainer.step_rule=line_search"])
    regime = MultiStateDiffTReRegime(assemble.build_states(cfg), RunStore(tmp_path), ratio=0.3)   # (the line search resamples each time)
    params, opt_state = regime.init(jax.random.PRNGKey(0))
    for _ in range(3):
        prop = regime.propose(params, opt_state, 1.0)
        assert not prop.event and not prop.fields["reused"]
        params, opt_state = prop.params, prop.opt_state
    for sub in regime.subs:
        learner = sub.c.learner
        sizes = {"chunk": sub.c.sampler._chunk._cache_size(), "featurize": sub.c.engine._featurize._cache_size(),
                 "grad": learner.grad._cache_size(), "gauss_newton": learner.gauss_newton._cache_size(),
                 "trials": learner.trials._cache_size(), "n_eff": learner.n_eff._cache_size()}
        assert sizes == dict.fromkeys(sizes, 1), sizes


#: the programs of a multi-state update (learn/update_ahead.py), by the names XLA compiles them under
UPDATE_PROGRAMS = ("grad", "gauss_newton", "fisher", "trials", "n_eff", "<lambda>")


TWO_TEMPERATURES = ["config=tiny", "states={T10: {system: {kT: 1.0}}, T12: {system: {kT: 1.2}}}"]
GAUSS_NEWTON_SEARCH = ["trainer.precondition=gauss_newton", "trainer.step_rule=line_search"]


@pytest.mark.parametrize("states", [
    TWO_TEMPERATURES + GAUSS_NEWTON_SEARCH,   # programs of their own
    TWO_TEMPERATURES + ["trainer.precondition=fisher"],   # the Fisher step, no line search
    ["config=lj_mixture", "system.n_particles=108", "simulator.first_equilibration_steps=100",   # shared programs
     "simulator.equilibration_steps=20", "simulator.production_steps=50", "simulator.every=10",
     *[f"observables.rdf_{p}.r_max=2.6" for p in ("AA", "AB", "BB")], *GAUSS_NEWTON_SEARCH]])
def test_multistate_update_compiled_during_featurisation_is_the_one_that_runs(tmp_path, states):
    """Several state points: the gradient, matrix (Gauss–Newton, Fisher), trial and N_eff programs
    of every state point and the regime's solve, direction and step compile while the first
    trajectories are featurised, so the first update compiles none of them on its call; each is
    traced once, and the parameters equal those of an update compiled on its calls."""
    from difftre_cli.learn.multistate import MultiStateDiffTReRegime
    from difftre_cli.states import data_groups, state_configs

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=states)
    results = []
    for name, ahead in (("ahead", True), ("plain", False)):
        regime = MultiStateDiffTReRegime(assemble.build_states(cfg), RunStore(tmp_path / name), ratio=0.3,
                                         share=data_groups(state_configs(cfg)))
        if not ahead:
            regime._ahead = {}
        params, opt_state = regime.init(jax.random.PRNGKey(0))
        with compilations_here() as compiled:
            prop = regime.propose(params, opt_state, 1.0)
        assert not prop.event
        ours = [n for n in compiled if any(p in n for p in UPDATE_PROGRAMS)]
        assert bool(ours) == (not ahead), compiled
        assert regime.cs[0].learner.trace_count["grad"] == 1
        results.append(prop.params)
    for a, b in zip(jax.tree_util.tree_leaves(results[0]), jax.tree_util.tree_leaves(results[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
