"""Reference data from a finer simulation for the bottom-up trainers: a fine-grained trajectory
(``reference`` config group) read in the run's units, mapped onto coarse-grained beads.

    ref = reference.open_reference(cfg.reference, system.units, box=system.box_size,
                                   n_particles=system.n_particles, require_forces=True)
    train = ref.load("train")                  # MappedFrames of every training frame
    for batch in ref.batches("validation"):    # streamed from disk, reference.batch_frames at a time
        ...

Modules: settings.py (the config keys), read.py (MDAnalysis / ase readers, units), mapping.py
(atoms -> beads), frames.py (stride, split, batches).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .. import units
from ..errors import UserError
from . import frames as frames_mod
from .mapping import CGMap, build
from .read import Frames, Trajectory, open_trajectory
from .settings import ReferenceSettings, is_set, parse

__all__ = ["MappedFrames", "Reference", "check", "is_set", "open_reference"]

#: relative tolerance of the reference box against the system's (float32 files, unit conversions)
BOX_RTOL = 1e-4


#: mapped frames: bead positions in [0, box) (open space: as mapped, boxes None) and mapped forces
#: (read.Frames of beads)
MappedFrames = Frames


@dataclass
class Reference:
    """An opened, mapped reference trajectory and its frame selection."""

    settings: ReferenceSettings
    trajectory: Trajectory
    cg_map: CGMap
    box: float | None = None   # the system's cubic box edge (None: not checked)

    @property
    def n_beads(self) -> int:
        return self.cg_map.n_beads

    @property
    def bead_type_names(self) -> tuple[str, ...]:
        """The type name of every bead, in bead order."""
        return tuple(self.cg_map.type_names[t] for t in self.cg_map.bead_types)

    @cached_property
    def split(self) -> dict[str, np.ndarray]:
        """{"train": …, "validation": …}: frame numbers of each set, ascending, disjoint."""
        s = self.settings
        idx = frames_mod.select(self.trajectory.n_frames, s.start, s.stop, s.stride)
        train, val = frames_mod.split(idx, s.validation_fraction, s.split_seed)
        return {"train": train, "validation": val}

    def map(self, indices) -> MappedFrames:
        """The frames ``indices`` (ascending), read and mapped."""
        a = self.trajectory.read(indices)
        _check_frames(a, self)
        return MappedFrames(self.cg_map.positions(a.positions, a.boxes),
                            None if a.forces is None else self.cg_map.forces(a.forces), a.energies, a.boxes, a.indices,
                            a.pressures)

    def load(self, which: str = "train") -> MappedFrames:
        """Every frame of one set (``train`` or ``validation``) at once."""
        return self.map(self._indices(which))

    def batches(self, which: str = "train", size: int | None = None):
        """The frames of one set, ``size`` (default ``reference.batch_frames``; None: all) at a
        time, each batch read from disk only when it is asked for."""
        size = self.settings.batch_frames if size is None else size
        for chunk in frames_mod.batches(self._indices(which), size):
            if len(chunk):
                yield self.map(chunk)

    def _indices(self, which: str) -> np.ndarray:
        if which not in ("train", "validation"):
            raise ValueError(f"which must be 'train' or 'validation', got {which!r}")
        return self.split[which]


def open_reference(cfg, system_units: units.UnitSystem, *, box: float | None = None, n_particles: int | None = None,
                   require_forces: bool = False) -> Reference:
    """Open the ``reference`` group's trajectory and map. ``box`` (the system's cubic box edge)
    and ``n_particles`` are checked against the mapped system when given; ``require_forces``
    (the force-matching trainer) makes a file without forces an error."""
    s = parse(cfg)
    traj = open_trajectory(s, system_units)
    if require_forces and not traj.has_forces:
        raise UserError(f"reference.file: {s.file.name} has no forces, and this trainer matches forces",
                        "give a trajectory with forces (GROMACS: nstfout = nstxout; LAMMPS: dump fx fy fz; "
                        "extended XYZ: a forces column)")
    ref = Reference(s, traj, build(traj.universe, s.mapping), box)
    if n_particles is not None and ref.n_beads != n_particles:
        raise UserError(f"reference.mapping gives {ref.n_beads} beads but system.n_particles={n_particles}",
                        f"set system.n_particles={ref.n_beads} (and the box or density of the reference), "
                        "or change reference.mapping")
    return ref


def check(cfg, system_units: units.UnitSystem, *, box: float | None = None, n_particles: int | None = None,
          require_forces: bool = False) -> None:
    """Config validation: open the reference, build the map and map its first selected frame
    (no full pass over the file). Nothing to check for ``reference=none``."""
    if not is_set(cfg):
        return
    ref = open_reference(cfg, system_units, box=box, n_particles=n_particles, require_forces=require_forces)
    ref.map([ref.settings.start])


def _check_frames(a, ref: Reference) -> None:
    """Finite numbers, and the system's box (when known) in every frame; an open-space reference
    (``reference.open``) has no box to compare."""
    s = ref.settings
    for name, arr in (("positions", a.positions), ("forces", a.forces), ("pressures", a.pressures)):
        if arr is not None and not np.all(np.isfinite(arr)):
            k = int(np.argmax(~np.all(np.isfinite(arr.reshape(len(arr), -1)), axis=1)))
            raise UserError(f"reference.file: frame {int(a.indices[k])} of {s.file} has NaN or infinite {name}",
                            "use a trajectory of a stable simulation (or skip the frame with reference.start)")
    if ref.box is None or a.boxes is None:
        return
    bad = ~np.all(np.isclose(a.boxes, ref.box, rtol=BOX_RTOL, atol=0.0), axis=1)
    if np.any(bad):
        k = int(np.argmax(bad))
        raise UserError(f"reference.file: the box of frame {int(a.indices[k])} of {s.file}, "
                        f"{np.round(a.boxes[k], 6).tolist()} (run units), does not match the system's cubic box "
                        f"{ref.box:.6g} (system.box_size, or n_particles / density)",
                        "set system.box_size to the reference's box (constant-volume reference frames)")
