"""The reuse cap of DiffTRe's regime (``trainer.max_reuse``, learn/difftre_regime.py): a trajectory
serves at most 1 + max_reuse updates, whatever N_eff says, and the count survives a checkpoint.
With ``reweight_ratio=0`` N_eff never asks for a new trajectory, so the cap alone decides."""
from __future__ import annotations

import csv

import pytest
from conftest import train_in_process

from difftre_cli.errors import UserError


def _rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("cap, reused", [(0, [0, 0, 0, 0, 0]), (1, [0, 1, 0, 1, 0]), (None, [0, 1, 1, 1, 1])])
def test_a_trajectory_serves_at_most_one_plus_max_reuse_updates(tmp_path, cap, reused):
    args = ["config=tiny", "trainer.updates=5", "trainer.reweight_ratio=0.0",
            f"trainer.max_reuse={'null' if cap is None else cap}"]
    train_in_process(args, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert [int(r["reused"]) for r in rows] == reused
    assert int(rows[-1]["n_trajectories"]) == reused.count(0)


def test_the_count_survives_a_resume(tmp_path):
    """Cap 2: updates 1-3 share the first trajectory (reused 0, 1, 1). Stopped there and resumed
    for 5 updates, the 4th must sample a new one (the first was reused twice), as an
    uninterrupted run would."""
    args = ["config=tiny", "trainer.reweight_ratio=0.0", "trainer.max_reuse=2", "trainer.checkpoint_every=1"]
    train_in_process([*args, "trainer.updates=3"], tmp_path / "run")
    train_in_process([*args, "trainer.updates=5"], tmp_path / "run", resume=True)
    assert [int(r["reused"]) for r in _rows(tmp_path / "run")] == [0, 1, 1, 0, 1]


def test_max_reuse_with_several_state_points_is_refused():
    from hydra import compose, initialize_config_dir

    from difftre_cli.config import validate
    from difftre_cli.config_files import CONFIG_DIR
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=["config=lj_mixture", "trainer.max_reuse=3"])
    with pytest.raises(UserError, match="max_reuse is not supported with several state points"):
        validate(cfg)
