"""Distributions of a molecule's internal coordinates: bond lengths p(r), bond angles p(θ),
dihedral angles p(φ) and the joint distribution p(φ, ψ) of two dihedrals (a Ramachandran map).

Every one is a Gaussian-smoothed histogram of the chosen index tuples' values, evaluated at
bin centres and normalised to unit integral on its grid (Σ_b p_b Δ = 1; in 2-D Σ_ab p_ab Δ² = 1),
differentiable in the positions, θ-independent (``depends_on_params = False``) and without a
neighbour list (``reach = 0``). Values come from :mod:`difftre_cli.molecule.geometry` with
``q["box"]``: None for a molecule in open space, else the cubic box edge (minimum image).

- ``bond_distribution``: p(r) on [r_min, r_max] (length), K_σ(r_b − r_i) summed over the bonds,
  then divided by its sum over the grid (as the ADF is): bonds beyond the window only lose the
  weight that falls outside it; a snapshot without any weight inside gives p = 0.
- ``angle_distribution``: p(θ) on [0, π] (rad), normalised in the same way.
- ``dihedral_distribution``: p(φ) on (−π, π] (rad) with a periodic kernel, the sum over the
  images φ ± 2πk; each dihedral's kernel row is normalised on the grid on its own, so the mass of
  a dihedral near ±π is split between both ends and never lost.
- ``phi_psi``: p(φ, ψ) of one dihedral pair, the product of the two periodic kernel rows of the
  dihedral distribution: its marginals are the 1-D dihedral distributions of φ and ψ exactly.

Index tuples are 0-based bead indices: ``bonds``/``angles``/``dihedrals`` are ``all`` (every one
of the topology, ``Context.topology``; default) or a list of pairs / triples / quadruples.

The 2-D observable in the protocol (observables/__init__.py): its value is the flattened
n_bins × n_bins matrix, entry a·n_bins + b = p(φ_a, ψ_b), and its ``grid`` the (n_bins², 2) array
of the matching (φ_a, ψ_b) pairs (``symbols`` phi, psi, p). Everything that treats a value as a
vector works unchanged: reweighting averages it, a target's loss is γ · mean over the n_bins²
points of w (p − p_target)², i.e. the weighted MSE of the densities. What reads a grid as 1-D
branches on ``np.ndim(grid) == 2`` (surfaces.is_surface): target files are tables with columns
phi, psi, p[, standard error] (angles in ``x_unit``, rad or deg, as the ADF's), put on the
grid by periodic bilinear interpolation (surfaces.py); ``difftre targets`` writes such a CSV;
``difftre evaluate`` writes curve files with two grid columns and draws −ln p as a heat map.
A flattened vector keeps one code path for losses, reweighting and storage, where a
``components`` vector would have needed n_bins² component names and scalar-style targets.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np

from ..checks import number
from ..errors import UserError
from ..molecule import geometry
from .base import Observable

TWO_PI = 2.0 * math.pi
#: per tuple kind: (arity, topology attribute, what one is called)
TUPLES = {"bonds": (2, "bonds", "bond"), "angles": (3, "angles", "angle"), "dihedrals": (4, "dihedrals", "dihedral")}


def index_tuples(cfg, key: str, arity: int, prefix: str):
    """``cfg[key]``: ``all`` (also when missing or null) or a non-empty list of tuples of ``arity``
    0-based bead indices, as a tuple of tuples. UserError naming ``prefix.key`` otherwise."""
    dotted = f"{prefix}.{key}"
    example = "[" + ",".join(str(k) for k in range(arity)) + "]"
    v = cfg.get(key)
    if v is None or v == "all":
        return "all"
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not v:
        raise UserError(f"{dotted} must be all or a list of lists of {arity} bead indices, got {_plain(v)!r}",
                        f"set {dotted}=all (the topology's) or e.g. {dotted}=[{example}]")
    rows = tuple(_index_row(row, arity) for row in v)
    for row, raw in zip(rows, v):
        if row is None:
            raise UserError(f"{dotted}: {_plain(raw)!r} is not {arity} bead indices (integers >= 0)",
                            f"write each as {example} (0-based bead indices)")
        _distinct(row, dotted)
    return rows


def _distinct(row: tuple, dotted: str) -> None:
    if len(set(row)) != len(row):
        raise UserError(f"{dotted}: {list(row)} names a bead twice", f"give {len(row)} distinct beads in {dotted}")


def one_tuple(cfg, key: str, arity: int, prefix: str) -> tuple:
    """``cfg[key]``: one tuple of ``arity`` 0-based bead indices (required)."""
    dotted = f"{prefix}.{key}"
    row = _index_row(cfg.get(key), arity)
    if row is None:
        raise UserError(f"{dotted} must be {arity} bead indices (integers >= 0), got {_plain(cfg.get(key))!r}",
                        f"set {dotted}=[" + ",".join(str(k) for k in range(arity)) + "]")
    _distinct(row, dotted)
    return row


def _plain(v):
    """A config list as a plain Python list (for messages)."""
    return list(v) if isinstance(v, Sequence) and not isinstance(v, (str, bytes)) else v


def _index_row(row, arity: int):
    """``row`` as a tuple of ``arity`` ints >= 0, or None if it is not one."""
    if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or len(row) != arity:
        return None
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in row):
        return None
    return tuple(int(i) for i in row)


def resolve(obs_name: str, key: str, spec, ctx, n_beads: int, kind: str | None = None) -> np.ndarray:
    """The (K, arity) index array of ``spec`` (``all``: the topology's tuples of ``kind``, from
    ``ctx.topology``), checked: indices below ``n_beads``, no bead twice in a tuple. ``key``:
    the config key errors name (``kind``, bonds/angles/dihedrals, defaults to it)."""
    arity, attr, what = TUPLES[kind or key]
    dotted = f"observables.{obs_name}.{key}"
    if spec == "all":
        topology = getattr(ctx, "topology", None)
        if topology is None:
            raise UserError(f"{dotted}=all needs a topology", f"set topology=... or list the {key}, e.g. "
                            f"{dotted}=[[{','.join(str(k) for k in range(arity))}]]")
        idx = np.asarray(getattr(topology, attr), dtype=np.int64).reshape(-1, arity)
        if len(idx) == 0:
            raise UserError(f"{dotted}=all: the topology has no {what}s", f"list the {key} to use, or drop this observable")
        source = f"{dotted}=all (the topology's {key})"
    else:
        idx, source = np.asarray(spec, dtype=np.int64).reshape(-1, arity), dotted
    bad = idx.max(initial=0) >= n_beads or idx.min(initial=0) < 0
    if bad:
        row = idx[np.argmax(np.any((idx >= n_beads) | (idx < 0), axis=1))].tolist()
        raise UserError(f"{source}: {what} {row} has a bead index out of range for {n_beads} beads (0 to {n_beads - 1})",
                        f"use 0-based indices below {n_beads} in {dotted}")
    repeated = [r.tolist() for r in idx if len(set(r.tolist())) != arity]
    if repeated:
        raise UserError(f"{source}: {what} {repeated[0]} names a bead twice",
                        f"give {arity} distinct beads per {what} in {dotted}")
    return idx


def window_density(values, grid, sigma: float, width: float):
    """p_b = Σ_i K_σ(x_b − v_i) / (Δ Σ_b Σ_i K_σ(x_b − v_i)): unit integral on the grid (Δ the
    bin width), 0 when no value has weight on it."""
    k = jnp.exp(-0.5 * ((jnp.asarray(grid, values.dtype)[:, None] - values[None, :]) / sigma) ** 2)
    s = jnp.sum(k, axis=1)
    total = jnp.sum(s) * width
    return s / jnp.where(total > 0, total, 1.0)


def periodic_rows(values, grid, sigma: float, width: float):
    """(K, n_bins) kernel rows Σ_k K_σ(x_b − v_i + 2πk) of angles ``values`` (rad), each
    normalised to Σ_b row_b Δ = 1: a wrapped Gaussian, complete for every σ (images up to 6σ)."""
    d = jnp.asarray(grid, values.dtype)[None, :] - values[:, None]
    d = d - TWO_PI * jnp.round(d / TWO_PI)                       # in [−π, π]
    m = 1 + math.ceil(6.0 * sigma / TWO_PI)
    shifts = TWO_PI * np.arange(-m, m + 1)
    k = jnp.sum(jnp.exp(-0.5 * ((d[..., None] + jnp.asarray(shifts, d.dtype)) / sigma) ** 2), axis=-1)
    return k / (width * jnp.sum(k, axis=1, keepdims=True))


def bins(cfg, prefix: str, default: int, sigma_max: float):
    """``n_bins`` (>= 2) and ``sigma`` (> 0 or null: one bin width, returned as 0) of a config."""
    n_bins = number(cfg, "n_bins", prefix=prefix, integer=True, lo=2, required=False, default=default,
                    example=str(default))
    sigma = number(cfg, "sigma", prefix=prefix, lo=0.0, lo_open=True, hi=sigma_max, required=False, default=0.0,
                   example="null")
    return n_bins, sigma


class _Internal(Observable):
    """What the distributions share (not a dataclass): the index tuples of ``KEY`` resolved at
    trace time against the snapshot's number of beads, and no box limit."""

    KEY: ClassVar[str]
    open_space: ClassVar[bool] = True   # internal coordinates need no box

    def indices(self, ctx, q) -> np.ndarray:
        return resolve(self.name, self.KEY, getattr(self, self.KEY), ctx, q["R"].shape[-2])

    def check_box(self, box):
        """Internal coordinates need no neighbours; a box (None: open space) limits nothing."""

    def _setup(self, lo: float, hi: float):
        """Grid (bin centres of n_bins bins on [lo, hi]), bin width Δ, σ (0: one bin width)."""
        width = (hi - lo) / self.n_bins
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "grid", lo + width * (np.arange(self.n_bins) + 0.5))
        if self.sigma == 0:
            object.__setattr__(self, "sigma", width)


