"""``difftre export``: a trained run's pair potential as tables for LAMMPS or GROMACS, or its
reference trajectories in the formats of other tools (trajectories.py).

The run is loaded at its final parameters as ``evaluate`` loads it (evaluate_md.load); each
pair term of the potential (protocol.PairTerm: prior + model, one per species pair) is
tabulated (tabulate.py) and written by the engine's writer (lammps.py, gromacs.py) into
``out`` (default RUN/export/FORMAT/) with ``export.json``: what was written, the units, the
state point (a temperature-dependent model is tabulated at its kT) and each table's inner end.

Potentials a table cannot hold are refused with a UserError: many-body networks (DimeNet++,
the SW prior), one-body fields, and the 0 K classical fits (LAMMPS runs those with its own
pair_style sw / edip).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import units as units_mod
from ..errors import UserError
from ..evaluate_md import load, select_state
from ..learn.registry import trainer_kind
from . import gromacs, lammps
from .tabulate import WALL_KT, PairTable, inner_end, tabulate
from .trajectories import LAMMPS_STYLE, TRAJECTORY_FORMATS, export_trajectories

FORMATS = ("lammps", "gromacs", *TRAJECTORY_FORMATS)


USAGE = """usage: difftre export [run=PATH] format=lammps|gromacs|xyz|dcd|xtc|trr|pdb|lammpstrj [out=DIR] [options]
                     [overrides ...]

