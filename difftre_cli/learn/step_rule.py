"""How far an update moves along its direction: the step rule of the reweighting learners.

``fixed`` (the default): the optimiser's update as it is (learning rate × schedule × the
rejection factor). ``line_search``: the same direction, scaled by the factor s from
``scales`` (powers of 2 around 1) that minimises the *reweighted* loss on the stored
snapshots, among the factors whose effective sample size stays at or above
``ratio · S`` (``trainer.reweight_ratio``: the trajectory still represents the new
parameters). The stored trajectory then decides how far the update may go, instead of a step
length fixed in advance: far from the target a step runs to the edge of what the snapshots
support, and the next update resamples (the trajectory is *exhausted*); close to it the
loss's minimum along the direction comes first, and the trajectory is reused. If no factor is
allowed (N_eff already below the ratio at the smallest) the smallest is taken.

Near the target the noise of one trajectory's estimate is what is left, so a step that stops
at the loss's minimum (not at the N_eff limit) is followed by a fresh trajectory whose snapshots
are twice as far apart (up to ``max_length`` times the preset's ``every``; the same number of
snapshots, so nothing is recompiled), and a step stopped by N_eff halves the spacing again:
short trajectories early, longer ones near convergence. Without it a trajectory reused near
the target was fitted to its own noise (config=lj: the evaluated RDF RMSE went from 0.013 back
to 0.022 over hundreds of reused updates).

``adapt: true`` lets the smallest factor follow the progress. Far from the target a step is
limited by N_eff long before the Gauss–Newton model stops being accurate (config=lj: 1/16 and 1/8
of the step for the first six updates, although half steps bring the training loss to its
noise floor in 5 updates instead of 11; scripts/bench/README.md). So the factor taken when N_eff
stops the step (the *floor*, the smallest candidate at first) moves one candidate up after each
update whose fresh trajectory shows the loss down by at least :data:`CONFIRMED` of its previous
value, up to :data:`FLOOR_MAX` (half the step), and one down after an update whose loss went up.
Judging a step needs the next update's fresh loss, so the floor acts one update late. Near the target the loss
no longer falls by that much, the floor sinks, and the snapshots decide again.

All candidate factors are evaluated in the update's one jit call (``lax.map``: one forward
pass over the snapshots per factor, no gradient), so a line-search update costs about
(1 + n_scales/3) plain ones for a network, less for a spline whose features are stored.
It works on any optimiser's update (Adam's, the Fisher step's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ..checks import choice, number
from ..errors import UserError

KINDS = ("fixed", "line_search")
#: the relative decrease of the fresh loss that counts as a confirmed step (adapt: true)
CONFIRMED = 0.1
#: the largest floor (adapt: true): half the optimiser's step
FLOOR_MAX = 0.5


@dataclass(frozen=True)
class StepRule:
    kind: str = "fixed"
    scales: tuple = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    ratio: float = 0.9      # N_eff ≥ ratio · S after the step
    max_length: int = 8     # trajectories up to this many times the preset's spacing of snapshots
    adapt: bool = False     # the floor follows the progress (module doc)

    def next_length(self, length: int, exhausted: bool) -> int:
        """The spacing factor of the next trajectory's snapshots (same count, so nothing is
        recompiled): halved after a step the snapshots' N_eff stopped — the loss's signal
        dominates, a shorter trajectory serves as well — doubled (up to ``max_length``) after a
        step that stopped at the loss's minimum along its direction, where the noise of one
        trajectory's estimate is what is left to beat."""
        return max(1, length // 2) if exhausted else min(self.max_length, 2 * length)

    @property
    def searches(self) -> bool:
        return self.kind == "line_search"

    @property
    def first_floor(self) -> float:
        """The factor taken when N_eff refuses every candidate, before any progress is known."""
        return float(self.scales[0])

    def next_floor(self, floor: float, loss_before: float | None, loss_after: float) -> float:
        """The floor after an update whose fresh loss is ``loss_after``, the previous update's
        being ``loss_before`` (None: unknown, e.g. after a rejected update): one candidate up
        after a confirmed decrease (≤ FLOOR_MAX), one down after an increase (module doc)."""
        if not self.adapt or loss_before is None or not math.isfinite(loss_after):
            return floor
        i = max([0] + [j for j, s in enumerate(self.scales) if s <= floor])   # the floor's candidate
        if loss_after <= (1.0 - CONFIRMED) * loss_before:
            if i + 1 < len(self.scales) and self.scales[i + 1] <= FLOOR_MAX:
                i += 1
        elif loss_after > loss_before:
            i = max(i - 1, 0)
        return float(self.scales[i])

    def candidates(self, trial, params, updates):
        """(loss, N_eff) at every factor, each array (n_scales,); ``trial(params) -> (loss,
        n_eff)`` on the stored snapshots (for several state points: each point's, summed by
        the caller)."""
        scales = jnp.asarray(self.scales, jnp.result_type(float))

        def one(s):
            moved = jax.tree_util.tree_map(lambda p, u: p + (s * u).astype(p.dtype), params, updates)
            return trial(moved)
        return jax.lax.map(one, scales)

    def choose(self, losses, enough, floor=None):
        """(factor, exhausted) from the candidates' losses and whether each kept N_eff ≥
        ratio · S (every state point's). ``exhausted``: the next larger factor was refused for
        its N_eff, so the snapshots, not the loss, stopped the step: another update on them
        could only crawl along the same edge, and the next update resamples. An exhausted step
        goes at least to ``floor`` (None: the smallest candidate; module doc)."""
        scales = jnp.asarray(self.scales, jnp.result_type(float))
        ok = enough & jnp.isfinite(losses)
        best = jnp.argmin(jnp.where(ok, losses, jnp.inf))
        nxt = jnp.minimum(best + 1, scales.shape[0] - 1)
        exhausted = ~jnp.any(ok) | ((best + 1 < scales.shape[0]) & ~enough[nxt])
        factor = jnp.where(jnp.any(ok), scales[best], scales[0])
        if floor is not None:
            factor = jnp.where(exhausted, jnp.maximum(factor, jnp.asarray(floor, factor.dtype)), factor)
        return factor, exhausted

    def scale(self, trial, params, updates, n_states: int, floor=None):
        """(factor, exhausted) for ``updates`` (a pytree like ``params``) on one trajectory of
        ``n_states`` states (:meth:`candidates`, :meth:`choose`)."""
        losses, n_effs = self.candidates(trial, params, updates)
        return self.choose(losses, n_effs >= self.ratio * n_states, floor)


def build(tc, ratio: float) -> StepRule:
    """From ``trainer.step_rule`` (a kind, or a mapping {kind, scales}) and the reuse ratio."""
    spec = tc.get("step_rule", "fixed") if tc is not None else "fixed"
    if spec is None:
        spec = "fixed"
    if isinstance(spec, str):
        spec = {"kind": spec}
    spec = dict(spec)
    kind = spec.pop("kind", "fixed")
    choice({"kind": kind}, "kind", KINDS, prefix="trainer.step_rule", what="step rule")
    scales = tuple(float(s) for s in spec.pop("scales", StepRule.scales))
    max_length = number({"max_length": spec.pop("max_length", StepRule.max_length)}, "max_length",
                        prefix="trainer.step_rule", integer=True, lo=1, example="8")
    adapt = spec.pop("adapt", False)
    if not isinstance(adapt, bool):
        raise UserError(f"trainer.step_rule.adapt={adapt!r}: expected true or false",
                        "set trainer.step_rule.adapt=true to let the smallest factor follow the progress")
    if spec:
        raise UserError(f"trainer.step_rule: unknown key(s) {', '.join(spec)}",
                        "the keys are kind, scales, max_length and adapt")
    if not scales or any(not (s > 0) for s in scales) or list(scales) != sorted(scales):
        raise UserError(f"trainer.step_rule.scales={list(scales)}: need increasing positive factors",
                        "e.g. [0.25, 0.5, 1, 2, 4, 8, 16]")
    return StepRule(kind, scales, float(ratio), int(max_length), adapt)


def floor_attrs(floor: float, last_loss: float | None) -> dict:
    """The step rule's progress state (step_rule.next_floor) as checkpoint attributes."""
    attrs = {"step_floor": float(floor)}
    if last_loss is not None:   # (absent rather than NaN: attributes compare equal across runs)
        attrs["step_last_loss"] = float(last_loss)
    return attrs


def floor_from_attrs(attrs: dict, rule) -> tuple[float, float | None]:
    """(floor, last loss) from checkpoint attributes (older checkpoints: the first floor, unknown)."""
    floor = float(attrs.get("step_floor", rule.first_floor))
    last = float(attrs.get("step_last_loss", float("nan")))
    return floor, (last if math.isfinite(last) else None)
