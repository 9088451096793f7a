"""Parameter averaging (``trainer.average``, difftre_cli/averaging.py): the model a run leaves is
the debiased moving average of its accepted iterates; the iterate continues a resumed run."""
from __future__ import annotations

import csv

import h5py
import jax
import numpy as np
import pytest
from conftest import train_in_process

from difftre_cli.averaging import ParameterAverage
from difftre_cli.errors import UserError


def _leaves(group):
    return [np.asarray(group[f"leaf_{i:05d}"]) for i in range(int(group.attrs["n_leaves"]))]


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9])
def test_the_average_weights_the_iterates_by_powers_of_the_decay(decay):
    avg = ParameterAverage(decay)
    assert avg.value({"x": np.float32(7.0)})["x"] == 7.0          # nothing averaged yet: the parameters
    thetas = [1.0, 4.0, -2.0, 3.0]
    for t in thetas:
        avg.add({"x": np.float32(t)})
    weights = np.asarray([decay ** (len(thetas) - 1 - k) for k in range(len(thetas))])
    want = float(np.sum(weights * thetas) / np.sum(weights))       # debiased: weights sum to 1
    assert float(avg.value({"x": np.float32(0.0)})["x"]) == pytest.approx(want, rel=1e-6)


def test_a_rolled_back_step_leaves_the_average_once():
    avg = ParameterAverage(0.5)
    for t in (1.0, 3.0):
        avg.add({"x": np.float32(t)})
    avg.add({"x": np.float32(100.0)})                               # the step a rejection rolls back
    avg.undo()
    avg.undo()                                                       # a second rejection: nothing more
    assert avg.count == 2
    assert float(avg.value({"x": np.float32(0.0)})["x"]) == pytest.approx((0.5 * 1.0 + 3.0) / 1.5, rel=1e-6)


def test_a_run_leaves_the_average_and_resumes_from_the_iterate(tmp_path):
    """Three updates in three resumed pieces: each checkpoint's iterate is recorded, the final
    ``params`` are their debiased average, and an uninterrupted run leaves the same model."""
    args = ["config=tiny", "trainer.average=0.5", "trainer.checkpoint_every=1", "optimizer.schedule=constant"]
    split, iterates = tmp_path / "split", []
    for n in (1, 2, 3):
        train_in_process([*args, f"trainer.updates={n}"], split, resume=n > 1)
        with h5py.File(split / "difftre.h5") as f:
            ck = f["checkpoint"]
            iterates.append(_leaves(ck["iterate_params"]))
            model = _leaves(ck["params"])
            assert int(ck.attrs["average_count"]) == n
    with open(split / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["event"] for r in rows] == ["ok"] * 3
    w = np.asarray([0.25, 0.5, 1.0]) / 1.75
    for k, leaf in enumerate(model):
        want = sum(wi * it[k] for wi, it in zip(w, iterates))
        np.testing.assert_allclose(leaf, want, rtol=1e-5, atol=1e-7)
        assert not np.allclose(leaf, iterates[-1][k])                 # not the last iterate
    whole = tmp_path / "whole"
    out = train_in_process([*args, "trainer.updates=3"], whole)
    with h5py.File(whole / "difftre.h5") as f:
        for a, b in zip(_leaves(f["checkpoint"]["params"]), model):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
    got = [np.asarray(x) for x in jax.tree_util.tree_leaves(out["params"])]
    for a, b in zip(got, model):   # the returned parameters are the model too
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("bad", ["1.0", "-0.1"])
def test_an_average_outside_zero_to_one_is_a_user_error(tmp_path, bad):
    with pytest.raises(UserError, match="trainer.average"):
        train_in_process(["config=tiny", f"trainer.average={bad}", "trainer.updates=1"], tmp_path / "run")
