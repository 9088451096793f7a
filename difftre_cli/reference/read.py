"""Reading a fine-grained trajectory with MDAnalysis (H5MD, LAMMPS dump, GROMACS TRR) or ase
(extended XYZ), in the run's units.

What each reader returns, before :func:`units.trajectory_factors` converts it: MDAnalysis gives
Å, kJ mol⁻¹ Å⁻¹ for a TRR and an H5MD file with unit attributes; a LAMMPS dump (and an H5MD
file without units) are read as they are, in the declared ``reference.units`` style; ase reads
extended XYZ as Å and eV (or in the declared style). Frames are read on demand, in file order:
nothing is loaded before it is asked for. Every frame needs an orthorhombic periodic box, except
with ``reference.open: true`` (a molecule in open space), where the frames' boxes are ignored
(a TRR without one holds a zero box, which MDAnalysis reads as none) and ``Frames.boxes`` is None.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import re
import sys
import warnings
from dataclasses import dataclass, field

import h5py
import numpy as np

from .. import units
from ..deferred_imports import mdanalysis
from ..errors import UserError
from .settings import ReferenceSettings

#: MDAnalysis format names of the formats it reads here
MDA_FORMATS = {"h5md": "H5MD", "lammpsdump": "LAMMPSDUMP", "trr": "TRR"}
#: H5MD energy unit attributes -> ENERGY_TO_KJ_MOL names
H5MD_ENERGY_UNITS = {"kJ mol-1": "kJ/mol", "kJ/mol": "kJ/mol", "kcal mol-1": "kcal/mol", "kcal/mol": "kcal/mol",
                     "eV": "eV"}


#: MDAnalysis warnings that say nothing to a difftre user: a dump has no time step (times are not
#: used); masses guessed from LAMMPS types are 1.0 (discarded below: centre-of-mass beads then
#: ask for a topology with masses); a seek in a damaged TRR (the read fails next, see _damaged); a
#: PDB topology's placeholder cell of 1 Å (read as no box; the trajectory's box counts)
# MDAnalysis logs every guess it makes about a topology at INFO: not the run's business
logging.getLogger("MDAnalysis").setLevel(logging.WARNING)
QUIET = ("Reader has no dt information", "Guessed all Masses to 1.0", "seek failed", "1 A^3 CRYST1 record")


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        for msg in QUIET:
            warnings.filterwarnings("ignore", message=re.escape(msg))
        yield


@contextlib.contextmanager
def _quiet_teardown():
    """A MDAnalysis reader that fails half-way through opening a file fails again in its
    ``__del__`` (e.g. TRRReader: no ``_xdr``), which Python prints as 'Exception ignored …' with
    a traceback after our one-line error. Swallow exactly those while the failed reader is freed."""
    old = sys.unraisablehook

    def hook(u):
        if not (getattr(u.object, "__qualname__", "").endswith("__del__") and issubclass(u.exc_type, AttributeError)):
            old(u)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = old


def _ase_io():
    """ase.io, imported when an extended-XYZ reference is read (its import costs ~0.5 s)."""
    import ase.io  # heavy: imported only when an extended-XYZ reference is read
    return ase.io


@dataclass
class Frames:
    """Frames in the run's units, of atoms (as read) or of beads (mapped): ``positions``/
    ``forces`` (F, N, 3) (forces None if the file has none; of beads: the mapped forces),
    ``energies`` (F,) the fine-grained total potential energy (None if the file has none),
    ``boxes`` (F, 3) edges of the orthorhombic box (None in open space: ``reference.open``),
    ``indices`` (F,) frame numbers in the file,
    ``pressures`` (F,) the instantaneous pressure of each frame (None if the file has none)."""

    positions: np.ndarray
    forces: np.ndarray | None
    energies: np.ndarray | None
    boxes: np.ndarray | None
    indices: np.ndarray
    pressures: np.ndarray | None = None


@dataclass
class Trajectory:
    """An opened trajectory: ``universe`` is the MDAnalysis topology that bead selections act
    on; ``factors`` convert (length, energy, force) to the run's units."""

    settings: ReferenceSettings
    universe: object
    factors: tuple[float, float, float]
    has_forces: bool
    energy_factor: float | None   # None: no energies in the file (or of unknown unit)
    pressure_factor: float | None = None   # None: no pressures in the file
    _n_frames: int | None = field(default=None, repr=False)
    _cursor: tuple | None = field(default=None, repr=False)   # extended XYZ: (next frame, ase's iterator)

    @property
    def n_atoms(self) -> int:
        return len(self.universe.atoms)

    @property
    def n_frames(self) -> int:
        """Number of frames in the file (an extended-XYZ file is parsed once to count them)."""
        if self._n_frames is None:
            with _damaged(self.settings, "counting the frames"):
                self._n_frames = sum(1 for _ in _ase_io().iread(str(self.settings.file), index=":", format="extxyz"))
        return self._n_frames

    def read(self, indices) -> Frames:
        """The frames ``indices`` (ascending), converted to the run's units."""
        idx = np.asarray(indices, dtype=int)
        with _damaged(self.settings, f"reading frames {idx.min()}-{idx.max()}"):
            pos, frc, eng, box, prs = (_read_ase if self.settings.format == "extxyz" else _read_mda)(self, idx)
        fl, _, ff = self.factors
        return Frames(pos * fl, None if frc is None else frc * ff, None if eng is None else eng * self.energy_factor,
                      None if self.settings.open else box * fl, idx,
                      None if prs is None else prs * self.pressure_factor)


