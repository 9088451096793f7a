"""Never lose work: NaN never checkpointed, torn writes ignored, full disks and occupied run
directories are clear errors, overflowing lists are unstable simulations, runs are
reproducible and record their versions, `difftre doctor` works."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from difftre_cli import cli
from difftre_cli.store import RunStore
from difftre_cli.train import Trainer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def tiny_cfg(*extra):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="train", overrides=["config=tiny", *extra])


def _cli(args, cwd, **kw):
    exe = shutil.which("difftre")
    cmd = ([exe] if exe else [sys.executable, "-m", "difftre_cli.cli"]) + list(args)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=400, **kw)


def _main(args, cwd, monkeypatch, capsys):
    """(exit code, stdout, stderr) of ``cli.main(args)`` in this process with working directory
    ``cwd``: the command line's own path without a process start-up (~8 s each)."""
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exc:
        cli.main(list(args))
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def _ckpt_kwargs(params):
    return dict(update=1, trees={"params": params}, attrs={}, metrics=[{"update": 0, "loss": 1.0}],
                n_trajectories=0, config_yaml="a: 1", versions={})


def test_nan_never_reaches_a_checkpoint(tmp_path):
    store = RunStore(tmp_path)
    store.write_checkpoint(**_ckpt_kwargs({"w": jnp.ones(3)}))
    before = (tmp_path / "difftre.h5").read_bytes()
    with pytest.raises(ValueError, match="non-finite"):
        store.write_checkpoint(**_ckpt_kwargs({"w": jnp.array([1.0, np.nan, 2.0])}))
    with pytest.raises(ValueError, match="non-finite"):
        store.write_checkpoint(**_ckpt_kwargs({"w": jnp.array([np.inf])}))
    assert (tmp_path / "difftre.h5").read_bytes() == before      # the good checkpoint is untouched
    assert not list(tmp_path.glob("*.tmp"))


def test_torn_writes_are_never_read_and_are_cleaned(tmp_path):
    store = RunStore(tmp_path)
    store.write_checkpoint(**_ckpt_kwargs({"w": jnp.ones(3)}))
    (tmp_path / "difftre.h5.tmp").write_bytes(b"\x89HDF\r\n half a file")          # a write killed midway
    (tmp_path / "trajectories").mkdir()
    (tmp_path / "trajectories" / "ref_00003.h5.tmp").write_bytes(b"junk")
    update, trees, _, rows = store.read_checkpoint({"params": {"w": jnp.zeros(3)}})
    assert update == 1 and rows == [{"update": 0, "loss": 1.0}]
    np.testing.assert_array_equal(trees["params"]["w"], np.ones(3))
    store.prepare()
    assert not list(tmp_path.rglob("*.tmp"))


def test_disk_full_while_writing_is_a_clear_error(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes writes fail exactly like a full disk: exit 2 with
    the file named and how to continue, no traceback, no partial files."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))   # trajectories fit, checkpoints do not

    run = tmp_path / "run"
    out = _cli(["train", "config=tiny", "trainer.updates=2", f"hydra.run.dir={run}"], tmp_path, preexec_fn=limit)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert "cannot write difftre.h5" in out.stderr and "resume=" in out.stderr
    assert not list(run.rglob("*.tmp"))
    with h5py.File(run / "trajectories" / "ref_00000.h5md", "r") as f:    # what was written is whole
        assert f["particles/all/position/value"].shape[1:] == (108, 3)


def test_occupied_run_directory_is_not_overwritten(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    store = RunStore(run)
    store.write_checkpoint(**_ckpt_kwargs({"w": jnp.ones(3)}))
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("original")
    before = (run / "difftre.h5").read_bytes()
    code, _, err = _main(["train", "config=tiny", f"hydra.run.dir={run}"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert "already holds a run with a different config" in err and "resume=" in err
    assert (run / ".hydra" / "config.yaml").read_text() == "original"
    assert (run / "difftre.h5").read_bytes() == before


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_checkpoint_on_resume_is_a_clear_error(tmp_path, damage):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- config=tiny\n")
    good = RunStore(tmp_path / "good")
    good.write_checkpoint(**_ckpt_kwargs({"w": jnp.ones(3)}))
    data = (tmp_path / "good" / "difftre.h5").read_bytes()
    (run / "difftre.h5").write_bytes(data[: len(data) // 3] if damage == "truncated" else b"not hdf5 at all" * 100)
    out = _cli(["train", f"resume={run}"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "cannot resume from" in out.stderr and "fix:" in out.stderr


def test_unwritable_output_directory(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = _main(["train", "config=tiny", f"hydra.run.dir={blocker}/run"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert "cannot create the output directory" in err and "is a file" in err
    assert blocker.read_text() == "x"


def test_neighbour_list_that_keeps_overflowing_is_an_unstable_simulation():
    from difftre_cli import assemble
    import dataclasses
    c = assemble.build(tiny_cfg())
    sampler = c.sampler
    sampler.cfg = dataclasses.replace(sampler.cfg, max_retries=0)
    params = c.potential.init(jax.random.PRNGKey(0))
    state, nbrs = sampler.init(jax.random.PRNGKey(1), params)
    from difftre_cli import neighbors
    caps = dict(neighbors.capacities(nbrs), max_occupancy=4)             # far too few slots
    squeezed = neighbors.placeholder(nbrs.idx.shape[0], caps, nbrs.reference_position.dtype)
    res = sampler.sample(params, state, squeezed, first=True)
    assert not res.ok and "overflowing" in res.reason


def test_same_seed_same_metrics_and_versions_recorded(tmp_path):
    rows = []
    for name in ("a", "b"):
        out = Trainer(tiny_cfg("trainer.updates=3", "seed=5"), tmp_path / name, quiet=True).run()
        rows.append([{k: v for k, v in r.items() if not k.endswith("_time")} for r in out["rows"]])
    assert rows[0] == rows[1]
    import json
    with h5py.File(tmp_path / "a" / "difftre.h5", "r") as f:
        versions = json.loads(f.attrs["versions"])
    for key in ("difftre", "jax", "jaxlib", "jax_md", "flax", "optax", "device"):
        assert versions[key] and versions[key] != "not installed", key
    assert versions["jax"] == jax.__version__


def test_doctor_reports_versions_and_runs_a_simulation(tmp_path):
    out = _cli(["doctor"], tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    for word in ("jax_md", "flax", "optax", "devices", "precision", "compilation cache entries", "all checks passed"):
        assert word in out.stdout, word
