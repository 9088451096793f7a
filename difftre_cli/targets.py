"""Target data: load files (txt/csv/npz/h5) with declared units and put them on the
observable's grid, or take scalar values with a unit.

File formats for gridded targets (e.g. an RDF):
- ``.txt``/``.dat``/``.csv``: two columns x, y separated by white space or commas; ``#`` comments;
- ``.npz``: arrays ``x`` and ``y``;
- ``.h5``/``.hdf5``: datasets ``x`` and ``y`` (at the root or in a group named after the target).
The x column is converted with ``x_unit`` and linearly interpolated onto the grid; the grid
must lie within the file's x range (half a bin of slack).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import units
from .checks import input_file, mapping, number
from .errors import UserError


@dataclass(frozen=True)
class Target:
    name: str
    observable: str
    value: np.ndarray      # on the observable's grid (or a scalar), internal units
    gamma: float
    source: str


def resolve_path(path: str, key: str) -> Path:
    """A relative path is looked up in the working directory, then in the project root; the
    result is an existing, non-empty regular file (else a UserError naming ``key``)."""
    return input_file(path, key, what="target file", example="/path/to/target.txt")


_FORMAT_FIX = "use a two-column text/csv file (x y), or .npz/.h5 with 1-D arrays x and y"


def _read_text(path: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{key}: target file {path} is not a text file (binary content)",
                        f"{_FORMAT_FIX}; binary files need the extension .npz or .h5") from None
    rows, numbers = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("#")[0].replace(",", " ").split()
        if fields:
            rows.append((lineno, fields))
    if not rows:
        raise UserError(f"{key}: target file {path} is empty (no data lines)", "write two columns: x y")
    width = len(rows[0][1])
    for lineno, fields in rows:
        if not all(_is_float(v) for v in fields):
            raise UserError(f"{key}: target file {path} has a non-numeric line {lineno}: {' '.join(fields)!r}",
                            "keep only numeric x y columns (comments start with #)")
        if len(fields) < 2:
            raise UserError(f"{key}: target file {path} line {lineno} has {len(fields)} value; two columns (x y) "
                            "are needed" + (" (the file looks truncated)" if width >= 2 else ""),
                            "write x and y on every line; re-export the file if it was cut off")
        if len(fields) != width:
            raise UserError(f"{key}: target file {path} has ragged rows: line {lineno} has {len(fields)} values, "
                            f"the first data line {width}",
                            "give every line the same columns (x y); re-export the file if it was cut off")
        numbers.append([float(v) for v in fields[:2]])
    data = np.asarray(numbers, float)
    return data[:, 0], data[:, 1]


def _read_arrays(path: Path, key: str, group: str | None) -> tuple[np.ndarray, np.ndarray]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                names = list(data.files)
                if "x" not in names or "y" not in names:
                    raise UserError(f"{key}: target file {path} has arrays {names} but needs arrays named x and y",
                                    "save it with np.savez(path, x=x, y=y)")
                return np.asarray(data["x"]), np.asarray(data["y"])
        except UserError:
            raise
        except Exception as exc:   # not a zip, truncated archive, pickled objects, ...
            detail = str(exc).split(". ")[0][:120]
            raise UserError(f"{key}: target file {path} is not a readable .npz archive of arrays "
                            f"({type(exc).__name__}: {detail})", "save it with np.savez(path, x=x, y=y)") from None
    import h5py
    try:
        with h5py.File(path, "r") as f:
            g = f[group] if group and group in f and isinstance(f[group], h5py.Group) else f
            missing = [k for k in ("x", "y") if k not in g or not isinstance(g[k], h5py.Dataset)]
            if missing:
                raise UserError(f"{key}: target file {path} has no dataset(s) {missing} in {g.name} "
                                f"(found {sorted(g.keys())})",
                                f"write datasets x and y at the root or in a group named {group!r}")
            return np.asarray(g["x"][()]), np.asarray(g["y"][()])
    except UserError:
        raise
    except Exception as exc:   # not HDF5 (no signature), truncated, unreadable
        raise UserError(f"{key}: target file {path} is not a readable HDF5 file ({type(exc).__name__}: "
                        f"{str(exc)[:120]})",
                        "write it with h5py (datasets x and y), or use a text/npz file") from None


def read_xy(path: Path, key: str, group: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """x and y from a target file (text/csv, .npz, .h5), checked: numeric, 1-D, same length,
    finite, not empty. Every problem is a UserError naming ``key`` and the file."""
    if path.suffix.lower() in (".npz", ".h5", ".hdf5"):
        x, y = _read_arrays(path, key, group)
        try:
            x, y = np.asarray(x, float), np.asarray(y, float)
        except (TypeError, ValueError):
            raise UserError(f"{key}: arrays x and y in {path} are not numeric", _FORMAT_FIX) from None
        if x.ndim != 1 or y.ndim != 1:
            raise UserError(f"{key}: arrays x and y in {path} must be 1-D (got shapes {x.shape} and {y.shape})",
                            "store one x array and one y array of the same length")
    else:
        try:
            x, y = _read_text(path, key)
        except OSError as exc:
            raise UserError(f"{key}: cannot read target file {path}: {exc.strerror or exc}",
                            "check that the file is readable") from None
    if x.shape != y.shape:
        raise UserError(f"{key}: x and y in {path} differ in length ({x.size} and {y.size})", "give one y per x")
    if x.size == 0:
        raise UserError(f"{key}: target file {path} is empty", "write two columns: x y")
    if x.size < 2:
        raise UserError(f"{key}: target file {path} has a single point; a curve needs at least two",
                        "supply the whole curve over the observable's range")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        row = int(np.argmax(~(np.isfinite(x) & np.isfinite(y))))
        raise UserError(f"{key}: target file {path} contains NaN or infinite values (data row {row + 1})",
                        "remove or fix those rows")
    return x, y


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def on_grid(x, y, grid, key: str, path) -> np.ndarray:
    order = np.argsort(x)
    x, y = x[order], y[order]
    half = 0.5 * (grid[1] - grid[0]) if len(grid) > 1 else 0.0
    if x[0] > grid[0] + half + 1e-9 or x[-1] < grid[-1] - half - 1e-9:
        raise UserError(f"{key}: target file {path} covers x in [{x[0]:.4g}, {x[-1]:.4g}] but the observable "
                        f"grid needs [{grid[0]:.4g}, {grid[-1]:.4g}]",
                        "supply data over the whole range, or shrink the observable's r_min/r_max")
    return np.interp(grid, x, y)


def build(cfg, observables: dict, unit_system) -> dict[str, Target]:
    out = {}
    for name, t in (cfg or {}).items():
        key = f"targets.{name}"
        mapping(t, key, f"{key}={{file: PATH, x_unit: sigma, gamma: 1.0}}")
        obs_name = t.get("observable", name)
        if obs_name not in observables:
            raise UserError(f"{key}: no observable named {obs_name!r} is configured (observables: "
                            f"{sorted(observables)})",
                            f"add it to the observables group or set {key}.observable to one of {sorted(observables)}")
        obs = observables[obs_name]
        gamma = number(t, "gamma", prefix=key, lo=0.0, required=False, default=1.0, example="1.0")
        if obs.grid is None and obs.components:
            out[name] = _vector_target(name, obs_name, obs, t, key, gamma, unit_system)
            continue
        if obs.grid is None:
            value = number(t, "value", prefix=key, example="0.5")
            unit = t.get("unit")
            if unit is None:
                raise UserError(f"{key}.unit is not set for the scalar {obs.unit_kind} target {name!r}",
                                f"declare the unit of {key}.value, e.g. {key}.unit="
                                + ("reduced" if unit_system.name == "lj" else
                                   "bar" if obs.unit_kind == "pressure" else "kJ/mol"))
            try:
                if obs.unit_kind == "pressure":
                    factor = units.pressure_factor(unit, unit_system)
                elif obs.unit_kind == "energy":
                    factor = units.energy_factor(unit, unit_system)
                else:
                    factor = 1.0
            except UserError as exc:  # name the key, as every config error does
                raise UserError(f"{key}.unit={unit!r}: {str(exc).split(chr(10))[0]}", exc.fix) from None
            out[name] = Target(name, obs_name, np.asarray(value * factor), gamma, f"value {value} {unit}")
            continue
        if not t.get("file"):
            raise UserError(f"{key}.file is not set", f"set {key}.file=PATH (two columns x y)")
        x_unit = t.get("x_unit")
        if x_unit is None:
            raise UserError(f"{key}.x_unit is not set", f"declare the unit of the file's x column, e.g. {key}.x_unit=sigma")
        try:
            if obs.unit_kind == "angle":
                factor = units.angle_factor(x_unit)
            elif obs.unit_kind == "inverse_length":   # wave numbers k: x_unit 1/sigma, 1/nm, 1/angstrom
                if not str(x_unit).startswith("1/"):
                    raise UserError(f"wave numbers need an inverse length unit, got {x_unit!r}",
                                    f"declare e.g. {key}.x_unit=1/" + ("sigma" if unit_system.name == "lj" else "nm"))
                factor = 1.0 / units.length_factor(str(x_unit)[2:], unit_system)
            else:
                factor = units.length_factor(x_unit, unit_system)
        except UserError as exc:  # name the key, as every config error does
            raise UserError(f"{key}.x_unit={x_unit!r}: {str(exc).split(chr(10))[0]}", exc.fix) from None
        path = resolve_path(t["file"], f"{key}.file")
        x, y = read_xy(path, f"{key}.file", group=name)
        out[name] = Target(name, obs_name, on_grid(x * factor, y, obs.grid, f"{key}.file", path), gamma, str(path))
    if not out:
        raise UserError("no targets configured", "select a targets group, e.g. targets=lj_rdf")
    return out


def _vector_target(name, obs_name, obs, t, key: str, gamma: float, unit_system) -> Target:
    """Target of an observable with named components (stress, stiffness): ``value`` is a mapping
    component → number (every component), a list in the components' order, or one number for all;
    ``unit`` (e.g. GPa) is converted to the internal stress unit."""
    from omegaconf import DictConfig, ListConfig

    comps = tuple(obs.components)
    value, unit = t.get("value"), t.get("unit")
    example = "{" + ", ".join(f"{c}: 0.0" for c in comps[:3]) + (", ...}" if len(comps) > 3 else "}")
    if value is None:
        raise UserError(f"{key}.value is not set", f"set {key}.value={example} (components {list(comps)}) or one number")
    if isinstance(value, (dict, DictConfig)):
        missing = [c for c in comps if c not in value]
        extra = [k for k in value if k not in comps]
        if missing or extra:
            raise UserError(f"{key}.value: components {list(value)} do not match the observable's {list(comps)}",
                            f"give every component once: {key}.value={example}")
        raw = [value[c] for c in comps]
    elif isinstance(value, (list, tuple, ListConfig)):
        if len(value) != len(comps):
            raise UserError(f"{key}.value has {len(value)} numbers, the observable {obs_name!r} has {len(comps)} "
                            f"components {list(comps)}", f"give {len(comps)} numbers or a mapping {example}")
        raw = list(value)
    else:
        raw = [value] * len(comps)
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"{key}.value: {v!r} is not a number", f"set {key}.value={example}")
    if unit is None:
        raise UserError(f"{key}.unit is not set for the {obs.unit_kind} target {name!r}", f"declare it, e.g. {key}.unit=GPa")
    try:
        factor = units.stress_factor(unit, unit_system)
    except UserError as exc:
        raise UserError(f"{key}.unit={unit!r}: {str(exc).split(chr(10))[0]}", exc.fix) from None
    vals = np.asarray(raw, float)
    return Target(name, obs_name, vals * factor, gamma,
                  f"{dict(zip(comps, vals.tolist())) if len(set(raw)) > 1 else raw[0]} {unit}")
