"""The commands of the command line (cli.py): ``train``, ``evaluate``, ``compare``, ``export``, ``targets``, ``doctor``.

``train`` composes the config as Hydra will (first value of each sweep), validates it
(config.py), checks the output directory and an existing checkpoint, then hands over to Hydra's
``@hydra.main``, whose job is train.train. ``evaluate`` composes a trained run's saved config
with today's evaluate defaults (run_config.py) and runs evaluate.evaluate. A UserError ends in
``difftre: error: ...`` with its fix and exit code 2 (errors.fail).
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from .compare import compare
from .config import validate
from .config_errors import config_errors
from .config_files import CONFIG_DIR
from .doctor import doctor
from .errors import UserError, fail
from .evaluate import evaluate
from .export import USAGE as EXPORT_USAGE
from .export import export_run, parse_args
from .interrupt import GracefulStop, Interrupted
from .jax_setup import configure
from .legacy import check_overrides, translate_overrides
from .metric_log import check_installed
from .run_config import compose_run
from .run_dirs import auto_resume, check_output_dir, latest_run_or_fail, run_dir_ok
from .train import train
from .trajectory_targets import USAGE as TARGETS_USAGE
from .trajectory_targets import compute as compute_targets
from .trajectory_targets import parse_args as targets_args
from .trajectory_targets import write as write_targets

log = logging.getLogger("difftre")


def run(cmd: str, rest: list[str]) -> int:
    """Run the command ``cmd`` (one of cli.COMMANDS) with its arguments."""
    if cmd == "train":
        return train_command(rest)
    if cmd == "evaluate":
        return evaluate_command(rest)
    if cmd == "compare":
        return compare_command(rest)
    if cmd == "export":
        return export_command(rest)
    if cmd == "targets":
        return targets_command(rest)
    return doctor(rest)


def _precompose(overrides: list[str]):
    """Compose the config as Hydra would (first value of each sweep) to catch bad input early;
    every interpolation of the job config (and the run/sweep directory) is resolved here, so an
    unresolvable one stops the run before Hydra creates its directory."""
    try:
        with config_errors(composing=True):
            parsed = OverridesParser.create().parse_overrides(overrides)
            single = []
            for ov, text in zip(parsed, overrides):
                if ov.is_sweep_override():
                    first = next(iter(ov.sweep_string_iterator()))
                    single.append(f"{ov.get_key_element()}={first}")
                else:
                    single.append(text)
            GlobalHydra.instance().clear()
            try:
                with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
                    cfg = compose(config_name="train", overrides=single, return_hydra_config=True)
            finally:
                GlobalHydra.instance().clear()
            HydraConfig.instance().set_config(cfg)   # ${hydra:...} (name, run dir) resolve as in the job
            job = [k for k in cfg if k != "hydra"]
            OmegaConf.to_container(OmegaConf.masked_copy(cfg, job), resolve=True, throw_on_missing=True)
            for key in ("hydra.run.dir", "hydra.sweep.dir"):
                OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except UserError as exc:
        fail(str(exc))
    return cfg


def _resume_overrides(rest: list[str]) -> list[str]:
    resume = [a for a in rest if a.startswith("resume=")]
    if not resume:
        return rest
    path = Path(resume[-1].split("=", 1)[1]).expanduser()
    if str(path) in ("", "null", "None"):
        return rest
    saved = path / ".hydra" / "overrides.yaml"
    if not saved.is_file():   # a run killed before its first checkpoint still has .hydra/
        fail(f"resume={path}: not a difftre run directory (.hydra/overrides.yaml missing)\n"
             "  fix: point resume= at a run directory, e.g. resume=runs/lj/2026-01-01_12-00-00")
    old = [o for o in (yaml.safe_load(saved.read_text()) or [])
           if not o.startswith(("resume=", "hydra.run.dir="))]
    old = translate_overrides(old, str(saved))   # written by an older version: today's names
    new = [a for a in rest if not a.startswith("resume=")]
    return old + new + [f"resume={path.resolve()}", f"hydra.run.dir={path.resolve()}"]


# Hydra options whose value is the next argument (``--cfg job``, ``-p trainer``, ...).
_HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                      "--config-dir", "-cd", "--experimental-rerun", "--shell-completion", "-sc"}
_HYDRA_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def _split_flags(rest: list[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra's command-line options (with their values) from overrides."""
    flags, overrides, i = [], [], 0
    while i < len(rest):
        a = rest[i]
        if a.startswith("-"):
            flags.append(a)
            takes_value = a in _HYDRA_VALUE_FLAGS or (a == "--info" and i + 1 < len(rest)
                                                      and rest[i + 1] in _HYDRA_INFO_CHOICES)
            if takes_value and i + 1 < len(rest):
                i += 1
                flags.append(rest[i])
        else:
            overrides.append(a)
        i += 1
    return flags, overrides