@dataclass(frozen=True)
class BondDistribution(_Internal):
    """p(r) of bond lengths (1/length), Σ_b p(r_b) Δr = 1 on [r_min, r_max]."""

    name: str
    r_min: float
    r_max: float
    n_bins: int = 100
    sigma: float = 0.0              # length; 0: one bin width
    bonds: Any = "all"              # "all" or ((i, j), ...)
    depends_on_params: bool = False
    unit_kind: str = "length"
    KEY: ClassVar[str] = "bonds"
    value_kind: ClassVar[str] = "inverse_length"
    symbols: ClassVar[tuple[str, str]] = ("r", "p")
    grid: np.ndarray = field(init=False, repr=False, compare=False)
    width: float = field(init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, name, cfg):
        P = f"observables.{name}"
        r_min = number(cfg, "r_min", prefix=P, lo=0.0, required=False, default=0.0, example="0.10")
        r_max = number(cfg, "r_max", prefix=P, lo=0.0, lo_open=True, example="0.18")
        if r_max <= r_min:
            raise UserError(f"{P}.r_max={r_max:g} must be larger than {P}.r_min={r_min:g}",
                            f"lower {P}.r_min or raise {P}.r_max (r_min < r_max)")
        n_bins, sigma = bins(cfg, P, 100, r_max - r_min)
        return cls(name, r_min, r_max, n_bins, sigma, index_tuples(cfg, "bonds", 2, P))

    def __post_init__(self):
        self._setup(self.r_min, self.r_max)

    def check_box(self, box):
        """In a periodic box a bond is taken at its minimum image: lengths beyond half the box
        cannot be told apart from shorter ones."""
        if box is not None and self.r_max > 0.5 * box:
            raise UserError(f"observables.{self.name}.r_max={self.r_max:g} exceeds half the box ({0.5 * box:.4g}); "
                            "bonds are measured at their minimum image", f"lower observables.{self.name}.r_max")

    def snapshot(self, ctx, q):
        r = geometry.bond_lengths(q["R"], self.indices(ctx, q), q.get("box"))
        return window_density(r, self.grid, self.sigma, self.width)


