"""``difftre export format=xyz|dcd|xtc|trr|pdb|lammpstrj``: a run's reference trajectories for
tools that read neither H5MD nor the run's topology file.

Each ``trajectories/*.h5md`` (or an older run's ``.h5``) is opened by MDAnalysis with the run's
``topology.pdb`` (topology.py; written here from the first frame for runs that predate it) and
written by MDAnalysis's writer of the format into ``out`` (default RUN/export/FORMAT/), one file
per trajectory with the trajectory's name. MDAnalysis works in Å: real-unit runs (nm) come out
in Å, metal runs as they are, reduced LJ runs in σ (no conversion). MDAnalysis has no writer
for LAMMPS dump files, so ``lammpstrj`` is written here (``ITEM: ATOMS id type x y z``, type =
species index + 1) in the length unit of the LAMMPS unit style (``units=``, default the run's).
``xyz`` is extended XYZ, also written here: MDAnalysis's XYZ writer drops the periodic cell (OVITO
then shows an unbounded cloud) and ase's extended-XYZ writer accepts only element names, not
bead names; each frame's comment line carries ``Lattice``, ``pbc`` and ``Time`` (same lengths as
the MDAnalysis formats: Å, reduced runs in σ).
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from .. import units as units_mod
from ..deferred_imports import mdanalysis
from ..errors import UserError
from ..store import RunStore
from ..topology import topology_name, write_topology

#: format name -> MDAnalysis writer format (None: written here)
TRAJECTORY_FORMATS = {"xyz": None, "dcd": "DCD", "xtc": "XTC", "trr": "TRR", "pdb": "PDB", "lammpstrj": None}
#: LAMMPS unit style of a run's unit system (the default of ``units=``)
LAMMPS_STYLE = {"lj": "lj", "real": "real", "metal": "metal"}


def export_trajectories(run_dir: Path, fmt: str, out: Path | None = None, state: str | None = None,
                        lammps_units: str | None = None) -> dict:
    """Write every reference trajectory of the run (of state point ``state``) in ``fmt``; returns
    what was written (export.json's body)."""
    store = RunStore(run_dir)
    files = store.trajectory_files(state or "")
    if not files:
        where = f" of state point {state}" if state else ""
        raise UserError(f"export: {store.traj_dir} holds no reference trajectories{where}",
                        "export trajectories of an MD-trained run (trainer difftre, ibi, relative_entropy, "
                        "direct_ad) after its first update")
    unit_system = _unit_system(files[0])
    style = lammps_units or LAMMPS_STYLE[unit_system.name]
    if fmt == "lammpstrj" and style not in LAMMPS_STYLE:
        raise UserError(f"units={style}: not a LAMMPS unit style", "use lj, real or metal")
    out = Path(out) if out is not None else Path(run_dir) / "export" / fmt
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "lammpstrj":
        length = units_mod.table_factors(style, unit_system)[0]
        written = [_write_lammpstrj(f, out / f"{f.stem}.lammpstrj", length) for f in files]
        note = f"positions in the length unit of LAMMPS units {style} ({units_mod.TABLE_STYLES[style][0]})"
    elif fmt == "xyz":   # Å as MDAnalysis writes (reduced runs: σ)
        length = units_mod.table_factors(LAMMPS_STYLE[unit_system.name], unit_system)[0]
        written = [_write_extxyz(f, out / f"{f.stem}.xyz", length) for f in files]
        note = ("positions in sigma (reduced units, not converted)" if unit_system.name == "lj"
                else "positions in Angstrom")
    else:
        topology = _topology(store, files[0], state or "", unit_system)
        written = [_write_mdanalysis(topology, f, out / f"{f.stem}.{fmt}", TRAJECTORY_FORMATS[fmt],
                                     unit_system) for f in files]
        note = ("positions in sigma (reduced units, not converted)" if unit_system.name == "lj"
                else "positions in Angstrom (MDAnalysis)")
    manifest = {"run": str(Path(run_dir).resolve()), "state": state, "out": str(out), "format": fmt,
                "unit_note": note, "files": [p.name for p in written],
                "frames": int(sum(_n_frames(f) for f in files))}
    (out / "export.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _unit_system(path: Path) -> units_mod.UnitSystem:
    with h5py.File(path, "r") as f:
        return units_mod.get(json.loads(f.attrs["units"])["name"])


def _n_frames(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return len(f["particles/all/position/step"])


def _topology(store: RunStore, first: Path, state: str, unit_system) -> Path:
    """The run's topology file; written from ``first``'s first frame for runs that predate it."""
    path = store.dir / topology_name(state)
    if path.is_file():
        return path
    with h5py.File(first, "r") as f:
        part = f["particles/all"]
        pos = part["position/value"][0]
        if "edges" not in part["box"] or pos.shape[-1] != 3:
            raise UserError(f"export: the trajectories in {store.traj_dir} are not 3-D particles in a periodic box",
                            "export trajectories of a run in a box")
        box = float(part["box/edges/value"][0][0])
        species = part["species"][()] if "species" in part else None
        names = tuple(x.decode() for x in part["species"].attrs["names"]) if species is not None else ("X",)
    return write_topology(path, pos, box, species, names, unit_system)


def _write_mdanalysis(topology: Path, source: Path, target: Path, writer_format: str, unit_system) -> Path:
    mda = mdanalysis()   # imported only when trajectories are exported

    u = mda.Universe(str(topology), str(source), format="H5MD", convert_units=unit_system.name != "lj")
    try:
        with mda.Writer(str(target), n_atoms=u.atoms.n_atoms, format=writer_format) as w:
            for _ in u.trajectory:
                w.write(u.atoms)
    finally:
        u.trajectory.close()
    return target


def _frames(source: Path, length: float):
    """(steps, times, positions, box edges, species, species names) of a trajectory file, lengths × ``length``."""
    with h5py.File(source, "r") as f:
        part = f["particles/all"]
        pos = part["position/value"][()] * length
        if "edges" not in part["box"] or pos.shape[-1] != 3:
            raise UserError(f"export: {source} does not hold 3-D particles in a periodic box",
                            "export trajectories of a run in a box")
        species = part["species"][()] if "species" in part else np.zeros(pos.shape[1], np.int32)
        names = tuple(x.decode() if isinstance(x, bytes) else str(x) for x in part["species"].attrs["names"]) \
            if "species" in part and "names" in part["species"].attrs else ("X",)
        return (part["position/step"][()], part["position/time"][()], pos, part["box/edges/value"][()] * length,
                species, names)


def _write_extxyz(source: Path, target: Path, length: float) -> Path:
    """Extended XYZ of ``source``: per frame the atom count, a comment line with the orthorhombic
    ``Lattice``, ``pbc`` and ``Time``, then ``name x y z`` per particle."""
    _, times, pos, edges, species, names = _frames(source, length)
    labels = np.asarray(names)[species]
    with open(target, "w") as fh:
        for k in range(len(pos)):
            a, b, c = (float(x) for x in np.broadcast_to(edges[k], (3,)))
            fh.write(f"{pos.shape[1]}\nLattice=\"{a:.8g} 0 0 0 {b:.8g} 0 0 0 {c:.8g}\" "
                     f"Properties=species:S:1:pos:R:3 pbc=\"T T T\" Time={float(times[k]):.8g}\n")
            fh.writelines(f"{n} {x:.6f} {y:.6f} {z:.6f}\n" for n, (x, y, z) in zip(labels, pos[k]))
    return target


def _write_lammpstrj(source: Path, target: Path, length: float) -> Path:
    """A LAMMPS text dump of ``source``: every frame with its step, box and ``id type x y z``."""
    steps, _, pos, edges, species, _ = _frames(source, length)
    types = species + 1
    n = pos.shape[1]
    ids = np.arange(1, n + 1)
    with open(target, "w") as fh:
        for k, step in enumerate(steps):
            fh.write(f"ITEM: TIMESTEP\n{int(step)}\nITEM: NUMBER OF ATOMS\n{n}\nITEM: BOX BOUNDS pp pp pp\n")
            fh.writelines(f"0 {edge:.8g}\n" for edge in np.broadcast_to(edges[k], (3,)))
            fh.write("ITEM: ATOMS id type x y z\n")
            np.savetxt(fh, np.column_stack([ids, types, pos[k]]), fmt=["%d", "%d", "%.6f", "%.6f", "%.6f"])
    return target
