"""Populations of the (φ, ψ) basins of a capped amino acid (alanine dipeptide): per snapshot the
one-hot vector of the basin its (φ, ψ) falls in, so the (reweighted) average is the vector of
basin populations, with jackknife errors in ``difftre evaluate`` and a target from
``difftre targets`` like any vector observable. The basins are the one table of
molecule/ramachandran.py (αR, C5, C7eq, αL, C7ax, other); φ and ψ come from molecule/geometry.py
(IUPAC sign; open space or minimum image). θ-independent, no neighbour list, no box needed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from ..molecule import geometry, ramachandran
from .base import Observable
from .internal import one_tuple


def basin_onehot(phi, psi):
    """(..., B) one-hot of the basin of every (φ, ψ) (radians), :data:`ramachandran.NAMES` order
    (ramachandran.membership, the rule ramachandran.assign uses too)."""
    f = (jnp.degrees(phi) + 180.0) % 360.0 - 180.0
    s = (jnp.degrees(psi) + 180.0) % 360.0 - 180.0
    return ramachandran.membership(f, s, jnp).astype(f.dtype)


@dataclass(frozen=True)
class BasinPopulations(Observable):
    name: str
    phi: tuple
    psi: tuple
    depends_on_params: bool = False
    unit_kind: str = "dimensionless"
    components: tuple = ramachandran.NAMES
    open_space: ClassVar[bool] = True

    @classmethod
    def from_config(cls, name, cfg):
        prefix = f"observables.{name}"
        return cls(name=name, phi=one_tuple(cfg, "phi", 4, prefix), psi=one_tuple(cfg, "psi", 4, prefix))

    def check_box(self, box):
        """Dihedrals need no neighbours; any box (None: open space) will do."""

    def snapshot(self, ctx, q):
        quads = np.asarray([self.phi, self.psi], np.int32)
        angles = geometry.dihedrals(q["R"], quads, q.get("box"))
        return basin_onehot(angles[0], angles[1])


#: the ``kind`` names of ``observables/*.yaml`` this module provides (collected by observables/__init__.py)
KINDS = {"basins": BasinPopulations}