def open_trajectory(s: ReferenceSettings, system: units.UnitSystem) -> Trajectory:
    """Open ``s.file`` (and its topology), check it can be read, and find its units."""
    if s.format == "extxyz":
        return _open_ase(s, system)
    return _open_mda(s, system)


def _unreadable(s: ReferenceSettings, exc: Exception, topology_only: bool = False) -> UserError:
    detail = f"{type(exc).__name__}: {str(exc).strip() or 'no detail'}"
    if topology_only:
        return UserError(f"reference.topology: cannot read {s.topology} ({detail})",
                         "give a topology MDAnalysis reads (.gro, .tpr, .pdb, .psf, LAMMPS .data) of the same atoms")
    with_topology = "" if s.topology is None else f" with reference.topology {s.topology}"
    return UserError(f"reference.file: cannot read {s.file} as {s.format}{with_topology} ({detail})",
                     "check that the file is complete and of the format reference.format names "
                     f"(now {s.format}); reference.topology must describe the same atoms, in order")


@contextlib.contextmanager
def _damaged(s: ReferenceSettings, doing: str):
    """A reader failing in the middle of a file (truncated, damaged) is bad input too."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a third-party reader on a user's file: any failure is bad input
        raise UserError(f"reference.file: {doing} of {s.file} failed ({type(exc).__name__}: "
                        f"{str(exc).strip() or 'no detail'})",
                        "the file is damaged or truncated: regenerate it, or stop before the damage "
                        "(reference.stop)") from None


def _open_mda(s: ReferenceSettings, system: units.UnitSystem) -> Trajectory:
    mda = mdanalysis()
    fmt = MDA_FORMATS[s.format]
    declared = s.units is not None
    kwargs = {"format": fmt}
    if s.format == "h5md":
        kwargs["convert_units"] = not declared
    error = None
    with _quiet_teardown(), _quiet():
        try:
            if s.topology is not None:
                u = mda.Universe(str(s.topology), str(s.file), **kwargs)
            else:
                u = mda.Universe(str(s.file), topology_format="MINIMAL" if s.format == "h5md" else fmt, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a third-party reader on a user's file: any failure is bad input
            error = _unreadable(s, exc)
            if s.format == "h5md" and not declared and "units" in str(exc):
                error = UserError(f"reference.units is missing: the H5MD file {s.file.name} declares no units",
                                  "set reference.units to the file's units: gromacs (nm, kJ/mol), real, metal or lj")
    if error is not None:   # raised here, the failed reader already freed (_quiet_teardown)
        raise error
    if s.topology is None and hasattr(u.atoms, "masses"):   # guessed (LAMMPS dump: all 1.0), not read
        u.del_TopologyAttr("masses")
    if s.format == "h5md" and declared and u.trajectory.units.get("length") is not None:
        raise UserError(f"reference.units={s.units} is set, but the H5MD file declares its own units "
                        f"(length {u.trajectory.units['length']})", "remove reference.units (set it to null)")
    source = units.TRAJECTORY_STYLES[s.units] if declared else units.MDANALYSIS_UNITS
    factors = units.trajectory_factors(*source, system)
    energy = pressure = None
    if s.format == "h5md" and "potential_energy" in u.trajectory.ts.data:
        unit = _h5md_energy_unit(s) or (source[1] if declared else None)
        energy = None if unit is None else units.trajectory_factors(source[0], unit, system)[1]
    if s.format == "h5md" and "pressure" in u.trajectory.ts.data:
        pressure = _h5md_pressure_factor(s, system)
    return Trajectory(s, u, factors, bool(u.trajectory.ts.has_forces), energy, pressure, len(u.trajectory))


def _h5md_energy_unit(s: ReferenceSettings) -> str | None:
    """The unit attribute of an H5MD file's observables/potential_energy (None if it has none)."""
    with h5py.File(s.file, "r") as f:
        unit = f["observables/potential_energy/value"].attrs.get("unit")
    if unit is None:
        return None
    unit = unit.decode() if isinstance(unit, bytes) else str(unit)
    if unit not in H5MD_ENERGY_UNITS:
        raise UserError(f"reference.file: unknown energy unit {unit!r} of observables/potential_energy in {s.file}",
                        f"write the energies in one of {', '.join(H5MD_ENERGY_UNITS)}")
    return H5MD_ENERGY_UNITS[unit]


