"""The host-side bookkeeping of trajectories run in chunks (sampler.py, parallel.py).

* :class:`Segment`: a trajectory in progress (device arrays);
* :class:`SegmentProgress`: its counters and the plan of its next chunk;
* :class:`ChunkPacer`: chunk sizes from the measured MD speed, one per sampler and one per
  ``parallel.StateGroup`` (whose state points advance together, chunk by chunk);
* the checkpoint format of the segments in progress when a run stopped (:func:`pack`,
  :func:`unpack`): one sampler's segment, or every segment of a group sampled together.
  Each segment is a part ``(tree, info)``, its arrays and its counters
  (``ChunkedSampler.segment_checkpoint``; ``info["label"]`` names its state point, "" for a
  single one). In the training checkpoint (train.py) they are the tree ``segment``, a dict
  label -> segment tree, and the attribute ``segment``, a JSON list of the infos. A checkpoint
  of the earlier one-segment format (the tree itself, a JSON object) reads as a list of one:
  a dict of one segment flattens to the same leaves.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple


class Segment(NamedTuple):
    """A trajectory in progress (device arrays): the integrator state and neighbour list after
    the steps done so far, and the snapshot buffers (rows beyond the recorded ones are zero)."""

    state: Any
    nbrs: Any
    positions: Any
    energies: Any
    kT: Any


@dataclass
class SegmentProgress:
    """Host-side counters of a segment."""

    n_eq: int
    n_snapshots: int
    every: int
    eq_done: int = 0
    recorded: int = 0
    retries: int = 0

    @property
    def steps_total(self) -> int:
        return self.n_eq + self.n_snapshots * self.every

    @property
    def steps_done(self) -> int:
        return self.eq_done + self.recorded * self.every

    @property
    def done(self) -> bool:
        return self.eq_done >= self.n_eq and self.recorded >= self.n_snapshots

    def plan(self, budget: int) -> tuple[int, int]:
        """(equilibration steps, snapshot intervals) of the next chunk of about ``budget`` steps."""
        n_e = min(self.n_eq - self.eq_done, budget)
        n_r = min(self.n_snapshots - self.recorded, max(0, budget - n_e) // self.every)
        if n_e == 0 and n_r == 0:
            n_r = 1
        return n_e, n_r


class ChunkPacer:
    """MD steps per chunk: small until the step time is measured, then about
    ``chunk_seconds`` of wall time (growing at most 8x from one chunk to the next)."""

    def __init__(self, chunk_seconds: float):
        self.chunk_seconds = chunk_seconds
        self.rate: float | None = None   # measured MD steps per second of wall time
        self._last = 1

    def budget(self, every: int) -> int:
        if self.rate is None:
            self._last = max(1, min(every, 20))
        else:
            self._last = min(max(1, int(self.chunk_seconds * self.rate)), 8 * self._last)
        return self._last

    def measured(self, steps: int, wall: float, compiled: bool) -> None:
        """A chunk of ``steps`` steps took ``wall`` seconds; one that compiled says nothing of the rate."""
        if compiled or wall <= 0:
            return
        rate = steps / wall
        self.rate = rate if self.rate is None else 0.5 * (self.rate + rate)


def pack(parts: list[tuple[Any, dict]]) -> tuple[dict, str]:
    """Segment parts ``(tree, info)`` -> (checkpoint tree {label: tree}, checkpoint attribute)."""
    return {info["label"]: tree for tree, info in parts}, json.dumps([info for _, info in parts])


def unpack(attr: str) -> list[dict]:
    """The infos of a checkpoint attribute written by :func:`pack` (or the one-segment format)."""
    infos = json.loads(attr)
    return [infos] if isinstance(infos, dict) else list(infos)
