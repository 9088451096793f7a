"""Command line: ``difftre {train,evaluate,compare,export,targets,doctor} [overrides]``.

Exit codes: 0 success; 2 bad input (config, files, unstable simulation) with a one-line
message and no traceback; 1 internal error (traceback kept).

This module is the light entry point: it prints the help and sets the process environment for
XLA (jax_setup.prepare_environment), and only then imports the commands (commands.py), which
import JAX and everything built on it. XLA reads that environment when JAX is imported, so the
one function-local import below is the point of this module, not a shortcut; it also keeps
``difftre --help`` at ~0.7 s instead of ~7 s.
"""
from __future__ import annotations

import logging
import os
import sys

from .config_files import groups, presets
from .deferred_imports import defer_unused, probes_answered
from .errors import fail
from .jax_setup import cache_library_imports, prepare_environment

COMMANDS = ("train", "evaluate", "compare", "export", "targets", "doctor")

USAGE = """usage: difftre <command> [overrides ...]

Learn interaction potentials for molecular dynamics top-down from observables (DiffTRe).

commands:
  train      [config=NAME] [group=option ...] [key=value ...] [--multirun] [--cfg job]
             train a model; runs go under runs/<config>/<timestamp>/ (hydra.run.dir=PATH to choose)
             resume=PATH continues a stopped run from its last checkpoint
  evaluate   [run=PATH] [evaluate.production_steps=N ...] [--cfg job]
             long production run with the final parameters (default: the latest run);
             writes evaluation.json and PNG plots into the run directory
             the run's saved config, overridden as for train (difftre evaluate --help)
             several run=… evaluate each, then compare them (as `compare`)
  compare    run=A run=B [...] [out=DIR]
             evaluated runs side by side: one table (RMSE, Δ, D, wall time) and one overlay plot
  export     [run=PATH] format=lammps|gromacs [out=DIR] (difftre export --help)
             the learned pair potential as LAMMPS pair_style table / GROMACS table files
  targets    [config=NAME] reference=... reference.file=PATH [observables=[...]] [out=DIR]
             target files from a trajectory with the observables' own definitions (difftre targets --help)
  doctor     print versions, devices and precision; check that a tiny simulation runs

presets (config=NAME): {presets}
config groups: {groups}
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.raiseExceptions = False   # a full disk must not turn log writes into tracebacks
    if not argv or argv[0] in ("-h", "--help", "help"):
        try:
            print(USAGE.format(presets=", ".join(presets()), groups=", ".join(groups())), flush=True)
        except BrokenPipeError:   # `difftre --help | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        fail(f"unknown command {cmd!r}; use train, evaluate, compare, export, targets or doctor (difftre --help)")
    prepare_environment()
    defer_unused()   # before JAX MD is imported (deferred_imports.py)
    cache_library_imports()
    with probes_answered():
        from . import (
            commands,  # JAX and all that uses it: only after prepare_environment() (module doc)
        )
    return commands.run(cmd, rest)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
