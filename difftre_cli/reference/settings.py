"""The ``reference`` config group: which fine-grained trajectory, how to map it, which frames.

Parsing only (types, ranges, choices, unknown keys); no file is opened here. Every problem is a
:class:`UserError` naming the dotted key ``reference.…`` and the fix.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import units
from ..checks import choice, input_file, mapping, number
from ..errors import UserError

#: format -> file extensions that select it when ``reference.format`` is null
FORMATS = {"h5md": (".h5md", ".h5"), "lammpsdump": (".lammpstrj", ".dump", ".lammpsdump"), "trr": (".trr",),
           "extxyz": (".extxyz", ".xyz")}
#: how the atoms a bead type's selection matches are grouped into beads (heavy_atom: each
#: non-hydrogen atom with the hydrogens bonded to it)
PER = ("residue", "molecule", "atom", "selection", "heavy_atom")
#: where a bead sits: centre of mass or of geometry of its atoms, or at its one atom that ``site`` selects
CENTERS = ("mass", "geometry", "site")
KEYS = ("file", "format", "topology", "units", "mapping", "start", "stop", "stride", "validation_fraction",
        "split_seed", "batch_frames", "make", "open")
MAPPING_KEYS = ("beads", "per", "center", "site")
EXAMPLE = "reference=water_trr (configs/reference/)"


@dataclass(frozen=True)
class BeadMap:
    """``beads``: (bead type, MDAnalysis selection) in order; ``per``: one of PER; ``center``: one of
    CENTERS; ``site``: with ``center=site``, the MDAnalysis selection of each bead's position atom
    (None with ``per=heavy_atom``: the heavy atom itself)."""

    beads: tuple[tuple[str, str], ...]
    per: str
    center: str
    site: str | None = None


@dataclass(frozen=True)
class ReferenceSettings:
    """A parsed ``reference`` group. ``stop`` is exclusive (None: to the end); ``batch_frames``
    None loads the selected frames at once, an integer streams them from disk in batches;
    ``open``: a system in open space (a molecule in vacuum or implicit solvent): frames need no
    box, any box in the file is ignored, and beads are neither made whole nor wrapped."""

    file: Path
    format: str
    topology: Path | None
    units: str | None
    mapping: BeadMap
    start: int
    stop: int | None
    stride: int
    validation_fraction: float
    split_seed: int
    batch_frames: int | None
    open: bool = False


def is_set(cfg) -> bool:
    """True if the config names a reference trajectory (the default ``reference=none`` is null)."""
    return cfg is not None


def parse(cfg) -> ReferenceSettings:
    """The settings of a ``reference`` group (see configs/reference/); files must exist."""
    mapping(cfg, "reference", EXAMPLE)
    unknown = sorted(str(k) for k in cfg if k not in KEYS)
    if unknown:
        raise UserError(f"reference: unknown key(s) {', '.join(unknown)}",
                        f"remove them; the reference keys are {', '.join(KEYS)}")
    if cfg.get("file") is None:
        raise UserError("reference.file is missing", "set reference.file=/path/to/trajectory.trr (or reference=none)")
    make = cfg.get("make")
    if make is not None and not isinstance(make, str):
        raise UserError(f"reference.make must be a shell command (a string), got {make!r}",
                        "set reference.make to the command that writes reference.file, or null")
    path = input_file(cfg.get("file"), "reference.file", what="trajectory", example="/path/to/traj.trr", make=make)
    fmt = _format(cfg.get("format"), path)
    topology = cfg.get("topology")
    if topology is not None:
        topology = input_file(topology, "reference.topology", what="topology", example="/path/to/conf.gro")
    elif fmt == "trr":
        raise UserError("reference.topology is missing: a TRR trajectory holds no atom names, masses or residues",
                        "set reference.topology=/path/to/conf.gro (or the run's .tpr)")
    style = cfg.get("units")
    if style is not None and style not in units.TRAJECTORY_STYLES:
        raise UserError(f"reference.units: unknown unit style {style!r}",
                        f"use one of {', '.join(units.TRAJECTORY_STYLES)} (LAMMPS's `units` command of the run)")
    if fmt == "lammpsdump" and style is None:
        raise UserError(f"reference.units is missing: a LAMMPS dump ({path.name}) carries no units",
                        "set reference.units to the LAMMPS run's unit style: real, metal or lj")
    if fmt == "trr" and style is not None:
        raise UserError(f"reference.units={style} is set, but a TRR file's units are fixed (nm, kJ/mol)",
                        "remove reference.units (set it to null)")
    R = "reference"
    start = number(cfg, "start", prefix=R, integer=True, lo=0, required=False, default=0, example="0")
    stop = number(cfg, "stop", prefix=R, integer=True, lo=start + 1, required=False, example="1000")
    stride = number(cfg, "stride", prefix=R, integer=True, lo=1, required=False, default=1, example="10")
    frac = number(cfg, "validation_fraction", prefix=R, lo=0.0, hi=1.0, hi_open=True, required=False,
                  default=0.0, example="0.1")
    seed = number(cfg, "split_seed", prefix=R, integer=True, lo=0, hi=2 ** 32 - 1, required=False, default=0,
                  example="0")
    batch = number(cfg, "batch_frames", prefix=R, integer=True, lo=1, required=False, example="100")
    is_open = cfg.get("open", False)
    if is_open is None:
        is_open = False
    if not isinstance(is_open, bool):
        raise UserError(f"reference.open must be true or false, got {is_open!r}",
                        "set reference.open=true for a molecule in open space (no periodic box), else false")
    return ReferenceSettings(path, fmt, topology, style, _bead_map(cfg.get("mapping")), start, stop, stride,
                             frac, seed, batch, is_open)


def _format(fmt, path: Path) -> str:
    if fmt is not None:
        return choice({"format": fmt}, "format", tuple(FORMATS), prefix="reference", what="trajectory format")
    for name, exts in FORMATS.items():
        if path.suffix.lower() in exts:
            return name
    known = ", ".join(f"{e} ({n})" for n, exts in FORMATS.items() for e in exts)
    raise UserError(f"reference.file: cannot tell the format of {path.name} from its extension",
                    f"set reference.format to one of {', '.join(FORMATS)}, or name the file with one of {known}")


def _bead_map(cfg) -> BeadMap:
    M = "reference.mapping"
    example = "{beads: {W: 'resname SOL'}, per: residue, center: mass}"
    if cfg is None:
        raise UserError(f"{M} is missing", f"set {M}={example}")
    mapping(cfg, M, example)
    unknown = sorted(str(k) for k in cfg if k not in MAPPING_KEYS)
    if unknown:
        raise UserError(f"{M}: unknown key(s) {', '.join(unknown)}", f"remove them; the keys are {', '.join(MAPPING_KEYS)}")
    beads = cfg.get("beads")
    if not isinstance(beads, Mapping) or not beads:
        raise UserError(f"{M}.beads must map bead types to MDAnalysis selections, got {beads!r}",
                        f"set {M}.beads={{W: 'resname SOL'}}")
    for name, sel in beads.items():
        if not isinstance(sel, str) or not sel.strip():
            raise UserError(f"{M}.beads.{name} must be an MDAnalysis selection string, got {sel!r}",
                            f"set {M}.beads.{name}='resname SOL' (or 'name OW', 'index 0:2', ...)")
    per = choice(cfg, "per", PER, prefix=M, default="residue", what="grouping")
    center = choice(cfg, "center", CENTERS, prefix=M, default="site" if per == "heavy_atom" else "mass",
                    what="bead centre")
    site = cfg.get("site")
    on_heavy_atom = per == "heavy_atom" and site is None     # center=site without site: on the heavy atom
    if center == "site" and not on_heavy_atom and (not isinstance(site, str) or not site.strip()):
        raise UserError(f"{M}.center=site needs {M}.site, the MDAnalysis selection of each bead's position atom "
                        f"(got {site!r})", f"set {M}.site='name OW' (one atom of every bead)")
    if center != "site" and site is not None:
        raise UserError(f"{M}.site={site!r} is set but {M}.center={center}",
                        f"set {M}.center=site to place beads on that atom, or remove {M}.site")
    return BeadMap(tuple((str(k), str(v)) for k, v in beads.items()), per, center, site)
