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
from .errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    name: str
    observable: str
    value: np.ndarray      # on the observable's grid (or a scalar), internal units
    gamma: float
    source: str


def resolve_path(path: str, key: str) -> Path:
    """A relative path is looked up in the working directory, then in the project root."""
    p = Path(str(path)).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, PROJECT_ROOT / p]
    for c in candidates:
        if c.is_file():
            return c
    raise UserError(f"{key}: target file {str(path)!r} not found (looked in {', '.join(str(c.parent) for c in candidates)})",
                    f"give an existing file, e.g. {key}=/path/to/target.txt")


def read_xy(path: Path, key: str, group: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path) as data:
                x, y = np.asarray(data["x"], float), np.asarray(data["y"], float)
        elif suffix in (".h5", ".hdf5"):
            import h5py
            with h5py.File(path, "r") as f:
                g = f[group] if group and group in f else f
                x, y = np.asarray(g["x"], float), np.asarray(g["y"], float)
        else:
            text = path.read_text()
            rows = [ln.split("#")[0].replace(",", " ").split() for ln in text.splitlines()]
            rows = [r for r in rows if r]
            if not rows:
                raise UserError(f"{key}: target file {path} is empty", "write two columns: x y")
            try:
                data = np.array([[float(v) for v in r[:2]] for r in rows])
            except ValueError:
                bad = next(r for r in rows if not all(_is_float(v) for v in r[:2]))
                raise UserError(f"{key}: target file {path} has a non-numeric line: {' '.join(bad)!r}",
                                "keep only numeric x y columns (comments start with #)") from None
            if data.ndim != 2 or data.shape[1] != 2 or any(len(r) < 2 for r in rows):
                raise UserError(f"{key}: target file {path} needs two columns (x y)", "write x and y per line")
            x, y = data[:, 0], data[:, 1]
    except UserError:
        raise
    except (KeyError, OSError, ValueError) as exc:
        raise UserError(f"{key}: cannot read target file {path}: {exc}",
                        "use a two-column text/csv file, or npz/h5 with arrays x and y") from None
    if x.size == 0:
        raise UserError(f"{key}: target file {path} is empty", "write two columns: x y")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise UserError(f"{key}: target file {path} contains NaN or infinite values", "remove or fix those rows")
    if x.shape != y.shape:
        raise UserError(f"{key}: x and y in {path} differ in length", "give one y per x")
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
        obs_name = t.get("observable", name)
        if obs_name not in observables:
            raise UserError(f"{key}: no observable named {obs_name!r}",
                            f"add it to the observables group or set {key}.observable to one of {sorted(observables)}")
        obs = observables[obs_name]
        gamma = float(t.get("gamma", 1.0))
        if not np.isfinite(gamma) or gamma < 0:
            raise UserError(f"{key}.gamma must be a finite number >= 0 (got {gamma})", f"set {key}.gamma=1.0")
        if obs.grid is None:
            if t.get("value") is None:
                raise UserError(f"{key}.value is missing for scalar observable {obs_name!r}", f"set {key}.value=...")
            factor = units.pressure_factor(t.get("unit", "reduced"), unit_system) if obs.unit_kind == "pressure" else 1.0
            out[name] = Target(name, obs_name, np.asarray(float(t["value"]) * factor), gamma, f"value {t['value']}")
            continue
        if not t.get("file"):
            raise UserError(f"{key}.file is not set", f"set {key}.file=PATH (two columns x y)")
        path = resolve_path(t["file"], f"{key}.file")
        x, y = read_xy(path, f"{key}.file", group=name)
        x_unit = t.get("x_unit")
        if x_unit is None:
            raise UserError(f"{key}.x_unit is not set", f"declare the unit of the file's x column, e.g. {key}.x_unit=sigma")
        try:
            factor = units.angle_factor(x_unit) if obs.unit_kind == "angle" else units.length_factor(x_unit, unit_system)
        except UserError as exc:  # name the key, as every config error does
            raise UserError(f"{key}.x_unit={x_unit!r}: {str(exc).split(chr(10))[0]}", exc.fix) from None
        out[name] = Target(name, obs_name, on_grid(x * factor, y, obs.grid, f"{key}.file", path), gamma, str(path))
    if not out:
        raise UserError("no targets configured", "select a targets group, e.g. targets=lj_rdf")
    return out
