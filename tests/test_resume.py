"""Resuming a run continues it bit-for-bit (CPU), and the update is compiled once per run."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from difftre_cli.config_files import CONFIG_DIR

# The exponential learning-rate schedule decays over trainer.updates, so a run trained with
# updates=3 and then extended to 6 follows a different schedule than one trained with
# updates=6 from the start. A constant schedule makes the two comparable update by update.
COMMON = ["config=tiny", "seed=0", "optimizer.schedule=constant", "trainer.checkpoint_every=3"]


def _cmd(args):
    exe = shutil.which("difftre")
    return ([exe] if exe else [sys.executable, "-m", "difftre_cli.cli"]) + list(args)


def _env():
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _checkpoint(run: Path) -> dict:
    out = {}
    with h5py.File(run / "difftre.h5", "r") as f:
        ck = f["checkpoint"]
        out["update"] = int(ck.attrs["update"])
        for group in ("params", "opt_state", "sim_state"):
            g = ck[group]
            out[group] = [g[f"leaf_{i:05d}"][()] for i in range(int(g.attrs["n_leaves"]))]
    return out


def test_resume_continues_bit_for_bit(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    kw = dict(cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # A (6 updates straight) runs alongside B (3 updates, then resumed to 6).
    proc_a = subprocess.Popen(_cmd(["train", *COMMON, "trainer.updates=6", f"hydra.run.dir={a}"]), **kw)
    try:
        first = subprocess.run(_cmd(["train", *COMMON, "trainer.updates=3", f"hydra.run.dir={b}"]), timeout=400, **kw)
        assert first.returncode == 0, first.stdout[-3000:]
        assert _checkpoint(b)["update"] == 3 and len(_rows(b)) == 3
        second = subprocess.run(_cmd(["train", f"resume={b}", "trainer.updates=6"]), timeout=400, **kw)
        assert second.returncode == 0, second.stdout[-3000:]
        out_a, _ = proc_a.communicate(timeout=400)
    finally:
        if proc_a.poll() is None:
            proc_a.kill()
            proc_a.wait()
    assert proc_a.returncode == 0, out_a[-3000:]
    assert "resumed from" in second.stdout

    rows_a, rows_b = _rows(a), _rows(b)
    assert len(rows_a) == 6
    assert [r["update"] for r in rows_b] == ["0", "1", "2", "3", "4", "5"]   # 6 rows, no duplicates
    assert list(rows_b[0]) == list(rows_a[0])
    for i in range(6):   # rows 0-2 come from identical runs, 3-5 from A vs. the resumed B
        for col in ("loss", "loss_rdf", "n_eff", "grad_norm", "reused", "n_trajectories", "event"):
            assert rows_a[i][col] == rows_b[i][col], (i, col, rows_a[i][col], rows_b[i][col])

    ck_a, ck_b = _checkpoint(a), _checkpoint(b)
    assert ck_a["update"] == ck_b["update"] == 6
    for group in ("params", "opt_state", "sim_state"):
        assert len(ck_a[group]) == len(ck_b[group])
        for x, y in zip(ck_a[group], ck_b[group]):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert x.tobytes() == y.tobytes(), group
    # the resumed run kept the trajectories of its first part and added its own
    assert len(list((b / "trajectories").glob("ref_*.h5md"))) == int(rows_b[-1]["n_trajectories"])


def test_update_compiled_once(tmp_path, single_precision):
    from hydra import compose, initialize_config_dir

    from difftre_cli.config import validate
    from difftre_cli.train import Trainer

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=["config=tiny", "trainer.updates=6", "seed=0"])
    validate(cfg)
    trainer = Trainer(cfg, tmp_path, quiet=True)
    out = trainer.run()
    rows = out["rows"]
    assert len(rows) == 6 and all(r["event"] == "ok" for r in rows)
    assert sum(1 for r in rows if not r["reused"]) >= 2     # at least one resample after the first
    counts = trainer.c.learner.trace_count
    assert counts["step"] == 1, counts
    counts = trainer.c.engine.trace_count
    assert 1 <= counts["featurize"] <= 2, counts
    assert np.all(np.isfinite([r["loss"] for r in rows]))


def test_recorded_feature_capacities_reproduce_features_exactly():
    """An observable engine restored with a checkpoint's feature-list capacities featurizes a trajectory
    bit-identically to the engine that wrote the checkpoint, even though it would have
    allocated its lists from a different snapshot."""
    import jax
    from hydra import compose, initialize_config_dir

    from difftre_cli import assemble

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=["config=tiny"])
    c = assemble.build(cfg)
    params = c.potential.init(jax.random.PRNGKey(0))
    state, nbrs = c.sampler.init(jax.random.PRNGKey(1), params)
    first = c.sampler.sample(params, state, nbrs, first=True)
    traj = first.trajectory
    later = c.sampler.sample(params, first.state, first.neighbor).trajectory
    assert not np.array_equal(np.asarray(traj.positions), np.asarray(later.positions))
    c.engine.featurize(traj)                       # allocates from this trajectory
    feats = c.engine.featurize(later)
    attrs = c.engine.capacity_attrs()
    fresh = assemble.build(cfg).engine
    fresh.set_capacity(attrs)
    again = fresh.featurize(later)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), again.r, feats.r)
    np.testing.assert_array_equal(np.asarray(again.static["rdf"]), np.asarray(feats.static["rdf"]))
    assert fresh.capacity_attrs() == attrs
