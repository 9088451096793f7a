"""`difftre evaluate`: one evaluator, composed of sections that a run's config switches on.

The trainer registry's evaluator name (learn/registry.py: ``TrainerKind.evaluator``) selects
how the run is loaded at its final parameters and its section set (evaluate_base.py):

* ``md`` (evaluate_md.py): ``observables`` — a long production run, observables with jackknife
  errors, targets; ``stress_strain`` — ``evaluate.stress_strain`` not null; ``temperature`` —
  the mean kinetic kT; ``potential`` — the learned potential against the ground truth;
* ``static`` (evaluate_static.py): ``static`` — the 0 K properties (elastic constants, force
  constants) at the start and fitted parameters; ``landscape`` — ``evaluate.landscape.enabled``;
  ``phonons`` — ``evaluate.phonons.enabled`` (phonopy).

Each section on for the config adds its results to ``evaluation.json`` (in the run directory,
with the wall time); then the family's report writes the plots and a summary table.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .evaluate_base import Evaluator
from .evaluate_md import MD, external_curve, potential_curve, rdf_deviation
from .evaluate_static import STATIC
from .learn.registry import trainer_kind

__all__ = ["EVALUATORS", "evaluate", "external_curve", "potential_curve", "rdf_deviation"]

#: the evaluators that trainer kinds name (learn/registry.py: TrainerKind.evaluator)
EVALUATORS: dict[str, Evaluator] = {"md": MD, "static": STATIC}


def evaluate(cfg, run_dir) -> dict:
    """Evaluate a run: its trainer's evaluator, each section that ``cfg`` switches on in turn;
    writes ``evaluation.json`` and the plots into ``run_dir`` and returns the results."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    evaluator = EVALUATORS[trainer_kind(cfg.trainer.kind).evaluator]
    run = evaluator.load(cfg, run_dir)
    out: dict = {}
    for section in evaluator.sections:
        if section.on(cfg):
            section.run(run, out)
    out["wall_time_s"] = time.perf_counter() - t0
    with open(run_dir / "evaluation.json", "w") as fh:
        json.dump(out, fh, indent=1)
    evaluator.report(run, out)
    return out
