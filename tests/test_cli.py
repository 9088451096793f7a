"""The command line: help, an end-to-end train + evaluate through the console script, Hydra's
--cfg/--multirun, and bad input (exit code 2, one 'difftre: error:' line naming the key or
file, no traceback, no run directory)."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from difftre_cli import cli, commands
from difftre_cli.config_files import presets

METRIC_COLUMNS = ["update", "loss", "loss_rdf", "n_eff", "reused", "sample_time", "update_time", "grad_norm"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def difftre(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed console script (falls back to ``python -m difftre_cli.cli``)."""
    exe = shutil.which("difftre")
    cmd = ([exe] if exe else [sys.executable, "-m", "difftre_cli.cli"]) + list(args)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def assert_user_error(code, out: str, err: str, *needles: str) -> str:
    """Exit 2, exactly one 'difftre: error:' line that names every needle, no traceback."""
    assert code == 2, f"exit code {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("difftre: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not named in: {lines[0]!r}"
    return lines[0]


# -- help -------------------------------------------------------------------------------------
def test_help_lists_commands_and_presets(tmp_path):
    proc = difftre(["--help"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for word in ("train", "evaluate", "lj", "tiny", "resume=", "hydra.run.dir"):
        assert word in text
    presets = next(ln for ln in text.splitlines() if ln.startswith("presets"))
    assert "lj" in presets and "tiny" in presets
    assert not (tmp_path / "runs").exists()


def test_help_in_process_matches_config_dir(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert set(presets()) >= {"lj", "tiny"}
    for p in presets():
        assert p in out


# -- end to end -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_run):
    return tiny_run   # conftest.py: `difftre train config=tiny seed=0` through the console script


def test_train_tiny_end_to_end(trained):
    cwd, run, proc = trained
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert (run / ".hydra" / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
    assert (run / "train.log").is_file()
    assert not (cwd / "runs").exists()          # hydra.run.dir was honoured

    rows = read_metrics(run)
    assert len(rows) == 4
    assert [int(r["update"]) for r in rows] == [0, 1, 2, 3]
    assert set(METRIC_COLUMNS) <= set(rows[0])
    for r in rows:
        for col in ("loss", "loss_rdf", "n_eff", "grad_norm", "sample_time", "update_time"):
            assert math.isfinite(float(r[col])), (col, r)
        assert float(r["loss"]) == pytest.approx(float(r["loss_rdf"]))   # single target, gamma 1
        assert 1.0 <= float(r["n_eff"]) <= 20.0 + 1e-3                 # 200 steps / every 10
        assert r["reused"] in ("0", "1")
    assert rows[0]["reused"] == "0"                                     # the first update samples

    trajs = sorted((run / "trajectories").glob("*.h5md"))
    assert trajs and not list((run / "trajectories").glob("*.tmp"))
    assert len(trajs) == int(rows[-1]["n_trajectories"])
    with h5py.File(run / "difftre.h5", "r") as f:
        assert int(f["checkpoint"].attrs["update"]) == 4
        assert bool(f["checkpoint"].attrs["complete"])
        assert {"params", "opt_state", "sim_state"} <= set(f["checkpoint"])
        pos = f[f"trajectories/ref_{len(trajs) - 1:05d}/particles/all/position/value"]  # external link
        assert pos.shape == (20, 108, 3)
    assert not (run / "difftre.h5.tmp").exists()
    assert (run / "topology.pdb").is_file()                             # MDAnalysis/VMD/OVITO open the .h5md with it


def test_evaluate_tiny_end_to_end(trained):
    cwd, run, proc = trained
    if proc.returncode != 0:
        pytest.skip("training failed (reported by test_train_tiny_end_to_end)")
    # a run trained before evaluate.chunk_steps existed still takes it (commands._evaluate_one)
    from omegaconf import OmegaConf
    saved = OmegaConf.load(run / ".hydra" / "config.yaml")
    del saved.evaluate["chunk_steps"]
    # ... and one saved before the dispatch keys were renamed (simulator.integrator, optimizer.name)
    saved.simulator.integrator, saved.optimizer.name = saved.simulator.pop("kind"), saved.optimizer.pop("kind")
    OmegaConf.save(saved, run / ".hydra" / "config.yaml")
    shown = difftre(["evaluate", f"run={run}", "--cfg", "job", "evaluate.production_steps=200"], cwd=cwd)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "production_steps: 200" in shown.stdout and "chunk_steps: 2000" in shown.stdout   # today's default
    assert not (run / "evaluate.log").exists() and not (run / "evaluation.json").exists()
    ev = difftre(["evaluate", f"run={run}", "evaluate.production_steps=200", "evaluate.chunk_steps=100"], cwd=cwd)
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    assert "Traceback" not in ev.stdout + ev.stderr
    assert "simulator.integrator (renamed since this run was trained) read as simulator.kind" in ev.stderr
    assert "optimizer.name (renamed since this run was trained) read as optimizer.kind" in ev.stderr
    out = json.loads((run / "evaluation.json").read_text())
    rdf = out["targets"]["rdf"]
    assert math.isfinite(rdf["rmse"]) and rdf["rmse"] >= 0
    assert len(rdf["grid"]) == len(rdf["observable"]) == len(rdf["target"]) == 60
    assert out["production_steps"] == 200
    err = np.asarray(out["observables"]["rdf"]["error"])        # jackknife over the two chunks
    assert err.shape == (60,) and np.all(np.isfinite(err)) and err.max() > 0
    pot = out["potential"]
    assert len(pot["r"]) == len(pot["total"]) > 10
    assert np.all(np.isfinite(pot["total"])) and np.all(np.diff(pot["r"]) > 0)
    assert "truth" in pot and math.isfinite(pot["max_abs_error"])      # tiny sets ground_truth
    for name in ("rdf.png", "training.png", "potential.png"):
        data = (run / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name
    assert not (cwd / "runs").exists()
    check_curve_files(run, out)


def check_curve_files(run: Path, ev: dict) -> None:
    """RUN/curves/: one CSV per curve of the plots, a header naming each column with its unit,
    the numbers of evaluation.json, readable with the csv module and numpy.genfromtxt."""
    curves = run / "curves"
    assert sorted(p.name for p in curves.iterdir()) == ["potential.csv", "rdf.csv"]   # no .tmp left
    obs, pot, rdf = ev["observables"]["rdf"], ev["potential"], ev["targets"]["rdf"]
    expected = {"rdf.csv": {"r [sigma]": obs["grid"], "g_model [1]": obs["value"], "g_model_err [1]": obs["error"],
                            "g_target [1]": rdf["target"]},
                "potential.csv": {"r [sigma]": pot["r"], "u_model [epsilon]": pot["total"],
                                  "u_prior [epsilon]": pot["prior"], "u_truth [epsilon]": pot["truth"]}}
    for name, columns in expected.items():
        with open(curves / name, newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == list(columns), (name, rows[0])
        table = np.array(rows[1:], float)
        for k, values in enumerate(columns.values()):
            np.testing.assert_array_equal(table[:, k], np.asarray(values, float), err_msg=f"{name}: {rows[0][k]}")
        read = np.genfromtxt(curves / name, delimiter=",", names=True)
        assert len(read.dtype.names) == len(columns) and len(read) == len(table)
        np.testing.assert_array_equal(read[read.dtype.names[1]], table[:, 1])


def test_export_tiny_end_to_end(trained):
    """`difftre export` of the trained run through the console script: GROMACS files under
    RUN/export/gromacs/ (finite, zero past the cutoff). Bad arguments: test_export.py."""
    cwd, run, proc = trained
    if proc.returncode != 0:
        pytest.skip("training failed (reported by test_train_tiny_end_to_end)")
    ex = difftre(["export", f"run={run}", "format=gromacs"], cwd=cwd)
    assert ex.returncode == 0, ex.stderr[-3000:]
    out = run / "export" / "gromacs"
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["files"] == ["table.xvg", "difftre_tables.mdp", "difftre_nonbond.itp"]
    rows = np.loadtxt(out / "table.xvg", comments="#")
    (t,) = manifest["tables"]
    model = rows[(rows[:, 0] >= t["r_inner"]) & (rows[:, 0] <= t["cutoff"])]
    assert len(model) > 100 and np.all(np.isfinite(rows)) and not rows[rows[:, 0] > t["cutoff"] + 1e-9, 5:].any()


def test_cfg_job_prints_config_and_runs_nothing(tmp_path):
    run = tmp_path / "run"
    proc = difftre(["train", "config=tiny", "--cfg", "job", f"hydra.run.dir={run}"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "n_particles: 108" in proc.stdout and "trainer:" in proc.stdout and "updates: 4" in proc.stdout
    assert not run.exists() and not (tmp_path / "runs").exists()
    assert "update 1/" not in proc.stdout + proc.stderr


def test_multirun_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    # A roomier neighbour list avoids the overflow-and-recompile of the first trajectory (from the
    # lattice) in each job: ~10 s less; the default path is covered by the end-to-end test.
    proc = difftre(["train", "config=tiny", "--multirun", "optimizer.lr=0.01,0.02", "trainer.updates=1",
                    "simulator.capacity_multiplier=1.6", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    params = []
    for job, lr in zip(jobs, ("0.01", "0.02")):
        assert f"optimizer.lr={lr}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert len(read_metrics(job)) == 1
        with h5py.File(job / "difftre.h5", "r") as f:
            assert int(f["checkpoint"].attrs["update"]) == 1
            g = f["checkpoint/params"]
            params.append([g[k][()] for k in sorted(g)])
    assert any(not np.array_equal(a, b) for a, b in zip(*params))       # different lr, different step
    assert not (tmp_path / "runs").exists()


# -- bad input --------------------------------------------------------------------------------
def _write_targets(d: Path) -> None:
    (d / "empty.txt").write_text("# only a comment\n\n")
    (d / "nonnum.txt").write_text("0.0 0.0\n0.5 abc\n3.0 1.0\n")
    (d / "nan.txt").write_text("0.0 0.0\n1.0 nan\n3.0 1.0\n")
    (d / "onecol.txt").write_text("0.0\n1.0\n3.0\n")
    x = np.linspace(0.0, 1.0, 50)
    np.savetxt(d / "short.txt", np.c_[x, np.ones_like(x)])


# (overrides, words the error line must contain)
BAD_TRAIN = [
    pytest.param(["config=nope"], ["nope"], id="unknown-preset"),
    pytest.param(["foo=1"], ["foo"], id="unknown-key"),
    pytest.param(["model=nope"], ["model/nope"], id="unknown-group-option"),
    pytest.param(["system.n_particles=abc"], ["system.n_particles", "abc"], id="wrong-type"),
    pytest.param(["simulator.dt=0"], ["simulator.dt"], id="dt-zero"),
    pytest.param(["simulator.dt=-0.005"], ["simulator.dt"], id="dt-negative"),
    pytest.param(["system.density=0"], ["system.density"], id="density-zero"),
    pytest.param(["system.density=-0.7"], ["system.density"], id="density-negative"),
    pytest.param(["system.n_particles=0"], ["system.n_particles"], id="n-particles-zero"),
    pytest.param(["optimizer.lr=-0.01"], ["optimizer.lr"], id="lr-negative"),
    pytest.param(["optimizer.lr=0"], ["optimizer.lr"], id="lr-zero"),
    pytest.param(["trainer.updates=0"], ["trainer.updates"], id="updates-zero"),
    pytest.param(["targets.rdf.file=missing.txt"], ["targets.rdf.file", "missing.txt"], id="target-missing"),
    pytest.param(["targets.rdf.file=empty.txt"], ["targets.rdf.file", "empty.txt"], id="target-empty"),
    pytest.param(["targets.rdf.file=nonnum.txt"], ["targets.rdf.file", "nonnum.txt"], id="target-non-numeric"),
    pytest.param(["targets.rdf.file=nan.txt"], ["targets.rdf.file", "nan.txt"], id="target-nan"),
    pytest.param(["targets.rdf.file=onecol.txt"], ["targets.rdf.file", "onecol.txt"], id="target-one-column"),
    pytest.param(["targets.rdf.file=short.txt"], ["targets.rdf.file", "short.txt"], id="target-grid-not-covered"),
    pytest.param(["targets.rdf.x_unit=furlong"], ["targets.rdf.x_unit", "furlong"], id="x-unit-unknown"),
    pytest.param(["trainer.reweight_ratio=1.5"], ["trainer.reweight_ratio"], id="reweight-ratio"),
    pytest.param(["precision=quad"], ["precision", "quad"], id="precision"),
    pytest.param(["resume=/nonexistent"], ["resume=", "/nonexistent"], id="resume-missing"),
]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """cwd = tmp_path with target files; Hydra must never be reached (that would start a run)."""
    _write_targets(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))

    def reached():
        raise AssertionError("validation passed: the bad input reached Hydra")

    monkeypatch.setattr(commands, "_hydra_train", reached)
    return tmp_path


@pytest.mark.parametrize("overrides, needles", BAD_TRAIN)
def test_bad_train_input_in_process(in_tmp, capsys, overrides, needles):
    run = in_tmp / "run"
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "config=tiny", f"hydra.run.dir={run}", *overrides])
    cap = capsys.readouterr()
    assert_user_error(exc.value.code, cap.out, cap.err, *needles)
    assert not run.exists()
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize("args, needles", [
    pytest.param(["evaluate", "run=/nonexistent"], ["run=/nonexistent"], id="evaluate-run-missing"),
    pytest.param(["evaluate"], ["no run found"], id="evaluate-no-runs"),
    pytest.param(["evaluate", "--frobnicate"], ["--frobnicate"], id="evaluate-unknown-option"),
    pytest.param(["frobnicate"], ["frobnicate"], id="unknown-command"),
])
def test_bad_command_in_process(in_tmp, capsys, args, needles):
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    cap = capsys.readouterr()
    assert_user_error(exc.value.code, cap.out, cap.err, *needles)
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize("args, needles", [
    pytest.param(["train", "config=nope"], ["nope"], id="unknown-preset"),
    # a Hydra composition error like unknown-preset; its message is checked in process (BAD_TRAIN)
    pytest.param(["train", "config=tiny", "system.n_particles=abc"], ["system.n_particles"], id="wrong-type",
                 marks=pytest.mark.slow),
    pytest.param(["train", "config=tiny", "targets.rdf.file=nan.txt"], ["targets.rdf.file", "nan.txt"],
                 id="target-nan"),
    pytest.param(["train", "config=tiny", "resume=/nonexistent"], ["/nonexistent"], id="resume-missing"),
    pytest.param(["evaluate", "run=/nonexistent"], ["run=/nonexistent"], id="evaluate-run-missing"),
])
def test_bad_input_subprocess(tmp_path, args, needles):
    _write_targets(tmp_path)
    run = tmp_path / "run"
    proc = difftre([*args, f"hydra.run.dir={run}"] if args[0] == "train" else args, cwd=tmp_path, timeout=120)
    assert_user_error(proc.returncode, proc.stdout, proc.stderr, *needles)
    assert not run.exists()
    assert not (tmp_path / "runs").exists()


def test_hydra_flags_keep_their_values():
    flags, overrides = commands._split_flags(["config=tiny", "--cfg", "job", "seed=1", "-p", "system", "--multirun",
                                         "optimizer.lr=0.01,0.02", "--info", "defaults", "--cfg=all"])
    assert flags == ["--cfg", "job", "-p", "system", "--multirun", "--info", "defaults", "--cfg=all"]
    assert overrides == ["config=tiny", "seed=1", "optimizer.lr=0.01,0.02"]


def test_help_into_a_closed_pipe_is_not_a_traceback(tmp_path):
    """`difftre --help | head -1`: the reader is gone before the help is written (closed here
    right after the start; the CLI needs far longer than that to import)."""
    exe = shutil.which("difftre")
    cmd = [exe] if exe else [sys.executable, "-m", "difftre_cli.cli"]
    proc = subprocess.Popen([*cmd, "--help"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err