def train_command(rest: list[str]) -> int:
    try:
        check_overrides(rest)   # an old key or option name: say the new one
    except UserError as exc:
        fail(str(exc))
    rest = _resume_overrides(rest)
    flags, overrides = _split_flags(rest)
    if not any(f in ("--help", "-h", "--hydra-help", "--info") for f in flags):
        cfg = _precompose(overrides)
        multirun = any(f in ("--multirun", "-m") for f in flags)
        try:
            with config_errors(cfg=cfg):
                validate(cfg)
                check_installed(cfg)   # logger=tensorboard | mlflow: its writer, before Hydra makes the run directory
                _set_precision(cfg.precision)
                check_output_dir(cfg, multirun=multirun)
                if not multirun and cfg.get("resume") is None:
                    auto_resume(cfg, Path(str(cfg.hydra.run.dir)))   # before Hydra writes into .hydra/
        except UserError as exc:
            fail(str(exc))
    sys.argv = ["difftre-train"] + flags + overrides   # Hydra's argparse wants the overrides last
    _hydra_train()
    return 0


def _set_precision(precision: str) -> None:
    configure(precision)   # and the compilation cache (jax_setup.py)


def _hydra_train():
    @hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base=None)
    def task(cfg) -> None:
        run_dir = HydraConfig.get().runtime.output_dir
        try:
            # From the moment the run directory exists, SIGTERM/SIGINT only request a stop: the
            # loop checkpoints (even before its first update) and exits with a resume hint.
            with GracefulStop() as stop, config_errors(cfg=cfg):
                validate(cfg)
                _set_precision(cfg.precision)
                resume = cfg.get("resume") is not None or auto_resume(cfg, Path(run_dir))
                train(cfg, run_dir, resume=resume, stop=stop)
        except UserError as exc:
            log.error("%s", exc)
            fail(str(exc))
        except Interrupted as exc:
            log.warning("%s", exc)
            print(f"difftre: {exc}\n  continue with: difftre train resume={Path(run_dir).resolve()}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None

    task()


# ------------------------------------------------------------------------------------------
EVALUATE_USAGE = """usage: difftre evaluate [run=PATH ...] [out=DIR] [overrides ...] [--cfg job] [--help]

Evaluate trained runs with their final parameters (default: the latest run under runs/).
The config is composed by Hydra as for train: the run's saved .hydra/config.yaml over today's
evaluate defaults for its trainer kind (configs/evaluate/), then the overrides in Hydra's
grammar (key=value, +key=value, ++key=value, ~key); unknown keys are errors, as for train.
  run=PATH   a run directory (several: evaluate each, then compare them, into out=DIR)
  --cfg job  print the composed config of each run and run nothing
e.g. difftre evaluate run=runs/lj/2026-01-01_12-00-00 evaluate.production_steps=20000
"""


def evaluate_command(rest: list[str]) -> int:
    runs, overrides, out, show = [], [], None, False
    i = 0
    while i < len(rest):
        a = rest[i]
        if a in ("-h", "--help"):
            print(EVALUATE_USAGE, end="", flush=True)
            return 0
        if a in ("--cfg", "-c"):
            if i + 1 >= len(rest) or rest[i + 1] != "job":
                fail(f"{a} takes job for evaluate (the composed config of the run)\n  fix: use --cfg job")
            show, i = True, i + 2
            continue
        if a.startswith("run="):
            runs.append(Path(a.split("=", 1)[1]).expanduser())
        elif a.startswith("out="):
            out = Path(a.split("=", 1)[1]).expanduser()
        elif a.startswith("-"):
            fail(f"unknown option {a!r} for evaluate; use run=PATH, key=value overrides, --cfg job or --help")
        else:
            overrides.append(a)
        i += 1
    if not runs:
        runs = [latest_run_or_fail()]
    for run in runs:
        run_dir_ok(run)
    if show:
        for run in runs:
            cfg = _compose_run(run, overrides)
            print(f"# difftre evaluate run={run}\n{OmegaConf.to_yaml(cfg)}", end="", flush=True)
        return 0
    for run in runs:
        _evaluate_one(run, overrides)
    if len(runs) > 1:
        return compare_command([f"run={r}" for r in runs] + ([f"out={out}"] if out else []))
    return 0


def _compose_run(run: Path, overrides: list[str]):
    """The run's config with the overrides, validated as train validates its config."""
    try:
        cfg = compose_run(run, overrides)
        with config_errors(cfg=cfg):
            validate(cfg)
    except UserError as exc:
        fail(str(exc))
    return cfg


def _evaluate_one(run: Path, overrides: list[str]) -> None:
    cfg = _compose_run(run, overrides)
    try:
        with config_errors(cfg=cfg):
            _set_precision(cfg.precision)
            logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s",
                                handlers=[logging.FileHandler(run / "evaluate.log"), logging.StreamHandler()],
                                force=True)
            evaluate(cfg, run)
    except UserError as exc:
        fail(str(exc))


