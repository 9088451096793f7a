"""Errors raised by Hydra and OmegaConf themselves (composition, interpolation, the run
directory) end like every other user error: exit code 2, one 'difftre: error:' line naming the
key or path, a 'fix:' line, no traceback and no run directory. Internal errors keep theirs.

Most cases run in-process through ``cli.main`` with Hydra's job launcher replaced (nothing is
trained); a few run the real CLI as a subprocess to see what a user sees.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError

from difftre_cli import cli, commands, run_dirs
from difftre_cli.config_errors import config_errors
from difftre_cli.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def assert_user_error(code, out: str, err: str, *needles: str) -> None:
    """Exit 2; exactly one 'difftre: error:' line naming every needle, then a 'fix:' line."""
    assert code == 2, f"exit code {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err, err
    lines = err.splitlines()
    idx = [i for i, ln in enumerate(lines) if ln.startswith("difftre: error:")]
    assert len(idx) == 1, err
    for needle in needles:
        assert needle in lines[idx[0]], f"{needle!r} not named in: {lines[idx[0]]!r}"
    fix = lines[idx[0] + 1] if idx[0] + 1 < len(lines) else ""
    assert fix.startswith("  fix: ") and len(fix.strip()) > len("fix: ") + 3, err


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """cwd = tmp_path; Hydra's job launcher must never be reached (that would start a run)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))

    def reached():
        raise AssertionError("the bad input reached Hydra's job launcher")

    monkeypatch.setattr(commands, "_hydra_train", reached)
    yield tmp_path
    assert not (tmp_path / "runs").exists() and not (tmp_path / "outputs").exists()


AFILE = "a_file"   # a regular file in the working directory: a run directory through it fails

TRAIN_CASES = [
    # an unknown key or group option: Hydra's composition errors
    pytest.param(["trainer.nonexistent=1"], ["trainer.nonexistent"], id="override-unknown-key"),
    pytest.param(["+trainer.updates=5"], ["trainer.updates"], id="append-existing-key"),
    pytest.param(["+trainer=ibi"], ["trainer"], id="append-existing-group"),
    pytest.param(["trainer=nope"], ["nope"], id="unknown-group-option"),
    pytest.param(["system.kT=${"], ["system.kT"], id="override-syntax"),
    pytest.param(["+simulator.foo=1"], ["simulator", "foo"], id="append-unknown-simulator-key"),
    pytest.param(["+trainer.nonsense=1"], ["trainer", "nonsense"], id="append-unknown-trainer-key"),
    pytest.param(["+nonsense=1"], ["top-level", "nonsense"], id="append-unknown-top-level-key"),
    # interpolations that cannot be resolved (OmegaConf)
    pytest.param(["system.kT=${does.not.exist}"], ["system.kT=${does.not.exist}", "does.not.exist"],
                 id="interpolation-unknown-key"),
    pytest.param(["trainer.updates=${oops}"], ["trainer.updates=${oops}"], id="interpolation-preset-value"),
    pytest.param(["trainer.init_from=${oops}"], ["trainer.init_from"], id="interpolation-unvalidated-key"),
    pytest.param(["name=${oops}"], ["name=${oops}"], id="interpolation-name"),
    pytest.param(["system.kT=${oc.env:DIFFTRE_TEST_UNSET_VARIABLE}"], ["system.kT", "DIFFTRE_TEST_UNSET_VARIABLE"],
                 id="interpolation-env-unset"),
    pytest.param(["system.kT=${nosuchresolver:x}"], ["system.kT", "nosuchresolver"], id="interpolation-resolver"),
    pytest.param(["system.kT=${system.kT}"], ["system.kT", "Recursive"], id="interpolation-recursive"),
    pytest.param(["system.kT=???"], ["system.kT", "???"], id="mandatory-value-missing"),
    # run directories that cannot be created
    pytest.param(["hydra.run.dir=/proc/difftre_test_run"], ["hydra.run.dir=/proc/difftre_test_run"],
                 id="run-dir-proc"),
    pytest.param(["hydra.run.dir=/sys/difftre_test_run"], ["hydra.run.dir=/sys/difftre_test_run"], id="run-dir-sys"),
    pytest.param([f"hydra.run.dir={AFILE}/run"], [AFILE, "is a file"], id="run-dir-through-file"),
    pytest.param(["hydra.run.dir=${oops}"], ["hydra.run.dir", "oops"], id="run-dir-interpolation"),
    pytest.param(["hydra.run.dir=x/${now:%Y}/${oops}"], ["hydra.run.dir=x/${now:%Y}/${oops}"],
                 id="run-dir-interpolation-partial"),
    pytest.param(["--multirun", "hydra.sweep.dir=/proc/difftre_test_sweep"], ["hydra.sweep.dir"],
                 id="sweep-dir-proc"),
]


