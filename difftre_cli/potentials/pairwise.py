"""The pair potential of one species: u(r) = u_prior(r) + u_θ(r) on dense neighbour lists.

:class:`PairPotential` combines a fixed prior u_prior(r) (priors.py) with a learnable pair model
u_θ(r) (pair.py). It provides the two views the rest of the engine needs:

- for sampling, a gather-only force function on a dense neighbour list (:class:`ListKernels`,
  shared with the mixture's potential, mixture.py);
- for reweighting, the energy of stored snapshots from their pair distances
  (:func:`distances_on_list`), which do not depend on θ and are therefore computed once per
  reference trajectory.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import jax.numpy as jnp

from .. import neighbors, pair_kernels
from .protocol import BoxPotential, PairTerm


class ListKernels(BoxPotential):
    """Sampler-side functions of a pair potential on a dense neighbour list; the class defines
    ``_on_list(box_size, kernel)`` (the pair function each entry of the list uses)."""

    def force_fn(self, box_size: float, block: int | None = pair_kernels.BLOCK):
        """``force(R, neighbor, params) -> (N, 3)`` forces, gather-only over the dense list, on its
        occupied column blocks (``block=None``: all columns; pair_kernels.py)."""
        forces_and_energy = self._on_list(box_size, partial(pair_kernels.pair_forces_and_energy, block=block))
        return lambda R, neighbor, params, **kw: forces_and_energy(R, neighbor, params)[0]

    def initial_force_fn(self, box_size: float):
        """All columns: for one call, the occupied-blocks switch is not worth tracing and lowering
        its ~9 branches (~1.4 s of every run's start for ``config=lj`` on 2 cores)."""
        return self.force_fn(box_size, block=None)

    def energy_fn(self, box_size: float):
        """``energy(R, neighbor, params) -> scalar`` on a dense neighbour list."""
        return self._on_list(box_size, pair_kernels.pair_energy)


@dataclass(frozen=True)
class PairPotential(ListKernels):
    """u(r) = u_prior(r) + u_θ(r) for r < cutoff, zero beyond."""

    prior: Callable
    model: object | None
    cutoff: float

    def init(self, key):
        return {"model": self.model.init(key)} if self.model is not None else {}

    def pair(self, params, r):
        """Total pair energy u(r), elementwise."""
        u = self.prior(r)
        if self.model is not None:
            u = u + self.model(params["model"], r)
        return u

    def energy_from_distances(self, params, r, scale=1.0):
        """Energy ½ Σ_ij u(s·r_ij) over a dense full list of distances ``r`` (any shape).

        Entries ≥ cutoff (padding included) contribute nothing. ``scale`` s is a uniform
        strain factor; d/ds at s = 1 gives the virial (see observables.pressure).
        """
        mask = r < self.cutoff
        r_safe = jnp.where(mask, r, 0.5 * self.cutoff) * scale  # clean before scaling: no inf*0
        return 0.5 * jnp.sum(jnp.where(mask, self.pair(params, r_safe), 0.0))

    # The observable engine's side of the protocol (protocol.py): the θ-independent features of
    # a pair potential are the distances on the engine's neighbour lists.
    energy_from_features = energy_from_distances

    def features_on_list(self, R, idx, box_size):
        """θ-independent energy features of one state: distances (N, M) on a dense list."""
        return distances_on_list(R, idx, box_size)

    @property
    def linear_in_params(self) -> bool:
        return self.model is not None and self.model.linear

    @property
    def temperature_dependent(self) -> bool:
        return self.model is not None and self.model.temperature_dependent

    def bind(self, system) -> "PairPotential":
        """The potential at one state point: a temperature-dependent model gets the system's kT."""
        if self.temperature_dependent:
            return replace(self, model=self.model.at_kT(system.kT))
        return self

    def pair_terms(self) -> tuple[PairTerm, ...]:
        return (PairTerm(None, None, self.prior, self.pair),)

    def _on_list(self, box_size: float, kernel):
        def fn(R, neighbor, params, **unused):
            return kernel(lambda p, r, j: self.pair(p, r), params, R, neighbor.idx, box_size, self.cutoff)
        return fn


def distances_on_list(R, idx, box_size):
    """Minimum-image distances (N, M) between each particle and its dense-list neighbours.

    Padded slots (idx == N) get +inf so that every cutoff mask excludes them.
    """
    n = R.shape[0]
    d = R[:, None, :] - R[jnp.minimum(idx, n - 1)]
    d = neighbors.minimum_image(d, box_size)
    r2 = jnp.sum(d * d, axis=-1)
    valid = idx < n
    r = jnp.sqrt(jnp.where(valid, r2, 1.0))
    return jnp.where(valid, r, jnp.inf)
