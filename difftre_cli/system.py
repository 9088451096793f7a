"""The simulated system: box, initial positions, species and masses."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import units as units_mod
from .errors import UserError


@dataclass(frozen=True)
class System:
    """A periodic cubic box of ``n_particles`` particles.

    Attributes are in the unit system ``units`` (lengths in σ or nm).
    ``positions`` has shape (N, 3) and lies in [0, box_size).
    """

    n_particles: int
    box_size: float
    kT: float
    mass: float
    positions: np.ndarray
    units: units_mod.UnitSystem
    species: np.ndarray  # (N,) int

    @property
    def volume(self) -> float:
        return self.box_size ** 3

    @property
    def density(self) -> float:
        return self.n_particles / self.volume


def lattice_positions(n: int, box_size: float, kind: str = "fcc") -> np.ndarray:
    """First ``n`` sites of a cubic (``sc``) or face-centred cubic (``fcc``) lattice filling the box."""
    basis = {"sc": np.zeros((1, 3)),
             "fcc": np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])}[kind]
    cells = math.ceil((n / len(basis)) ** (1.0 / 3.0) - 1e-9)
    grid = np.stack(np.meshgrid(*[np.arange(cells)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = (grid[:, None, :] + basis[None]).reshape(-1, 3)[:n]
    return (sites + 0.25) * (box_size / cells)


def build_system(cfg) -> System:
    """Build the :class:`System` from the ``system`` config group."""
    unit_system = units_mod.get(cfg.get("units", "lj"))
    n = int(cfg.n_particles)
    if cfg.get("box_size") is not None:
        box = float(cfg.box_size)
    else:
        box = (n / float(cfg.density)) ** (1.0 / 3.0)
    kT = units_mod.kT_of(unit_system, cfg.get("kT"), cfg.get("temperature"))
    lattice = cfg.get("lattice", "fcc")
    if lattice not in ("fcc", "sc"):
        raise UserError(f"system.lattice: unknown lattice {lattice!r}", "use fcc or sc")
    pos = lattice_positions(n, box, lattice)
    return System(n_particles=n, box_size=box, kT=kT, mass=float(cfg.get("mass", 1.0)),
                  positions=pos, units=unit_system, species=np.zeros(n, dtype=np.int32))
