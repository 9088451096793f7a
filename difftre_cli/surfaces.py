"""Target files of 2-D observables: a periodic grid of (x1, x2) pairs, e.g. ``phi_psi``'s (φ, ψ)
(observables/internal.py; ``np.ndim(grid) == 2``, the value the flattened map).

Format (what ``difftre targets`` writes, what ``targets.X.file`` reads for such an observable):
a text/CSV file with ``#`` comment lines, an optional header row (``phi,psi,p,err``), then one
row per grid point: x1, x2, y[, standard error of y], the angles in the unit the target's
``x_unit`` declares (rad or deg). ``targets.X.columns`` picks x1, x2, y[, error] by header name
or 0-based index (default 0, 1, 2[, 3]).

The file's points must form one complete regular grid over a period in each direction (every
x1 with every x2, uniform steps, n · step = 2π; any order, any offset: a grid on (−180°, 180°]
or on [0°, 360°) alike). They are put on the observable's grid by periodic bilinear
interpolation, exact where the two grids coincide (a file ``difftre targets`` wrote for the
same observable).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .target_files import split_header, table_rows

PERIOD = 2.0 * math.pi
#: points closer than this (rad) are the same grid line
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Surface:
    """A 2-D target as read: points xy (M, 2) in file units, y (M,), standard error (None: not given)."""
    xy: np.ndarray
    y: np.ndarray
    err: np.ndarray | None = None


def is_surface(grid) -> bool:
    """Whether an observable's grid is one of (x1, x2) pairs (a 2-D observable)."""
    return grid is not None and np.ndim(grid) == 2


def write_surface(path: Path, grid, mean, err, symbols, header: list[str]) -> None:
    """``path``: the comment lines ``header``, a header row (the grid's symbols, the value's,
    ``err``), then x1, x2, mean, standard error per grid point (``repr`` floats)."""
    names = [*symbols, "err"]
    lines = [f"# {h}" for h in header] + [",".join(names)]
    for (a, b), m, e in zip(np.asarray(grid, float), np.asarray(mean, float), np.asarray(err, float)):
        lines.append(",".join(repr(float(v)) for v in (a, b, m, e)))
    path.write_text("\n".join(lines) + "\n")


def columns_option(t, key: str) -> list | None:
    """``targets.X.columns`` of a 2-D target: three or four header names or 0-based indices
    (x1, x2, y[, error]), or None."""
    cols = t.get("columns")
    if cols is None:
        return None
    ckey = f"{key}.columns"
    ok = (isinstance(cols, Sequence) and not isinstance(cols, (str, bytes)) and len(cols) in (3, 4)
          and all(isinstance(c, str) and c or (isinstance(c, int) and not isinstance(c, bool) and c >= 0)
                  for c in cols) and len(set(cols)) == len(cols))
    if not ok:
        raise UserError(f"{ckey} must be three or four distinct column names or 0-based indices (x1, x2, y[, error]) "
                        f"for a 2-D target, got {cols!r}", f"set e.g. {ckey}=[phi,psi,p] or {ckey}=[0,1,2,3]")
    return list(cols)


def read_surface(path: Path, key: str, columns=None) -> Surface:
    """x1, x2, y and the standard error (if any) of a 2-D target file (text), checked: numeric,
    the same number of values on every line, finite. UserError naming ``key`` otherwise."""
    if path.suffix.lower() in (".npz", ".h5", ".hdf5"):
        raise UserError(f"{key}: 2-D targets are read from text files (columns x1 x2 y [error]), got {path}",
                        "write the table as text/CSV, e.g. the file `difftre targets` writes")
    header, rows = split_header(table_rows(path, key), path, key)
    if not rows:
        raise UserError(f"{key}: target file {path} is empty (no data lines)", "write columns x1 x2 y [error]")
    width = len(rows[0][1])
    for lineno, fields in rows:
        if len(fields) != width or width < 3:
            raise UserError(f"{key}: target file {path} line {lineno} has {len(fields)} values; a 2-D target needs "
                            f"the same 3 or 4 on every line (x1 x2 y [error])", "re-export the file (it may be cut off)")
    idx = _pick(columns, header, width, path, key)
    data = np.asarray([[float(v) for v in fields] for _, fields in rows], float)
    if not np.all(np.isfinite(data[:, idx[:3]])):
        raise UserError(f"{key}: target file {path} contains NaN or infinite values", "remove or fix those rows")
    err = data[:, idx[3]] if len(idx) > 3 else None
    return Surface(data[:, idx[:2]], data[:, idx[2]], err)


