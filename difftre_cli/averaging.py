"""Parameter averaging (``trainer.average: d``): the model a run leaves is an exponential moving
average of its accepted iterates, not the last one.

Near the target a reweighting trainer's steps are driven by the noise of each trajectory's
estimate, and the iterates wander around the optimum; their average is closer to it than any
single iterate (Polyak & Juditsky, SIAM J. Control Optim. 30, 838, 1992; Ruppert, 1988). The
simulation and the steps keep using the iterate; the average is what the checkpoint's
``params`` hold, so ``difftre evaluate``, ``difftre export``, the Python API and a following
stage all see it. The iterate is kept beside it (``iterate_params``) for resuming.

With weight d per update the average is debiased like Adam's moments: after n accepted updates
θ̄ = (1 − d) Σ_k d^(n−k) θ_k / (1 − d^n), so the first iterate is not pulled towards the
initial parameters, and d = 0 is the last iterate. Rejected updates add nothing, and a rejection
also takes back the step it rolls back (train.py: the parameters return to those before the
last accepted step), unless a resume came in between.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp


@dataclass
class ParameterAverage:
    decay: float
    total: Any = None    # (1 − d) Σ_k d^(n−k) θ_k (a pytree like the parameters)
    count: int = 0       # accepted updates averaged
    previous: Any = None  # (total, count) before the last add, for undo

    def add(self, params) -> None:
        """Average in the parameters of one accepted update."""
        self.previous = (self.total, self.count)
        d = self.decay
        if self.total is None:
            self.total = jax.tree_util.tree_map(lambda p: (1.0 - d) * p, params)
        else:
            self.total = jax.tree_util.tree_map(lambda a, p: d * a + (1.0 - d) * p, self.total, params)
        self.count += 1

    def undo(self) -> None:
        """Take back the last :meth:`add` (its step was rolled back); once per add."""
        if self.previous is not None:
            (self.total, self.count), self.previous = self.previous, None

    def value(self, params):
        """The averaged parameters (``params`` itself before any accepted update)."""
        if self.count == 0:
            return params
        norm = 1.0 - self.decay ** self.count
        return jax.tree_util.tree_map(lambda a, p: (a / norm).astype(jnp.result_type(p)), self.total, params)

    def trees(self, params) -> dict:
        """Checkpoint trees: the running sum (the initial parameters' shape before any update)."""
        return {"average_total": params if self.total is None else self.total}

    def attrs(self) -> dict:
        return {"average_count": self.count, "average_decay": self.decay}

    def restore(self, trees: dict, attrs: dict) -> None:
        self.count = int(attrs.get("average_count", 0))
        self.total = trees["average_total"] if self.count else None


def build(tc) -> ParameterAverage | None:
    """From ``trainer.average`` (null or 0: off)."""
    d = tc.get("average") if tc is not None else None
    return ParameterAverage(float(d)) if d else None
