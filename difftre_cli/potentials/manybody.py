"""Many-body potential U(R) = Σ_pairs u_prior(r_ij) + U_θ(R) with a graph network U_θ
(DimeNet++, potentials/gnn.py) on the dense neighbour list.

The DiffTRe learner's protocol (learn/difftre.py):

- θ-independent features of a stored state are its positions and the dense list at the
  potential's cutoff, ``(R, idx)``; U_θ is re-evaluated from them at every update;
- ``energy_from_features(params, (R, idx), scale)`` applies a uniform strain s: every
  minimum-image displacement becomes s·d (the network's ``strain`` = (s − 1)·I), so d/ds at
  s = 1 is the virial including the box term — valid for many-body potentials, unlike a
  pair-only formula;
- ``snapshot_batch``: stored states are evaluated ``snapshot_batch`` at a time (``lax.map``),
  not all at once, which bounds the memory of a network's per-triplet intermediates.

Forces for the sampler are −∇_R U by autodiff.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import distances_on_list


@dataclass(frozen=True)
class ManyBodyPotential:
    prior: Callable          # pair prior u(r), elementwise
    model: object            # GNNModel: init(key), energy(params, R, idx, box, species, strain)
    cutoff: float
    box_size: float | None = None
    species: np.ndarray | None = None
    snapshot_batch: int = 8
    one_body = False

    def init(self, key):
        return {"model": self.model.init(key)}

    def bind(self, system) -> "ManyBodyPotential":
        species = np.asarray(system.species, np.int32) if len(getattr(system, "species_names", ("X",))) > 1 else None
        return replace(self, box_size=float(system.box_size), species=species)

    def features_on_list(self, R, idx, box_size):
        return (R, idx)

    def energy_from_features(self, params, feats, scale=1.0):
        R, idx = feats
        box = self.box_size
        r = distances_on_list(R, idx, box)
        mask = r < self.cutoff
        r_safe = jnp.where(mask, r, 0.5 * self.cutoff) * scale
        u_prior = 0.5 * jnp.sum(jnp.where(mask, self.prior(r_safe), 0.0))
        strain = (scale - 1.0) * jnp.eye(3, dtype=R.dtype)
        species = None if self.species is None else jnp.asarray(self.species)
        return u_prior + self.model.energy(params["model"], R, idx, box, species, strain)

    def energy_fn(self, box_size: float):
        def energy(R, neighbor, params, **unused):
            return replace(self, box_size=float(box_size)).energy_from_features(params, (R, neighbor.idx))
        return energy

    def force_fn(self, box_size: float):
        energy = self.energy_fn(box_size)

        def force(R, neighbor, params, **unused):
            return -jax.grad(energy)(R, neighbor, params)
        return force


def build(prior_fn, model_cfg, cutoff: float) -> ManyBodyPotential:
    from ..checks import number
    from . import gnn
    batch = number(model_cfg, "snapshot_batch", prefix="model", integer=True, lo=1, required=False, default=8,
                   example="8")
    model = gnn.build({k: v for k, v in model_cfg.items() if k != "snapshot_batch"})
    return ManyBodyPotential(prior=prior_fn, model=model, cutoff=float(cutoff), snapshot_batch=batch)
