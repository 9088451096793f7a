"""The curves of ``difftre evaluate`` as plain CSV files: ``RUN/curves/*.csv``, one per curve that
the plots show, each read from ``evaluation.json`` (so the two always hold the same numbers).

- ``<state>_<observable>.csv`` for every function-valued observable (RDF, ADF, density profile,
  S(k)): its grid, the model's values with their jackknife standard errors and, for every target
  on it, the target on the same grid (``r [nm],g_model [1],g_model_err [1],g_target [1]``); a 2-D
  one (phi_psi) has a column per grid coordinate (``phi [rad],psi [rad],p_model [1/rad^2],...``);
- ``potential.csv`` (``potential_<pair>.csv`` per species pair of a mixture,
  ``<state>_potential*.csv`` for a temperature-dependent model at each state point): r (or x for a
  one-body field), the learned u = prior + model, the prior and, when the config knows it, the
  ground truth;
- ``stress_strain_<mode>.csv``: the strain and the six stress components with their errors.

Every file has one header line naming each column with its unit (units.py's names, as
evaluation.json's ``units``, ``unit`` and ``grid_unit`` give them; ``1`` for a pure number);
values are written with ``repr`` (they read back as the same floats); a missing error is ``nan``.
"""
from __future__ import annotations

import re
from pathlib import Path

from .store import write_text_atomic

#: the directory of the curve files in the evaluation's output directory
CURVES_DIR = "curves"
#: the stress components of a stress–strain run, in Voigt order (stress_strain.py)
VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")
_FIX = "free disk space (or raise the quota) and run difftre evaluate again"


def curve_tables(ev: dict) -> dict[str, list[tuple[str, list]]]:
    """The curves of an evaluation (evaluation.json's dict): file stem -> columns, each
    (header ``name [unit]``, values)."""
    tables = {}
    for name, obs in ev.get("observables", {}).items():
        if obs.get("grid") is not None:
            tables[_stem(name)] = _observable_columns(name, obs, ev.get("targets", {}))
    units = ev.get("units", {})
    if "potential" in ev:
        tables.update(_potential_tables("", ev["potential"], units))
    for state, curve in (ev.get("potential_per_state") or {}).items():
        tables.update(_potential_tables(f"{state}_", curve, units))
    ss = ev.get("stress_strain")
    if ss:
        for mode in dict.fromkeys(r["mode"] for r in ss["runs"]):
            tables[f"stress_strain_{_stem(mode)}"] = _stress_strain_columns(ss, mode)
    return tables


def _observable_columns(name: str, obs: dict, targets: dict) -> list[tuple[str, list]]:
    """Grid, model, its error and the targets; a 2-D observable (a grid of (x1, x2) pairs, e.g.
    phi_psi; symbols x1, x2, y) gets one grid column per coordinate."""
    *axes, y = obs.get("symbols") or ("x", "y")
    unit, grid_unit, grid = obs.get("unit", "1"), obs.get("grid_unit", "1"), obs["grid"]
    if len(axes) == 1:
        cols = [(f"{axes[0]} [{grid_unit}]", grid)]
    else:
        cols = [(f"{a} [{grid_unit}]", [point[k] for point in grid]) for k, a in enumerate(axes)]
    cols += [(f"{y}_model [{unit}]", obs["value"]),
             (f"{y}_model_err [{unit}]", obs["error"] if obs.get("error") is not None else [None] * len(grid))]
    on_it = [(t, d) for t, d in targets.items() if d.get("observable_name") == name]
    for t, d in on_it:
        cols.append((f"{y}_target{'' if len(on_it) == 1 else '_' + t} [{unit}]", d["target"]))
    return cols


def _potential_tables(prefix: str, pot: dict, units: dict) -> dict:
    """potential.csv (or one per species pair) of a pair or one-body potential; none for a
    many-body one (no pair curve)."""
    if "pairs" in pot:
        return {f"{prefix}potential_{_stem(pair)}": _potential_columns(c, units) for pair, c in pot["pairs"].items()}
    if "r" in pot or "x" in pot:
        return {f"{prefix}potential": _potential_columns(pot, units)}
    return {}


def _potential_columns(curve: dict, units: dict) -> list[tuple[str, list]]:
    x = "x" if "x" in curve else "r"
    length, energy = units.get("length", "1"), units.get("energy", "1")
    cols = [(f"{x} [{length}]", curve[x]), (f"u_model [{energy}]", curve["total"]),
            (f"u_prior [{energy}]", curve["prior"])]
    if "truth" in curve:
        cols.append((f"u_truth [{energy}]", curve["truth"]))
    return cols


def _stress_strain_columns(ss: dict, mode: str) -> list[tuple[str, list]]:
    rows = sorted([(0.0, ss["zero_strain_stress"], ss["zero_strain_stress_error"])]
                  + [(r["strain"], r["stress"], r["stress_error"]) for r in ss["runs"] if r["mode"] == mode],
                  key=lambda row: row[0])
    unit = ss["unit"]
    cols = [("strain [1]", [r[0] for r in rows])]
    cols += [(f"stress_{c} [{unit}]", [r[1][k] for r in rows]) for k, c in enumerate(VOIGT)]
    cols += [(f"stress_{c}_err [{unit}]", [r[2][k] for r in rows]) for k, c in enumerate(VOIGT)]
    return cols


def to_csv(columns: list[tuple[str, list]]) -> str:
    """One header line, then one row per grid point (``repr`` of each float, ``nan`` for None)."""
    n = {len(values) for _, values in columns}
    if len(n) != 1:
        raise ValueError(f"columns of different lengths: {[(h, len(v)) for h, v in columns]}")
    lines = [",".join(h for h, _ in columns)]
    lines += [",".join("nan" if v is None else repr(float(v)) for v in row) for row in zip(*(v for _, v in columns))]
    return "\n".join(lines) + "\n"


def write_curves(out_dir: Path, ev: dict) -> list[Path]:
    """Write the curves of ``ev`` into ``out_dir/curves/`` (atomically, as the run's files;
    curve files of an earlier evaluation that this one lacks are removed). Returns the paths."""
    directory = Path(out_dir) / CURVES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    tables = curve_tables(ev)
    paths = [write_text_atomic(directory / f"{stem}.csv", to_csv(cols), _FIX) for stem, cols in tables.items()]
    for stale in directory.glob("*.csv"):
        if stale not in paths:
            stale.unlink()
    return paths


def _stem(name: str) -> str:
    """A file name of an observable, state or species pair (anything but letters, digits, ``.``,
    ``-`` and ``_`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(name))
