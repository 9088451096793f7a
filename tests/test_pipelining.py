"""Several state points: each trajectory is featurised in a background thread while the next
state point samples (learn/multistate.py, *pipelining*), for DiffTRe and for multi-state IBI.
The features are those of the stored trajectory, and an error while featurising still ends the
update with it."""
from __future__ import annotations

import threading
from pathlib import Path

import jax
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from difftre_cli import assemble
from difftre_cli.config import validate
from difftre_cli.errors import UserError
from difftre_cli.learn.registry import trainer_kind
from difftre_cli.store import RunStore

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SMALL = ["config=lj_mixture", "system.n_particles=108", "simulator.first_equilibration_steps=200",
         "simulator.equilibration_steps=20", "simulator.production_steps=50", "simulator.every=10",
         *[f"observables.rdf_{p}.r_max=2.6" for p in ("AA", "AB", "BB")]]  # (IBI: beyond the table)


def regime_for(tmp_path, extra=()):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="train", overrides=[*SMALL, *extra])
    validate(cfg)
    regime = trainer_kind(cfg.trainer.kind).multistate(cfg, RunStore(tmp_path), assemble.build_states(cfg))
    return regime, regime.init(jax.random.PRNGKey(0))


def record_threads(monkeypatch, engines, where: list):
    for engine in engines:
        own = engine.featurize
        monkeypatch.setattr(engine, "featurize", lambda *a, own=own, **k: (
            where.append(threading.current_thread().name), own(*a, **k))[1])


def test_difftre_featurises_each_state_point_beside_the_next_ones_sampling(tmp_path, monkeypatch):
    regime, (params, opt_state) = regime_for(tmp_path)
    where = []
    record_threads(monkeypatch, [sub.c.engine for sub in regime.subs], where)
    prop = regime.propose(params, opt_state, 1.0)
    assert not prop.event
    assert len(where) == 3 and all(name.startswith("difftre-featurize") for name in where), where
    for k, sub in enumerate(regime.subs):   # the features are those of the stored trajectory
        stored = sub.c.engine.featurize(sub.store.read_trajectory(0))
        for a, b in zip(jax.tree_util.tree_leaves(sub.feats), jax.tree_util.tree_leaves(stored)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ibi_measures_each_state_points_rdfs_beside_the_next_ones_sampling(tmp_path, monkeypatch):
    regime, (params, opt_state) = regime_for(tmp_path, ["trainer=ibi", "model=table"])
    where = []
    record_threads(monkeypatch, [sub.c.engine for sub in regime.subs], where)
    prop = regime.propose(params, opt_state, 1.0)
    assert not prop.event and np.isfinite(prop.fields["loss"])
    assert len(where) == 3 and all(name.startswith("difftre-featurize") for name in where), where


def test_an_error_while_featurising_in_the_background_ends_the_update(tmp_path, monkeypatch):
    regime, (params, opt_state) = regime_for(tmp_path)

    def fails(*a, **k):
        raise UserError("the feature neighbour list kept overflowing", "the system is probably unstable")
    monkeypatch.setattr(regime.subs[1].c.engine, "featurize", fails)
    with pytest.raises(UserError, match="kept overflowing"):
        regime.propose(params, opt_state, 1.0)
