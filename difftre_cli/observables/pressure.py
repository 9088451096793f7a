"""Virial pressure from autodiff of the energy under a uniform strain.

P = ρ k_B T − (1/(3V)) ∂U(s·R)/∂s |_{s=1}, valid for any potential that depends on
relative positions (pair or many-body). Uses the thermostat temperature k_B T. Internal
unit: energy / length³ (ε/σ³, or kJ mol⁻¹ nm⁻³ in real units).
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Observable


@dataclass(frozen=True)
class Pressure(Observable):
    name: str
    depends_on_params: bool = True
    grid: None = None
    unit_kind: str = "pressure"

    @classmethod
    def from_config(cls, name, cfg):
        return cls(name=name)

    def snapshot(self, ctx, q):
        return ctx.n_particles * ctx.kT / ctx.volume - q["virial"] / (3.0 * ctx.volume)


#: the ``kind`` names of ``observables/*.yaml`` this module provides (collected by observables/__init__.py)
KINDS = {"pressure": Pressure}
