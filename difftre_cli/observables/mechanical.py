"""Stress and elastic stiffness of a crystal at constant strain (NVT) as DiffTRe observables.

Both depend on θ through the Born terms of every stored snapshot, which the observable engine
computes from the potential's strain argument (observables/engine.py, ``needs``):

    σ^B_i = (1/Ω) ∂U_θ/∂e,   C^B_i = (1/Ω) ∂²U_θ/∂e∂e   at e = 0,

e the Voigt Lagrangian strain (engineering shears), every displacement d ↦ F(e) d with
F = I + η − η²/2 (:func:`.stress.deformation`), Ω the box volume. Conventions (tension positive,
Voigt order xx, yy, zz, yz, xz, xy) are those of :mod:`.stress`.

Observables built from averages (the ``combine`` protocol of :mod:`difftre_cli.observables`):
``snapshot`` returns per-snapshot pieces, the engine reweights each piece, ``combine`` maps the
averages to the value:

- ``stress``: ⟨σ⟩ = ⟨σ^B⟩ − (N k_B T / Ω) I (momenta integrated analytically at the thermostat
  temperature; :func:`.stiffness.stress_from_averages`). ``form: voigt`` gives (6,), ``form:
  tensor`` the 9 components of the symmetric tensor (row-major), so that a target's mean squared
  error is (1/9) Σ_ij (σ_ij − σ̃_ij)², the DiffTRe diamond loss.
- ``stiffness``: C = ⟨C^B⟩ − (Ω / k_B T)(⟨σ^B σ^B⟩ − ⟨σ^B⟩⟨σ^B⟩) + (N k_B T / Ω)(δδ + δδ)
  (:func:`.stiffness.stiffness_from_averages`), each average reweighted separately — the
  covariance of a reweighted ensemble is not the reweighted covariance of the old one.
  ``form: cubic`` gives (C11, C12, C44), each the mean of its cubic-equivalent Voigt entries;
  ``form: full`` the 21 entries C_αβ, α ≤ β.

Values are in the system's stress unit (kJ mol⁻¹ nm⁻³ in real units); targets are given in GPa
(or bar, kJ/mol/nm^3) and converted by units.stress_factor.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from ..errors import UserError
from . import stiffness as stiff
from .base import Observable
from .stress import voigt_to_tensor_stress

VOIGT_NAMES = ("xx", "yy", "zz", "yz", "xz", "xy")
TENSOR_NAMES = tuple(a + b for a in "xyz" for b in "xyz")
_UPPER = [(a, b) for a in range(6) for b in range(a, 6)]


def _form(cfg, name, forms):
    form = cfg.get("form", forms[0])
    if form not in forms:
        raise UserError(f"observables.{name}.form: unknown form {form!r}", f"use one of {list(forms)}")
    return form


@dataclass(frozen=True)
class Stress(Observable):
    """Mean stress tensor (tension positive) from reweighted Born stresses."""

    name: str
    form: str = "voigt"
    depends_on_params: bool = True
    grid: None = None
    unit_kind: str = "stress"
    needs: tuple = ("born_stress",)

    @classmethod
    def from_config(cls, name, cfg):
        return cls(name=name, form=_form(cfg, name, ("voigt", "tensor")))

    @property
    def components(self) -> tuple:
        return VOIGT_NAMES if self.form == "voigt" else TENSOR_NAMES

    def snapshot(self, ctx, q):
        return q["born_stress"]

    def combine(self, ctx, avg_sB):
        s = stiff.stress_from_averages(avg_sB, ctx.n_particles, ctx.volume, ctx.kT)
        return s if self.form == "voigt" else voigt_to_tensor_stress(s).reshape(9)


@dataclass(frozen=True)
class Stiffness(Observable):
    """Isothermal stiffness by the stress-fluctuation formula from reweighted Born terms."""

    name: str
    form: str = "cubic"
    depends_on_params: bool = True
    grid: None = None
    unit_kind: str = "stress"
    needs: tuple = ("born_stress", "born_stiffness")

    @classmethod
    def from_config(cls, name, cfg):
        return cls(name=name, form=_form(cfg, name, ("cubic", "full")))

    @property
    def components(self) -> tuple:
        if self.form == "cubic":
            return ("C11", "C12", "C44")
        return tuple(f"C{a + 1}{b + 1}" for a, b in _UPPER)

    def snapshot(self, ctx, q):
        sB = q["born_stress"]
        return {"CB": q["born_stiffness"], "sB": sB, "sBsB": sB[:, None] * sB[None, :]}

    def tensor(self, ctx, avg):
        """The full (6, 6) Voigt stiffness from the averaged pieces."""
        return stiff.stiffness_from_averages(avg["CB"], avg["sB"], avg["sBsB"], ctx.n_particles, ctx.volume, ctx.kT)

    def combine(self, ctx, avg):
        C = self.tensor(ctx, avg)
        if self.form == "cubic":
            return jnp.stack(stiff.cubic_constants(C))
        a, b = np.array(_UPPER).T
        return C[a, b]


def cubic_moduli(c11, c12, c44) -> dict:
    """Moduli of a cubic crystal from its stiffness constants (any consistent unit):

    - Young's modulus along ⟨100⟩: E = (C11 − C12)(C11 + 2 C12) / (C11 + C12)
    - Poisson ratio for a ⟨100⟩ stretch: ν = C12 / (C11 + C12)
    - shear modulus on {100}⟨010⟩: G = C44
    - Voigt–Reuss–Hill polycrystal averages: B = (C11 + 2 C12)/3,
      G_V = (C11 − C12 + 3 C44)/5, G_R = 5 C44 (C11 − C12) / (4 C44 + 3 (C11 − C12)),
      G_H = (G_V + G_R)/2, E_H = 9 B G_H / (3 B + G_H), ν_H = (3 B − 2 G_H) / (2 (3 B + G_H)).
    """
    c11, c12, c44 = float(c11), float(c12), float(c44)
    bulk = (c11 + 2.0 * c12) / 3.0
    gv = (c11 - c12 + 3.0 * c44) / 5.0
    gr = 5.0 * c44 * (c11 - c12) / (4.0 * c44 + 3.0 * (c11 - c12))
    gh = 0.5 * (gv + gr)
    return {"young_100": (c11 - c12) * (c11 + 2.0 * c12) / (c11 + c12), "poisson_100": c12 / (c11 + c12),
            "shear_c44": c44, "bulk": bulk, "shear_voigt": gv, "shear_reuss": gr, "shear_hill": gh,
            "young_hill": 9.0 * bulk * gh / (3.0 * bulk + gh), "poisson_hill": (3.0 * bulk - 2.0 * gh) / (2.0 * (3.0 * bulk + gh))}


#: the ``kind`` names of ``observables/*.yaml`` this module provides (collected by observables/__init__.py)
KINDS = {"stress": Stress, "stiffness": Stiffness}
