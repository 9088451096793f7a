"""The line-search step rule (learn/step_rule.py): the factor of the optimiser's step that
minimises the reweighted loss among those whose N_eff stays at or above ratio · S.

A one-parameter problem with a known answer checks the choice and the "exhausted" flag; on a
real trajectory (config=tiny) the chosen step must be the best of the candidates, each
recomputed here with the learner's own loss, and its N_eff must respect the ratio.
"""
from __future__ import annotations

import csv
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import train_in_process
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from difftre_cli import assemble
from difftre_cli.config import validate
from difftre_cli.errors import UserError
from difftre_cli.learn import step_rule

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
S = 100


def _toy(best_x, edge):
    """loss = (x − best_x)², N_eff = S while x ≤ edge, S/4 beyond; the step direction is +1."""
    def trial(p):
        x = p["x"]
        return (x - best_x) ** 2, jnp.where(x <= edge, float(S), S / 4.0)
    return trial


@pytest.mark.parametrize("best_x, edge, scale, exhausted", [
    (2.2, 10.0, 2.0, False),   # the loss's minimum comes first: reuse the snapshots
    (30.0, 5.0, 4.0, True),    # N_eff stops the step below the minimum: resample next
    (1e6, 1e6, 64.0, False),   # the largest factor, nothing refused
    (3.0, 0.1, 0.25, True),    # nothing allowed: the smallest factor
])
def test_line_search_picks_the_best_allowed_factor(best_x, edge, scale, exhausted):
    rule = step_rule.StepRule("line_search", ratio=0.9)
    got, worn = jax.jit(lambda: rule.scale(_toy(best_x, edge), {"x": jnp.zeros(())}, {"x": jnp.ones(())}, S))()
    assert float(got) == scale and bool(worn) == exhausted


def test_trajectory_spacing_halves_after_n_eff_limited_steps_and_doubles_after_interior_ones():
    rule = step_rule.StepRule("line_search", max_length=8)
    lengths = [1]
    for exhausted in (False, False, False, False, True, True, True, True):
        lengths.append(rule.next_length(lengths[-1], exhausted))
    assert lengths == [1, 2, 4, 8, 8, 4, 2, 1, 1]
    assert step_rule.build(OmegaConf.create({"step_rule": {"kind": "line_search", "max_length": 1}}), 0.9).max_length == 1


def test_non_finite_candidates_are_refused():
    rule = step_rule.StepRule("line_search", ratio=0.5)

    def trial(p):
        x = p["x"]
        return jnp.where(x > 3.0, jnp.nan, -x), jnp.asarray(float(S))
    got, worn = rule.scale(trial, {"x": jnp.zeros(())}, {"x": jnp.ones(())}, S)
    assert float(got) == 2.0 and not bool(worn)


@pytest.mark.parametrize("spec, match", [
    ("sideways", "unknown step rule"),
    ({"kind": "line_search", "scales": [2.0, 1.0]}, "increasing positive"),
    ({"kind": "line_search", "scales": [0.0, 1.0]}, "increasing positive"),
    ({"kind": "line_search", "radius": 2}, "unknown key"),
    ({"kind": "line_search", "max_length": 0}, "max_length"),
])
def test_bad_step_rules_are_user_errors(spec, match):
    with pytest.raises(UserError, match=match):
        step_rule.build(OmegaConf.create({"step_rule": spec}), 0.9)


def _tiny(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="train", overrides=["config=tiny", "optimizer=sgd", "optimizer.lr=0.05",
                                                      "optimizer.schedule=constant", *overrides])
    return assemble.build(cfg)


def test_line_search_step_is_the_best_candidate_on_a_real_trajectory():
    c = _tiny(["trainer.step_rule=line_search", "trainer.reweight_ratio=0.6"])
    fixed = _tiny([])
    key = jax.random.PRNGKey(3)
    params = c.potential.init(key)
    params = {"model": {"knot_values": 0.05 * jax.random.normal(key, params["model"]["knot_values"].shape)}}
    state, nbrs = c.sampler.init(jax.random.PRNGKey(1), params)
    feats = c.engine.featurize(c.sampler.sample(params, state, nbrs, first=True).trajectory)
    opt = c.optimizer.init(params)
    new, _, aux = c.learner.step(params, opt, feats)
    plain, _, _ = fixed.learner.step(params, fixed.optimizer.init(params), feats)
    n = feats.u_ref.shape[0]
    delta = jax.tree_util.tree_map(lambda a, b: a - b, plain, params)
    scale = float(aux.step_scale)
    moved = jax.tree_util.tree_map(lambda p, d: p + scale * d, params, delta)
    np.testing.assert_allclose(np.asarray(new["model"]["knot_values"]), np.asarray(moved["model"]["knot_values"]),
                               rtol=1e-5, atol=1e-7)
    assert float(aux.n_eff_next) >= 0.6 * n
    chosen_loss = float(c.learner.loss(new, feats)[0])
    for s in c.learner.step_rule.scales:
        trial = jax.tree_util.tree_map(lambda p, d: p + s * d, params, delta)
        loss, (_, _, n_eff) = c.learner.loss(trial, feats)
        if float(n_eff) >= 0.6 * n:   # every allowed candidate is no better than the chosen one
            assert chosen_loss <= float(loss) * (1 + 1e-5) + 1e-12, (s, float(loss), chosen_loss)
    assert chosen_loss < float(c.learner.loss(plain, feats)[0])   # and better than the fixed step here