def _h5md_pressure_factor(s: ReferenceSettings, system: units.UnitSystem) -> float:
    """The factor from an H5MD file's observables/pressure (its ``unit`` attribute: bar, atm,
    GPa, kJ mol-1 nm-3, or reduced) to the run's pressure unit."""
    with h5py.File(s.file, "r") as f:
        unit = f["observables/pressure/value"].attrs.get("unit")
    unit = unit.decode() if isinstance(unit, bytes) else unit
    names = {"kJ mol-1 nm-3": "kJ/mol/nm^3", None: "reduced" if system.name == "lj" else None}
    name = names.get(unit, unit)
    if name is None:
        raise UserError(f"reference.file: observables/pressure in {s.file} has no unit attribute",
                        "write its unit (bar, atm, GPa or kJ mol-1 nm-3) as the dataset's `unit` attribute")
    return units.pressure_factor(name, system)


def _read_mda(t: Trajectory, idx: np.ndarray):
    pos, frc, eng, box, prs = [], [], [], [], []
    for ts in _timesteps(t.universe.trajectory, idx):
        pos.append(np.array(ts.positions, dtype=np.float64))
        box.append(np.zeros(3) if t.settings.open else _orthorhombic(ts.dimensions, ts.frame, t.settings))
        if t.has_forces:
            if not ts.has_forces:
                raise UserError(f"reference.file: frame {ts.frame} of {t.settings.file} has no forces while the "
                                "first one has (forces written less often than positions?)",
                                "set reference.stride/start so that only frames with forces are read")
            frc.append(np.array(ts.forces, dtype=np.float64))
        if t.energy_factor is not None:
            eng.append(float(ts.data["potential_energy"]))
        if t.pressure_factor is not None:
            prs.append(float(ts.data["pressure"]))
    return (np.stack(pos), np.stack(frc) if t.has_forces else None,
            np.array(eng) if t.energy_factor is not None else None, np.stack(box),
            np.array(prs) if t.pressure_factor is not None else None)


def _timesteps(trajectory, idx: np.ndarray):
    """MDAnalysis's frames ``idx``, one at a time (each read under :func:`_quiet`)."""
    frames = iter(trajectory[idx.tolist()])
    while True:
        with _quiet():
            ts = next(frames, None)
        if ts is None:
            return
        yield ts


def _orthorhombic(dims, frame: int, s: ReferenceSettings) -> np.ndarray:
    """Edges of an orthorhombic box from MDAnalysis dimensions [a, b, c, α, β, γ]."""
    if dims is None or not np.all(np.asarray(dims[:3]) > 0):
        raise UserError(f"reference.file: frame {frame} of {s.file} has no periodic box",
                        "write the box with every frame (a periodic simulation's trajectory); for a molecule "
                        "in open space (vacuum, implicit solvent) set reference.open=true")
    if not np.allclose(dims[3:], 90.0, atol=1e-3):
        raise UserError(f"reference.file: frame {frame} of {s.file} has a triclinic box (angles {list(dims[3:])})",
                        "use a trajectory of an orthorhombic (cubic) box, like the run's")
    return np.array(dims[:3], dtype=np.float64)


