"""The regime protocol: what a learning regime gives the one outer loop (train.Trainer).

A regime proposes one update at a time; the loop owns the parameters, rollback, metrics,
checkpoints and signals. :class:`Regime` states what every regime must provide (abstract) and
what it may (methods with defaults that the loop calls unconditionally).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

#: the event of an update whose fresh trajectory refuted the step before it (:func:`loss_rose`)
LOSS_ROSE = "loss_rose"


def loss_rose(limit: float | None, before: float | None, after: float) -> bool:
    """Whether the trajectory sampled at a step's result refutes the step: its loss ``after``
    is above ``limit`` × ``before``, the loss at the parameters the step started from
    (``trainer.max_loss_ratio``; None: never, or nothing to compare with yet). The reweighted
    loss that chose the step predicted a decrease; a fresh loss that rose that far means the
    snapshots did not represent the new parameters (e.g. a crystal taken near an instability),
    and the loop rolls the step back (train.py) instead of building on it."""
    return limit is not None and before is not None and math.isfinite(after) and after > limit * before


def loss_before_attrs(loss: float | None) -> dict:
    """The loss :func:`loss_rose` compares a fresh one with, as a checkpoint attribute."""
    return {} if loss is None else {"loss_before": float(loss)}


def loss_before_from_attrs(attrs: dict) -> float | None:
    loss = float(attrs.get("loss_before", float("nan")))
    return loss if math.isfinite(loss) else None


class Proposal(NamedTuple):
    """What one update of a learning regime proposes to the outer loop (train.py)."""

    params: Any
    opt_state: Any
    fields: dict         # metrics columns of this regime (same keys every update; NaN when failed)
    event: str           # "" if the update can be accepted, else why not ("unstable_simulation", ...)
    fresh_sample: bool   # a new, stable simulation was run (ends a run of failures)
    done: str | None = None   # the regime has finished (e.g. converged), why: the loop accepts this
                              # proposal, checkpoints and ends as at trainer.updates


class Regime(ABC):
    """A learning regime driven by ``train.Trainer``."""

    #: the fix line when the loop stops after ``trainer.max_failures`` consecutive failures
    failure_hint: str = "lower optimizer.lr or simulator.dt"

    # -- must ------------------------------------------------------------------------------
    @abstractmethod
    def init(self, key) -> tuple[Any, Any]:
        """Initial (params, optimiser state); also starts whatever the regime simulates."""

    @abstractmethod
    def propose(self, params, opt_state, lr_scale: float) -> Proposal:
        """One update from the current parameters, scaled by ``lr_scale``."""

    @abstractmethod
    def checkpoint(self) -> tuple[dict, dict]:
        """(pytrees, attributes) of the regime's own state for the run's checkpoint."""

    @abstractmethod
    def templates(self, attrs: dict) -> dict:
        """Pytrees shaped like the checkpointed ones (from the checkpoint's attributes)."""

    @abstractmethod
    def restore(self, trees: dict, attrs: dict) -> None:
        """Continue from a checkpoint's pytrees and attributes."""

    @abstractmethod
    def rejected(self) -> None:
        """The loop rolled the last proposal back (forget what it predicted)."""

    # -- may -------------------------------------------------------------------------------
    def trajectory_names(self) -> list[str] | None:
        """Names of the stored reference trajectories (None: the store's default naming)."""
        return None

    def final(self, params, opt_state) -> dict | None:
        """A last metrics row for the parameters reached at ``trainer.updates`` (None: none)."""
        return None

    def close(self) -> None:
        """Release what the regime holds (threads, files) when the loop ends."""

    def summary(self, rows: list[dict], params) -> dict:
        """Extra lines (label → text) for the end-of-run summary."""
        return {}

    def result(self, params) -> dict:
        """Extra entries of ``train()``'s result."""
        return {}