@dataclass(frozen=True)
class AngleDistribution(_Internal):
    """p(θ) of bond angles (1/rad), Σ_b p(θ_b) Δθ = 1 on [0, π]."""

    name: str
    n_bins: int = 180
    sigma: float = 0.0              # rad; 0: one bin width
    angles: Any = "all"             # "all" or ((i, j, k), ...), θ at j
    depends_on_params: bool = False
    unit_kind: str = "angle"
    KEY: ClassVar[str] = "angles"
    value_kind: ClassVar[str] = "inverse_angle"
    symbols: ClassVar[tuple[str, str]] = ("theta", "p")
    grid: np.ndarray = field(init=False, repr=False, compare=False)
    width: float = field(init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, name, cfg):
        P = f"observables.{name}"
        n_bins, sigma = bins(cfg, P, 180, math.pi)
        return cls(name, n_bins, sigma, index_tuples(cfg, "angles", 3, P))

    def __post_init__(self):
        self._setup(0.0, math.pi)

    def snapshot(self, ctx, q):
        theta = geometry.angles(q["R"], self.indices(ctx, q), q.get("box"))
        return window_density(theta, self.grid, self.sigma, self.width)


@dataclass(frozen=True)
class DihedralDistribution(_Internal):
    """p(φ) of dihedral angles (1/rad), periodic, Σ_b p(φ_b) Δφ = 1 on (−π, π]."""

    name: str
    n_bins: int = 72
    sigma: float = 0.0              # rad; 0: one bin width
    dihedrals: Any = "all"          # "all" or ((i, j, k, l), ...)
    depends_on_params: bool = False
    unit_kind: str = "angle"
    KEY: ClassVar[str] = "dihedrals"
    value_kind: ClassVar[str] = "inverse_angle"
    symbols: ClassVar[tuple[str, str]] = ("phi", "p")
    grid: np.ndarray = field(init=False, repr=False, compare=False)
    width: float = field(init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, name, cfg):
        P = f"observables.{name}"
        n_bins, sigma = bins(cfg, P, 72, math.pi)
        return cls(name, n_bins, sigma, index_tuples(cfg, "dihedrals", 4, P))

    def __post_init__(self):
        self._setup(-math.pi, math.pi)

    def snapshot(self, ctx, q):
        phi = geometry.dihedrals(q["R"], self.indices(ctx, q), q.get("box"))
        return jnp.mean(periodic_rows(phi, self.grid, self.sigma, self.width), axis=0)


