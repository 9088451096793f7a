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

from .errors import UserError

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
#: Atomic mass constant in kg (CODATA 2018).
AMU_KG = 1.66053906660e-27
#: The time unit of JAX MD run on metal units (Å, eV, amu), sqrt(amu Å² / eV), in fs (≈ 10.1805 fs).
#: JAX MD has no unit system: its integrators take dt in this derived unit, so dt = 1 fs is
#: 1 / METAL_TIME_UNIT_FS and a friction of γ ps⁻¹ is γ · METAL_TIME_UNIT_FS · 1e-3.
METAL_TIME_UNIT_FS = math.sqrt(AMU_KG * 1e-20 / ELEMENTARY_CHARGE_C) * 1e15

LENGTH_TO_NM = {"nm": 1.0, "angstrom": 0.1, "A": 0.1, "Å": 0.1, "pm": 1e-3}
ANGLE_TO_RAD = {"rad": 1.0, "deg": math.pi / 180.0}
#: kJ/mol per unit of energy (real units).
ENERGY_TO_KJ_MOL = {"kJ/mol": 1.0, "kcal/mol": 4.184, "eV": 96.48533212}
#: Names of the length unit in reduced LJ units.
LJ_LENGTH_NAMES = ("sigma", "lj", "reduced")
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


#: The unit of each kind of quantity (an observable's ``unit_kind`` / ``value_kind``), by the
#: system's names: what evaluation.json's and the curve files' units say.
KIND_UNITS = {"length": lambda u: u.length, "inverse_length": lambda u: f"1/{u.length}",
              "angle": lambda u: "rad", "inverse_angle": lambda u: "1/rad",
              "inverse_angle_squared": lambda u: "1/rad^2", "energy": lambda u: u.energy,
              "pressure": lambda u: u.pressure_internal, "stress": lambda u: u.pressure_internal,
              "dimensionless": lambda u: "1"}


def unit_name(kind: str, system: UnitSystem) -> str:
    """The name of the unit of a ``kind`` of quantity (a key of KIND_UNITS) in ``system``."""
    if kind not in KIND_UNITS:
        raise ValueError(f"unknown kind of quantity {kind!r}; one of {sorted(KIND_UNITS)}")
    return KIND_UNITS[kind](system)


def modulus_factor(unit: str) -> float:
    """Factor converting a stress or elastic modulus in ``unit`` to eV Å⁻³ (metal units)."""

    if unit not in MODULUS_TO_EV_A3:
        raise UserError(f"unknown modulus unit {unit!r}", f"use one of {sorted(MODULUS_TO_EV_A3)}")
    return MODULUS_TO_EV_A3[unit]


def get(name: str) -> UnitSystem:

    if name not in SYSTEMS:
        raise UserError(f"system.units: unknown unit system {name!r}",
                        f"use one of {sorted(SYSTEMS)}")
    return SYSTEMS[name]


def length_factor(unit: str, system: UnitSystem) -> float:
    """Factor that converts a length in ``unit`` to the system's length unit."""

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

    if unit not in ANGLE_TO_RAD:
        raise UserError(f"unknown angle unit {unit!r}", "use rad or deg")
    return ANGLE_TO_RAD[unit]


def _factor(quantity: str, unit: str, system: UnitSystem, reduced: tuple, table: dict, reduced_fix: str) -> float:
    """``table[unit]`` in real units; 1 for the reduced names in LJ units; else a UserError."""

    if system.name == "lj":
        if unit in reduced:
            return 1.0
        raise UserError(f"{quantity} unit {unit!r} is not valid in reduced LJ units", reduced_fix)
    if unit not in table:
        raise UserError(f"unknown {quantity} unit {unit!r}", f"use one of {sorted(table)}")
    return table[unit]


def pressure_factor(unit: str, system: UnitSystem) -> float:
    """Factor converting a pressure in ``unit`` to the system's internal pressure unit."""
    return _factor("pressure", unit, system, ("lj", "reduced", "epsilon/sigma^3"), PRESSURE_TO_INTERNAL_REAL,
                   "give reduced pressures (unit: reduced)")


def stress_factor(unit: str, system: UnitSystem) -> float:
    """Factor converting a stress or elastic modulus in ``unit`` (GPa, bar, ...) to the system's
    internal unit: kJ mol⁻¹ nm⁻³ (real), eV Å⁻³ (metal), ε/σ³ (reduced)."""
    if system.name == "metal":
        return modulus_factor(unit)
    return pressure_factor(unit, system)


def energy_factor(unit: str, system: UnitSystem) -> float:
    """Factor converting an energy in ``unit`` to the system's energy unit."""
    return _factor("energy", unit, system, ("lj", "reduced", "epsilon"), ENERGY_TO_KJ_MOL,
                   "give reduced energies (unit: reduced)")


def structure_length_factor(unit: str | None, system: UnitSystem) -> float:
    """Factor converting lengths read from a structure file (``system.structure_unit``) to the
    system's length unit. ase returns Å for the formats it reads, so ``None`` means Å in real
    units; reduced LJ units have no conversion from Å: the file's unit must be declared σ."""

    if system.name == "lj":
        if unit in LJ_LENGTH_NAMES:
            return 1.0
        got = "not set" if unit is None else f"{unit!r}"
        raise UserError(f"system.structure_unit is {got}, but in reduced LJ units the file's coordinates must "
                        "already be in σ (there is no conversion from Å or nm to σ)",
                        "set system.structure_unit=sigma if the file's lengths are in σ, "
                        "or use system.units=real for a file in Å")
    if unit is None:
        return LENGTH_TO_NM["angstrom"]
    if unit not in LENGTH_TO_NM:
        raise UserError(f"system.structure_unit: unknown length unit {unit!r}",
                        f"use one of {sorted(LENGTH_TO_NM)} (ase reads most formats in angstrom)")
    return LENGTH_TO_NM[unit]


