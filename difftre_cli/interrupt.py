"""Graceful stops: SIGTERM, SIGINT (Ctrl-C) and SLURM's pre-emption warning (SIGUSR2).

While a :class:`GracefulStop` is active, those signals only *request* a stop; the training
loop stops at the next chunk boundary of a trajectory (monitor.py; a chunk is a few seconds)
or after the update in progress, writes a checkpoint (with the trajectory in progress, if any)
and then calls :meth:`GracefulStop.finish`, which

* for SIGTERM / SIGINT raises :class:`Interrupted` (the CLI prints how to resume and exits
  with 128 + the signal number, as shells do), and
* for SIGUSR2 under submitit hands over to submitit's own handler, which requeues the job;
  the requeued job finds the checkpoint in its run directory and resumes from it.

A second Ctrl-C while a stop is pending interrupts at once (KeyboardInterrupt); checkpoint
writes are atomic, so even that loses nothing beyond the updates since the last checkpoint.
"""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("difftre")


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint."""

    def __init__(self, signum: int, run_dir, update: int, where: str = ""):
        self.signum, self.run_dir, self.update = signum, run_dir, update
        name = signal.Signals(signum).name
        at = where or f"after update {update}"
        super().__init__(f"stopped by {name} {at}; checkpoint written to {run_dir}/difftre.h5")

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class GracefulStop:
    """Context manager turning stop signals into a flag polled by the training loop."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            log.warning("received %s: stopping at the next chunk boundary (seconds) or after the current update, "
                        "with a checkpoint (press Ctrl-C again to stop at once)", signal.Signals(signum).name)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed from the main thread
        signals = [signal.SIGTERM, signal.SIGINT]
        usr2 = signal.getsignal(signal.SIGUSR2)
        if callable(usr2):   # submitit's pre-emption handler: checkpoint first, then hand over
            signals.append(signal.SIGUSR2)
        for s in signals:
            self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def finish(self, run_dir, update: int, where: str = "") -> None:
        """After the checkpoint: requeue (SIGUSR2 under submitit) or raise :class:`Interrupted`."""
        signum = self.signum
        previous = self._previous.get(signum)
        if signum == getattr(signal, "SIGUSR2", None) and callable(previous):
            log.warning("pre-emption: checkpoint written at update %d; handing over to submitit to requeue", update)
            for s, h in self._previous.items():
                signal.signal(s, h)
            self._previous.clear()
            previous(signum, None)   # submitit requeues and exits
        raise Interrupted(signum, run_dir, update, where)