def _open_ase(s: ReferenceSettings, system: units.UnitSystem) -> Trajectory:
    try:
        first = _ase_io().read(str(s.file), index=0, format="extxyz")
    except Exception as exc:  # noqa: BLE001 - a third-party reader on a user's file: any failure is bad input
        raise _unreadable(s, exc) from None
    mda = mdanalysis()
    if s.topology is not None:
        try:
            u = mda.Universe(str(s.topology))
        except Exception as exc:  # noqa: BLE001 - as above
            raise _unreadable(s, exc, topology_only=True) from None
        if len(u.atoms) != len(first):
            raise UserError(f"reference.topology: {s.topology.name} has {len(u.atoms)} atoms, the trajectory "
                            f"{s.file.name} {len(first)}", "give the topology of the same system, atoms in the same order")
    else:   # atoms without residues: selections by name, type, element or index
        u = mda.Universe.empty(len(first), trajectory=False)
        symbols = first.get_chemical_symbols()
        for attr, values in (("names", symbols), ("types", symbols), ("elements", symbols),
                             ("masses", first.get_masses())):
            u.add_TopologyAttr(attr, values)
    source = units.TRAJECTORY_STYLES[s.units] if s.units is not None else units.ASE_UNITS
    factors = units.trajectory_factors(*source, system)
    results = first.calc.results if first.calc is not None else {}
    energy = factors[1] if "energy" in results else None
    pressure = factors[1] / factors[0] ** 3 if "stress" in results else None   # ase: energy/length³
    return Trajectory(s, u, factors, "forces" in results, energy, pressure)


def _ase_frames(t: Trajectory, first: int, last: int):
    """(i, atoms) for the frames first ≤ i ≤ last of an extended-XYZ file. A pass over the file
    continues where the previous call stopped unless that was beyond ``first``: batches
    streamed in order parse the file once."""
    nxt, it = t._cursor if t._cursor is not None else (0, None)
    if it is None or nxt > first:
        nxt, it = 0, iter(_ase_io().iread(str(t.settings.file), index=":", format="extxyz"))
    t._cursor = None
    while nxt <= last:
        atoms = next(it, None)
        if atoms is None:
            return
        i, nxt = nxt, nxt + 1
        t._cursor = (nxt, it)
        if i >= first:
            yield i, atoms


def _read_ase(t: Trajectory, idx: np.ndarray):
    wanted = {int(i): k for k, i in enumerate(idx)}
    pos, frc, eng, box, prs = ([None] * len(idx) for _ in range(5))
    for i, atoms in _ase_frames(t, int(idx.min()), int(idx.max())):
        if i not in wanted:
            continue
        k = wanted[i]
        cell = atoms.cell.array
        if t.settings.open:
            cell = np.zeros((3, 3))
        elif not atoms.pbc.all() or np.abs(cell - np.diag(np.diag(cell))).max() > 1e-6 * max(np.abs(cell).max(), 1):
            raise UserError(f"reference.file: frame {i} of {t.settings.file} has no orthorhombic periodic cell "
                            f"(pbc {atoms.pbc.tolist()}, cell {cell.tolist()})",
                            "write a Lattice with pbc=\"T T T\" of an orthorhombic (cubic) box, like the run's; "
                            "for a molecule in open space set reference.open=true")
        pos[k], box[k] = atoms.positions.astype(np.float64), np.diag(cell).astype(np.float64)
        results = atoms.calc.results if atoms.calc is not None else {}
        if t.has_forces:
            if "forces" not in results:
                raise UserError(f"reference.file: frame {i} of {t.settings.file} has no forces while the first has",
                                "write forces with every frame")
            frc[k] = np.asarray(results["forces"], dtype=np.float64)
        if t.energy_factor is not None:
            eng[k] = float(results.get("energy", np.nan))
        if t.pressure_factor is not None:   # ase's stress: Voigt (or 3 x 3), tension positive
            stress = np.asarray(results.get("stress", np.full(6, np.nan)), dtype=np.float64)
            prs[k] = -float(np.trace(stress) if stress.ndim == 2 else stress[:3].sum()) / 3.0
    missing = [int(i) for i, k in wanted.items() if pos[k] is None]
    if missing:
        raise UserError(f"reference.stop: frame {missing[0]} is past the end of {t.settings.file}",
                        "lower reference.stop (or set it to null)")
    return (np.stack(pos), np.stack(frc) if t.has_forces else None,
            np.array(eng) if t.energy_factor is not None else None, np.stack(box),
            np.array(prs) if t.pressure_factor is not None else None)
