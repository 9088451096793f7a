"""Unit constants and conversions against values derived from the SI-defining constants."""
from __future__ import annotations

import math

import pytest

from difftre_cli import units
from difftre_cli.errors import UserError

# SI 2019 exact defining constants.
N_A = 6.02214076e23          # 1/mol
K_B_SI = 1.380649e-23        # J/K

# 1 kJ mol^-1 nm^-3 = 1e3 J / N_A / 1e-27 m^3 = 1e30 / N_A Pa = 1e25 / N_A bar
KJ_MOL_NM3_IN_PA = 1e30 / N_A


def test_bar_is_one_over_16_6054_kj_mol_nm3():
    bar_in_internal = units.pressure_factor("bar", units.REAL)
    assert bar_in_internal == pytest.approx(1.0 / 16.6054, rel=1e-5)
    assert bar_in_internal == pytest.approx(1e5 / KJ_MOL_NM3_IN_PA, rel=1e-8)
    assert units.BAR_PER_KJ_MOL_NM3 == pytest.approx(KJ_MOL_NM3_IN_PA / 1e5, rel=1e-8)


def test_boltzmann_constant_in_kj_per_mol_per_kelvin():
    assert units.KB_KJ_PER_MOL_K == pytest.approx(K_B_SI * N_A / 1e3, rel=1e-8)
    assert units.REAL.kB == units.KB_KJ_PER_MOL_K
    # k_B T at 300 K is the textbook 2.4943 kJ/mol
    assert units.kT_of(units.REAL, None, 300.0) == pytest.approx(2.49434, rel=1e-5)
    # reduced units: k_B = 1 and an explicit kT wins over a temperature
    assert units.LJ.kB == 1.0
    assert units.kT_of(units.LJ, 1.5, None) == 1.5
    assert units.kT_of(units.REAL, 2.0, 300.0) == 2.0


def test_gpa_conversion():
    # 1 kJ mol^-1 nm^-3 = 1.66054e6 Pa = 1.66054e-3 GPa
    assert units.GPA_PER_KJ_MOL_NM3 == pytest.approx(KJ_MOL_NM3_IN_PA / 1e9, rel=1e-8)
    gpa_in_internal = units.pressure_factor("GPa", units.REAL)
    assert gpa_in_internal == pytest.approx(1e9 / KJ_MOL_NM3_IN_PA, rel=1e-8)   # ≈ 602.214
    assert gpa_in_internal == pytest.approx(602.214076, rel=1e-6)
    # 1 GPa = 1e4 bar, whichever way round
    assert gpa_in_internal / units.pressure_factor("bar", units.REAL) == pytest.approx(1e4, rel=1e-12)
    assert units.pressure_factor("atm", units.REAL) == pytest.approx(101325.0 / KJ_MOL_NM3_IN_PA, rel=1e-8)
    assert units.pressure_factor("kJ/mol/nm^3", units.REAL) == 1.0
    assert units.pressure_factor("reduced", units.LJ) == 1.0


def test_length_conversions():
    assert units.length_factor("nm", units.REAL) == 1.0
    assert units.length_factor("angstrom", units.REAL) == pytest.approx(0.1)
    assert units.length_factor("Å", units.REAL) == pytest.approx(0.1)
    assert units.length_factor("A", units.REAL) == pytest.approx(0.1)
    assert units.length_factor("pm", units.REAL) == pytest.approx(1e-3)
    assert units.length_factor("sigma", units.LJ) == 1.0
    assert units.ANGSTROM_PER_NM * units.length_factor("angstrom", units.REAL) == pytest.approx(1.0)


def test_angle_conversions():
    assert units.angle_factor("rad") == 1.0
    assert units.angle_factor("deg") * 180.0 == pytest.approx(math.pi, rel=1e-15)
    assert 90.0 * units.angle_factor("deg") == pytest.approx(math.pi / 2)


def test_unit_systems():
    assert units.get("lj") is units.LJ
    assert units.get("real") is units.REAL
    d = units.REAL.to_dict()
    assert d["length"] == "nm" and d["energy"] == "kJ/mol" and d["pressure"] == "kJ/mol/nm^3"


@pytest.mark.parametrize("call", [
    lambda: units.get("cgs"),
    lambda: units.length_factor("furlong", units.REAL),
    lambda: units.length_factor("nm", units.LJ),          # real unit in a reduced-unit run
    lambda: units.angle_factor("grad"),
    lambda: units.pressure_factor("psi", units.REAL),
    lambda: units.pressure_factor("bar", units.LJ),         # real unit in a reduced-unit run
], ids=["system", "length", "length-in-lj", "angle", "pressure", "pressure-in-lj"])
def test_unknown_units_raise_user_error(call):
    with pytest.raises(UserError) as info:
        call()
    assert "fix:" in str(info.value)   # the message tells the user what to do
