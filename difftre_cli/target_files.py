"""Reading target files: one reader for every format people keep curves in.

- text (``.txt``/``.dat``/``.csv``/``.tsv``, any other extension): columns separated by white
  space, tabs or commas, ``#`` comments; an optional header row (a first data line that is not
  numeric while every later line is, e.g. ``r,g`` as pandas writes it);
- GROMACS ``.xvg``: as text, lines starting with ``@`` (xmgrace settings) or ``#`` are skipped;
- LAMMPS ``fix ave/time ... mode vector`` output (e.g. of ``compute rdf``): its last block, the
  columns named as in its ``# Row`` comment (default: ``c_rdf[1]``, ``c_rdf[2]``: r and g(r));
- ``.npz``: arrays ``x`` and ``y``, optionally ``err`` (or ``y_err``);
- ``.h5``/``.hdf5``: datasets ``x`` and ``y``, optionally ``err`` (or ``y_err``), at the root or in a
  group named after the target.

``columns`` (``targets.X.columns``) picks x, y and optionally the standard error of y by header
name or 0-based index (text) or by array name (npz/h5). Without it: columns 0, 1 and, when the file
has a third, 2 as the standard error (a header whose first name is empty, the index column that
pandas writes, is skipped). Every problem is a UserError naming the config key and the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

FORMAT_FIX = "use a text/csv/xvg file with columns x y [error], or .npz/.h5 with 1-D arrays x and y [err]"
ERR_NAMES = ("err", "y_err")


@dataclass(frozen=True)
class Curve:
    """A target curve as read: x (file units), y and the standard error of y (None: not given)."""
    x: np.ndarray
    y: np.ndarray
    err: np.ndarray | None = None


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _fields(line: str) -> list[str]:
    """The fields of a line without its ``#`` comment: comma-separated when it has a comma (an
    empty field stays, so that a missing value is not silently skipped; trailing ones go),
    else white-space separated (blanks and tabs); quotes around names are dropped."""
    line = line.split("#")[0]
    if "," not in line:
        return [f.strip("\"'") for f in line.split()]
    fields = [f.strip().strip("\"'") for f in line.split(",")]
    while fields and not fields[-1]:
        fields.pop()
    return fields


def table_rows(path: Path, key: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-empty line (xvg: ``@`` lines skipped too)."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{key}: target file {path} is not a text file (binary content)",
                        f"{FORMAT_FIX}; binary files need the extension .npz or .h5") from None
    xvg = path.suffix.lower() == ".xvg"
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if xvg and line.lstrip().startswith("@"):
            continue
        fields = _fields(line)
        if fields:
            rows.append((lineno, fields))
    return rows


def split_header(rows, path: Path, key: str) -> tuple[list[str] | None, list]:
    """The header names (a non-numeric first line followed only by numeric ones) and the data
    rows; a non-numeric line anywhere else is a UserError naming it."""
    header = None
    if rows and not all(_is_float(v) for v in rows[0][1]):
        header, rows = rows[0][1], rows[1:]
    for lineno, fields in rows:
        if not all(_is_float(v) for v in fields):
            raise UserError(f"{key}: target file {path} has a non-numeric line {lineno}: {' '.join(fields)!r}",
                            "keep numeric columns only, with at most one header row as the first line "
                            "(comments start with #)")
    return header, rows


def _check_widths(rows, header, path: Path, key: str) -> int:
    """The common number of values per data line (UserError on a cut-off or ragged line)."""
    width = len(rows[0][1])
    for lineno, fields in rows:
        if len(fields) < 2:
            raise UserError(f"{key}: target file {path} line {lineno} has {len(fields)} value; two columns (x y) "
                            "are needed" + (" (the file looks truncated)" if width >= 2 else ""),
                            "write x and y on every line; re-export the file if it was cut off")
        if len(fields) != width:
            raise UserError(f"{key}: target file {path} has ragged rows: line {lineno} has {len(fields)} values, "
                            f"the first data line {width}",
                            "give every line the same columns (x y); re-export the file if it was cut off")
    if header is not None and len(header) != width:
        raise UserError(f"{key}: target file {path} has a header of {len(header)} names ({', '.join(header)}) "
                        f"but data lines of {width} values",
                        "give one header name per column, or remove the header line")
    return width


def _pick(columns, header, width: int, path: Path, key: str) -> list[int | None]:
    """0-based indices of x, y and the error (None: no error column) from ``columns``."""
    ckey = key.rsplit(".", 1)[0] + ".columns"
    if columns is None:
        first = 1 if header is not None and header[0] == "" and width >= 3 else 0   # pandas' index column
        return [first, first + 1, first + 2 if width > first + 2 else None]
    out = []
    for c in columns:
        if isinstance(c, str):
            if header is None:
                raise UserError(f"{ckey}: target file {path} has no header row, so column {c!r} cannot be found "
                                "by name", f"name columns by 0-based index, e.g. {ckey}=[0,1]")
            if c not in header:
                raise UserError(f"{ckey}: no column {c!r} in the header of {path} (columns: {', '.join(header)})",
                                f"use the header's names or 0-based indices, e.g. {ckey}=[{header[0]},{header[-1]}]")
            out.append(header.index(c))
        else:
            if c >= width:
                raise UserError(f"{ckey}: column index {c} but {path} has {width} columns (0 to {width - 1})",
                                f"use 0-based indices below {width}, e.g. {ckey}=[0,1]")
            out.append(int(c))
    return out + [None] * (3 - len(out))


def _lammps_vector(path: Path, key: str):
    """(header names, rows of the last block) of a LAMMPS ``fix ave/time ... mode vector`` file
    (``# TimeStep Number-of-rows`` / ``# Row NAME ...`` comments, then per output step a line
    ``step nrows`` and nrows rows), or None for any other file. The last block is the average
    over the whole run when Nfreq is the run length (LAMMPS's compute rdf written this way)."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        return None
    comments = [line[1:].split() for line in lines[:3] if line.startswith("#")]
    if len(comments) < 3 or comments[1][:1] != ["TimeStep"] or comments[2][:1] != ["Row"]:
        return None
    data = [(i + 1, line.split()) for i, line in enumerate(lines) if line.strip() and not line.startswith("#")]
    starts = [k for k, (_, f) in enumerate(data) if len(f) == 2 and k + 1 < len(data) and len(data[k + 1][1]) > 2]
    if not starts:
        raise UserError(f"{key}: LAMMPS fix ave/time file {path} holds no block of rows", "let the LAMMPS run finish")
    k = starts[-1]
    n = int(float(data[k][1][1]))
    block = data[k + 1:k + 1 + n]
    if len(block) != n:
        raise UserError(f"{key}: the last block of LAMMPS file {path} has {len(block)} of its {n} rows "
                        "(the file looks truncated)", "use the file of a finished run, or an earlier block")
    return comments[2], block


def _read_text(path: Path, key: str, columns) -> Curve:
    lammps = _lammps_vector(path, key)
    if lammps is not None:   # default: LAMMPS compute rdf's r and g(r) (column 3 is a coordination number)
        header, rows = lammps
        columns = [1, 2] if columns is None else columns
    else:
        header, rows = split_header(table_rows(path, key), path, key)
    if not rows:
        raise UserError(f"{key}: target file {path} is empty (no data lines)", "write two columns: x y")
    width = _check_widths(rows, header, path, key)
    ix, iy, ie = _pick(columns, header, width, path, key)
    data = np.asarray([[float(v) for v in fields] for _, fields in rows], float)
    return Curve(data[:, ix], data[:, iy], None if ie is None else data[:, ie])


def _array_names(columns, path: Path, key: str) -> tuple[str, str, tuple[str, ...]]:
    """Names of the x, y and error arrays of an npz/h5 file (``columns`` names them)."""
    if columns is None:
        return "x", "y", ERR_NAMES
    ckey = key.rsplit(".", 1)[0] + ".columns"
    if not all(isinstance(c, str) for c in columns):
        raise UserError(f"{ckey}: {path} stores named arrays; column indices {list(columns)} do not apply",
                        f"name the arrays, e.g. {ckey}=[x,y] or [x,y,err]")
    return columns[0], columns[1], tuple(columns[2:])


def _read_npz(path: Path, key: str, columns) -> Curve:
    xn, yn, en = _array_names(columns, path, key)
    try:
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            if xn not in names or yn not in names:
                raise UserError(f"{key}: target file {path} has arrays {names} but needs arrays named {xn} and {yn}",
                                f"save it with np.savez(path, {xn}=x, {yn}=y), or name its arrays in "
                                f"{key.rsplit('.', 1)[0]}.columns")
            err = next((np.asarray(data[e]) for e in en if e in names), None)
            if columns is not None and en and err is None:
                raise UserError(f"{key}: target file {path} has no array {en[0]!r} (arrays: {names})",
                                "name an existing error array in columns, or give only x and y")
            return Curve(np.asarray(data[xn]), np.asarray(data[yn]), err)
    except UserError:
        raise
    except Exception as exc:   # not a zip, truncated archive, pickled objects, ...
        detail = str(exc).split(". ")[0][:120]
        raise UserError(f"{key}: target file {path} is not a readable .npz archive of arrays "
                        f"({type(exc).__name__}: {detail})", "save it with np.savez(path, x=x, y=y)") from None


def _read_h5(path: Path, key: str, group: str | None, columns) -> Curve:
    import h5py  # optional heavy dependency, only for .h5 targets

    xn, yn, en = _array_names(columns, path, key)
    try:
        with h5py.File(path, "r") as f:
            g = f[group] if group and group in f and isinstance(f[group], h5py.Group) else f
            missing = [k for k in (xn, yn) if k not in g or not isinstance(g[k], h5py.Dataset)]
            if missing:
                raise UserError(f"{key}: target file {path} has no dataset(s) {missing} in {g.name} "
                                f"(found {sorted(g.keys())})",
                                f"write datasets {xn} and {yn} at the root or in a group named {group!r}")
            err = next((np.asarray(g[e][()]) for e in en if e in g and isinstance(g[e], h5py.Dataset)), None)
            if columns is not None and en and err is None:
                raise UserError(f"{key}: target file {path} has no dataset {en[0]!r} in {g.name}",
                                "name an existing error dataset in columns, or give only x and y")
            return Curve(np.asarray(g[xn][()]), np.asarray(g[yn][()]), err)
    except UserError:
        raise
    except Exception as exc:   # not HDF5 (no signature), truncated, unreadable
        raise UserError(f"{key}: target file {path} is not a readable HDF5 file ({type(exc).__name__}: "
                        f"{str(exc)[:120]})",
                        "write it with h5py (datasets x and y), or use a text/npz file") from None


def _checked_arrays(c: Curve, path: Path, key: str) -> Curve:
    """The arrays of an npz/h5 curve as 1-D float arrays (UserError otherwise)."""
    try:
        x, y = np.asarray(c.x, float), np.asarray(c.y, float)
        err = None if c.err is None else np.asarray(c.err, float)
    except (TypeError, ValueError):
        raise UserError(f"{key}: arrays x and y in {path} are not numeric", FORMAT_FIX) from None
    if x.ndim != 1 or y.ndim != 1 or (err is not None and err.ndim != 1):
        raise UserError(f"{key}: arrays x and y in {path} must be 1-D (got shapes {x.shape} and {y.shape}"
                        + ("" if err is None else f", error {err.shape}") + ")",
                        "store one x array and one y array of the same length")
    if err is not None and err.shape != y.shape:
        raise UserError(f"{key}: the error array in {path} has {err.size} values, y has {y.size}",
                        "give one standard error per y value")
    return Curve(x, y, err)


def read_curve(path: Path, key: str, group: str | None = None, columns=None) -> Curve:
    """x, y and the standard error (if any) of a target file, checked: numeric, 1-D, same
    length, finite, at least two points. ``columns``: the checked ``targets.X.columns`` list
    (names or indices of x, y[, error]) or None. Every problem is a UserError naming ``key``."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            c = _checked_arrays(_read_npz(path, key, columns), path, key)
        elif suffix in (".h5", ".hdf5"):
            c = _checked_arrays(_read_h5(path, key, group, columns), path, key)
        else:
            c = _read_text(path, key, columns)
    except OSError as exc:
        raise UserError(f"{key}: cannot read target file {path}: {exc.strerror or exc}",
                        "check that the file is readable") from None
    x, y = c.x, c.y
    if x.shape != y.shape:
        raise UserError(f"{key}: x and y in {path} differ in length ({x.size} and {y.size})", "give one y per x")
    if x.size == 0:
        raise UserError(f"{key}: target file {path} is empty", "write two columns: x y")
    if x.size < 2:
        raise UserError(f"{key}: target file {path} has a single point; a curve needs at least two",
                        "supply the whole curve over the observable's range")
    ok = np.isfinite(x) & np.isfinite(y)   # the error column is checked where it is used (weights)
    if not np.all(ok):
        raise UserError(f"{key}: target file {path} contains NaN or infinite values (data row {int(np.argmax(~ok)) + 1})",
                        "remove or fix those rows")
    return c


def read_xy(path: Path, key: str, group: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """x and y of a target file (:func:`read_curve` with the default columns)."""
    c = read_curve(path, key, group)
    return c.x, c.y