@dataclass(frozen=True)
class PhiPsi(_Internal):
    """p(φ, ψ) of two dihedrals (1/rad²), periodic in both, Σ_ab p(φ_a, ψ_b) Δ² = 1; the value is
    the flattened n_bins × n_bins matrix (φ-major), ``grid`` the (n_bins², 2) (φ_a, ψ_b) pairs."""

    name: str
    phi: tuple
    psi: tuple
    n_bins: int = 36
    sigma: float = 0.0              # rad, in φ and in ψ; 0: one bin width
    depends_on_params: bool = False
    unit_kind: str = "angle"
    value_kind: ClassVar[str] = "inverse_angle_squared"
    symbols: ClassVar[tuple[str, str, str]] = ("phi", "psi", "p")
    axis: np.ndarray = field(init=False, repr=False, compare=False)
    grid: np.ndarray = field(init=False, repr=False, compare=False)
    width: float = field(init=False, repr=False, compare=False)

    @classmethod
    def from_config(cls, name, cfg):
        P = f"observables.{name}"
        n_bins, sigma = bins(cfg, P, 36, math.pi)
        return cls(name, one_tuple(cfg, "phi", 4, P), one_tuple(cfg, "psi", 4, P), n_bins, sigma)

    def __post_init__(self):
        self._setup(-math.pi, math.pi)
        axis = self.grid
        pairs = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
        object.__setattr__(self, "axis", axis)
        object.__setattr__(self, "grid", pairs)

    def snapshot(self, ctx, q):
        n = q["R"].shape[-2]
        quads = np.concatenate([resolve(self.name, k, (getattr(self, k),), ctx, n, kind="dihedrals")
                                for k in ("phi", "psi")])
        angle = geometry.dihedrals(q["R"], quads, q.get("box"))
        rows = periodic_rows(angle, self.axis, self.sigma, self.width)
        return (rows[0][:, None] * rows[1][None, :]).reshape(-1)


#: the ``kind`` names of ``observables/*.yaml`` this module provides (collected by observables/__init__.py)
KINDS = {"bond_distribution": BondDistribution, "angle_distribution": AngleDistribution,
         "dihedral_distribution": DihedralDistribution, "phi_psi": PhiPsi}
