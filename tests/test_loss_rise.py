"""A step refuted by its own fresh trajectory is rolled back (``trainer.max_loss_ratio``,
learn/regime.py ``loss_rose``).

The reweighted loss that chose a step predicts a decrease; when the trajectory sampled at the
step's result shows the loss above ``max_loss_ratio`` × the loss before the step, the update is
rejected like an unstable one: the parameters go back, the learning-rate scale is halved, and
the fresh losses are logged (they are why). config=tiny with a plain gradient step 80 times too
long raises the RDF loss from 0.025 to 0.052 at the next trajectory: with the guard at 1.5 that
update is rejected, without it accepted with the same numbers, and the simulation continues from
where it stood before the refuted trajectory.
"""
from __future__ import annotations

import csv
import math

import h5py
import jax
import numpy as np
import pytest
from conftest import train_in_process
from hydra import compose, initialize_config_dir

from difftre_cli.config import validate
from difftre_cli.config_files import CONFIG_DIR
from difftre_cli.errors import UserError
from difftre_cli.learn.regime import LOSS_ROSE, loss_rose

LONG_STEP = ["config=tiny", "optimizer=sgd", "optimizer.lr=80", "optimizer.schedule=constant",
             "trainer.checkpoint_every=1"]
GUARD = "trainer.max_loss_ratio=1.5"
STATES = "states={T10: {system: {kT: 1.0}}, T12: {system: {kT: 1.2}}}"


def _rows(run) -> list[dict]:
    return list(csv.DictReader(open(run / "metrics.csv")))


def test_loss_rose_needs_a_limit_a_loss_before_and_a_finite_rise():
    assert loss_rose(2.0, 1.0, 2.5)
    assert not loss_rose(2.0, 1.0, 2.0) and not loss_rose(2.0, 1.0, 0.5)
    assert not loss_rose(None, 1.0, 100.0)            # off
    assert not loss_rose(2.0, None, 100.0)            # nothing to compare with (first trajectory, after a rollback)
    assert not loss_rose(2.0, 1.0, math.nan)          # non-finite: the loop's own check rejects it


def test_a_step_its_fresh_trajectory_refutes_is_rolled_back(tmp_path):
    guarded = train_in_process([*LONG_STEP, "trainer.updates=2", GUARD], tmp_path / "guarded")
    plain = train_in_process([*LONG_STEP, "trainer.updates=2"], tmp_path / "plain")
    g, p = guarded["rows"], plain["rows"]
    assert [r["event"] for r in g] == ["ok", LOSS_ROSE] and [r["event"] for r in p] == ["ok", "ok"]
    assert g[1]["loss"] > 1.5 * g[0]["loss"] and g[1]["loss"] == p[1]["loss"]   # the same trajectory, logged
    assert g[1]["reused"] == 0 and g[1]["lr_scale"] == 0.5 and p[1]["lr_scale"] == 1.0
    # rolled back to the parameters before the refuted step: the initial (zero) spline
    zero = jax.tree_util.tree_leaves(guarded["params"])
    assert all(np.all(np.asarray(x) == 0.0) for x in zero)
    assert any(np.any(np.asarray(x) != 0.0) for x in jax.tree_util.tree_leaves(plain["params"]))
    # the simulation continues from where it stood before the refuted trajectory (its end state
    # is not where the restored parameters' next trajectory starts); that trajectory stays stored
    assert np.array_equal(_checkpoint_positions(tmp_path / "guarded"), _last_snapshot(tmp_path / "guarded", 0))
    assert np.array_equal(_checkpoint_positions(tmp_path / "plain"), _last_snapshot(tmp_path / "plain", 1))
    assert (tmp_path / "guarded" / "trajectories" / "ref_00001.h5md").is_file()


def test_the_stop_after_too_many_rejections_names_them(tmp_path):
    with pytest.raises(UserError, match=r"1 consecutive updates rejected \(loss rose ×1\)"):
        train_in_process([*LONG_STEP, "trainer.updates=3", GUARD, "trainer.max_failures=1"], tmp_path / "run")


def _checkpoint_positions(run):
    with h5py.File(run / "difftre.h5", "r") as f:
        return np.asarray(f["checkpoint/sim_state/leaf_00000"])


def _last_snapshot(run, index):
    with h5py.File(run / "trajectories" / f"ref_{index:05d}.h5md", "r") as f:
        return np.asarray(f["particles/all/position/value"])[-1]


def test_the_update_after_a_rollback_is_not_judged_and_a_resume_continues_bit_for_bit(tmp_path):
    """After a rollback the next update starts at the parameters its reference loss was measured
    at: no step to judge (the guard would only see noise). The reference loss is in the
    checkpoint: stopped after update 0 and resumed, the run rejects update 1 as the whole run does."""
    whole = train_in_process([*LONG_STEP, "trainer.updates=4", GUARD], tmp_path / "whole")["rows"]
    assert whole[1]["event"] == LOSS_ROSE and whole[2]["event"] == "ok"
    train_in_process([*LONG_STEP, "trainer.updates=1", GUARD], tmp_path / "split")
    with h5py.File(tmp_path / "split" / "difftre.h5", "r") as f:
        assert float(f["checkpoint"].attrs["loss_before"]) == pytest.approx(whole[0]["loss"])
    train_in_process([*LONG_STEP, "trainer.updates=4", GUARD], tmp_path / "split", resume=True)
    split = _rows(tmp_path / "split")
    same = [k for k in split[0] if not k.endswith("_time")]
    assert [[r[k] for k in same] for r in split] == [[r[k] for k in same] for r in _rows(tmp_path / "whole")]


def test_several_state_points_judge_the_summed_loss(tmp_path):
    rows = train_in_process([*LONG_STEP, "trainer.updates=2", GUARD, STATES], tmp_path / "run")["rows"]
    assert [r["event"] for r in rows] == ["ok", LOSS_ROSE]
    assert rows[1]["loss"] > 1.5 * rows[0]["loss"] and rows[1]["lr_scale"] == 0.5
    assert rows[1]["loss"] == pytest.approx(rows[1]["loss_T10_rdf"] + rows[1]["loss_T12_rdf"])


@pytest.mark.parametrize("value", ["1.0", "0.5", "-2"])
def test_a_ratio_that_is_not_above_one_is_a_user_error(value):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=["config=tiny", f"trainer.max_loss_ratio={value}"])
    with pytest.raises(UserError, match="max_loss_ratio"):
        validate(cfg)
