"""Kill a real `difftre train` at random moments (SIGKILL), resume it, and compare with an
uninterrupted run of the same seed: the metrics and final checkpoint must be identical
bit-for-bit (CPU). SIGTERM and SIGINT must stop cleanly with a checkpoint and a resume hint.
A submitit-launched job pre-empted with SIGUSR2 must be requeued and resume by itself.

The default suite runs 3 random kills; `-m slow` runs 12 more, some killing the resumed run again.
"""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

RUN = ["config=tiny", "seed=3", "trainer.updates=8", "trainer.checkpoint_every=1"]
TIMING_COLUMNS = {"sample_time", "update_time"}


def _cmd(args):
    exe = shutil.which("difftre")
    return ([exe] if exe else [sys.executable, "-m", "difftre_cli.cli"]) + ["train", *args]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _leaves(run: Path) -> dict:
    out = {}
    with h5py.File(run / "difftre.h5", "r") as f:
        ck = f["checkpoint"]
        assert ck.attrs["complete"]
        out["update"] = int(ck.attrs["update"])
        for group in ck:
            g = ck[group]
            out[group] = [g[f"leaf_{i:05d}"][()] for i in range(int(g.attrs["n_leaves"]))]
    return out


def _run(args, tmp_path, timeout=400):
    return subprocess.run(_cmd(args), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def _assert_same_run(ref: Path, run: Path):
    rows_ref, rows = _rows(ref), _rows(run)
    assert [r["update"] for r in rows] == [str(i) for i in range(len(rows_ref))]   # no duplicates, none missing
    for a, b in zip(rows_ref, rows):
        for col in a:
            if col not in TIMING_COLUMNS:
                assert a[col] == b[col], (a["update"], col, a[col], b[col])
    ck_ref, ck = _leaves(ref), _leaves(run)
    assert ck_ref.keys() == ck.keys()
    for group in ck_ref:
        if group == "update":
            assert ck_ref[group] == ck[group]
            continue
        for x, y in zip(ck_ref[group], ck[group]):
            np.testing.assert_array_equal(x, y, err_msg=group)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    proc = subprocess.Popen(_cmd([*RUN, f"hydra.run.dir={tmp / 'ref'}"]), cwd=tmp, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.perf_counter()
    while not (tmp / "ref" / ".hydra").exists() and proc.poll() is None:
        time.sleep(0.02)
    t_dir = time.perf_counter()
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    # kill times are drawn from the part of the run that has a run directory: Hydra set-up,
    # compilation, sampling, updates and checkpoint writes
    return tmp / "ref", time.perf_counter() - t_dir


def _inspect_after_kill(run: Path) -> str:
    """The state a kill left behind: the checkpoint (if any) opens cleanly and is complete."""
    if (run / "difftre.h5").exists():
        with h5py.File(run / "difftre.h5", "r") as f:
            assert f["checkpoint"].attrs["complete"]
            ck = int(f["checkpoint"].attrs["update"])
    else:
        ck = None
    rows = len(_rows(run)) if (run / "metrics.csv").exists() else 0
    tmps = sorted(p.name for p in run.rglob("*.tmp"))
    return f"checkpoint={ck} csv_rows={rows} tmp={tmps}"


def _kill_trial(reference, tmp_path, seed: int, kills: int):
    """Each kill lands either at a uniformly random time after the run directory appears
    (mostly start-up: compilation and the first, longest sampling) or shortly after a random
    number of completed updates (sampling, updates and checkpoint writes of a running job)."""
    ref, wall = reference
    rng = np.random.default_rng(seed)
    run = tmp_path / "run"
    log = []
    args = [*RUN, f"hydra.run.dir={run}"]
    for k in range(kills):
        proc = subprocess.Popen(_cmd(args), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while not (run / ".hydra").exists() and proc.poll() is None:
            time.sleep(0.02)
        if rng.uniform() < 0.5:
            delay = float(rng.uniform(0.0, wall))
            when = f"{delay:.1f}s after the run directory appeared"
            time.sleep(delay)
        else:
            n_rows, delay = int(rng.integers(1, 8)), float(rng.uniform(0.0, 1.0))
            when = f"{delay:.2f}s after metrics row {n_rows}"
            while proc.poll() is None and not ((run / "metrics.csv").exists() and len(_rows(run)) >= n_rows):
                time.sleep(0.01)
            time.sleep(delay)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.append(f"kill {k} {when}{' (had finished)' if finished else ''}: " + _inspect_after_kill(run))
        args = [f"resume={run}"]
    out = _run(args, tmp_path)
    assert out.returncode == 0, "\n".join(log) + "\n" + out.stdout[-3000:]
    print("\n".join(log))
    _assert_same_run(ref, run)
    assert not list(run.rglob("*.tmp"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_random_moment_then_resume_is_bit_for_bit(reference, tmp_path, seed):
    _kill_trial(reference, tmp_path, seed, kills=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 22))
def test_sigkill_many_times_then_resume_is_bit_for_bit(reference, tmp_path, seed):
    _kill_trial(reference, tmp_path, seed, kills=1 + seed % 3)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_checkpoint_and_exit_cleanly(reference, tmp_path, sig):
    ref, _ = reference
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd([*RUN, f"hydra.run.dir={run}"]), cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.perf_counter()
    while not ((run / "metrics.csv").exists() and _rows(run)) and time.perf_counter() - t0 < 300:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + int(sig), out[-3000:]
    assert "Traceback" not in out
    assert f"continue with: difftre train resume={run}" in out
    ck = _leaves(run)
    assert 1 <= ck["update"] < 8 and len(_rows(run)) == ck["update"]
    resumed = _run([f"resume={run}"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    _assert_same_run(ref, run)


def test_submitit_preemption_requeues_and_resumes(tmp_path):
    """SLURM pre-emption, played by submitit's local executor: SIGUSR2 to the job makes it
    checkpoint, submitit requeues it, and the new process resumes in the same directory."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = subprocess.Popen(_cmd(["--multirun", "hydra/launcher=submitit_local", "config=tiny", "seed=3",
                                  "trainer.updates=30", "trainer.checkpoint_every=1000",
                                  f"hydra.sweep.dir={tmp_path / 'sweep'}"]),
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "sweep" / "0"
    t0 = time.perf_counter()
    while not ((run / "metrics.csv").exists() and _rows(run)) and time.perf_counter() - t0 < 300:
        time.sleep(0.05)
    import psutil
    job = [p for p in psutil.Process(proc.pid).children(recursive=True)
           if "submitit.core._submit" in " ".join(p.cmdline())]
    assert job, "no submitit job process found"
    job[0].send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    log = (run / "train.log").read_text()
    assert "pre-emption: checkpoint written at update" in log
    assert "found a checkpoint of this config" in log and "resumed from" in log
    rows = _rows(run)
    assert [r["update"] for r in rows] == [str(i) for i in range(30)]
    assert _leaves(run)["update"] == 30
