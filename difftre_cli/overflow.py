"""The one overflow rule of neighbour lists and capacities: detect, grow what overflowed,
recompute the piece of work from its saved start, give up after ``max_retries`` re-allocations.
Used by the sampler's chunks (sampler.py), the multi-state group, direct AD's differentiable
segment and the observable engine's featurisation."""
from __future__ import annotations

from typing import Any, Callable


def grown_extra(attempt: int) -> int:
    """Extra neighbour-list slots per particle on the ``attempt``-th re-allocation (0-based):
    8, 16, 32, … A list re-allocated at the same size can overflow again forever."""
    return 8 * 2 ** attempt


def overflow_decision(list_full: bool, capacity_full: bool, attempt: int, max_retries: int) -> str:
    """The one overflow rule's decision after the ``attempt``-th (0-based) computation of a
    piece of work (an MD chunk, a differentiable segment, a trajectory's features): "ok" if
    neither the neighbour list nor a capacity of the potential overflowed; "grow" (the caller
    grows what overflowed, :func:`grown_extra` for lists, and recomputes the piece from its
    saved start); "give_up" after ``max_retries`` re-allocations (the work counts as unstable)."""
    if not (list_full or capacity_full):
        return "ok"
    return "give_up" if attempt >= max_retries else "grow"


def recompute_on_overflow(compute: Callable[[], Any], flags: Callable[[Any], tuple[bool, bool]],
                          grow: Callable[[int, bool, bool], None], max_retries: int) -> tuple[Any, bool]:
    """The one overflow rule as a loop: ``out = compute()``; ``flags(out)`` gives (list overflowed,
    capacity overflowed); on "grow" (:func:`overflow_decision`) ``grow(attempt, list_full,
    capacity_full)`` enlarges what overflowed and the work is computed again from the same start.
    Returns (the last result, whether it fits)."""
    attempt = 0
    while True:
        out = compute()
        list_full, capacity_full = flags(out)
        decision = overflow_decision(list_full, capacity_full, attempt, max_retries)
        if decision != "grow":
            return out, decision == "ok"
        grow(attempt, list_full, capacity_full)
        attempt += 1