#: The (length, energy) units of the numbers a trajectory reader returns (reference data,
#: difftre_cli/reference/): MDAnalysis converts every format it knows to Å and kJ/mol (forces
#: kJ mol⁻¹ Å⁻¹); ase reads extended XYZ as Å and eV.
MDANALYSIS_UNITS = ("angstrom", "kJ/mol")
ASE_UNITS = ("angstrom", "eV")
#: Unit styles a file without units of its own declares (``reference.units``): the LAMMPS
#: styles of a dump (``units real`` Å / kcal mol⁻¹, ``metal`` Å / eV, ``lj`` σ / ε) and
#: GROMACS's nm / kJ mol⁻¹ (an H5MD file without unit attributes).
TRAJECTORY_STYLES = {"real": ("angstrom", "kcal/mol"), "metal": ("angstrom", "eV"), "lj": ("sigma", "epsilon"),
                     "gromacs": ("nm", "kJ/mol")}


def trajectory_factors(length: str, energy: str, system: UnitSystem) -> tuple[float, float, float]:
    """Factors converting a trajectory's lengths, energies and forces (energy/length), given in
    ``length`` and ``energy`` (names of LENGTH_TO_NM / ENERGY_TO_KJ_MOL, or ``sigma``/``epsilon``),
    to ``system``'s units. Reduced LJ units convert only from σ and ε (factor 1): there is no
    conversion from Å to σ; σ and ε do not convert to physical units either."""

    reduced = length == "sigma" and energy == "epsilon"
    if system.name == "lj" or reduced:
        if system.name == "lj" and reduced:
            return 1.0, 1.0, 1.0
        have = "σ and ε" if reduced else f"{length} and {energy}"
        raise UserError(f"the reference trajectory is in {have} but the run uses system.units={system.name}: "
                        "there is no conversion between reduced LJ units and physical units",
                        "run in the trajectory's unit system (system.units=lj for an LJ-unit file, real or "
                        "metal for a file in physical units)")
    if length not in LENGTH_TO_NM or energy not in ENERGY_TO_KJ_MOL:
        raise UserError(f"unknown trajectory units {length!r} / {energy!r}",
                        f"lengths in one of {sorted(LENGTH_TO_NM)}, energies in one of {sorted(ENERGY_TO_KJ_MOL)}")
    f_length = LENGTH_TO_NM[length] / LENGTH_TO_NM[system.length]
    f_energy = ENERGY_TO_KJ_MOL[energy] / ENERGY_TO_KJ_MOL[system.energy]
    return f_length, f_energy, f_energy / f_length


def check_thermal(system: UnitSystem, kT, temperature) -> None:
    """The rule :func:`kT_of` relies on: reduced units take ``system.kT`` (in ε), real units
    take ``system.temperature`` (in K); giving the other one is an error, not silently ignored."""

    if system.name == "lj":
        if temperature is not None:
            raise UserError(f"system.temperature={temperature} is set, but reduced LJ units take a thermal energy "
                            "system.kT (in ε), not a temperature in K",
                            "set system.temperature=null and system.kT=... (or use system.units=real)")
        if kT is None:
            raise UserError("system.kT is not set (reduced LJ units need the thermal energy kT in ε)",
                            "set system.kT=1.0")
    else:
        if kT is not None:
            raise UserError(f"system.kT={kT} is set, but real units take system.temperature in K, not kT",
                            "set system.kT=null and system.temperature=300 (K)")
        if temperature is None:
            raise UserError("system.temperature is not set (real units need a temperature in K)",
                            "set system.temperature=300")


def kT_of(system: UnitSystem, kT: float | None, temperature: float | None) -> float:
    """Thermal energy in the system's energy unit from either kT (reduced) or T (K)."""
    if kT is not None:
        return float(kT)
    return float(temperature) * system.kB


#: The unit styles ``difftre export`` writes tables in: LAMMPS's ``units`` styles (real: Å and
#: kcal mol⁻¹, metal: Å and eV, lj: σ and ε) and GROMACS's nm and kJ mol⁻¹.
TABLE_STYLES = {"real": TRAJECTORY_STYLES["real"], "metal": TRAJECTORY_STYLES["metal"], "lj": TRAJECTORY_STYLES["lj"],
                "gromacs": TRAJECTORY_STYLES["gromacs"]}


def table_factors(style: str, system: UnitSystem) -> tuple[float, float]:
    """Factors converting the system's lengths and energies to those of the engine unit style
    ``style`` (a key of TABLE_STYLES): the inverse of the trajectory conversion, so a table
    written here and read back as a trajectory of the same style round-trips."""
    if style not in TABLE_STYLES:
        raise UserError(f"units={style}: unknown unit style", f"use one of {', '.join(TABLE_STYLES)}")
    f_length, f_energy, _ = trajectory_factors(*TABLE_STYLES[style], system)
    return 1.0 / f_length, 1.0 / f_energy