def test_line_search_run_logs_the_factor_and_refuses_other_trainers(tmp_path):
    run = tmp_path / "run"
    train_in_process(["config=tiny", "trainer.updates=6", "trainer.step_rule=line_search", "trainer.reweight_ratio=0.5"],
                     run)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 6 and all(float(r["step_scale"]) in step_rule.StepRule.scales for r in rows)
    assert all(r["reused"] == "0" for r in rows)   # each trajectory serves one line-search step
    lengths = [int(r["length_factor"]) for r in rows]
    assert lengths[0] == 1 and all(b in (max(1, a // 2), min(8, 2 * a)) for a, b in zip(lengths, lengths[1:]))
    # a longer trajectory keeps the snapshot count and spaces the snapshots further apart
    for i, factor in enumerate(lengths[1:], start=1):
        with h5py.File(run / "trajectories" / f"ref_{i:05d}.h5md") as f:
            steps = np.asarray(f["particles/all/position/step"])
        assert len(steps) == 20 and np.all(np.diff(steps) == 10 * factor), (i, factor, steps[:3])
    # relative entropy has no step_rule key (Hydra refuses the override); added with +, it is
    # refused with the reason (a user error: exit 2 in the CLI)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        bad = compose(config_name="train", overrides=["config=tiny", "trainer=relative_entropy",
                                                      "+trainer.step_rule=line_search"])
    with pytest.raises(UserError, match="step_rule=line_search is implemented for trainer=difftre"):
        validate(bad)


def test_line_search_with_several_state_points(tmp_path):
    """The step rule on the summed loss of two state points, N_eff checked at each; with adapt:
    true, the floor follows the summed fresh loss."""
    run = tmp_path / "run"
    train_in_process(["config=tiny", "trainer.updates=6", "seed=1", "states={T10: {system: {kT: 1.0}}, T12: {system: {kT: 1.2}}}",
                      "optimizer.schedule=constant", "trainer.step_rule={kind: line_search, adapt: true}",
                      "trainer.reweight_ratio=0.5"], run)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 6 and all(float(r["step_scale"]) in step_rule.StepRule.scales for r in rows)
    for r in rows:   # every state point's N_eff at the start of an update respects the ratio
        assert float(r["n_eff_T10"]) >= 0.5 * 20 - 1e-3 and float(r["n_eff_T12"]) >= 0.5 * 20 - 1e-3, r
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    rule = step_rule.StepRule("line_search", step_rule.StepRule.scales, 0.5, adapt=True)
    floor, last = rule.first_floor, None
    for r in rows:
        assert float(r["step_floor"]) == floor, (r["update"], r["step_floor"], floor)
        floor, last = rule.next_floor(floor, last, float(r["loss"])), float(r["loss"])


def test_natural_step_solves_the_summed_fisher_system():
    """learn/difftre.natural_step, as the multi-state regime uses it on Σ_k F_k: F x ∥ g and
    xᵀ F x = 1 (no damping)."""
    from difftre_cli.learn.difftre import natural_step
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    fisher = a @ a.T + b @ b.T
    g = {"x": jnp.asarray(rng.normal(size=4)), "y": jnp.asarray(rng.normal(size=2))}
    x = natural_step(jnp.asarray(fisher), g, 0.0)
    xf = np.concatenate([np.asarray(x["x"]), np.asarray(x["y"])])
    gf = np.concatenate([np.asarray(g["x"]), np.asarray(g["y"])])
    np.testing.assert_allclose(fisher @ xf, gf / np.sqrt(gf @ np.linalg.solve(fisher, gf)), rtol=1e-4, atol=1e-6)
    assert xf @ fisher @ xf == pytest.approx(1.0, rel=1e-4)


def test_fisher_step_with_several_state_points(tmp_path):
    run = tmp_path / "run"
    train_in_process(["config=tiny", "trainer.updates=5", "seed=1", "states={T10: {system: {kT: 1.0}}, T12: {system: {kT: 1.2}}}",
                      "optimizer=sgd", "optimizer.lr=0.3", "optimizer.schedule=constant", "trainer.precondition=fisher"],
                     run)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 5 and float(rows[-1]["loss"]) < float(rows[0]["loss"])


# -- adapt: true: the floor follows the progress ---------------------------------------------
SCALES = (0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)


def test_floor_rises_on_confirmed_decreases_and_sinks_on_increases():
    rule = step_rule.StepRule("line_search", SCALES, 0.3, adapt=True)
    assert rule.first_floor == 0.0625
    assert rule.next_floor(0.0625, None, 1.0) == 0.0625          # nothing to judge yet
    assert rule.next_floor(0.0625, 1.0, 0.85) == 0.125           # down by ≥ 10 %: one candidate up
    assert rule.next_floor(0.125, 1.0, 0.95) == 0.125            # down by less: kept
    assert rule.next_floor(0.125, 1.0, 1.01) == 0.0625           # up: one candidate down
    assert rule.next_floor(0.0625, 1.0, 2.0) == 0.0625           # never below the smallest
    assert rule.next_floor(0.5, 1.0, 0.1) == 0.5                 # never above half the step
    assert rule.next_floor(0.25, 1.0, float("nan")) == 0.25
    fixed = step_rule.StepRule("line_search", SCALES, 0.3)
    assert fixed.next_floor(0.0625, 1.0, 0.1) == 0.0625          # adapt: false (the default) never moves it


def test_an_n_eff_limited_step_goes_to_the_floor_and_an_interior_one_does_not():
    rule = step_rule.StepRule("line_search", SCALES, 0.3, adapt=True)
    falling = jnp.asarray([7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    enough = jnp.asarray([True, True, False, False, False, False, False])
    factor, exhausted = rule.choose(falling, enough, 0.5)
    assert bool(exhausted) and float(factor) == 0.5               # N_eff stopped it at 1/8: the floor
    factor, _ = rule.choose(falling, enough, 0.0625)
    assert float(factor) == 0.125                                 # a floor below the best allowed: the best
    factor, exhausted = rule.choose(falling, jnp.zeros(7, bool), 0.25)
    assert bool(exhausted) and float(factor) == 0.25              # none allowed: the floor
    valley = jnp.asarray([3.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    factor, exhausted = rule.choose(valley, jnp.ones(7, bool), 0.5)
    assert not bool(exhausted) and float(factor) == 0.125         # the loss's minimum came first: kept


ADAPT = ["config=tiny", "seed=3", "trainer.reweight_ratio=0.9", "trainer.checkpoint_every=1", "optimizer=sgd",
         "optimizer.lr=1.0", "optimizer.schedule=constant", "trainer.precondition=gauss_newton",
         "trainer.step_rule={kind: line_search, adapt: true, scales: [0.0625, 0.125, 0.25, 0.5, 1.0, 2.0]}"]


def test_adaptive_floor_in_a_run_follows_its_losses_and_resumes_bit_for_bit(tmp_path):
    """The floor in metrics.csv is next_floor applied to the run's own fresh losses, it is in the
    checkpoint, and a run stopped after 4 updates and resumed to 8 equals the uninterrupted one."""
    train_in_process([*ADAPT, "trainer.updates=8"], tmp_path / "whole")
    rows = list(csv.DictReader(open(tmp_path / "whole" / "metrics.csv")))
    rule = step_rule.StepRule("line_search", (0.0625, 0.125, 0.25, 0.5, 1.0, 2.0), 0.9, adapt=True)
    floor, last, floors = rule.first_floor, None, []
    for r in rows:
        assert float(r["step_floor"]) == floor, (r["update"], r["step_floor"], floor)
        floors.append(floor)
        floor, last = rule.next_floor(floor, last, float(r["loss"])), float(r["loss"])
    assert len(set(floors)) > 1, floors   # the floor moved in this run
    assert any(float(r["step_scale"]) == float(r["step_floor"]) > 0.0625 for r in rows), rows   # and was taken
    train_in_process([*ADAPT, "trainer.updates=4"], tmp_path / "split")
    with h5py.File(tmp_path / "split" / "difftre.h5", "r") as f:
        attrs = dict(f["checkpoint"].attrs)
    assert float(attrs["step_floor"]) == floors[4] and float(attrs["step_last_loss"]) == pytest.approx(float(rows[3]["loss"]))
    train_in_process([*ADAPT, "trainer.updates=8"], tmp_path / "split", resume=True)
    split = list(csv.DictReader(open(tmp_path / "split" / "metrics.csv")))
    same = [k for k in rows[0] if not k.endswith("_time")]
    assert [[r[k] for k in same] for r in split] == [[r[k] for k in same] for r in rows]


def test_adapt_must_be_a_boolean():
    with pytest.raises(UserError, match="adapt"):
        step_rule.build(OmegaConf.create({"step_rule": {"kind": "line_search", "adapt": "yes"}}), 0.9)
