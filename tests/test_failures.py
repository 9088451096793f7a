"""Unstable simulations: updates are rejected, parameters roll back, the learning rate drops,
the event is recorded, and repeated failures stop the run with a UserError (exit 2) while
the last checkpoint holds finite parameters."""
from __future__ import annotations

from pathlib import Path

import h5py
import jax
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from difftre_cli.errors import UserError
from difftre_cli.train import Trainer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def tiny_cfg(*extra):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="train", overrides=["config=tiny", *extra])


def _break_sampling_after(trainer, n_good):
    """Make every resample after the first ``n_good`` ones look unstable (non-finite energies)."""
    real = trainer.c.sampler.sample
    calls = {"n": 0}

    def sample(params, state, nbrs, first=False):
        calls["n"] += 1
        res = real(params, state, nbrs, first=first)
        if calls["n"] > n_good:
            traj = res.trajectory._replace(energies=res.trajectory.energies * np.nan)
            return res._replace(trajectory=traj, ok=False)
        return res

    trainer.c.sampler.sample = sample
    return calls


def test_unstable_simulation_rolls_back_and_stops(tmp_path):
    # reweight_ratio=1.0 forces a resample in every update, so every update after the
    # first sees an unstable simulation.
    cfg = tiny_cfg("trainer.updates=8", "trainer.reweight_ratio=1.0", "trainer.max_failures=3",
                   "trainer.checkpoint_every=1")
    trainer = Trainer(cfg, tmp_path, quiet=True)
    _break_sampling_after(trainer, n_good=1)
    with pytest.raises(UserError, match=r"3 consecutive updates rejected \(unstable simulation ×3\)"):
        trainer.run()
    import csv
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    events = [r["event"] for r in rows]
    assert events[0] == "ok"
    # the third consecutive unstable simulation is recorded, checkpointed and stops the run;
    # updates in between may reuse the last good trajectory
    assert events.count("unstable_simulation") == 3
    assert events[-1] == "unstable_simulation"
    assert set(events) <= {"ok", "unstable_simulation"}
    n_failed = 0
    for r in rows:
        n_failed += r["event"] == "unstable_simulation"
        assert float(r["lr_scale"]) == 0.5 ** n_failed
    with h5py.File(tmp_path / "difftre.h5") as f:
        ck = f["checkpoint"]
        assert ck.attrs["failures"] == 3
        leaves = [ck["params"][k][()] for k in ck["params"]]
        assert all(np.all(np.isfinite(x)) for x in leaves)


def test_unstable_first_trajectory_is_a_user_error(tmp_path):
    cfg = tiny_cfg("simulator.dt=5.0", "trainer.updates=1")
    with pytest.raises(UserError, match="unstable"):
        Trainer(cfg, tmp_path, quiet=True).run()


def test_non_finite_gradient_keeps_old_parameters(tmp_path):
    cfg = tiny_cfg("trainer.updates=1")
    trainer = Trainer(cfg, tmp_path, quiet=True)
    c = trainer.c
    params = c.potential.init(jax.random.PRNGKey(0))
    opt = c.optimizer.init(params)
    state, nbrs = c.sampler.init(jax.random.PRNGKey(1), params)
    res = c.sampler.sample(params, state, nbrs, first=True)
    feats = c.engine.featurize(res.trajectory)
    bad = feats._replace(u_ref=feats.u_ref.at[0].set(np.nan))
    new_params, _, aux = c.learner.step(params, opt, bad)
    assert not bool(aux.finite)
    np.testing.assert_array_equal(new_params["model"]["knot_values"], params["model"]["knot_values"])
