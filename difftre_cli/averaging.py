"""Parameter averaging (``trainer.average: d``): the model a run leaves is an exponential moving
average of its accepted iterates, not the last one.

Near the target a reweighting trainer's steps are driven by the noise of each trajectory's
estimate, and the iterates wander around the optimum; their average is closer to it than any
single iterate (Polyak & Juditsky, SIAM J. Control Optim. 30, 838, 1992; Ruppert, 1988). The
simulation and the steps keep using the iterate; the average is what the checkpoint's
``params`` hold, so ``difftre evaluate``, ``difftre export``, the Python API and a following
stage all see it. The iterate is kept beside it (``iterate_params``) for resuming.

With weight d per update (``optax.ema``) the average is debiased like Adam's moments: after n
accepted updates θ̄ = (1 − d) Σ_k d^(n−k) θ_k / (1 − d^n), so the first iterate is not pulled
towards the initial parameters, and d = 0 is the last iterate. Rejected updates add nothing, and a rejection
also takes back the step it rolls back (train.py: the parameters return to those before the
last accepted step), unless a resume came in between.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import optax

_NOTHING = object()   # ParameterAverage.previous: no add to take back


@dataclass
class ParameterAverage:
    """Optax's debiased moving average (``optax.ema``) of the accepted iterates, with one step
    of undo and checkpoint trees."""
    decay: float
    state: Any = None                  # optax.ema's state: count and the biased average (None: nothing added)
    previous: Any = _NOTHING           # the state before the last add, for undo
    _ema: Any = field(init=False, repr=False)

    def __post_init__(self):
        self._ema = optax.ema(self.decay, debias=True)

    @property
    def count(self) -> int:
        """Accepted updates averaged."""
        return 0 if self.state is None else int(self.state.count)

    def add(self, params) -> None:
        """Average in the parameters of one accepted update."""
        self.previous = self.state
        _, self.state = self._ema.update(params, self._ema.init(params) if self.state is None else self.state)

    def undo(self) -> None:
        """Take back the last :meth:`add` (its step was rolled back); once per add."""
        if self.previous is not _NOTHING:
            self.state, self.previous = self.previous, _NOTHING

    def value(self, params):
        """The averaged parameters (``params`` itself before any accepted update)."""
        if self.count == 0:
            return params
        mean = optax.tree.bias_correction(self.state.ema, self.decay, self.state.count)
        return jax.tree_util.tree_map(lambda a, p: a.astype(jnp.result_type(p)), mean, params)

    def trees(self, params) -> dict:
        """Checkpoint trees: the biased average (the initial parameters' shape before any update)."""
        return {"average_total": params if self.state is None else self.state.ema}

    def attrs(self) -> dict:
        return {"average_count": self.count, "average_decay": self.decay}

    def restore(self, trees: dict, attrs: dict) -> None:
        count = int(attrs.get("average_count", 0))
        self.state = optax.EmaState(count=jnp.asarray(count, jnp.int32), ema=trees["average_total"]) if count else None
        self.previous = _NOTHING


def build(tc) -> ParameterAverage | None:
    """From ``trainer.average`` (null or 0: off)."""
    d = tc.get("average") if tc is not None else None
    return ParameterAverage(float(d)) if d else None
