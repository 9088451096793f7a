"""SciPy's minimisers one iteration at a time.

``scipy.optimize.minimize`` runs its own loop and cannot be stepped from outside, but it calls
a callback after every iteration. :class:`SteppedMinimize` runs it in a worker thread and makes
that callback a hand-over: the worker posts the new iterate and waits; :meth:`advance` (in the
caller's thread) lets it run to the next iterate (or to its end) and returns that. Exactly one
of the two threads runs at any time, so the iterates and every number are those of an
uninterrupted ``minimize`` call (the loss function may keep state, e.g. a cache).

:meth:`close` ends the worker early: the waiting callback raises, which leaves SciPy's loop,
and the thread is joined. SciPy's internal state (BFGS's inverse Hessian, CG's direction, the
Nelder–Mead simplex) lives only in the worker; it cannot be checkpointed.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable

import numpy as np


class _Leave(Exception):
    """Raised from the iteration callback when the caller closes the worker."""


class SteppedMinimize:
    """``minimize(x0, callback)`` (a call of ``scipy.optimize.minimize`` with this callback)
    from ``x0``, one iteration per :meth:`advance`."""

    def __init__(self, minimize: Callable, x0):
        self.x = np.array(x0, float)     # the last iterate handed out (x0 before the first)
        self.result = None               # SciPy's OptimizeResult once it returned
        self._minimize = minimize
        self._to_caller: queue.Queue = queue.Queue()
        self._to_worker: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="scipy-minimize", daemon=True)
        self._started = False

    def at(self, x) -> bool:
        """Whether the worker stands at ``x`` (its last iterate, or its result)."""
        return np.array_equal(self.x, np.asarray(x, float))

    def advance(self) -> tuple[str, object]:
        """("iterate", x) after the next iteration, or ("done", OptimizeResult) when SciPy
        returned (again on every later call). Exceptions of the worker are raised here."""
        if self.result is not None:
            return "done", self.result
        if self._started:
            self._to_worker.put("go")
        else:
            self._started = True
            self._thread.start()
        kind, value = self._to_caller.get()
        if kind == "error":
            self._thread.join()
            raise value
        if kind == "done":
            self._thread.join()
            self.result = value
            self.x = np.array(value.x, float)
        else:
            self.x = value
        return kind, value

    def close(self) -> None:
        """Let a waiting worker leave SciPy's loop and end (nothing if it has ended)."""
        if self._started and self._thread.is_alive():
            self._to_worker.put("leave")
            self._thread.join()

    # -- the worker ----------------------------------------------------------------------
    def _callback(self, intermediate_result) -> None:
        self._to_caller.put(("iterate", np.array(intermediate_result.x, float)))
        if self._to_worker.get() == "leave":
            raise _Leave

    def _run(self) -> None:
        try:
            res = self._minimize(self.x.copy(), self._callback)
        except _Leave:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread and raised there
            self._to_caller.put(("error", exc))
            return
        self._to_caller.put(("done", res))
