"""Staged (fused) training (stages.py, train.train_stages): force matching, then DiffTRe.

* hand-off: stage 2 starts from exactly stage 1's final parameters;
* the run directory holds one run per stage and RUN/metrics.csv every stage's rows with `stage`;
* a run stopped (SIGTERM's flag) in stage 2 and resumed finishes stage 2 with the parameters
  and rows of an uninterrupted run (stage 1 is not repeated);
* a stage naming an unknown trainer or a target the run does not have is a config error.
"""
from __future__ import annotations

import csv
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from difftre_cli import assemble
from difftre_cli import train as train_mod
from difftre_cli.config import validate
from difftre_cli.errors import UserError
from difftre_cli.interrupt import GracefulStop, Interrupted
from difftre_cli.learn.boltzmann import initial_params
from difftre_cli.run_config import saved_config
from difftre_cli.run_dirs import check_run_dir
from difftre_cli.stages import stage_configs
from difftre_cli.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
STAGES = "stages=[{trainer: force_matching, epochs: 2}, {trainer: difftre, updates: 3, optimizer: sgd, targets: [rdf]}]"



@pytest.fixture(scope="module", autouse=True)
def _compiled_once(module_compilation_cache):
    """The tests here train the same small configs several times: compile each program once."""
    yield

def _cfg(lj_reference, *extra):
    file, n = lj_reference
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="train", overrides=[
            "config=lj_fm", f"system.n_particles={n}", f"reference.file={file}", "simulator.production_steps=200",
            "simulator.first_equilibration_steps=500", STAGES, *extra])


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.fixture(scope="module")
def straight(lj_reference, tmp_path_factory):
    run = tmp_path_factory.mktemp("staged") / "run"
    cfg = _cfg(lj_reference)
    validate(cfg)
    return cfg, run, train_mod.train(cfg, run, quiet=True)


def test_stage_two_starts_from_stage_ones_parameters(straight):
    cfg, run, out = straight
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["stage1_force_matching", "stage2_difftre"]
    (_, s1), (_, s2) = stage_configs(cfg, run)
    assert s2.trainer.init_from == f"run:{run / 'stage1_force_matching'}"
    c = assemble.build(s2)
    start = initial_params(c, jax.random.PRNGKey(0), s2.trainer.init_from)
    _, trees, _, _ = RunStore(run / "stage1_force_matching").read_checkpoint({"params": start})
    for a, b in zip(_leaves(start), _leaves(trees["params"])):
        np.testing.assert_array_equal(a, b)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["stage"] for r in rows] == ["stage1_force_matching"] * 2 + ["stage2_difftre"] * 3
    # each stage is a run `difftre evaluate` accepts; the staged run itself names them
    for name in ("stage1_force_matching", "stage2_difftre"):
        check_run_dir(run / name)
    assert saved_config(run / "stage2_difftre").trainer.init_from == f"run:{run / 'stage1_force_matching'}"
    with pytest.raises(UserError, match="a staged run; each stage is a run of its own"):
        check_run_dir(run)
    assert rows[0]["force_rmse"] and rows[-1]["n_eff"]


def test_stop_in_stage_two_then_resume_is_the_uninterrupted_run(straight, lj_reference, tmp_path, monkeypatch):
    cfg, _, out = straight
    run = tmp_path / "run"
    add_row = train_mod.Trainer._add_row

    def add_and_stop(self, rows, row):   # SIGTERM's flag after stage 2's first update
        add_row(self, rows, row)
        if self.run_dir.name == "stage2_difftre" and row["update"] == 0:
            stop.signum = signal.SIGTERM
    monkeypatch.setattr(train_mod.Trainer, "_add_row", add_and_stop)
    with GracefulStop() as stop, pytest.raises(Interrupted):
        train_mod.train(cfg, run, quiet=True, stop=stop)
    monkeypatch.setattr(train_mod.Trainer, "_add_row", add_row)
    stage1 = (run / "stage1_force_matching" / "difftre.h5").stat().st_mtime_ns
    resumed = train_mod.train(cfg, run, resume=True, quiet=True)
    assert (run / "stage1_force_matching" / "difftre.h5").stat().st_mtime_ns == stage1   # not run again
    for a, b in zip(_leaves(out["params"]), _leaves(resumed["params"])):
        np.testing.assert_array_equal(a, b)
    assert [r["loss"] for r in resumed["rows"]] == [r["loss"] for r in out["rows"]]


@pytest.mark.parametrize("stages, needle", [
    ("stages=[{trainer: nonsense}]", "unknown trainer"),
    ("stages=[{trainer: difftre, targets: [adf]}]", "not entries of the run's targets"),
])
def test_bad_stage_is_a_config_error(lj_reference, stages, needle):
    with pytest.raises(UserError, match=needle):
        validate(_cfg(lj_reference, stages))