def export_command(rest: list[str]) -> int:
    """Write a run's pair potential as LAMMPS or GROMACS tables (see export/__init__.py)."""
    if any(a in ("-h", "--help") for a in rest):
        print(EXPORT_USAGE, end="", flush=True)
        return 0
    try:
        run, opts, overrides = parse_args(rest)
    except UserError as exc:
        fail(str(exc))
    run = run if run is not None else latest_run_or_fail()
    run_dir_ok(run)
    cfg = _compose_run(run, overrides)
    try:
        with config_errors(cfg=cfg):
            _set_precision(cfg.precision)
            manifest = export_run(cfg, run, opts)
    except UserError as exc:
        fail(str(exc))
    print(f"difftre export: wrote {', '.join(manifest['files'])} and export.json to {manifest['out']}", flush=True)
    return 0


def targets_command(rest: list[str]) -> int:
    """Target files from a trajectory with the config's observables (trajectory_targets.py)."""
    if any(a in ("-h", "--help") for a in rest):
        print(TARGETS_USAGE, end="", flush=True)
        return 0
    try:
        out, blocks, overrides = targets_args(rest)
        cfg = _precompose(overrides)
        with config_errors(cfg=cfg):   # no train validation: the targets group is what this makes
            _set_precision(cfg.precision)
            out = out or Path("runs") / "targets" / time.strftime("%Y-%m-%d_%H-%M-%S")
            results, meta = compute_targets(cfg, blocks)
            write_targets(results, meta, out)
    except UserError as exc:
        fail(str(exc))
    info = meta["info"]
    print(f"difftre targets: {', '.join(results)} from {info['frames']} frames in {info['seconds']:.1f} s -> {out}"
          + (f" (skipped, they depend on the potential: {', '.join(info['skipped'])})" if info["skipped"] else ""),
          flush=True)
    return 0


def compare_command(rest: list[str]) -> int:
    """Compare evaluated runs: one table, one overlay figure (see compare.py)."""
    runs, out = [], None
    for a in rest:
        if a.startswith("run="):
            runs.append(Path(a.split("=", 1)[1]).expanduser())
        elif a.startswith("out="):
            out = Path(a.split("=", 1)[1]).expanduser()
        else:
            fail(f"unknown argument {a!r} for compare; use run=PATH (two or more) and out=DIR")
    if len(runs) < 2:
        fail("compare needs at least two runs\n  fix: difftre compare run=PATH_A run=PATH_B")
    for run in runs:
        run_dir_ok(run)
    try:
        compare(runs, out)
    except UserError as exc:
        fail(str(exc))
    return 0


