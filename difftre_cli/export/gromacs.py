"""GROMACS tabulated non-bonded interactions: ``table_A_B.xvg`` per species pair (with one
species: ``table.xvg``), the ``.mdp`` lines they need and the ``[ nonbond_params ]`` that
switch them on.

GROMACS's user table holds V(r) = q_i q_j f(r)/(4πε₀) + C6 g(r) + C12 h(r) as seven columns
r, f, −f', g, −g', h, −h' on an even grid from 0 to the cutoff plus ``table-extension``. The
learned potential goes into h with C6 = 0 and C12 = 1 (f and g are zero: the beads carry no
charge and no dispersion of their own), spacing 0.002 nm (GROMACS's recommendation for
single precision). User tables need ``cutoff-scheme = group``, which GROMACS removed in 2020:
these files run in GROMACS 2019 and older (GROMACS manual, "Tabulated interaction functions").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .tabulate import PairTable

MDP_FILE = "difftre_tables.mdp"
ITP_FILE = "difftre_nonbond.itp"
#: grid spacing of the tables (nm) and how far they reach past the cutoff (nm, mdp table-extension)
SPACING = 0.002
EXTENSION = 1.0


def grid(cutoff: float) -> np.ndarray:
    """The table's r: 0, SPACING, ... up to cutoff + EXTENSION."""
    n = int(round((cutoff + EXTENSION) / SPACING)) + 1
    return np.arange(n) * SPACING


def model_grid(cutoff: float) -> np.ndarray:
    """The points of :func:`grid` up to the cutoff: where the table holds the model (zero beyond)."""
    r = grid(cutoff)
    return r[r <= cutoff * (1 + 1e-12)]


def file_name(t: PairTable, n_species: int) -> str:
    return "table.xvg" if n_species == 1 else f"table_{t.species[0]}_{t.species[1]}.xvg"


def write(tables: list[PairTable], out: Path, *, header: str, species: tuple, units_note: str) -> list[Path]:
    """The xvg tables (``tables`` tabulated on :func:`model_grid`, in nm and kJ/mol), the mdp lines and the nonbond_params include."""
    files = []
    for t in tables:
        r = grid(t.cutoff)
        inside = np.arange(len(r)) < len(t.r)
        u = np.where(inside, np.pad(t.u, (0, len(r) - len(t.u))), 0.0)
        f = np.where(inside, np.pad(t.f, (0, len(r) - len(t.f))), 0.0)
        lines = [f"# {line}" for line in header.splitlines()]
        lines += [f"# pair {t.name}: {units_note}; V = C12 h(r) with C12 = 1 (difftre_nonbond.itp)",
                  "# columns: r, f, -f', g, -g', h = u(r), -h' = force"]
        zero = "0 0 0 0"
        lines += [f"{x:.6f} {zero} {uu:.10e} {ff:.10e}" for x, uu, ff in zip(r, u, f)]
        path = out / file_name(t, len(species))
        path.write_text("\n".join(lines) + "\n")
        files.append(path)
    if len(species) > 1:   # the default table (pairs not in energygrp-table): no interaction
        r = grid(tables[0].cutoff)
        (out / "table.xvg").write_text("\n".join(f"{x:.6f} 0 0 0 0 0 0" for x in r) + "\n")
        files.append(out / "table.xvg")
    rc = max(t.cutoff for t in tables)
    mdp = [f"; {line}" for line in header.splitlines()]
    mdp += ["; run with: gmx mdrun -table table.xvg   (GROMACS 2019 or older: the group scheme)",
            "cutoff-scheme    = group", "coulombtype      = user", "vdwtype          = user",
            f"rlist            = {rc:.6g}", f"rcoulomb         = {rc:.6g}", f"rvdw             = {rc:.6g}",
            f"table-extension  = {EXTENSION:g}"]
    if len(species) > 1:
        mdp.append(f"energygrps       = {' '.join(species)}")
        mdp.append(f"energygrp-table  = {' '.join(f'{t.species[0]} {t.species[1]}' for t in tables)}")
    (out / MDP_FILE).write_text("\n".join(mdp) + "\n")
    itp = [f"; {line}" for line in header.splitlines()]
    itp += ["; C6 = 0, C12 = 1: the tables' h column is the whole pair potential", "[ nonbond_params ]",
            ";  i  j  func  C6  C12"]
    itp += [f"  {t.species[0]}  {t.species[1]}  1  0.0  1.0" for t in tables]
    (out / ITP_FILE).write_text("\n".join(itp) + "\n")
    return files + [out / MDP_FILE, out / ITP_FILE]
