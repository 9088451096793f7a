"""LAMMPS ``pair_style table`` files: one section per species pair in ``difftre.table`` and the
input lines that use it (``in.difftre_pair``).

A section is the pair's keyword (``A-B``), a line ``N n R r_lo r_hi`` (the points are evenly
spaced in r and the file's r column repeats them), a blank line, then ``i r u f`` with
f = −du/dr. ``pair_coeff I J difftre.table A-B rc`` names the section per atom-type pair, the
types numbered in the order of ``system.species`` (LAMMPS manual, pair_style table).
"""
from __future__ import annotations

from pathlib import Path

from .tabulate import PairTable

TABLE_FILE = "difftre.table"
INPUT_FILE = "in.difftre_pair"
#: LAMMPS's interpolation styles of pair_style table that difftre offers
INTERPOLATIONS = ("linear", "spline")


def write(tables: list[PairTable], out: Path, *, style: str, units_note: str, header: str, species: tuple,
          interpolation: str) -> list[Path]:
    """The table file and the input snippet for ``tables`` (already in the engine's units)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append(f"# units {style}: {units_note}; columns: index, r, energy, force = -dE/dr")
    for t in tables:
        lines += ["", t.name, f"N {len(t.r)} R {t.r[0]:.12g} {t.r[-1]:.12g}", ""]
        lines += [f"{i + 1} {r:.12g} {u:.12g} {f:.12g}" for i, (r, u, f) in enumerate(zip(t.r, t.u, t.f))]
    table = out / TABLE_FILE
    table.write_text("\n".join(lines) + "\n")
    n = max(len(t.r) for t in tables)
    index = {name: i + 1 for i, name in enumerate(species)}
    snippet = [f"# {line}" for line in header.splitlines()]
    snippet += [f"# atom types: {', '.join(f'{index[s]} = {s}' for s in species)} (the order of system.species)",
                "# below r_inner the table is a smooth repulsive wall, not the model: "
                + ", ".join(f"{t.name} {t.r_inner:.6g}" for t in tables),
                f"# this table's units: `units {style}`, which must come before the box is made (read_data, "
                "create_box); include these lines after it",
                f"pair_style table {interpolation} {n}"]
    for t in tables:
        a, b = sorted((index[t.species[0]], index[t.species[1]]))
        snippet.append(f"pair_coeff {a} {b} {TABLE_FILE} {t.name} {t.cutoff:.12g}")
    (out / INPUT_FILE).write_text("\n".join(snippet) + "\n")
    return [table, out / INPUT_FILE]
