"""A trained run in Python: ``from difftre_cli import load_run; run = load_run(path)``.

The run is loaded as ``difftre evaluate`` loads it — its saved config composed with today's
defaults (run_config.compose_run) and validated, its parts built by the same builders and its
parameters read from its checkpoint (evaluate_md.load) — so the energy here is the energy difftre
samples and reweights with: prior + learned model, in the run's units (units.py).

``run.energy_fn()`` and ``run.force_fn()`` are JAX MD-style functions of the positions and a
neighbour list from ``run.neighbor_fn()`` (the project's dense lists, neighbors.py): pass them to
``jax_md.simulate`` integrators, ``neighbor=`` as a keyword, as difftre's sampler does. A run
trained with ``precision=double`` switches JAX to float64 (``jax_enable_x64``), as evaluate does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig

from . import neighbors
from .config import validate
from .config_errors import config_errors
from .errors import UserError
from .evaluate_md import load, select_state
from .learn.registry import trainer_kind
from .run_config import compose_run
from .run_dirs import check_run_dir
from .store import RunStore

log = logging.getLogger("difftre")

__all__ = ["TrainedRun", "load_run"]


@dataclass(frozen=True)
class TrainedRun:
    """A trained run at its final parameters, at one of its state points (``state``)."""

    path: Path
    config: DictConfig          # the resolved config difftre evaluate would use (OmegaConf)
    params: Any                 # the trained parameters (a pytree), from the run's checkpoint
    state: str                  # the state point ("" for a run of one state point)
    components: Any             # assemble.Components of that state point (system, potential, ...)

    @property
    def potential(self):
        """The potential (prior + model) bound to the run's system (potentials/protocol.py)."""
        return self.components.potential

    @property
    def system(self):
        """The simulated system (system.System: box, kT, masses, units, initial positions)."""
        return self.components.system

    @property
    def kT(self) -> float:
        """The thermal energy of the state point, in the run's energy unit."""
        return float(self.system.kT)

    @property
    def box_size(self) -> float | None:
        """The edge of the cubic periodic box (None for particles on a line)."""
        return None if self.potential.one_body else float(self.system.box_size)

    @property
    def positions(self) -> jax.Array:
        """(N, d) positions: the last snapshot of the run's latest reference trajectory at this
        state point (an equilibrated configuration), or the system's initial ones without any."""
        store = RunStore(self.path)
        last = store.trajectory_files(self.state)
        if not last:
            return jnp.asarray(self.system.positions)
        index = int(last[-1].stem.rsplit("_", 1)[-1])
        return jnp.asarray(store.read_trajectory(index, self.state).positions[-1])

    def neighbor_fn(self, box_size: float | None = None) -> neighbors.NeighborFns:
        """The neighbour-list functions the potential needs in a box of side ``box_size``
        (default: the run's), with the run's skin and capacity (neighbors.make_neighbor_fn):
        ``nbrs = fn.allocate(R)``, ``nbrs = fn.update(R, nbrs)`` each step; when
        ``nbrs.did_buffer_overflow`` is set, allocate again."""
        if self.potential.one_body:
            raise UserError("this run's potential is a one-body field u(x): it takes no neighbour list",
                            "call run.energy_fn() and run.force_fn() without neighbor=")
        sim = self.config.simulator
        return neighbors.make_neighbor_fn(self._box(box_size), self.potential.list_cutoff, float(sim.skin),
                                          float(sim.capacity_multiplier))

    def energy_fn(self, box_size: float | None = None, params=None):
        """``energy(R, neighbor=None, **kwargs) -> scalar``: the total potential energy U(R) =
        prior + model at ``params`` (default: the trained ones) in the run's energy unit. With
        ``neighbor=None`` a list is allocated for R (outside jit only); other keyword arguments
        (those JAX MD's integrators pass on) are ignored."""
        params = self.params if params is None else params
        pot = self.potential
        if pot.one_body:
            return lambda R, neighbor=None, **kw: jnp.sum(pot.per_particle_energy(params, R))
        box = self._box(box_size)
        energy, nbr_fn = self._bound(box).energy_fn(box), self.neighbor_fn(box)
        return lambda R, neighbor=None, **kw: energy(R, nbr_fn.allocate(R) if neighbor is None else neighbor, params)

    def force_fn(self, box_size: float | None = None, params=None):
        """``force(R, neighbor=None, **kwargs) -> (N, d)``: −∂U/∂R of :meth:`energy_fn` (the
        potential's own force kernel, the one difftre's sampler integrates)."""
        params = self.params if params is None else params
        pot = self.potential
        if pot.one_body:
            return lambda R, neighbor=None, **kw: pot.force(params, R)
        box = self._box(box_size)
        force, nbr_fn = self._bound(box).force_fn(box), self.neighbor_fn(box)
        return lambda R, neighbor=None, **kw: force(R, nbr_fn.allocate(R) if neighbor is None else neighbor, params)

    def potential_curve(self, r, pair: str | None = None, params=None) -> np.ndarray:
        """u(r) = prior + model of a pair potential at the distances ``r`` (run's length unit), in
        the run's energy unit (for a mixture, of the species pair ``pair``, e.g. "A-B"); for a
        one-body field, u(x) at the coordinates ``r``. A UserError for a many-body potential."""
        params = self.params if params is None else params
        pot, x = self.potential, jnp.asarray(r)
        if pot.one_body:
            return np.asarray(pot.u(params, x))
        terms = pot.pair_terms()
        if not terms:
            raise UserError("this run's potential is many-body (three-body terms or a graph network): it has no "
                            "pair curve u(r)", "use run.energy_fn() on configurations instead")
        keys = {"-".join(t.species) if t.species else t.key: t for t in terms}
        if len(terms) == 1 and pair is None:
            return np.asarray(terms[0].u(params, x))
        if pair not in keys:
            raise UserError(f"pair={pair!r}: this run's potential has the pair terms {', '.join(map(str, keys))}",
                            f"give one of them, e.g. run.potential_curve(r, pair={next(iter(keys))!r})")
        return np.asarray(keys[pair].u(params, x))

    def _box(self, box_size: float | None) -> float:
        return float(self.system.box_size if box_size is None else box_size)

    def _bound(self, box: float):
        """The potential ready to evaluate: a sparse graph network gets the edge and triplet
        capacities it would measure at the run's positions (as the sampler and engine do)."""
        pot = self.potential
        if pot.has_graph_capacity and pot.graph_format == "sparse" and not pot.sparse:
            R = jnp.asarray(self.positions)
            pot = pot.fit_capacity(R, self.neighbor_fn(box).allocate(R).idx)
        return pot


def load_run(path, state: str | None = None, overrides=()) -> TrainedRun:
    """The trained run in the directory ``path`` (what `difftre train` printed) at its final
    parameters, at the state point ``state`` (needed when the run has several); ``overrides``
    are config overrides as for `difftre evaluate` (e.g. ``["system.kT=1.2"]``). Bad input —
    not a run directory, a run without a checkpoint, an unknown state — raises UserError."""
    path = Path(path).expanduser()
    check_run_dir(path, key="load_run: ")
    cfg = compose_run(path, list(overrides))
    with config_errors(cfg=cfg):
        validate(cfg)
    if trainer_kind(cfg.trainer.kind).evaluator != "md":
        raise UserError(f"load_run: trainer={cfg.trainer.kind} fits a classical potential at 0 K, which has no "
                        "learned model to load", "read its fitted parameters from the run's evaluation.json")
    if cfg.get("precision") == "double" and not jax.config.jax_enable_x64:
        log.info("the run was trained in double precision: enabling jax_enable_x64")
        jax.config.update("jax_enable_x64", True)
    loaded = load(cfg, path)
    name, components = select_state(loaded.states, state)
    return TrainedRun(path, cfg, loaded.params, name, components)
