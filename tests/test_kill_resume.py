"""Kill a real `difftre train` at random moments (SIGKILL), resume it, and compare with an
uninterrupted run of the same seed: the metrics and final checkpoint must be identical
bit-for-bit (CPU). SIGTERM and SIGINT must stop cleanly with a checkpoint and a resume hint.
A submitit-launched job pre-empted with SIGUSR2 must be requeued and resume by itself.

The default suite runs 2 random kills (one per kind of kill moment); `-m slow` runs 13 more, some
killing the resumed run again.
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
from conftest import train_in_process

RUN = ["config=tiny", "seed=3", "trainer.updates=8", "trainer.checkpoint_every=1"]
# long trajectories in short chunks, checkpointed inside them every 0.3 s: kills land mid-trajectory.
# Later trajectories must also last well over 0.3 s on a fast machine (3000 steps took 0.25 s and a
# CI run finished before any later mid-trajectory checkpoint), hence 15000 equilibration steps.
RUN_MID_TRAJECTORY = ["config=tiny", "seed=4", "trainer.updates=2", "trainer.checkpoint_every=1",
                      "simulator.first_equilibration_steps=8000", "simulator.equilibration_steps=15000",
                      "simulator.chunk_seconds=0.05", "trainer.checkpoint_seconds=0.3",
                      "trainer.reweight_ratio=1.0"]   # every update resamples: later trajectories too
OTHER_TRAINERS = {
    "ibi": ["config=tiny", "trainer=ibi", "model=table", "model.cutoff=2.3", "seed=3", "trainer.updates=6", "trainer.checkpoint_every=1"],
    "direct_ad": ["config=tiny", "trainer=direct_ad", "trainer.steps=40", "seed=3", "trainer.updates=6",
                  "trainer.checkpoint_every=1"],
}
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


def _reference_run(tmp, args):
    proc = subprocess.Popen(_cmd([*args, f"hydra.run.dir={tmp / 'ref'}"]), cwd=tmp, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (tmp / "ref" / ".hydra").exists() and proc.poll() is None:
        time.sleep(0.02)
    t_dir = time.perf_counter()
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    # kill times are drawn from the part of the run that has a run directory: Hydra set-up,
    # compilation, sampling, updates and checkpoint writes
    return tmp / "ref", time.perf_counter() - t_dir, list(args)


def _reference_in_process(tmp, args):
    """The uninterrupted run in this process (conftest.train_in_process), for trials whose kills
    do not use the reference's wall time."""
    train_in_process(args, tmp / "ref")
    return tmp / "ref", None, list(args)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _reference_run(tmp_path_factory.mktemp("reference"), RUN)


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
    return f"checkpoint={ck} mid_trajectory={_segment_in_checkpoint(run) is not None} csv_rows={rows} tmp={tmps}"


def _kill_trial(reference, tmp_path, seed: int, kills: int, at_row: int | None = None):
    """Each kill lands either at a uniformly random time after the run directory appears
    (mostly start-up: compilation and the first, longest sampling) or shortly after a random
    number of completed updates (sampling, updates and checkpoint writes of a running job)."""
    ref, wall, run_args = reference
    rng = np.random.default_rng(seed)
    run = tmp_path / "run"
    log = []
    args = [*run_args, f"hydra.run.dir={run}"]
    for k in range(kills):
        proc = subprocess.Popen(_cmd(args), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while not (run / ".hydra").exists() and proc.poll() is None:
            time.sleep(0.02)
        if at_row is None and rng.uniform() < 0.5:
            delay = float(rng.uniform(0.0, wall))
            when = f"{delay:.1f}s after the run directory appeared"
            time.sleep(delay)
        else:
            n_rows, delay = int(rng.integers(1, len(_rows(ref)))), float(rng.uniform(0.0, 0.4))
            if at_row is not None:   # right after a metrics row is written, before its checkpoint
                n_rows, delay = at_row, 0.0
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


# seed 1 kills after a metrics row, seed 2 at a random time after the run directory appeared
# (the two branches of _kill_trial); seed 3 (another random time) and 12 more run with -m slow
@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)])
def test_sigkill_at_random_moment_then_resume_is_bit_for_bit(reference, tmp_path, seed):
    _kill_trial(reference, tmp_path, seed, kills=1)


@pytest.fixture(scope="module")
def reference_mid_trajectory(tmp_path_factory):
    return _reference_in_process(tmp_path_factory.mktemp("reference_mid"), RUN_MID_TRAJECTORY)


def _segment_in_checkpoint(run: Path) -> int | None:
    """The update whose trajectory the checkpoint holds in progress, or None."""
    try:
        with h5py.File(run / "difftre.h5", "r") as f:
            ck = f["checkpoint"]
            return int(ck.attrs["update"]) if "segment" in ck.attrs else None
    except (OSError, KeyError):
        return None


