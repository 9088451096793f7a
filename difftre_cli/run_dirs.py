"""Run directories: the output directory a run may create, the checkpoint a rerun continues,
the latest run under runs/, and what makes a directory a trained difftre run (commands.py and
trained_run.py use them)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import OmegaConf

from .errors import UserError, fail
from .legacy import translate_config
from .store import RunStore

log = logging.getLogger("difftre")


def check_output_dir(cfg, multirun: bool) -> None:
    """The run (or sweep) directory must be creatable before Hydra makes it: the missing part of
    the path is created and removed again, so a read-only or virtual file system (/proc, /sys), a
    path through a file or a missing permission stops here, with nothing left behind."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    target = Path(str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)).expanduser().absolute()
    fix = f"choose a writable location, e.g. {key}=runs/my_run"
    probe, missing = target, []
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    problem = None
    if not probe.is_dir():
        problem = f"{probe} is a file, not a directory"
    elif not os.access(probe, os.W_OK | os.X_OK):
        problem = f"{probe} is not writable"
    else:
        try:
            if os.statvfs(probe).f_flag & os.ST_RDONLY:
                problem = f"{probe} is on a read-only file system"
        except OSError:
            pass
    made = []
    try:
        for d in reversed(missing):
            if problem:
                break
            try:
                d.mkdir()
                made.append(d)
            except OSError as exc:
                problem = f"{d}: {exc.strerror or exc}"
        if not problem and not os.access(target, os.W_OK | os.X_OK):
            problem = f"{target} is not writable"
    finally:
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass
    if problem:
        raise UserError(f"{key}={target}: cannot create the output directory ({problem})", fix)


def auto_resume(cfg, run_dir: Path) -> bool:
    """A run directory that already holds a checkpoint of the same config is continued: this is
    how a requeued SLURM job (or a rerun with the same hydra.run.dir) picks up its work. A
    checkpoint of a different config is never overwritten."""
    store = RunStore(run_dir)
    if not store.has_checkpoint():
        return False
    try:
        saved = translate_config(OmegaConf.create(store.saved_config() or "{}"), str(store.checkpoint_path))
    except Exception as exc:  # noqa: BLE001 - unreadable file: say so, do not touch it
        raise UserError(f"{store.checkpoint_path} exists but cannot be read ({exc})",
                        "choose another hydra.run.dir; the existing file is left untouched") from None
    strip = lambda c: {k: v for k, v in OmegaConf.to_container(c, resolve=False).items()  # noqa: E731
                       if k not in ("resume", "hydra")}
    if strip(saved) != strip(cfg):
        raise UserError(f"hydra.run.dir={run_dir} already holds a run with a different config (difftre.h5)",
                        f"choose another hydra.run.dir, or continue that run with resume={run_dir}")
    log.info("found a checkpoint of this config in %s: resuming (e.g. a requeued job)", run_dir)
    return True


def latest_run(root: Path = Path("runs")) -> Path | None:
    cands = [p.parent for p in root.glob("**/difftre.h5")]
    return max(cands, key=lambda p: (p / "difftre.h5").stat().st_mtime) if cands else None


def latest_run_or_fail() -> Path:
    """The latest run under runs/ (the default ``run=`` of evaluate and export), or exit 2."""
    run = latest_run()
    if run is None:
        fail("no run found under runs/\n  fix: train first (difftre train) or give run=PATH")
    return run


def check_run_dir(run: Path, key: str = "run=") -> None:
    """A UserError unless ``run`` is a trained run: its config (.hydra/config.yaml, written when
    training starts) and a checkpoint (difftre.h5, written after the first updates). ``key``
    names the argument in the message (``run=`` on the command line)."""
    run = Path(run)
    stages = sorted(p.name for p in run.glob("stage*_*") if (p / ".hydra" / "config.yaml").is_file())
    if stages and not (run / "difftre.h5").is_file():
        raise UserError(f"{key}{run}: a staged run; each stage is a run of its own ({', '.join(stages)})",
                        f"give one stage, e.g. {key}{run / stages[-1]}")
    if not (run / ".hydra" / "config.yaml").is_file():
        raise UserError(f"{key}{run}: not a difftre run directory (.hydra/config.yaml missing)",
                        "give the directory that `difftre train` printed")
    if not (run / "difftre.h5").is_file():
        raise UserError(f"{key}{run}: the run has no checkpoint yet (difftre.h5 missing: it was stopped "
                        "before its first checkpoint, or is still starting)",
                        f"let it train (continue it with difftre train resume={run}), then use it")


def run_dir_ok(run: Path) -> None:
    """:func:`check_run_dir` for the command line: exit 2 with its message."""
    try:
        check_run_dir(run)
    except UserError as exc:
        fail(str(exc))
