"""Compile a program in a background thread while the run does other work.

XLA compiles a program on one core. A run starts with a chain of compilations whose inputs are
known before the previous step ends: the MD chunk program's shapes are those of the initial
state, known before that state is computed (its force evaluation compiles meanwhile); the
update's are those of the first trajectory's features, known before they are computed
(the featurisation compiles and runs meanwhile; with several state points, the programs the
update sums over them, learn/multistate.py). :class:`CompileAhead` lowers and compiles
``fn`` for the arguments' shapes in a thread; the first real call (after :meth:`wait`) finds
the executable in JAX's cache (``jit(f).lower(...).compile()`` and ``f(...)`` share it) and
runs at once. If the shapes turn out different (say, a grown capacity), the call compiles
anew as it would have anyway. Measured on 2 CPU cores: scripts/bench/README.md (Start-up).
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("difftre")


class CompileAhead:
    """At most one thread compiling in the background (:meth:`start`, :meth:`start_jobs`, :meth:`wait`)."""

    def __init__(self):
        self._thread: threading.Thread | None = None

    def start(self, fn, *args) -> None:
        """Compile the jitted ``fn`` for ``args`` (arrays or ``jax.ShapeDtypeStruct``; what the
        later call passes, with the same dtypes and weak types) in a background thread."""
        self.start_jobs(iter([(fn, args)]))

    def start_jobs(self, jobs) -> None:
        """Compile several programs one after another in a background thread: ``jobs`` yields
        ``(fn, args)`` pairs as :meth:`start` takes them. A generator works out each job's
        argument shapes (e.g. from the previous program's ``eval_shape``) in the thread too.
        A job that fails ends the thread; its program, and those after it, compile on their call."""
        self.wait()

        def work():
            try:
                for fn, args in jobs:
                    fn.lower(*args).compile()
            except Exception:   # the real call compiles again and reports the error
                log.debug("compiling ahead failed; the first call compiles instead", exc_info=True)

        # not a daemon: a run that stops meanwhile (an error, a signal) waits for the compilation
        # at exit instead of finalising the interpreter under XLA's running C++ code
        self._thread = threading.Thread(target=work, name="difftre-compile-ahead", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        """Block until the program started last is compiled (nothing if none is pending)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