@pytest.mark.parametrize("overrides, needles", TRAIN_CASES)
def test_hydra_error_in_process(in_tmp, capsys, overrides, needles):
    (in_tmp / AFILE).write_text("x")
    run = in_tmp / "run"
    has_dir = any(o.startswith(("hydra.run.dir=", "hydra.sweep.dir=")) for o in overrides)
    args = ["train", "config=tiny", "trainer.updates=1", *overrides, *([] if has_dir else [f"hydra.run.dir={run}"])]
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    cap = capsys.readouterr()
    assert_user_error(exc.value.code, cap.out, cap.err, *needles)
    assert not run.exists()
    assert (in_tmp / AFILE).read_text() == "x"
    assert sorted(p.name for p in in_tmp.iterdir()) == [AFILE]
    assert not Path("/proc/difftre_test_run").exists() and not Path("/sys/difftre_test_run").exists()


def _subprocess(args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "OC_CAUSE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("JAX_PLATFORMS", "cpu")
    return subprocess.run([sys.executable, "-m", "difftre_cli.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("overrides, needles", [
    pytest.param(["system.kT=${does.not.exist}"], ["system.kT", "does.not.exist"], id="interpolation"),
    pytest.param(["hydra.run.dir=/proc/difftre_test_run"], ["/proc/difftre_test_run"], id="run-dir-proc"),
    # the same unwritable-run-directory check as /proc (both also in process, above): -m slow
    pytest.param(["hydra.run.dir=/sys/difftre_test_run"], ["/sys/difftre_test_run"], id="run-dir-sys",
                 marks=pytest.mark.slow),
    pytest.param(["hydra.run.dir=${oops}"], ["hydra.run.dir", "oops"], id="run-dir-interpolation"),
])
def test_hydra_error_subprocess(tmp_path, overrides, needles):
    """What a user sees: the cases that printed Hydra's traceback and exited 1 before."""
    proc = _subprocess(["train", "config=tiny", "trainer.updates=1", *overrides], tmp_path)
    assert_user_error(proc.returncode, proc.stdout, proc.stderr, *needles)
    assert list(tmp_path.iterdir()) == []


def test_default_run_dir_resolves_before_hydra(in_tmp):
    """runs/${name}/${now:...} needs ${hydra:...}: it resolves in the early checks (it raised
    'HydraConfig was not set' before), and the probe of the directory leaves nothing behind."""
    cfg = commands._precompose(["config=tiny"])
    assert str(cfg.hydra.run.dir).startswith("runs/tiny/")
    run_dirs.check_output_dir(cfg, multirun=False)
    run_dirs.check_output_dir(cfg, multirun=True)
    assert not (in_tmp / "runs").exists()


# -- evaluate: the run's saved config with bad overrides ------------------------------------
@pytest.fixture
def fake_run(in_tmp):
    """A run directory as `difftre train` leaves it, as far as evaluate reads it before any work."""
    run = in_tmp / "run"
    cfg = commands._precompose(["config=tiny"])
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(job, run / ".hydra" / "config.yaml")   # unresolved, as Hydra saves it
    (run / "difftre.h5").write_bytes(b"")
    return run


@pytest.mark.parametrize("overrides, needles", [
    pytest.param(["evaluate.production_steps=${oops}"], ["evaluate.production_steps=${oops}"], id="interpolation"),
    pytest.param(["evaluate.every=${oc.env:DIFFTRE_TEST_UNSET_VARIABLE}"], ["evaluate.every"], id="env-unset"),
    pytest.param(["+evaluate.foo=1"], ["evaluate", "foo"], id="append-key"),      # appended, then validate
    pytest.param(["+foo=1"], ["unknown top-level key", "foo"], id="append-top-level"),
    pytest.param(["evaluate.nope=1"], ["nope"], id="unknown-key"),               # Hydra: not in the config
    pytest.param(["evaluate.production_steps=-5"], ["evaluate.production_steps"], id="bad-value"),
    pytest.param(["~model"], ["model"], id="delete-group"),
    pytest.param(["evaluate.every=[1"], ["cannot parse overrides"], id="grammar"),
    pytest.param(["model=nnp"], ["model"], id="group-option"),                  # a trained run's groups are fixed
    pytest.param(["evaluate.production_steps=1,2"], ["evaluate.production_steps"], id="sweep"),
    pytest.param(["simulator.integrator=langevin"], ["simulator.kind"], id="old-name"),
])
def test_evaluate_hydra_error(fake_run, capsys, overrides, needles):
    before = sorted(p.name for p in fake_run.iterdir())
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", f"run={fake_run}", *overrides])
    cap = capsys.readouterr()
    assert_user_error(exc.value.code, cap.out, cap.err, *needles)
    assert sorted(p.name for p in fake_run.iterdir()) == before


@pytest.mark.parametrize("extra", [[], ["--cfg", "job"]], ids=["evaluate", "cfg-job"])
def test_evaluate_cfg_job_reports_what_evaluate_would(fake_run, capsys, extra):
    """``--cfg job`` validates like evaluate (and like train's ``--cfg job``) before printing."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", f"run={fake_run}", *extra, "+evaluate.foo=1"])
    cap = capsys.readouterr()
    assert_user_error(exc.value.code, cap.out, cap.err, "foo")


def test_evaluate_cfg_job_prints_the_composed_config(fake_run, capsys):
    """The saved config over today's evaluate defaults (a key it lacks comes back), then the
    overrides in train's grammar: null, a list appended with +, a quoted string, a deletion."""
    saved = OmegaConf.load(fake_run / ".hydra" / "config.yaml")
    del saved.evaluate["chunk_steps"]                       # a run trained before chunk_steps existed
    OmegaConf.save(saved, fake_run / ".hydra" / "config.yaml")
    before = {p.name: p.read_bytes() for p in (fake_run / ".hydra").iterdir()}
    assert cli.main(["evaluate", f"run={fake_run}", "--cfg", "job", "evaluate.production_steps=1000",
                     "evaluate.stress_strain=null", "+evaluate.potential_error_range=[1.0,2.0]",
                     "name='my run'", "~evaluate.equilibration_steps", "states=null"]) == 0
    out = capsys.readouterr().out
    cfg = OmegaConf.create(out)
    assert cfg.evaluate.production_steps == 1000 and cfg.evaluate.stress_strain is None
    assert list(cfg.evaluate.potential_error_range) == [1.0, 2.0]
    assert cfg.evaluate.chunk_steps == 2000                 # configs/evaluate/default.yaml
    assert "equilibration_steps" not in cfg.evaluate
    assert cfg.name == "my run" and cfg.trainer.kind == saved.trainer.kind
    assert cfg.model == saved.model and cfg.targets == saved.targets
    assert {p.name: p.read_bytes() for p in (fake_run / ".hydra").iterdir()} == before   # nothing written
    assert not (fake_run / "evaluate.log").exists() and not (fake_run / "evaluation.json").exists()


def test_evaluate_help(capsys):
    assert cli.main(["evaluate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--cfg job" in out and "run=PATH" in out and "+key=value" in out


# -- the translation itself --------------------------------------------------------------------
def test_config_errors_names_the_key_when_omegaconf_does_not():
    """Inside the Hydra task (and evaluate) a lookup with .get() raises without naming the key."""
    cfg = OmegaConf.create({"trainer": {"updates": "${oops}"}, "name": "${hydra:runtime.choices.config}"})
    with pytest.raises(UserError, match=r"trainer.updates=\$\{oops\}.*'oops' not found") as exc:
        with config_errors(cfg=cfg):
            cfg.trainer.get("updates")
    assert exc.value.fix


@pytest.mark.parametrize("error", [ConfigAttributeError("Key 'x' is not in struct"), RuntimeError("a bug")])
def test_config_errors_keeps_internal_errors(error):
    """Outside composition an OmegaConf key error (or any other exception) is a bug: traceback, exit 1."""
    with pytest.raises(type(error)):
        with config_errors(cfg=OmegaConf.create({})):
            raise error


def test_evaluate_defaults_follow_the_trainer_kind(in_tmp, capsys):
    """A trainer=static run gets today's configs/evaluate/static.yaml under its saved config
    (the trainer registry's evaluator), not the MD production-run keys."""
    run = in_tmp / "static_run"
    cfg = commands._precompose(["config=si_sw_elastic"])
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    job.evaluate = {"landscape": {"points": 5}}          # saved before the phonons section existed
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(job, run / ".hydra" / "config.yaml")
    (run / "difftre.h5").write_bytes(b"")
    assert cli.main(["evaluate", f"run={run}", "--cfg", "job", "evaluate.phonons.band_points=11"]) == 0
    ev = OmegaConf.create(capsys.readouterr().out).evaluate
    assert ev.landscape.points == 5 and ev.landscape.enabled is True    # saved value over the default
    assert ev.phonons.enabled is False and ev.phonons.band_points == 11
    assert "production_steps" not in ev


@pytest.mark.parametrize("override", ["model=nnp", "~model"])
def test_evaluate_cannot_swap_a_trained_group(fake_run, capsys, override):
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", f"run={fake_run}", override])
    cap = capsys.readouterr()
    assert_user_error(exc.value.code, cap.out, cap.err, "model")
    assert "config groups are fixed" in cap.err
