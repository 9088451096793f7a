"""Unit systems and conversions: the one place where physical constants live.

Three systems are used:

- ``lj``: reduced Lennard-Jones units (length σ, energy ε, mass m, k_B = 1).
- ``real``: GROMACS-style units — nm, ps, amu, kJ/mol, K. Pressure is reported in
  bar and moduli in GPa; internally pressure is kJ mol⁻¹ nm⁻³.
- ``metal``: LAMMPS-style metal units — Å, eV, ps, amu, K (classical solid-state potentials,
  ``trainer=static``). Stress and moduli are eV Å⁻³ internally and reported in GPa.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

#: Boltzmann constant in kJ mol⁻¹ K⁻¹ (CODATA 2018, × N_A).
KB_KJ_PER_MOL_K = 0.0083144626
#: 1 kJ mol⁻¹ nm⁻³ expressed in bar (1 bar = 1/16.6054 kJ mol⁻¹ nm⁻³).
BAR_PER_KJ_MOL_NM3 = 16.605390666
#: 1 kJ mol⁻¹ nm⁻³ in GPa.
GPA_PER_KJ_MOL_NM3 = BAR_PER_KJ_MOL_NM3 * 1e-4
#: Elementary charge in coulomb (SI 2019, exact): 1 eV = 1.602176634e-19 J.
ELEMENTARY_CHARGE_C = 1.602176634e-19
#: 1 eV Å⁻³ in GPa: 1.602176634e-19 J / 1e-30 m³ = 1.602176634e11 Pa.
GPA_PER_EV_A3 = ELEMENTARY_CHARGE_C * 1e30 * 1e-9
#: Boltzmann constant in eV K⁻¹ (SI 2019, exact k_B / e).
KB_EV_PER_K = 1.380649e-23 / ELEMENTARY_CHARGE_C
#: Angstrom per nanometre.
ANGSTROM_PER_NM = 10.0

LENGTH_TO_NM = {"nm": 1.0, "angstrom": 0.1, "A": 0.1, "Å": 0.1, "pm": 1e-3}
ANGLE_TO_RAD = {"rad": 1.0, "deg": math.pi / 180.0}
PRESSURE_TO_INTERNAL_REAL = {"bar": 1.0 / BAR_PER_KJ_MOL_NM3, "kJ/mol/nm^3": 1.0,
                             "GPa": 1.0 / GPA_PER_KJ_MOL_NM3, "atm": 1.01325 / BAR_PER_KJ_MOL_NM3}


@dataclass(frozen=True)
class UnitSystem:
    """Names of the units of one system, and its Boltzmann constant."""

    name: str
    length: str
    energy: str
    time: str
    mass: str
    pressure_internal: str
    kB: float  # energy unit per kelvin (1 in reduced units: temperatures are given as kT)

    def to_dict(self) -> dict:
        return {"name": self.name, "length": self.length, "energy": self.energy, "time": self.time,
                "mass": self.mass, "pressure": self.pressure_internal}


LJ = UnitSystem("lj", "sigma", "epsilon", "tau", "m", "epsilon/sigma^3", 1.0)
REAL = UnitSystem("real", "nm", "kJ/mol", "ps", "amu", "kJ/mol/nm^3", KB_KJ_PER_MOL_K)
METAL = UnitSystem("metal", "angstrom", "eV", "ps", "amu", "eV/angstrom^3", KB_EV_PER_K)
SYSTEMS = {"lj": LJ, "real": REAL, "metal": METAL}

#: Modulus / stress units a metal-unit config may use, as factors to eV Å⁻³.
MODULUS_TO_EV_A3 = {"GPa": 1.0 / GPA_PER_EV_A3, "eV/angstrom^3": 1.0, "eV/A^3": 1.0, "bar": 1e-4 / GPA_PER_EV_A3,
                    "kbar": 0.1 / GPA_PER_EV_A3}


def modulus_factor(unit: str) -> float:
    """Factor converting a stress or elastic modulus in ``unit`` to eV Å⁻³ (metal units)."""
    from .errors import UserError

    if unit not in MODULUS_TO_EV_A3:
        raise UserError(f"unknown modulus unit {unit!r}", f"use one of {sorted(MODULUS_TO_EV_A3)}")
    return MODULUS_TO_EV_A3[unit]


def get(name: str) -> UnitSystem:
    from .errors import UserError

    if name not in SYSTEMS:
        raise UserError(f"system.units: unknown unit system {name!r}",
                        f"use one of {sorted(SYSTEMS)}")
    return SYSTEMS[name]


def length_factor(unit: str, system: UnitSystem) -> float:
    """Factor that converts a length in ``unit`` to the system's length unit."""
    from .errors import UserError

    if system.name == "lj":
        if unit in ("sigma", "lj", "reduced"):
            return 1.0
        raise UserError(f"length unit {unit!r} is not valid for reduced LJ units",
                        "declare x_unit: sigma for reduced-unit targets")
    if unit not in LENGTH_TO_NM:
        raise UserError(f"unknown length unit {unit!r}", f"use one of {sorted(LENGTH_TO_NM)}")
    return LENGTH_TO_NM[unit]


def angle_factor(unit: str) -> float:
    """Factor that converts an angle in ``unit`` to radians."""
    from .errors import UserError

    if unit not in ANGLE_TO_RAD:
        raise UserError(f"unknown angle unit {unit!r}", "use rad or deg")
    return ANGLE_TO_RAD[unit]


def pressure_factor(unit: str, system: UnitSystem) -> float:
    """Factor converting a pressure in ``unit`` to the system's internal pressure unit."""
    from .errors import UserError

    if system.name == "lj":
        if unit in ("lj", "reduced", "epsilon/sigma^3"):
            return 1.0
        raise UserError(f"pressure unit {unit!r} is not valid in reduced LJ units",
                        "give reduced pressures (unit: reduced)")
    if unit not in PRESSURE_TO_INTERNAL_REAL:
        raise UserError(f"unknown pressure unit {unit!r}",
                        f"use one of {sorted(PRESSURE_TO_INTERNAL_REAL)}")
    return PRESSURE_TO_INTERNAL_REAL[unit]


def kT_of(system: UnitSystem, kT: float | None, temperature: float | None) -> float:
    """Thermal energy in the system's energy unit from either kT (reduced) or T (K)."""
    if kT is not None:
        return float(kT)
    return float(temperature) * system.kB