Write a trained run's pair potential (prior + learned model) as tables for another MD engine,
or its reference trajectories in another format (default run: the latest under runs/; default
out: RUN/export/FORMAT/).
  format=lammps       difftre.table (pair_style table) + in.difftre_pair (units, pair_style, pair_coeff)
  format=gromacs      table[_A_B].xvg + difftre_tables.mdp + difftre_nonbond.itp (GROMACS <= 2019)
  format=xyz|dcd|xtc|trr|pdb
                      each trajectories/ref_XXXXX.h5md through MDAnalysis's writer (positions in Å;
                      reduced runs in σ)
  format=lammpstrj    each trajectory as a LAMMPS text dump (id type x y z; units= sets the length unit)
  points=N            LAMMPS table points (default 5000)
  interpolation=S     LAMMPS pair_style table style: linear (default) or spline
  units=S             LAMMPS unit style: lj, real, metal (default: the run's)
  r_inner=R           where the table stops following the model (default: where u reaches wall kT)
  wall=W              that height in kT (default 30); below r_inner a smooth repulsive wall
  state=NAME          a multi-state run's state point
  key=value           config overrides as for evaluate (e.g. system.kT=1.2 for a thermal model)
"""


@dataclass(frozen=True)
class ExportOptions:
    format: str
    out: Path | None = None
    points: int = 5000                  # LAMMPS: table points (GROMACS: its fixed 0.002 nm grid)
    r_inner: float | None = None        # None: inner_end (tabulate.py), in the run's length unit
    wall: float = WALL_KT               # the inner end's height in kT
    units: str | None = None            # LAMMPS unit style (default: the run's)
    state: str | None = None            # multi-state runs: which state point's potential
    interpolation: str = "linear"       # LAMMPS pair_style table style


def parse_args(rest: list[str]) -> tuple[Path | None, ExportOptions, list[str]]:
    """(run, options, config overrides) of ``difftre export``'s arguments (UserError for bad ones)."""
    run, values, overrides = None, {}, []
    fields = {"format", "out", "points", "r_inner", "wall", "units", "state", "interpolation"}
    for a in rest:
        key, eq, value = a.partition("=")
        if not eq:
            raise UserError(f"export: unexpected argument {a!r}", "give key=value arguments (difftre export --help)")
        if key == "run":
            run = Path(value).expanduser()
        elif key in fields:
            values[key] = value
        else:
            overrides.append(a)
    fmt = values.pop("format", None)
    if fmt not in FORMATS:
        raise UserError(f"export: format={fmt} is not one of {', '.join(FORMATS)}" if fmt else
                        "export: format= is missing", "add format=lammps or format=gromacs (tables), "
                        "or format=xyz (trajectories)")
    if values.get("interpolation", "linear") not in lammps.INTERPOLATIONS:
        raise UserError(f"export: interpolation={values['interpolation']}", "use interpolation=linear or spline")
    opts = {"format": fmt, "out": Path(values["out"]).expanduser() if "out" in values else None}
    for key, kind, lo in (("points", int, 10), ("r_inner", float, 0.0), ("wall", float, 0.0)):
        if key in values:
            try:
                opts[key] = kind(values[key])
            except ValueError:
                raise UserError(f"export: {key}={values[key]} is not a number", f"e.g. {key}={lo * 2 or 1}") from None
            if not opts[key] > lo:
                raise UserError(f"export: {key}={values[key]} must be > {lo}", f"e.g. {key}={lo * 2 or 1}")
    for key in ("units", "state", "interpolation"):
        if key in values:
            opts[key] = values[key]
    return run, ExportOptions(**opts), overrides


def export_run(cfg, run_dir: Path, opts: ExportOptions) -> dict:
    """Write the tables (or trajectories) of the run in ``run_dir`` (config ``cfg``) and return
    export.json's dict."""
    if opts.format in TRAJECTORY_FORMATS:
        return export_trajectories(run_dir, opts.format, opts.out, opts.state, opts.units)
    if trainer_kind(cfg.trainer.kind).evaluator != "md":
        raise UserError(f"trainer={cfg.trainer.kind} fits a classical many-body potential, which a pair table "
                        "cannot hold", "run it in LAMMPS with its own pair_style (sw, edip) and the fitted "
                        "parameters of evaluation.json")
    run = load(cfg, run_dir)
    name, c = select_state(run.states, opts.state)
    out = Path(opts.out) if opts.out is not None else Path(run_dir) / "export" / opts.format
    header = (f"difftre export of {Path(run_dir).resolve()}\n"
              f"pair potential = prior + learned model at the final parameters"
              + (f", state point {name}" if name else "") + f", kT = {c.system.kT:.6g} {c.system.units.energy}")
    manifest = {"run": str(Path(run_dir).resolve()), "state": name or None, "out": str(out)}
    manifest.update(export_potential(c, run.params, opts, out, header))
    (out / "export.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def export_potential(c, params, opts: ExportOptions, out: Path, header: str) -> dict:
    """Tabulate the pair terms of ``c.potential`` (assemble.Components) at ``params`` and write
    them for ``opts.format`` into ``out``; returns what was written (export.json's body)."""
    pot = c.potential
    if pot.one_body or not pot.pair_terms():
        what = "a one-body external field" if pot.one_body else "many-body (three-body terms or a graph network)"
        raise UserError(f"the potential of this run is {what}: a pair table cannot hold it",
                        "export works for pair models (model=spline, table, mlp, thermal; mixtures)")
    system = c.system
    style, length, energy, note = _units(opts, system.units)
    tables = []
    for term in pot.pair_terms():
        def u_fn(r, term=term):
            return term.u(params, r)
        species = term.species or (system.species_names[0],) * 2
        pair = f"{species[0]}-{species[1]}"
        r_inner = opts.r_inner if opts.r_inner is not None else inner_end(u_fn, pot.cutoff, system.kT, opts.wall)
        if opts.format == "lammps":
            r = np.linspace(0.5 * r_inner, pot.cutoff, opts.points)
        else:
            r = gromacs.model_grid(pot.cutoff * length) / length
        tables.append(tabulate(u_fn, pair, species, r, pot.cutoff, r_inner).scaled(length, energy))
    out.mkdir(parents=True, exist_ok=True)
    species = tuple(system.species_names)
    if opts.format == "lammps":
        files = lammps.write(tables, out, style=style, units_note=note, header=header, species=species,
                             interpolation=opts.interpolation)
    else:
        files = gromacs.write(tables, out, header=header, species=species, units_note=note)
    return {"format": opts.format, "units": style, "unit_note": note, "kT": float(system.kT),
            "kT_unit": system.units.energy, "files": [p.name for p in files],
            "tables": [_table_info(t) for t in tables],
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}}


def _units(opts: ExportOptions, system: units_mod.UnitSystem) -> tuple[str, float, float, str]:
    """(unit style, length factor, energy factor, note) of the tables: LAMMPS in ``units=``
    (default: the run's own style), GROMACS in nm and kJ/mol (reduced runs: the numbers in σ
    and ε, which GROMACS reads as nm and kJ/mol)."""
    if opts.format == "gromacs":
        if opts.units not in (None, "gromacs"):
            raise UserError(f"units={opts.units}: GROMACS tables are in nm and kJ/mol", "remove units=")
        if system.name == "lj":
            return "lj", 1.0, 1.0, "reduced units: r in sigma, energy in epsilon (GROMACS reads them as nm, kJ/mol)"
        length, energy = units_mod.table_factors("gromacs", system)
        return "gromacs", length, energy, "r in nm, energy in kJ/mol, force in kJ/mol/nm"
    style = opts.units or LAMMPS_STYLE[system.name]
    if style not in LAMMPS_STYLE:
        raise UserError(f"units={style}: not a LAMMPS unit style difftre writes", "use lj, real or metal")
    length, energy = units_mod.table_factors(style, system)
    names = units_mod.TABLE_STYLES[style]
    return style, length, energy, f"r in {names[0]}, energy in {names[1]}, force in {names[1]}/{names[0]}"


def _table_info(t: PairTable) -> dict:
    return {"pair": t.name, "points": len(t.r), "r_min": float(t.r[0]), "r_inner": t.r_inner,
            "cutoff": t.cutoff, "u_at_cutoff": t.u_cut, "u_at_r_inner": float(np.interp(t.r_inner, t.r, t.u))}
