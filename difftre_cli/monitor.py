"""What the training loop does between the chunks of a simulation (the sampler's monitor,
sampler.py): show progress, estimate the cost once, checkpoint the trajectory in progress
when ``trainer.checkpoint_seconds`` have passed, and stop on a signal.

The chunks are those of one sampler or of a ``parallel.StateGroup`` (several state points
sampled together, ``trainer.state_parallel=devices``): a group reports once per chunk, with
the progress of its member furthest from the end and all its members' segments.

A checkpoint written here holds the loop's state at the start of the update in progress (the
parameters have not moved yet) plus the segments in progress (segments.py); resuming from it
continues those trajectories at the step where they stopped, bit-identical to an
uninterrupted run on CPU.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import jax

from .interrupt import GracefulStop
from .progress import TrainingProgress, _hms

log = logging.getLogger("difftre")

#: estimates above this on a CPU come with a warning naming the preset's reduced overrides
WARN_HOURS = 3.0
#: (fewest, most) trajectories per update of a state point, by trainer kind: DiffTRe reuses a
#: trajectory while N_eff stays high (about 1 in 5 updates resampled in the measured presets,
#: every update at high learning rates); IBI resamples every update; direct AD unrolls
#: ``trainer.steps`` steps per update with a backward pass (about 3 MD steps' cost each).
TRAJECTORIES_PER_UPDATE = {"difftre": (0.2, 1.0), "ibi": (1.0, 1.0)}


class CostEstimate:
    """Printed once, after the first chunk whose MD speed was measured."""

    def __init__(self, cfg, n_updates: int, start: int, n_states: int):
        self.cfg, self.n_updates, self.start, self.n_states = cfg, n_updates, start, n_states
        self.done = False

    def seconds(self, sampler, prog, rate: float) -> tuple[float, float, float]:
        """(this trajectory's remaining, whole run low, whole run high) in seconds."""
        sc, tc = sampler.cfg, self.cfg.trainer
        this = (prog.steps_total - prog.steps_done) / rate
        later = (sc.equilibration_steps + sc.production_steps) / rate
        rest = max(self.n_updates - self.start - 1, 0)
        kind = tc.kind
        if kind == "direct_ad":
            per = 3.0 * int(tc.get("steps", 50)) / rate
            low = high = rest * per
        else:
            lo, hi = TRAJECTORIES_PER_UPDATE.get(kind, (1.0, 1.0))
            low, high = rest * lo * later * self.n_states, rest * hi * later * self.n_states
        other = (self.n_states - 1) * (prog.steps_total / rate) if self.start == 0 else 0.0
        return this, this + other + low, this + other + high

    def report(self, sampler, prog, rate: float) -> None:
        self.done = True
        this, low, high = self.seconds(sampler, prog, rate)
        device = jax.default_backend()
        log.info("cost estimate on this %s: %.3g MD steps/s; this trajectory %s more (%d steps); the run "
                 "(%d updates) %s to %s of sampling, plus the updates themselves", device, rate, _hms(this),
                 prog.steps_total - prog.steps_done, self.n_updates - self.start, _hms(low), _hms(high))
        if device == "cpu" and low > WARN_HOURS * 3600:
            reduced = self.cfg.get("reduced_overrides")
            hint = (f"for a first try on this machine add the preset's reduced overrides: {reduced}"
                    if reduced else "shorten simulator.production_steps / trainer.updates or use fewer particles")
            log.warning("this run is estimated at %s or more on a CPU; %s; on a GPU node install the cuda extra "
                        "(pip install -e \".[cuda]\")", _hms(low), hint)


class TrainingMonitor:
    """``sampler.Monitor`` of :class:`train.Trainer`: ``checkpoint(segments)`` writes the loop's
    checkpoint with the segments in progress (a list of parts (tree, info), segments.py),
    ``last_checkpoint()`` is the time of the last one written."""

    def __init__(self, progress: TrainingProgress, stop: GracefulStop, estimate: CostEstimate,
                 checkpoint: Callable, last_checkpoint: Callable[[], float], checkpoint_seconds: float,
                 run_dir, update: Callable[[], int]):
        self.progress, self.stop, self.estimate = progress, stop, estimate
        self.checkpoint, self.last_checkpoint = checkpoint, last_checkpoint
        self.checkpoint_seconds, self.run_dir, self.update = checkpoint_seconds, run_dir, update

    def chunk_done(self, source, segments, prog, rate: float) -> None:
        if not self.estimate.done and rate == rate:
            self.estimate.report(source, prog, rate)
        eta = self.progress.run_eta()
        if eta is None and rate == rate:
            eta = self.estimate.seconds(source, prog, rate)[2]
        self.progress.trajectory(source.label, prog.steps_done, prog.steps_total, rate, eta)
        if prog.done:   # the update finishes it; the loop checkpoints and stops after the update
            return
        due = time.perf_counter() - self.last_checkpoint() > self.checkpoint_seconds
        if not (due or self.stop.requested):
            return
        self.checkpoint(segments())
        where = (f"during update {self.update()}, at step {prog.steps_done} of {prog.steps_total} of its "
                 f"{source.label + ' ' if source.label else ''}trajectory")
        log.info("checkpoint %s", where)
        if self.stop.requested:
            self.progress.close()
            self.stop.finish(self.run_dir, self.update(), where)


class EvaluationMonitor:
    """``sampler.Monitor`` of ``difftre evaluate``'s production run (several segments, one per
    jackknife block): progress lines over the whole run; ``offset`` is set per segment."""

    def __init__(self, total_steps: int, label: str = "evaluate"):
        self.progress = TrainingProgress(None)
        self.total, self.label, self.offset = total_steps, label, 0

    def chunk_done(self, source, segments, prog, rate: float) -> None:
        self.progress.trajectory(self.label, self.offset + prog.steps_done, self.total, rate, None)

    def close(self) -> None:
        self.progress.close()
