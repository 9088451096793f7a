"""Writing a trajectory with forces in a format the ``reference`` group reads: extended XYZ
through ase (positions, forces, the potential energy and optionally the pressure of every frame,
the periodic cell).

Used by scripts/reference_lj.py (an LJ reference made with the project's own sampler) and the
tests. Values are written as given; the reader is told their unit style with ``reference.units``
(e.g. ``lj`` for σ and ε).
"""
from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator


def write_extxyz(path, positions, forces, energies, box: float, symbol: str = "Ar", pressures=None) -> Path:
    """Frames (F, N, 3) of positions and forces and (F,) energies of N atoms named ``symbol`` in
    the cubic periodic box of edge ``box``, to ``path`` (extended XYZ); ``pressures`` (F,), if
    given, as each frame's isotropic stress (ase's convention: stress = −P on the diagonal)."""
    frames = []
    prs = [None] * len(positions) if pressures is None else np.asarray(pressures)
    for x, f, e, p in zip(np.asarray(positions), np.asarray(forces), np.asarray(energies), prs):
        atoms = Atoms(symbols=[symbol] * len(x), positions=x, cell=[box] * 3, pbc=True)
        extra = {} if p is None else {"stress": np.array([-p, -p, -p, 0.0, 0.0, 0.0])}
        atoms.calc = SinglePointCalculator(atoms, energy=float(e), forces=f, **extra)
        frames.append(atoms)
    path = Path(path)
    ase.io.write(str(path), frames, format="extxyz")
    return path