# seed 4: one kill inside the later trajectory (update 1) of a fresh process; seed 5: inside the
# first trajectory, then inside the later one of the resumed process
# (seed 5 runs with -m slow: its kill inside the first trajectory is the SIGTERM stop inside a
# first trajectory of test_chunks.py, resumed bit-for-bit, and seed 4's mid-trajectory resume)
@pytest.mark.slow   # suite time (issue: default suite <= 15 min on 2 cores): a SIGTERM inside a long trajectory stays default (test_chunks.py)
@pytest.mark.parametrize("seed, kill_updates", [(4, [1]), pytest.param(5, [0, 1], marks=pytest.mark.slow)])
def test_sigkill_inside_long_trajectories_then_resume_is_bit_for_bit(reference_mid_trajectory, tmp_path, seed,
                                                                    kill_updates):
    """Each kill lands inside a trajectory, shortly after a checkpoint of it in progress was
    written (the first trajectory, or a later one), and the resumed run continues it."""
    ref, _, run_args = reference_mid_trajectory
    rng = np.random.default_rng(seed)
    run = tmp_path / "run"
    args, log = [*run_args, f"hydra.run.dir={run}"], []
    for k, min_update in enumerate(kill_updates):
        proc = subprocess.Popen(_cmd(args), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        t_start = time.time()
        while proc.poll() is None and time.time() - t_start < 300:   # a mid-trajectory checkpoint of this process
            ck = run / "difftre.h5"
            at = _segment_in_checkpoint(run) if ck.exists() and ck.stat().st_mtime > t_start else None
            if at is not None and at >= min_update:
                break
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        assert proc.poll() is None, "the run finished before a mid-trajectory checkpoint"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.append(f"kill {k} inside the trajectory of update {_segment_in_checkpoint(run)}: "
                   + _inspect_after_kill(run))
        args = [f"resume={run}"]
    out = _run(args, tmp_path)
    assert out.returncode == 0, "\n".join(log) + "\n" + out.stdout[-3000:]
    print("\n".join(log))
    _assert_same_run(ref, run)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 22))
def test_sigkill_many_times_then_resume_is_bit_for_bit(reference, tmp_path, seed):
    _kill_trial(reference, tmp_path, seed, kills=1 + seed % 3)


@pytest.mark.slow   # suite time (issue: default suite <= 15 min on 2 cores): ibi and direct_ad share difftre's checkpoint code
@pytest.mark.parametrize("trainer", sorted(OTHER_TRAINERS))
def test_other_trainers_survive_sigkill_bit_for_bit(tmp_path, trainer):
    """The outer loop is shared: IBI and backprop-through-MD resume bit-for-bit as DiffTRe does
    (the uninterrupted reference runs in this process; the killed and the resumed run are CLI
    processes)."""
    (tmp_path / "reference").mkdir()
    ref = _reference_in_process(tmp_path / "reference", OTHER_TRAINERS[trainer])
    _kill_trial(ref, tmp_path, seed=7, kills=1, at_row=2)


@pytest.mark.slow
@pytest.mark.parametrize("trainer", sorted(OTHER_TRAINERS))
@pytest.mark.parametrize("seed", [31, 32, 33])
def test_other_trainers_survive_many_kills(tmp_path, trainer, seed):
    (tmp_path / "reference").mkdir()
    ref = _reference_run(tmp_path / "reference", OTHER_TRAINERS[trainer])
    _kill_trial(ref, tmp_path, seed=seed, kills=1 + seed % 2)


# SIGINT's process runs with -m slow: both signals go through the same handler and
# GracefulStop.finish (interrupt.py); test_sigint_is_the_same_request_and_a_second_one_stops_at_once
# checks SIGINT's part of it in this process
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_sigterm_and_sigint_checkpoint_and_exit_cleanly(reference, tmp_path, sig):
    ref, _, _ = reference
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


def test_sigint_is_the_same_request_and_a_second_one_stops_at_once(tmp_path):
    """Ctrl-C inside a GracefulStop only requests the stop (as SIGTERM does), finish() raises
    Interrupted with exit code 130, a second Ctrl-C interrupts at once, and the previous handlers
    are back afterwards."""
    from difftre_cli.interrupt import GracefulStop, Interrupted
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        t0 = time.perf_counter()
        while not stop.requested and time.perf_counter() - t0 < 5:
            time.sleep(0.001)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        with pytest.raises(Interrupted) as exc:
            stop.finish(tmp_path, 3)
    assert exc.value.exit_code == 130 and exc.value.update == 3
    assert "stopped by SIGINT after update 3" in str(exc.value)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.slow   # suite time (issue: default suite <= 15 min on 2 cores): the SIGTERM checkpoint it relies on stays default
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
