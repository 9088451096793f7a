"""Progress display: a rich live bar on a terminal, plain log lines otherwise."""
from __future__ import annotations

import logging
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

log = logging.getLogger("difftre")


def _hms(seconds: float | None) -> str:
    """12 s, 7 min, 2.4 h, 1.5 d; "?" when unknown."""
    if seconds is None or seconds != seconds:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


class TrainingProgress:
    """The training loop's display (``total`` None: trajectories only): one bar for updates and, while a trajectory is sampled,
    one for its MD steps (rich, on a terminal); plain lines on stderr otherwise (an update line
    every ``every`` updates, a trajectory line at its first chunk and then every ``line_seconds``)."""

    def __init__(self, total: int | None, start: int = 0, quiet: bool | None = None, every: int = 10,
                 line_seconds: float = 30.0):
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal if quiet is None else not quiet
        self.total, self.start, self.every, self.line_seconds = total, start, every, line_seconds
        self.t0 = time.perf_counter()
        self.done = start
        self._progress = None
        self._sample_task = None
        self._last_line = -float("inf")
        if self.live:
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                      TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
            self._task = None if total is None else self._progress.add_task("train", total=total, completed=start,
                                                                           info="")
            self._progress.start()

    def run_eta(self) -> float | None:
        """Seconds left in the run from the updates done so far (None before the first)."""
        if self.done <= self.start:
            return None
        return (time.perf_counter() - self.t0) / (self.done - self.start) * (self.total - self.done)

    def trajectory(self, label: str, steps_done: int, steps_total: int, rate: float, run_eta: float | None) -> None:
        """After a chunk of a trajectory: steps done / total, MD steps/s, ETAs."""
        what = f"{label} trajectory" if label else "trajectory"
        finished = steps_done >= steps_total
        if self._progress is not None:
            if self._sample_task is None:
                self._sample_task = self._progress.add_task(what, total=steps_total, completed=0, info="")
            self._progress.update(self._sample_task, description=what, total=steps_total, completed=steps_done,
                                  info=f"{rate:.3g} MD steps/s" + (f", run ETA {_hms(run_eta)}" if run_eta else ""))
            if finished:
                self._progress.remove_task(self._sample_task)
                self._sample_task = None
            return
        now = time.perf_counter()
        if finished or now - self._last_line < self.line_seconds:
            return
        self._last_line = now
        eta = (steps_total - steps_done) / rate if rate == rate and rate > 0 else None
        speed = f"{rate:.3g} MD steps/s" if rate == rate else "first chunk (compiled)"
        print(f"{what}: step {steps_done}/{steps_total}  {speed}  ETA {_hms(eta)}"
              + (f"  run ETA {_hms(run_eta)}" if run_eta is not None else ""), file=sys.stderr, flush=True)

    def update(self, row: dict, n_reused: int) -> None:
        done = int(row["update"]) + 1
        self.done = done
        # N_eff and reuse: trainers that sample (the 0 K fit has neither)
        sampled = f"  N_eff {row['n_eff']:.1f}  reused {n_reused}" if "n_eff" in row else ""
        if self._progress is not None:
            self._progress.update(self._task, completed=done, info=f"loss {row['loss']:.4g}{sampled}")
        elif done % self.every == 0 or done == self.total or done == self.start + 1:
            elapsed = time.perf_counter() - self.t0
            rate = elapsed / max(done - self.start, 1)
            eta = rate * (self.total - done)
            print(f"update {done}/{self.total}  loss {row['loss']:.5g}{sampled}  "
                  f"elapsed {elapsed:.0f}s  ETA {eta:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()

    def summary(self, rows: list[dict], extra: dict) -> None:
        if not rows:
            return
        table = Table(title="difftre train — summary")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        first, last = rows[0], rows[-1]
        table.add_row("updates", str(len(rows)))
        table.add_row("loss (first → last)", f"{first['loss']:.4g} → {last['loss']:.4g}")
        for k in last:   # (rows of interleaved trainers carry different columns: the rows that have k)
            if k.startswith("loss_"):
                have = [r for r in rows if k in r]
                table.add_row(k, f"{have[0][k]:.4g} → {last[k]:.4g}")
        if "reused" in last:
            table.add_row("resampled trajectories", str(sum(1 for r in rows if r.get("reused") == 0)))
        if "update_time" in last:
            wall = sum(r.get("update_time", 0.0) + r.get("sample_time", 0.0) for r in rows)
            table.add_row("wall time \\[s]", f"{wall:.1f}")
        for k, v in extra.items():
            table.add_row(k, str(v))
        Console(stderr=not self.console.is_terminal).print(table)
