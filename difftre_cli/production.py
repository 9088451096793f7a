"""The evaluation run: a fresh trajectory of the learned model in jackknife blocks.

``production_run`` equilibrates, then samples ``steps`` MD steps as blocks of ``chunk`` steps
(each block one ``sampler.run``, itself in bounded chunks of one compiled program; progress
through :class:`~.monitor.EvaluationMonitor`), computes every observable of the run's
observable set per snapshot, and returns their means with standard errors from a jackknife over
the blocks. Used by ``difftre evaluate`` (evaluate.py), its stress–strain section
(stress_strain.py) and the benchmarks.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from .errors import UserError
from .monitor import EvaluationMonitor


def production_observables(c, params, eq_steps: int, steps: int, every: int, seed: int, chunk: int = 2000):
    """Mean of every observable over a fresh run: equilibrate, then ``steps`` steps in chunks."""
    run = production_run(c, params, eq_steps, steps, every, seed, chunk)
    return run.means, run.n, run.kT


@dataclasses.dataclass
class Production:
    means: dict          # observable -> mean (functions of averages already combined)
    errors: dict | None  # observable -> standard error (jackknife over chunks); None for one chunk
    n: int               # snapshots
    kT: float            # mean kinetic kT
    positions: Any = None  # the last configuration
    steps: int = 0         # production steps run (``steps`` rounded down to whole snapshot intervals)


def production_run(c, params, eq_steps: int, steps: int, every: int, seed: int, chunk: int = 2000,
                   positions=None) -> Production:
    """A fresh run (from the system's start or ``positions``): equilibrate, then ``steps`` steps in
    chunks of ``chunk``; means of every observable and their standard errors by a jackknife over
    the chunks (each chunk left out in turn; observables that are functions of averages, such as
    the stress-fluctuation stiffness, are recombined from the remaining chunks' averages)."""
    chunk = max(every, min(chunk, steps) // every * every)
    total = max(every, steps // every * every)           # whole snapshot intervals only
    sizes = [chunk] * (total // chunk) + ([total % chunk] if total % chunk else [])   # a shorter last block
    sampler = c.sampler   # Sampler, or OneBodySampler (onebody.py): one compiled chunk program for all blocks
    state, nbrs = sampler.init(jax.random.PRNGKey(seed), params, positions, ahead=sizes[0] // every)
    parts, counts, kts = [], [], []
    monitor = EvaluationMonitor(eq_steps + sum(sizes))
    sampler.monitor = monitor
    try:
        for i, size in enumerate(sizes):
            n_eq = eq_steps if i == 0 else 0
            res = sampler.run(params, state, nbrs, n_eq, size // every, every)
            monitor.offset += n_eq + size
            if not res.ok:
                raise UserError(f"the evaluation run became unstable ({res.reason})",
                                "the learned potential is not stable at this state point; train longer or lower "
                                "simulator.dt")
            state, nbrs = res.state, res.neighbor
            feats = c.engine.featurize(res.trajectory)
            vals = c.engine.snapshot_observables_jit(params, feats)
            # pytrees of per-snapshot pieces for observables with ``combine``
            parts.append({k: jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64).sum(0), v)
                          for k, v in vals.items()})
            counts.append(int(res.trajectory.energies.shape[0]))
            kts.append(float(np.mean(res.trajectory.kT)))
    finally:
        sampler.monitor = None
        monitor.close()
    total = jax.tree_util.tree_map(lambda *xs: sum(xs), *parts)
    n = sum(counts)

    def finish(sums, count):
        means = {k: jax.tree_util.tree_map(lambda x: x / count, v) for k, v in sums.items()}
        means = c.engine.combine(means)   # functions of averages (stress-fluctuation stiffness)
        return {k: np.asarray(v, np.float64) for k, v in means.items()}

    means = finish(total, n)
    errors = None
    if len(parts) > 1:
        k = len(parts)
        loo = [finish(jax.tree_util.tree_map(lambda a, b: a - b, total, p), n - m) for p, m in zip(parts, counts)]
        errors = {name: np.sqrt((k - 1) / k * np.sum([(x[name] - np.mean([y[name] for y in loo], 0)) ** 2
                                                      for x in loo], 0)) for name in means}
    pos = np.asarray(state.position)
    return Production(means, errors, n, float(np.mean(kts)), pos, sum(sizes))
