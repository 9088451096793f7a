"""The curve files of `difftre evaluate` (difftre_cli/curves.py) for the shapes evaluation.json
takes beyond the tiny run's (test_cli.py checks those on a real evaluation): several state points
and targets, a mixture's pair curves, a one-body u(x), a many-body potential (no curve), a
stress–strain curve; a stale file of an earlier evaluation goes, numbers read back exactly."""
from __future__ import annotations

import csv

import numpy as np

from difftre_cli.curves import curve_tables, write_curves

UNITS = {"name": "real", "length": "nm", "energy": "kJ/mol"}


def _read(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], np.array(rows[1:], float)


def test_states_targets_and_mixture_pairs(tmp_path):
    grid = [0.1, 0.2, 0.3]
    ev = {"units": UNITS,
          "observables": {"hot_adf": {"grid": grid, "value": [0.5, 1 / 3, 0.25], "error": None, "unit": "1/rad",
                                      "grid_unit": "rad", "symbols": ["alpha", "p"]},
                          "hot_pressure": {"grid": None, "value": 1.0, "error": 0.1, "unit": "kJ/mol/nm^3"}},
          "targets": {"hot_adf": {"observable_name": "hot_adf", "target": [0.4, 0.3, 0.3]},
                      "hot_adf_smooth": {"observable_name": "hot_adf", "target": [0.45, 0.3, 0.25]}},
          "potential": {"pairs": {"A-B": {"r": grid, "total": [3.0, 1.0, 0.0], "prior": [2.0, 0.5, 0.0]},
                                  "A A": {"r": grid, "total": [4.0, 1.0, 0.0], "prior": [2.0, 0.5, 0.0],
                                          "truth": [4.5, 1.0, 0.0]}}}}
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / "old_rdf.csv").write_text("x [1]\n1.0\n")
    paths = write_curves(tmp_path, ev)
    assert sorted(p.name for p in (tmp_path / "curves").iterdir()) == \
        ["hot_adf.csv", "potential_A-B.csv", "potential_A_A.csv"] == sorted(p.name for p in paths)
    header, table = _read(tmp_path / "curves" / "hot_adf.csv")
    assert header == ["alpha [rad]", "p_model [1/rad]", "p_model_err [1/rad]", "p_target_hot_adf [1/rad]",
                      "p_target_hot_adf_smooth [1/rad]"]
    np.testing.assert_array_equal(table[:, 1], ev["observables"]["hot_adf"]["value"])   # 1/3 exactly
    assert np.all(np.isnan(table[:, 2]))                                                # no error: nan
    header, table = _read(tmp_path / "curves" / "potential_A_A.csv")
    assert header == ["r [nm]", "u_model [kJ/mol]", "u_prior [kJ/mol]", "u_truth [kJ/mol]"]
    assert _read(tmp_path / "curves" / "potential_A-B.csv")[0] == ["r [nm]", "u_model [kJ/mol]", "u_prior [kJ/mol]"]


def test_one_body_many_body_and_stress_strain():
    one_body = {"units": UNITS, "potential": {"x": [0.0, 1.0], "total": [1.0, 2.0], "prior": [0.0, 0.0],
                                              "truth": [1.0, 2.5], "kind": "one_body"},
                "potential_per_state": {"cold": {"kT": 1.0, "x": [0.0, 1.0], "total": [1.0, 2.0],
                                                 "prior": [0.0, 0.0]}}}
    tables = curve_tables(one_body)
    assert [h for h, _ in tables["potential"]] == ["x [nm]", "u_model [kJ/mol]", "u_prior [kJ/mol]", "u_truth [kJ/mol]"]
    assert "cold_potential" in tables
    assert curve_tables({"units": UNITS, "potential": {"kind": "many_body"}}) == {}
    s = [float(k) for k in range(6)]
    ss = {"unit": "GPa", "zero_strain_stress": s, "zero_strain_stress_error": [0.1] * 6,
          "runs": [{"mode": "e1", "strain": 0.01, "stress": s, "stress_error": [0.2] * 6},
                   {"mode": "e1", "strain": -0.01, "stress": s, "stress_error": [0.2] * 6},
                   {"mode": "e4", "strain": 0.01, "stress": s, "stress_error": [0.2] * 6}]}
    tables = curve_tables({"units": UNITS, "potential": {"kind": "many_body"}, "stress_strain": ss})
    assert set(tables) == {"stress_strain_e1", "stress_strain_e4"}
    cols = dict(tables["stress_strain_e1"])
    assert cols["strain [1]"] == [-0.01, 0.0, 0.01] and cols["stress_yz [GPa]"] == [3.0] * 3
    assert cols["stress_xx_err [GPa]"] == [0.2, 0.1, 0.2]
