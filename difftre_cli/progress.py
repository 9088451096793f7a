"""Progress display: a rich live bar on a terminal, plain log lines otherwise."""
from __future__ import annotations

import logging
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

log = logging.getLogger("difftre")


class TrainingProgress:
    def __init__(self, total: int, start: int = 0, quiet: bool | None = None, every: int = 10):
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal if quiet is None else not quiet
        self.total, self.start, self.every = total, start, every
        self.t0 = time.perf_counter()
        self._progress = None
        if self.live:
            self._progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("loss {task.fields[loss]}"), TextColumn("N_eff {task.fields[neff]}"),
                                      TextColumn("reused {task.fields[reused]}"), TimeElapsedColumn(),
                                      TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
            self._task = self._progress.add_task("train", total=total, completed=start, loss="-", neff="-", reused=0)
            self._progress.start()

    def update(self, row: dict, n_reused: int) -> None:
        done = int(row["update"]) + 1
        if self._progress is not None:
            self._progress.update(self._task, completed=done, loss=f"{row['loss']:.4g}",
                                  neff=f"{row['n_eff']:.1f}", reused=n_reused)
        elif done % self.every == 0 or done == self.total or done == self.start + 1:
            elapsed = time.perf_counter() - self.t0
            rate = elapsed / max(done - self.start, 1)
            eta = rate * (self.total - done)
            print(f"update {done}/{self.total}  loss {row['loss']:.5g}  N_eff {row['n_eff']:.1f}  "
                  f"reused {n_reused}  elapsed {elapsed:.0f}s  ETA {eta:.0f}s", file=sys.stderr, flush=True)

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
        for k in last:
            if k.startswith("loss_"):
                table.add_row(k, f"{first[k]:.4g} → {last[k]:.4g}")
        table.add_row("resampled trajectories", str(sum(1 for r in rows if not r["reused"])))
        table.add_row("wall time [s]", f"{sum(r['update_time'] + r['sample_time'] for r in rows):.1f}")
        for k, v in extra.items():
            table.add_row(k, str(v))
        Console(stderr=not self.console.is_terminal).print(table)
