"""Target data: load files with declared units and put them on the observable's grid, or take
scalar values with a unit.

Gridded targets (e.g. an RDF) come from files (formats and ``columns``: :mod:`.target_files`).
The x column is converted with ``x_unit`` and linearly interpolated onto the grid; the grid
must lie within the file's x range (half a bin of slack). Per target, besides ``file``,
``x_unit``, ``gamma`` and ``observable``:

- ``columns``: x, y[, standard error] by header name or 0-based index (default: 0, 1[, 2]);
- ``weight``: ``uniform`` (default) or ``inverse_variance``: per-point weights 1/σ² of the
  standard error on the grid, normalised to mean 1 so that ``gamma`` keeps its meaning;
- ``histogram``: true when the file is an unsmoothed histogram (LAMMPS ``compute rdf``, an
  experiment), false (default) when it was smoothed like the observable (e.g. made by difftre);
- ``smooth``: ``auto`` (default: the observable's own Gaussian kernel is applied to the target
  when ``histogram`` is true), ``none``, or a width σ in ``x_unit`` (applied whatever
  ``histogram`` says). Only observables with a smoothing kernel (rdf) accept it.

The loss of a target is γ · mean_b w_b (pred_b − target_b)² (:meth:`Target.loss`), the one
used by every learner.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import surfaces, units
from .checks import input_file, mapping, number
from .errors import UserError
from .target_files import Curve, read_curve

#: keys of a target read from a file, and of a target given as a value
FILE_KEYS = ("file", "x_unit", "gamma", "observable", "columns", "weight", "smooth", "histogram")
VALUE_KEYS = ("value", "unit", "gamma", "observable")
WEIGHTS = ("uniform", "inverse_variance")


@dataclass(frozen=True)
class Target:
    name: str
    observable: str
    value: np.ndarray      # on the observable's grid (or a scalar), internal units
    gamma: float
    source: str
    weight: np.ndarray | None = None   # per-point loss weights on the grid, mean 1; None: uniform
    error: np.ndarray | None = None    # standard error of value on the grid, if the file gave one

    def loss(self, pred, xp=np, dtype=None):
        """γ · mean(w · (pred − value)²): the loss of this target, written once for every
        learner. ``xp``: the array module of ``pred`` (numpy or jax.numpy); ``dtype``: that of
        the target's arrays (None: ``xp``'s default)."""
        sq = (pred - xp.asarray(self.value, dtype)) ** 2
        if self.weight is not None:
            sq = sq * xp.asarray(self.weight, sq.dtype)
        return self.gamma * xp.mean(sq)

    def residuals(self, pred, xp=np, dtype=None):
        """√(γ w / n) · (pred − value), so that Σ residuals² = :meth:`loss` (the Gauss–Newton
        step, learn/gauss_newton.py)."""
        res = (pred - xp.asarray(self.value, dtype)) * float(np.sqrt(self.gamma))
        if self.weight is not None:
            res = res * xp.sqrt(xp.asarray(self.weight, res.dtype))
        return res / float(np.sqrt(max(int(np.size(res)), 1)))


def resolve_path(path: str, key: str) -> Path:
    """A relative path is looked up in the working directory, then in the project root; the
    result is an existing, non-empty regular file (else a UserError naming ``key``)."""
    return input_file(path, key, what="target file", example="/path/to/target.txt")


def on_grid(x, y, grid, key: str, path) -> np.ndarray:
    order = np.argsort(x)
    x, y = x[order], y[order]
    half = 0.5 * (grid[1] - grid[0]) if len(grid) > 1 else 0.0
    if x[0] > grid[0] + half + 1e-9 or x[-1] < grid[-1] - half - 1e-9:
        raise UserError(f"{key}: target file {path} covers x in [{x[0]:.4g}, {x[-1]:.4g}] but the observable "
                        f"grid needs [{grid[0]:.4g}, {grid[-1]:.4g}]",
                        "supply data over the whole range, or shrink the observable's r_min/r_max")
    return np.interp(grid, x, y)


def _check_keys(t, key: str, known: tuple, what: str) -> None:
    unknown = sorted(str(k) for k in t if k not in known)
    if unknown:
        raise UserError(f"{key}: unknown key(s) {', '.join(unknown)} (no {what} reads them)",
                        f"remove them; the keys of {what} are {', '.join(known)}")


def columns_option(t, key: str) -> list | None:
    """``targets.X.columns``: two or three header names or 0-based indices (x, y[, error]), or None."""
    cols = t.get("columns")
    if cols is None:
        return None
    ckey = f"{key}.columns"
    ok = (isinstance(cols, Sequence) and not isinstance(cols, (str, bytes)) and len(cols) in (2, 3)
          and all(isinstance(c, str) and c or (isinstance(c, int) and not isinstance(c, bool) and c >= 0)
                  for c in cols))
    if not ok:
        raise UserError(f"{ckey} must be two or three column names or 0-based indices (x, y[, error]), "
                        f"got {cols!r}", f"set e.g. {ckey}=[r,g] or {ckey}=[0,1,2]")
    if len(set(cols)) != len(cols):
        raise UserError(f"{ckey} names a column twice: {list(cols)!r}", f"pick distinct columns, e.g. {ckey}=[0,1]")
    return list(cols)


def smoothing_option(t, key: str, obs, obs_name: str, x_factor: float) -> float | None:
    """The Gaussian width (internal units) to apply to a file target, None for none, from
    ``histogram`` and ``smooth`` (see the module docstring)."""
    hist = t.get("histogram", False)
    if not isinstance(hist, bool):
        raise UserError(f"{key}.histogram must be true or false, got {hist!r}",
                        f"set {key}.histogram=true for an unsmoothed histogram (e.g. LAMMPS compute rdf), else false")
    smooth = t.get("smooth", "auto")
    smooth = "auto" if smooth is None else smooth
    is_num = isinstance(smooth, (int, float)) and not isinstance(smooth, bool)
    if not (smooth in ("auto", "none") or (is_num and np.isfinite(smooth) and smooth > 0)):
        raise UserError(f"{key}.smooth must be auto, none or a width > 0 (in x_unit), got {smooth!r}",
                        f"set {key}.smooth=auto (the observable's kernel on histogram targets), none, or e.g. 0.02")
    if smooth == "none" or (smooth == "auto" and not hist):
        return None
    width = obs.kernel_width
    if width is None:
        why = f"{key}.histogram=true" if smooth == "auto" else f"{key}.smooth={smooth}"
        raise UserError(f"{why}: the observable {obs_name!r} applies no smoothing kernel that the target could be "
                        "given (targets can be smoothed for rdf observables)",
                        f"set {key}.smooth=none (and {key}.histogram=false)")
    return float(width) if smooth == "auto" else float(smooth) * x_factor


def inverse_variance(err, grid, x_factor: float, x_unit, key: str, path) -> np.ndarray:
    """Weights 1/σ² on the grid normalised to mean 1; σ ≤ 0 or missing (NaN) is a UserError
    saying where."""
    bad = ~(np.isfinite(err) & (err > 0))
    if np.any(bad):
        where = grid[bad] / x_factor
        raise UserError(f"{key}.weight=inverse_variance: the standard error in {path} is zero, negative or missing "
                        f"at {int(bad.sum())} of the {len(grid)} grid points (the first at x = {where[0]:.4g}, "
                        f"the last at x = {where[-1]:.4g} {x_unit})",
                        "give every point a positive standard error (an RDF's core, where g = 0, has none: start the "
                        f"observable's grid beyond it, r_min), or set {key}.weight=uniform")
    w = 1.0 / err ** 2
    return w / w.mean()


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
        if obs.grid is None:
            _check_keys(t, key, VALUE_KEYS, f"a target of the {'vector' if obs.components else 'scalar'} "
                                            f"observable {obs_name!r}")
        if obs.grid is None and obs.components:
            out[name] = _vector_target(name, obs_name, obs, t, key, gamma, unit_system)
        elif obs.grid is None:
            out[name] = _scalar_target(name, obs_name, obs, t, key, gamma, unit_system)
        else:
            _check_keys(t, key, FILE_KEYS, f"a target of the gridded observable {obs_name!r}")
            out[name] = _file_target(name, obs_name, obs, t, key, gamma, unit_system)
    if not out:
        raise UserError("no targets configured", "select a targets group, e.g. targets=lj_rdf")
    return out


def _scalar_target(name, obs_name, obs, t, key: str, gamma: float, unit_system) -> Target:
    """A scalar target: ``value`` in ``unit`` (pressure and energy units are converted)."""
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
    return Target(name, obs_name, np.asarray(value * factor), gamma, f"value {value} {unit}")


def _x_factor(obs, x_unit, key: str, unit_system) -> float:
    """Factor from the file's x unit to the observable's internal unit (UserError naming x_unit)."""
    if x_unit is None:
        raise UserError(f"{key}.x_unit is not set", f"declare the unit of the file's x column, e.g. {key}.x_unit=sigma")
    try:
        if obs.unit_kind == "angle":
            return units.angle_factor(x_unit)
        if obs.unit_kind == "inverse_length":   # wave numbers k: x_unit 1/sigma, 1/nm, 1/angstrom
            if not str(x_unit).startswith("1/"):
                raise UserError(f"wave numbers need an inverse length unit, got {x_unit!r}",
                                f"declare e.g. {key}.x_unit=1/" + ("sigma" if unit_system.name == "lj" else "nm"))
            return 1.0 / units.length_factor(str(x_unit)[2:], unit_system)
        return units.length_factor(x_unit, unit_system)
    except UserError as exc:  # name the key, as every config error does
        raise UserError(f"{key}.x_unit={x_unit!r}: {str(exc).split(chr(10))[0]}", exc.fix) from None


def _file_target(name, obs_name, obs, t, key: str, gamma: float, unit_system) -> Target:
    """A gridded target from a file: read, x converted, optionally smoothed with the
    observable's kernel on the file's own range, interpolated onto the grid, weighted."""
    if surfaces.is_surface(obs.grid):
        return _surface_target(name, obs_name, obs, t, key, gamma, unit_system)
    if not t.get("file"):
        raise UserError(f"{key}.file is not set", f"set {key}.file=PATH (two columns x y)")
    x_unit = t.get("x_unit")
    factor = _x_factor(obs, x_unit, key, unit_system)
    columns = columns_option(t, key)
    weight = _weight_option(t, key)
    sigma = smoothing_option(t, key, obs, obs_name, factor)
    path = resolve_path(t["file"], f"{key}.file")
    c: Curve = read_curve(path, f"{key}.file", group=name, columns=columns)
    if weight == "inverse_variance" and c.err is None:
        raise UserError(f"{key}.weight=inverse_variance needs the standard error of y, and {path} has no error "
                        "column (array err / y_err)",
                        f"add a third column (standard error) and name it in {key}.columns, or set "
                        f"{key}.weight=uniform")
    x = c.x * factor
    xs, ys = (x, c.y) if sigma is None else obs.smooth_target(np.sort(x), c.y[np.argsort(x)], sigma)
    value = on_grid(xs, ys, obs.grid, f"{key}.file", path)
    err = None if c.err is None else on_grid(x, c.err, obs.grid, f"{key}.file", path)
    w = None if weight == "uniform" else inverse_variance(err, obs.grid, factor, x_unit, key, path)
    source = str(path) if sigma is None else f"{path} (smoothed, σ = {sigma:.4g})"
    return Target(name, obs_name, value, gamma, source, weight=w, error=err)


def _weight_option(t, key: str) -> str:
    """``targets.X.weight``: uniform (default) or inverse_variance."""
    weight = t.get("weight", "uniform")
    if weight not in WEIGHTS:
        raise UserError(f"{key}.weight: unknown weighting {weight!r}",
                        f"use one of {', '.join(WEIGHTS)} (e.g. {key}.weight=uniform)")
    return weight


def _surface_target(name, obs_name, obs, t, key: str, gamma: float, unit_system) -> Target:
    """A target of a 2-D observable (phi_psi) from a table x1 x2 y [error] (surfaces.py), put
    on the observable's (x1, x2) grid by periodic bilinear interpolation; no smoothing."""
    if not t.get("file"):
        raise UserError(f"{key}.file is not set", f"set {key}.file=PATH (columns x1 x2 y [error])")
    factor = _x_factor(obs, t.get("x_unit"), key, unit_system)
    weight = _weight_option(t, key)
    smoothing_option(t, key, obs, obs_name, factor)     # a UserError for histogram / smooth: no 2-D kernel
    path = resolve_path(t["file"], f"{key}.file")
    s = surfaces.read_surface(path, f"{key}.file", surfaces.columns_option(t, key))
    xy = s.xy * factor
    value = surfaces.on_periodic_grid(xy, s.y, obs.grid, f"{key}.file", path)
    err = None if s.err is None else surfaces.on_periodic_grid(xy, s.err, obs.grid, f"{key}.file", path)
    w = None
    if weight == "inverse_variance":
        if err is None or not np.all(np.isfinite(err) & (err > 0)):
            raise UserError(f"{key}.weight=inverse_variance needs a positive standard error at every point, and "
                            f"{path} has " + ("no error column" if err is None else "zero, negative or missing ones"),
                            f"give a fourth column (standard error) or set {key}.weight=uniform")
        w = 1.0 / err ** 2
        w = w / w.mean()
    return Target(name, obs_name, value, gamma, str(path), weight=w, error=err)


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
    if obs.unit_kind == "dimensionless":   # fractions (basin populations): no unit to convert
        if unit not in (None, "1"):
            raise UserError(f"{key}.unit={unit!r}: the {obs_name!r} components are dimensionless",
                            f"remove {key}.unit (or set it to 1)")
        factor = 1.0
    elif unit is None:
        raise UserError(f"{key}.unit is not set for the {obs.unit_kind} target {name!r}", f"declare it, e.g. {key}.unit=GPa")
    else:
        try:
            factor = units.stress_factor(unit, unit_system)
        except UserError as exc:
            raise UserError(f"{key}.unit={unit!r}: {str(exc).split(chr(10))[0]}", exc.fix) from None
    vals = np.asarray(raw, float)
    return Target(name, obs_name, vals * factor, gamma,
                  f"{dict(zip(comps, vals.tolist())) if len(set(raw)) > 1 else raw[0]} {unit}")
