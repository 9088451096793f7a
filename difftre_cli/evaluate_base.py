"""The parts of ``difftre evaluate``'s one evaluator (evaluate.py): a section is a rule that says
whether a run's config switches it on and a body that adds its results to ``evaluation.json``;
an evaluator family (the trainer registry's ``TrainerKind.evaluator``) is how a run is loaded
at its final parameters, its sections in order, and its report after ``evaluation.json`` is
written (plots, summary table)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Section:
    name: str
    on: Callable[[Any], bool]             # (cfg) -> whether this config switches the section on
    run: Callable[[Any, dict], None]      # (the loaded run, evaluation.json's dict) -> adds its results


@dataclass(frozen=True)
class Evaluator:
    load: Callable[[Any, Any], Any]       # (cfg, run_dir) -> the run at its final parameters
    sections: tuple[Section, ...]         # in the order they run (and appear in evaluation.json)
    report: Callable[[Any, dict], None]   # (the loaded run, evaluation.json's dict) -> plots, summary


def always(cfg) -> bool:
    """The rule of a section every run of its family has."""
    return True


def evaluate_section(cfg) -> dict:
    """The config's ``evaluate`` mapping ({} when it has none)."""
    return cfg.get("evaluate", {}) or {}
