"""One compiled program for several owners that differ only in arrays (their *data*).

State points of a run that differ only in their composition and target values (states.py:
:func:`~difftre_cli.states.data_groups`) would compile the same programs once each if every
owner (a sampler, a learner) closed over its own arrays as constants. Instead one owner, the
template, is traced with the data of the owner that calls, passed as the program's first
argument: ``program(data, *args)``. Each owner holds a :class:`Bound`, called like its own
``jax.jit`` function. Used by the sampler's chunk and initial-state programs (simulate.py)
and by DiffTRe's per-update programs and featurisation (learn/shared_programs.py).
"""
from __future__ import annotations


class Bound:
    """A shared program bound to one owner's ``data``, called like the owner's own ``jax.jit``
    function (``lower``, ``eval_shape`` and ``_cache_size`` as well).

    ``current`` (a dict shared by the owners of one program) is told which owner calls last,
    under ``"owner"``, before every call or lowering, so that a trace inside the program can be
    counted as that owner's. ``leads``: this owner is the template whose shapes the program
    is compiled ahead for (the others wait for it)."""

    def __init__(self, program, data, owner=None, current: dict | None = None, leads: bool = True):
        self.program, self.data = program, data
        self.owner, self.current, self.leads = owner, current, leads

    def _enter(self) -> None:
        if self.current is not None:
            self.current["owner"] = self.owner

    def __call__(self, *args):
        self._enter()
        return self.program(self.data, *args)

    def lower(self, *args):
        self._enter()
        return self.program.lower(self.data, *args)

    def eval_shape(self, *args):
        return self.program.eval_shape(self.data, *args)

    def _cache_size(self):
        return self.program._cache_size()
