"""Interleaved training (interleave.py, learn/interleaved.py): force matching and DiffTRe
updates alternating on one set of parameters.

* the schedule: entry k makes `steps` consecutive updates per cycle;
* one force-matching epoch then one DiffTRe update, interleaved, give the parameters of the same
  two as stages (the hand-off is right): equal to 1e-3, not bit for bit, because the interleaved
  run's MD state was initialised (its stored forces, used by the first step) at the initial
  parameters and the staged run's at the force-matched ones;
* the metrics name the trainer of every update and carry its own columns; the training curves
  are drawn per trainer from them;
* a run stopped after an update of the cycle and resumed equals the uninterrupted run;
* bad interleave configs are config errors.
"""
from __future__ import annotations

import csv
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from difftre_cli import train as train_mod
from difftre_cli.config import validate
from difftre_cli.errors import UserError
from difftre_cli.interleave import Entry, interleave_entries
from difftre_cli.interrupt import GracefulStop, Interrupted
from difftre_cli.learn.interleaved import entry_at
from difftre_cli.plots import _series

ROOT = Path(__file__).resolve().parent.parent
DIFFTRE = "{trainer: difftre, steps: %d, optimizer: sgd, targets: [rdf]}"


@pytest.fixture(scope="module", autouse=True)
def _compiled_once(module_compilation_cache):
    yield


def _cfg(lj_reference, *extra):
    file, n = lj_reference
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="train", overrides=[
            "config=lj_fm", f"system.n_particles={n}", f"reference.file={file}", "simulator.production_steps=200",
            "simulator.first_equilibration_steps=500", *extra])


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_schedule_cycles_through_the_entries_by_their_steps():
    entries = [Entry("force_matching", None, 1, 1.0), Entry("difftre", None, 2, 1.0)]
    assert [entry_at(entries, k) for k in range(7)] == [0, 1, 1, 0, 1, 1, 0]


def test_training_curves_are_drawn_per_trainer():
    rows = [{"update": 0, "loss": 5.0, "trainer": "force_matching", "force_matching.loss_validation": 4.0},
            {"update": 1, "loss": 0.1, "trainer": "difftre", "difftre.n_eff": 90.0, "reused": 0}]
    s = _series(rows)
    assert s == {"force_matching": [{"update": 0, "loss_validation": 4.0, "loss": 5.0}],
                 "difftre": [{"update": 1, "n_eff": 90.0, "loss": 0.1}]}
    assert _series([{"update": 0, "loss": 1.0}]) == {None: [{"update": 0, "loss": 1.0}]}


def test_each_entry_gets_its_share_of_the_updates(lj_reference):
    cfg = _cfg(lj_reference, "trainer.epochs=7", f"interleave=[{{trainer: force_matching, steps: 1}}, {DIFFTRE % 2}]")
    fm, dt = interleave_entries(cfg)
    assert (fm.cfg.trainer.updates, dt.cfg.trainer.updates) == (3, 5)   # ceil(7/3), ceil(14/3): schedules' lengths
    assert fm.cfg.trainer.patience is None and dt.cfg.trainer.kind == "difftre"
    assert list(dt.cfg.targets) == ["rdf"]


def test_one_step_each_equals_the_two_stages(lj_reference, tmp_path):
    staged = _cfg(lj_reference, "stages=[{trainer: force_matching, epochs: 1}, "
                                "{trainer: difftre, updates: 1, optimizer: sgd, targets: [rdf]}]")
    inter = _cfg(lj_reference, "trainer.epochs=2", f"interleave=[{{trainer: force_matching}}, {DIFFTRE % 1}]")
    validate(inter)
    a = train_mod.train(staged, tmp_path / "staged", quiet=True)
    b = train_mod.train(inter, tmp_path / "inter", quiet=True)
    for x, y in zip(_leaves(a["params"]), _leaves(b["params"]), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-3)
    rows = list(csv.DictReader(open(tmp_path / "inter" / "metrics.csv")))
    assert [r["trainer"] for r in rows] == ["force_matching", "difftre"]
    assert rows[0]["force_matching.force_rmse"] and not rows[0]["difftre.n_eff"]
    # the two DiffTRe losses come from different trajectories (module doc): the staged run's loss
    # over seeds 0-4 was 3.5e-4 - 6.5e-4 (measured), so they agree to its scatter, not to 5 %
    assert rows[1]["difftre.n_eff"] and float(rows[1]["loss"]) == pytest.approx(float(a["rows"][-1]["loss"]), rel=0.5)


def test_stopped_and_resumed_run_is_the_uninterrupted_one(lj_reference, tmp_path, monkeypatch):
    cfg = _cfg(lj_reference, "trainer.epochs=5", "trainer.checkpoint_every=100",
               f"interleave=[{{trainer: force_matching, weight: 0.5}}, {DIFFTRE % 2}]")
    straight = train_mod.train(cfg, tmp_path / "straight", quiet=True)
    assert [r["trainer"] for r in straight["rows"]] == ["force_matching", "difftre", "difftre"] * 1 + \
        ["force_matching", "difftre"]
    add_row = train_mod.Trainer._add_row

    def add_and_stop(self, rows, row):   # SIGTERM's flag after the cycle's second update
        add_row(self, rows, row)
        if row["update"] == 1:
            stop.signum = signal.SIGTERM
    monkeypatch.setattr(train_mod.Trainer, "_add_row", add_and_stop)
    run = tmp_path / "stopped"
    with GracefulStop() as stop, pytest.raises(Interrupted):
        train_mod.train(cfg, run, quiet=True, stop=stop)
    monkeypatch.setattr(train_mod.Trainer, "_add_row", add_row)
    resumed = train_mod.train(cfg, run, resume=True, quiet=True)
    for x, y in zip(_leaves(straight["params"]), _leaves(resumed["params"]), strict=True):
        np.testing.assert_array_equal(x, y)
    assert [r["loss"] for r in resumed["rows"]] == [r["loss"] for r in straight["rows"]]


@pytest.mark.parametrize("extra, needle", [
    (["interleave=[{trainer: force_matching}]"], "at least two trainers"),
    (["interleave=[{trainer: force_matching}, {trainer: nonsense}]"], "unknown trainer"),
    (["interleave=[{trainer: force_matching, steps: 0}, {trainer: difftre}]"], "interleave\\[0\\].steps"),
    (["interleave=[{trainer: force_matching, weight: -1}, {trainer: difftre}]"], "interleave\\[0\\].weight"),
    (["interleave=[{trainer: difftre}, {trainer: relative_entropy}]"], "at most one may"),
    (["interleave=[{trainer: force_matching}, {trainer: difftre}]", "stages=[{trainer: difftre}]"],
     "cannot be combined"),
    (["interleave=[{trainer: force_matching}, {trainer: difftre, targets: [adf]}]"], "not entries of the run's"),
])
def test_bad_interleave_is_a_config_error(lj_reference, extra, needle):
    with pytest.raises(UserError, match=needle):
        validate(_cfg(lj_reference, *extra))
