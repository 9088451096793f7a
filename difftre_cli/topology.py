"""A run's topology file (``RUN/topology.pdb``): one atom per particle with its species as name
and type, the first kept snapshot's positions and the box, so that MDAnalysis, VMD and OVITO
open a run's H5MD trajectories with one line::

    mda.Universe("RUN/topology.pdb", "RUN/trajectories/ref_00000.h5md")

Written once per run (per state point of a multi-state run) by MDAnalysis's PDB writer. PDB
coordinates are in Å: a real-unit run (nm) is scaled by 10, a metal run (Å) written as it is,
and a reduced LJ run in σ (a reader takes them for Å; MDAnalysis then reads the run's H5MD
trajectories with ``convert_units=False``, which keeps them in σ too). Particles on a line
(the 1-D external-field case) have no topology file.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .deferred_imports import mdanalysis
from .units import ANGSTROM_PER_NM

#: PDB (Å) per unit of a run's length, by unit system; reduced units are written as they are
PDB_LENGTH = {"real": ANGSTROM_PER_NM, "metal": 1.0, "lj": 1.0}


def topology_name(state: str = "") -> str:
    """File name of the topology of a run (``topology.pdb``) or of one of its state points."""
    return f"{state + '_' if state else ''}topology.pdb"


def write_topology(path: Path, positions, box_size: float, species, species_names, unit_system) -> Path:
    """Write ``positions`` (N, 3) in a cubic box of edge ``box_size`` (the run's length unit) as
    a PDB file: atom and residue names and types are the species names, one residue per
    particle. Atomic: written to ``path.tmp``, then renamed."""
    mda = mdanalysis()   # imported when a run writes its first trajectory

    pos = np.asarray(positions, np.float64)
    n = len(pos)
    species = np.zeros(n, np.int64) if species is None else np.asarray(species)
    names = np.array([str(species_names[int(k)]) for k in species], dtype=object)
    u = mda.Universe.empty(n, n_residues=n, atom_resindex=np.arange(n), trajectory=True)
    u.add_TopologyAttr("names", names)
    u.add_TopologyAttr("types", names)
    u.add_TopologyAttr("elements", np.array([""] * n, dtype=object))
    u.add_TopologyAttr("resnames", names)
    u.add_TopologyAttr("resids", np.arange(1, n + 1))
    scale = PDB_LENGTH[unit_system.name]
    u.atoms.positions = pos * scale
    u.dimensions = [box_size * scale] * 3 + [90.0] * 3
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():   # the writer notes each PDB field it fills with a default
        warnings.simplefilter("ignore", UserWarning)
        u.atoms.write(str(tmp), file_format="PDB")
    os.replace(tmp, path)
    return path
