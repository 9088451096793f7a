"""Periodic crystals for 0 K property fits: the diamond-cubic conventional cell and supercells.

Conventions (metal units): lengths in Å; a cell is a (3, 3) matrix whose *columns* are the lattice
vectors (JAX MD's ``space.periodic_general`` convention), so Cartesian positions are
``frac @ cell.T``. Fractional coordinates lie in [0, 1).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .errors import UserError

#: Fractional coordinates of the 8 atoms of the diamond-cubic conventional cell
#: (fcc lattice with the two-atom basis (0, 0, 0), (1/4, 1/4, 1/4)).
DIAMOND_BASIS = np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0],
                          [0.25, 0.25, 0.25], [0.25, 0.75, 0.75], [0.75, 0.25, 0.75], [0.75, 0.75, 0.25]])

STRUCTURES = {"diamond": DIAMOND_BASIS}


@dataclass(frozen=True)
class Crystal:
    """A periodic crystal: ``frac`` (N, 3) fractional coordinates, ``cell`` (3, 3) in Å
    (columns are lattice vectors), element symbol and atomic mass in amu."""

    frac: np.ndarray
    cell: np.ndarray
    symbol: str
    mass: float
    unit_cell_frac: np.ndarray
    unit_cell: np.ndarray
    replicate: tuple[int, int, int]

    @property
    def n_atoms(self) -> int:
        return int(self.frac.shape[0])

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell)))

    @property
    def cartesian(self) -> np.ndarray:
        return self.frac @ self.cell.T


def supercell(frac: np.ndarray, cell: np.ndarray, reps) -> tuple[np.ndarray, np.ndarray]:
    """Replicate a cell ``reps = (n1, n2, n3)`` times along its lattice vectors."""
    reps = np.asarray(reps, int)
    shifts = np.array(list(itertools.product(*(range(n) for n in reps))), float)
    big = (frac[None, :, :] + shifts[:, None, :]).reshape(-1, 3) / reps
    return big % 1.0, cell * reps[None, :]


def build_crystal(cfg) -> Crystal:
    """Crystal from the ``system`` group: ``structure``, ``lattice_constant`` (Å),
    ``replicate`` ([n1, n2, n3]), ``element``, ``mass`` (amu)."""
    structure = cfg.get("structure", "diamond")
    if structure not in STRUCTURES:
        raise UserError(f"system.structure: unknown structure {structure!r}", f"use one of {sorted(STRUCTURES)}")
    a = cfg.get("lattice_constant")
    if a is None or isinstance(a, bool) or not isinstance(a, (int, float)) or not a > 0:
        raise UserError(f"system.lattice_constant must be a positive length in Å, got {a!r}",
                        "set system.lattice_constant=5.43")
    reps = list(cfg.get("replicate", [1, 1, 1]))
    if len(reps) != 3 or any((not isinstance(n, int)) or isinstance(n, bool) or n < 1 for n in reps):
        raise UserError(f"system.replicate must be three positive integers, got {reps!r}",
                        "set system.replicate=[2,2,2]")
    mass = cfg.get("mass", 28.0855)
    if isinstance(mass, bool) or not isinstance(mass, (int, float)) or not mass > 0:
        raise UserError(f"system.mass must be a positive mass in amu, got {mass!r}", "set system.mass=28.0855")
    unit_frac = STRUCTURES[structure]
    unit_cell = np.eye(3) * float(a)
    frac, cell = supercell(unit_frac, unit_cell, reps)
    return Crystal(frac, cell, str(cfg.get("element", "Si")), float(mass), unit_frac, unit_cell, tuple(reps))


def check_minimum_image(frac: np.ndarray, cell: np.ndarray, cutoff: float) -> None:
    """Raise UserError unless every atom sees at most one periodic image of every atom
    (itself included) within ``cutoff``: the condition under which JAX MD's all-pairs
    minimum-image energies equal the true periodic-crystal energies.

    Images are enumerated explicitly (numpy), so the check is exact for any cell.
    """
    n_img = [int(np.ceil(cutoff * np.linalg.norm(np.linalg.inv(cell)[k]))) + 1 for k in range(3)]
    shifts = np.array(list(itertools.product(*(range(-m, m + 1) for m in n_img))), float)
    d = frac[None, :, None, :] - frac[:, None, None, :] + shifts[None, None, :, :]   # (N, N, S, 3)
    r = np.linalg.norm(d @ cell.T, axis=-1)
    within = (r < cutoff) & (r > 1e-8)
    counts = within.sum(-1)
    if counts.max() > 1:
        i, j = np.unravel_index(np.argmax(counts), counts.shape)
        raise UserError(f"the cell is too small for the cutoff {cutoff:.4g} Å: atom {i} sees {counts[i, j]} "
                        f"periodic images of atom {j} within the cutoff, which all-pairs minimum-image energies "
                        "count once", "enlarge the cell, e.g. system.replicate=[2,2,2]")
