"""Small checks shared by the config builders: numbers, ranges, choices, input files.

Every failure is a :class:`UserError` whose message names the dotted config key (or the file)
and whose fix says what to set. No JAX here: these run before anything is compiled.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _interval(lo, hi, lo_open, hi_open) -> str:
    lo, hi = (v if v is None or not float(v).is_integer() else int(v) for v in (lo, hi))
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


def number(cfg, key: str, *, prefix: str, integer: bool = False, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False, required: bool = True, default=None, example: str = "1"):
    """``cfg[key]`` as an int or float within the bounds, else a UserError naming ``prefix.key``.

    A missing or null key gives ``default`` unless ``required``.
    """
    dotted = f"{prefix}.{key}" if prefix else key
    v = cfg.get(key) if isinstance(cfg, Mapping) else None
    if v is None:
        if required:
            raise UserError(f"{dotted} is missing", f"set {dotted}={example}")
        return default
    kind = "an integer" if integer else "a number"
    bounds = _interval(lo, hi, lo_open, hi_open)
    want = f"{kind} {bounds}".strip()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserError(f"{dotted} must be {want}, got {v!r}", f"set {dotted}={example}")
    if not math.isfinite(float(v)):
        raise UserError(f"{dotted} must be finite, got {v!r}", f"set {dotted}={example}")
    if integer and not float(v).is_integer():
        raise UserError(f"{dotted} must be {want}, got {v!r}", f"set {dotted}={example}")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi))):
        raise UserError(f"{dotted} must be {want}, got {v!r}", f"set {dotted}={example}")
    return int(v) if integer else float(v)


def choice(cfg, key: str, options, *, prefix: str, default=None, what: str = "value"):
    """``cfg[key]`` if it is one of ``options`` (missing: ``default``), else a UserError."""
    dotted = f"{prefix}.{key}" if prefix else key
    v = cfg.get(key, default) if isinstance(cfg, Mapping) else default
    if v not in options:
        raise UserError(f"{dotted}: unknown {what} {v!r}", f"use one of {', '.join(map(str, options))} "
                                                          f"(e.g. {dotted}={next(iter(options))})")
    return v


def mapping(value, dotted: str, example: str):
    """A config sub-tree that must be a mapping (``{kind: ..., ...}``)."""
    if not isinstance(value, Mapping):
        raise UserError(f"{dotted} must be a group of keys, got {value!r}", f"write it as {example}")
    return value


def int_list(cfg, key: str, *, prefix: str, lo: int = 1, example: str = "[32, 32]") -> tuple[int, ...]:
    """A list of integers >= ``lo`` (e.g. hidden layer sizes)."""
    dotted = f"{prefix}.{key}"
    v = cfg.get(key)
    if v is None or isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        raise UserError(f"{dotted} must be a list of integers >= {lo}, got {v!r}", f"set {dotted}={example}")
    out = []
    for item in v:
        if isinstance(item, bool) or not isinstance(item, int) or item < lo:
            raise UserError(f"{dotted} must be a list of integers >= {lo}, got {list(v)!r}", f"set {dotted}={example}")
        out.append(int(item))
    return tuple(out)


def input_file(path, key: str, *, what: str = "file", example: str = "/path/to/file", make: str | None = None) -> Path:
    """Resolve a path named by config key ``key``: relative paths are looked up in the working
    directory, then in the project root. The result is an existing, non-empty regular file.
    ``make``: the command that creates a missing file (the fix then names it)."""
    p = Path(str(path)).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, PROJECT_ROOT / p]
    for c in candidates:
        if c.is_dir():
            raise UserError(f"{key}: {str(path)!r} is a directory, not a {what}",
                            f"name a file inside it, e.g. {key}={c / 'NAME'}")
        if c.exists():
            if not c.is_file():
                raise UserError(f"{key}: {str(path)!r} is not a regular file", f"give a regular file, e.g. {key}={example}")
            try:
                with open(c, "rb") as fh:
                    head = fh.read(1 << 16)
            except OSError as exc:
                raise UserError(f"{key}: cannot open {what} {c}: {exc.strerror or exc}",
                                "check the file's permissions") from None
            if not head.strip():
                raise UserError(f"{key}: {what} {c} is empty", f"give a file with data, e.g. {key}={example}")
            return c
    raise UserError(f"{key}: {what} {str(path)!r} not found (looked in {', '.join(str(c.parent) for c in candidates)})",
                    f"make it first: {make}" if make else f"give an existing file, e.g. {key}={example}")
