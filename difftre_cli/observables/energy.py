"""Potential energy per particle, U/N (system energy unit)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .base import Observable


@dataclass(frozen=True)
class PotentialEnergy(Observable):
    name: str
    depends_on_params: bool = True
    grid: None = None
    unit_kind: str = "energy"
    open_space: ClassVar[bool] = True   # U needs no box

    @classmethod
    def from_config(cls, name, cfg):
        return cls(name=name)

    def snapshot(self, ctx, q):
        return q["energy"] / ctx.n_particles


#: the ``kind`` names of ``observables/*.yaml`` this module provides (collected by observables/__init__.py)
KINDS = {"energy": PotentialEnergy}