def _pick(columns, header, width: int, path: Path, key: str) -> list[int]:
    """0-based indices of x1, x2, y[, error] (default 0, 1, 2[, 3])."""
    ckey = key.rsplit(".", 1)[0] + ".columns"
    if columns is None:
        return list(range(min(width, 4)))
    out = []
    for c in columns:
        if isinstance(c, str) and (header is None or c not in header):
            raise UserError(f"{ckey}: no column {c!r} in {path} (header: {header or 'none'})",
                            f"use the header's names or 0-based indices, e.g. {ckey}=[0,1,2]")
        k = header.index(c) if isinstance(c, str) else int(c)
        if k >= width:
            raise UserError(f"{ckey}: column index {k} but {path} has {width} columns (0 to {width - 1})",
                            f"use 0-based indices below {width}, e.g. {ckey}=[0,1,2]")
        out.append(k)
    return out


def _lines(values, key: str, path, axis: str):
    """The grid lines (sorted, wrapped into [−π, π)) of one coordinate and the line of each
    value; UserError unless they are uniformly spaced over one period."""
    wrapped = np.mod(values + math.pi, PERIOD) - math.pi
    s = np.sort(wrapped)
    lines = s[np.r_[True, np.diff(s) > TOLERANCE]]
    n = len(lines)
    step = PERIOD / n
    if n < 2 or not np.allclose(np.diff(lines), step, rtol=1e-4, atol=TOLERANCE):
        raise UserError(f"{key}: the {axis} values of {path} do not form a regular grid over one period "
                        f"({n} distinct values; 2π/{n} = {step:.4g} rad apart expected)",
                        "give every grid point of a uniform grid over 360° (each x1 with each x2), "
                        "e.g. the file `difftre targets` writes")
    index = np.minimum(np.searchsorted(lines + TOLERANCE, wrapped), n - 1)
    return lines, index


def on_periodic_grid(xy, values, grid, key: str, path) -> np.ndarray:
    """``values`` at points ``xy`` (rad) put on ``grid`` (M', 2) by periodic bilinear
    interpolation (the module docstring says what the points must be)."""
    (a, ia), (b, ib) = _lines(xy[:, 0], key, path, "x1"), _lines(xy[:, 1], key, path, "x2")
    table = np.full((len(a), len(b)), np.nan)
    count = np.zeros(table.shape, int)
    np.add.at(count, (ia, ib), 1)
    table[ia, ib] = values
    if np.any(count != 1):
        raise UserError(f"{key}: {path} has {len(values)} points for a grid of {len(a)} × {len(b)}: "
                        f"{int(np.sum(count == 0))} missing, {int(np.sum(count > 1))} given twice",
                        "give every grid point once (x and x ± 360° are the same angle)")
    u = np.mod(np.asarray(grid)[:, 0] - a[0], PERIOD) / (PERIOD / len(a))
    v = np.mod(np.asarray(grid)[:, 1] - b[0], PERIOD) / (PERIOD / len(b))
    i0, j0 = np.floor(u).astype(int), np.floor(v).astype(int)
    s, t = u - i0, v - j0
    i0, j0 = i0 % len(a), j0 % len(b)
    i1, j1 = (i0 + 1) % len(a), (j0 + 1) % len(b)
    return ((1 - s) * (1 - t) * table[i0, j0] + s * (1 - t) * table[i1, j0]
            + (1 - s) * t * table[i0, j1] + s * t * table[i1, j1])
