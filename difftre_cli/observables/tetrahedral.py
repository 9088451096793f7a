"""Tetrahedral order parameter q (Errington & Debenedetti, Nature 409, 318, 2001).

    q_i = 1 − 3/8 Σ_{j<k} (cos ψ_jik + 1/3)²

over the 6 pairs of the 4 nearest neighbours j, k of particle i; the snapshot value is the mean
of q_i over the particles. q = 1 for a perfect tetrahedron (cos ψ = −1/3), ⟨q⟩ = 0 for an
ideal gas (independent random directions). Meant for evaluation (a scalar; it can also be a
target, dimensionless, any ``unit`` label).

The 4 nearest neighbours must lie within ``reach`` (default 0.45 nm, beyond the first shell of
water at ambient conditions; in reduced units set it explicitly, e.g. 1.6 σ): it is the
neighbour-list cutoff this observable asks for. A particle with fewer than 4 neighbours in
reach has no q_i; it is left out of the mean (the snapshot value is 0 if no particle has 4;
:meth:`TetrahedralQ.per_particle` reports which ones counted). Differentiable in the
positions wherever the 4th and 5th neighbours do not swap.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np

from ..checks import number
from ..errors import UserError
from .adf import nearest_vectors, pair_cosines
from .base import Observable


@dataclass(frozen=True)
class TetrahedralQ(Observable):
    name: str
    reach: float = 0.45
    depends_on_params: bool = False
    unit_kind: str = "dimensionless"
    grid: None = None
    pairs: tuple = field(init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, name, cfg):
        reach = number(cfg, "reach", prefix=f"observables.{name}", lo=0.0, lo_open=True, required=False,
                       default=0.45, example="0.45")
        return cls(name=name, reach=reach)

    def __post_init__(self):
        if not self.reach > 0:
            raise UserError(f"observables.{self.name}.reach must be > 0, got {self.reach}",
                            f"set observables.{self.name}.reach=0.45 (nm; beyond the 4th neighbour)")
        object.__setattr__(self, "pairs", tuple(np.triu_indices(4, 1)))

    def per_particle(self, q):
        """q_i (N,) and whether particle i has 4 neighbours within reach (N,) bool."""
        d, rr, valid, _ = nearest_vectors(q, 4, self.reach)
        if d.shape[1] < 4:            # a list narrower than 4: nobody qualifies
            return jnp.zeros(d.shape[0], d.dtype), jnp.zeros(d.shape[0], bool)
        ok = jnp.all(valid, axis=1)
        c = pair_cosines(d, rr, self.pairs)
        qi = 1.0 - 0.375 * jnp.sum((c + 1.0 / 3.0) ** 2, axis=1)
        return jnp.where(ok, qi, 0.0), ok

    def snapshot(self, ctx, q):
        qi, ok = self.per_particle(q)
        return jnp.sum(qi) / jnp.maximum(jnp.sum(ok), 1)


#: the ``kind`` names of ``observables/*.yaml`` this module provides (collected by observables/__init__.py)
KINDS = {"tetrahedral_q": TetrahedralQ}
