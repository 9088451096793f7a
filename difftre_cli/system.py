"""The simulated system: box, initial positions, species and masses."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from . import units as units_mod
from .checks import choice, input_file, mapping, number
from .errors import UserError


@dataclass(frozen=True)
class System:
    """A periodic cubic box of ``n_particles`` particles, or particles in open space
    (``box_size`` None: a molecule in vacuum or implicit solvent; ``volume`` is NaN, no pressure).

    Attributes are in the unit system ``units`` (lengths in σ or nm).
    ``positions`` has shape (N, 3) and lies in [0, box_size) (open space: anywhere).
    """

    n_particles: int
    box_size: float | None
    kT: float
    mass: float
    positions: np.ndarray
    units: units_mod.UnitSystem
    species: np.ndarray  # (N,) int, index into species_names
    species_names: tuple = ("X",)

    @property
    def n_species(self) -> int:
        return len(self.species_names)

    @property
    def counts(self) -> tuple:
        """Number of particles of each species, in the order of ``species_names``."""
        return tuple(int(np.sum(self.species == k)) for k in range(self.n_species))

    @property
    def periodic(self) -> bool:
        return self.box_size is not None

    @property
    def volume(self) -> float:
        return float("nan") if self.box_size is None else self.box_size ** 3

    @property
    def density(self) -> float:
        return self.n_particles / self.volume


_FCC = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
#: conventional cubic cells: sc (1 site), fcc (4), diamond (8: fcc + the fcc shifted by (¼, ¼, ¼))
LATTICE_BASES = {"sc": np.zeros((1, 3)), "fcc": _FCC, "diamond": np.concatenate([_FCC, _FCC + 0.25])}


def lattice_positions(n: int, box_size: float, kind: str = "fcc") -> np.ndarray:
    """First ``n`` sites of a cubic (``sc``), face-centred cubic (``fcc``) or diamond-cubic
    (``diamond``) lattice filling the box, conventional cells aligned with the box axes.
    ``diamond`` needs whole cells (n = 8 k³): a partly filled diamond lattice is not a crystal."""
    basis = LATTICE_BASES[kind]
    cells = math.ceil((n / len(basis)) ** (1.0 / 3.0) - 1e-9)
    if kind == "diamond" and 8 * cells ** 3 != n:
        raise UserError(f"system.n_particles={n}: a diamond lattice fills the box with whole 8-atom cells "
                        "(n = 8 k³: 64, 216, 512, 1000, ...)",
                        f"set system.n_particles={8 * cells ** 3} or {8 * (cells - 1) ** 3}")
    grid = np.stack(np.meshgrid(*[np.arange(cells)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = (grid[:, None, :] + basis[None]).reshape(-1, 3)[:n]
    return (sites + 0.25) * (box_size / cells)


@dataclass(frozen=True)
class Structure:
    """Positions and cubic box read from a structure file, in the system's length unit."""

    positions: np.ndarray   # (N, 3), wrapped into [0, box_size) (open space: as in the file)
    box_size: float | None
    path: str


def read_structure(path, fmt: str | None, unit: str | None, unit_system, key: str = "system.structure",
                   periodic: bool = True) -> Structure:
    """Read positions and the periodic box with ``ase.io.read`` (last frame; format from the
    extension unless ``fmt``), convert lengths with ``unit`` (see units.structure_length_factor)
    and check them: atoms present, finite coordinates, one species, a periodic cubic cell.
    ``periodic`` False (a molecule in open space): positions only; a cell and the atoms' species
    are ignored (a molecule's bead types come from its topology)."""
    p = input_file(path, key, what="structure file", example="start.xyz")
    factor = units_mod.structure_length_factor(unit, unit_system)
    import ase.io   # ase: heavy, only for structure files (system.structure)
    from ase.io.formats import UnknownFileTypeError

    try:
        atoms = ase.io.read(str(p), format=fmt or None)
    except UnknownFileTypeError as exc:
        if fmt:
            raise UserError(f"system.structure_format: ase does not know the format {fmt!r} ({exc})",
                            "use an ase format name such as extxyz, xyz, proteindatabank, gromacs, cif, "
                            "lammps-data, vasp") from None
        raise UserError(f"{key}: cannot tell the format of {p} from its name ({exc})",
                        "rename it with a known extension (.xyz, .extxyz, .pdb, .gro, .cif, .data) "
                        "or set system.structure_format=<ase format>") from None
    except Exception as exc:  # ase raises many kinds on garbage or truncated input
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{key}: cannot read structure file {p} ({fmt or 'format from the extension'}): "
                        f"{type(exc).__name__}: {detail[:200]}",
                        "check that the file is complete and in the declared format "
                        "(system.structure_format), e.g. write it with ase.io.write") from None
    if isinstance(atoms, list):   # a format that returns frames
        if not atoms:
            raise UserError(f"{key}: structure file {p} contains no frames", "write at least one frame")
        atoms = atoms[-1]
    n = len(atoms)
    if n == 0:
        raise UserError(f"{key}: structure file {p} contains no atoms", "write the atoms' positions into it")
    pos = np.asarray(atoms.get_positions(), dtype=float)
    bad = ~np.all(np.isfinite(pos), axis=1)
    if bad.any():
        raise UserError(f"{key}: structure file {p} has NaN or infinite coordinates "
                        f"(atom {int(np.argmax(bad))}, {int(bad.sum())} atom(s) in all)",
                        "fix or remove those atoms")
    if not periodic:
        return Structure(positions=pos * factor, box_size=None, path=str(p))
    symbols = sorted(set(atoms.get_chemical_symbols()))
    if len(symbols) > 1:
        raise UserError(f"{key}: structure file {p} has several species {symbols}; difftre simulates "
                        "one species (one pair potential) so far",
                        "write all particles as one element, or use a one-component structure")
    cell = np.asarray(atoms.cell.array, dtype=float)
    if atoms.cell.rank < 3 or not np.all(atoms.pbc):
        raise UserError(f"{key}: structure file {p} has no periodic 3-D cell (pbc={atoms.pbc.tolist()}); "
                        "difftre simulates a periodic cubic box",
                        "write the box into the file (extxyz: Lattice=\"L 0 0 0 L 0 0 0 L\" pbc=\"T T T\"; "
                        "PDB: a CRYST1 record; .gro: the box line)")
    if not np.all(np.isfinite(cell)):
        raise UserError(f"{key}: structure file {p} has a NaN or infinite cell", "fix the box in the file")
    lengths = np.diag(cell)
    off = cell - np.diag(lengths)
    edge = float(lengths[0])
    if (edge <= 0 or np.max(np.abs(off)) > 1e-6 * abs(edge)
            or np.max(np.abs(lengths - edge)) > 1e-6 * abs(edge)):
        abc = ", ".join(f"{v:.6g}" for v in atoms.cell.lengths())
        angles = ", ".join(f"{v:.6g}" for v in atoms.cell.angles())
        raise UserError(f"{key}: structure file {p} has a non-cubic cell (lengths {abc}; angles {angles}); "
                        "difftre's box is a cube with one edge length along x, y, z",
                        "write a cubic, axis-aligned cell into the file (e.g. replicate or re-box it with ase)")
    box = edge * factor
    pos = np.mod(pos * factor, box)
    pos = np.where(pos >= box, 0.0, pos)   # np.mod can round up to the box edge itself
    return Structure(positions=pos, box_size=box, path=str(p))


def min_image_distance(positions: np.ndarray, box_size: float) -> tuple[float, int, int]:
    """Smallest minimum-image distance between two particles, and the pair (i, j)."""

    pos = np.mod(np.asarray(positions, dtype=float), box_size)
    pos = np.where(pos >= box_size, 0.0, pos)
    tree = cKDTree(pos, boxsize=box_size)
    d, idx = tree.query(pos, k=2)
    i = int(np.argmin(d[:, 1]))
    return float(d[i, 1]), i, int(idx[i, 1])


def species_from_config(spec, n: int, prefix: str = "system") -> tuple[tuple, np.ndarray]:
    """Species names and the (N,) species index of every particle from ``system.species``.

    ``spec`` maps each species name to its mole fraction, e.g. ``{A: 0.25, B: 0.75}``; the
    fractions must sum to 1 and are rounded to whole particles (the last species takes the
    remainder). Particles are assigned to lattice sites by a fixed random permutation (seed 0),
    so the initial structure is mixed and the same for every run. ``None`` means one species.
    """

    if spec is None:
        return ("X",), np.zeros(n, dtype=np.int32)
    mapping(spec, f"{prefix}.species", f"{prefix}.species={{A: 0.5, B: 0.5}}")
    names = tuple(str(k) for k in spec)
    if not names:
        raise UserError(f"{prefix}.species is empty", f"set {prefix}.species={{A: 0.5, B: 0.5}} or null")
    for name in names:
        if not name.isidentifier():
            raise UserError(f"{prefix}.species: species name {name!r} is not a plain name (letters, digits, _)",
                            "use names like A, B, Ar, Kr")
    fractions = []
    for name in names:
        x = spec[name]
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.0 < x <= 1.0:
            raise UserError(f"{prefix}.species.{name} must be a mole fraction in (0, 1], got {x!r}",
                            f"set {prefix}.species.{name}=0.5")
        fractions.append(float(x))
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError(f"{prefix}.species: the mole fractions {dict(zip(names, fractions))} sum to "
                        f"{sum(fractions):.6g}, not 1", "make the fractions of all species sum to 1")
    counts = [int(round(x * n)) for x in fractions[:-1]]
    counts.append(n - sum(counts))
    if min(counts) < 1:
        raise UserError(f"{prefix}.species: with {n} particles the fractions give counts "
                        f"{dict(zip(names, counts))}; every species needs at least one particle",
                        f"raise {prefix}.n_particles or the smallest fraction")
    species = np.repeat(np.arange(len(names), dtype=np.int32), counts)
    return names, np.random.default_rng(0).permutation(species).astype(np.int32)


def build_system(cfg) -> System:
    """Build the :class:`System` from the ``system`` config group.

    Initial positions come from ``structure`` (a file ase can read; its cubic periodic box
    sets the box) or else from a ``lattice`` filling the box set by ``density`` or
    ``box_size``. Every problem is a :class:`UserError` naming the ``system.*`` key.
    """

    if cfg.get("periodic", True) is False:
        raise UserError("system.periodic=false (open space) is for a molecule, and topology is none",
                        "select the molecule's topology (topology=alanine_dipeptide or topology.file=PATH), "
                        "or set system.periodic=true with a box")
    unit_system = units_mod.get(cfg.get("units", "lj"))
    units_mod.check_thermal(unit_system, cfg.get("kT"), cfg.get("temperature"))
    if cfg.get("kT") is not None:
        number(cfg, "kT", prefix="system", lo=0, lo_open=True, example="1.0")
    else:
        number(cfg, "temperature", prefix="system", lo=0, lo_open=True, example="300")
    kT = units_mod.kT_of(unit_system, cfg.get("kT"), cfg.get("temperature"))
    mass = number(cfg, "mass", prefix="system", lo=0, lo_open=True, required=False, default=1.0, example="1.0")
    structure = cfg.get("structure")
    n = number(cfg, "n_particles", prefix="system", integer=True, lo=2, required=structure is None, example="1000")
    box_cfg = number(cfg, "box_size", prefix="system", lo=0, lo_open=True, required=False, example="10.0")
    density = None
    if box_cfg is None or structure is not None:
        density = number(cfg, "density", prefix="system", lo=0, lo_open=True,
                         required=structure is None, example="0.7")
    if structure is not None:
        fmt = cfg.get("structure_format")
        if fmt is not None and not isinstance(fmt, str):
            raise UserError(f"system.structure_format must be an ase format name, got {fmt!r}",
                            "set system.structure_format=extxyz (or null: from the extension)")
        st = read_structure(structure, fmt, cfg.get("structure_unit"), unit_system)
        n_file = len(st.positions)
        if n is not None and n != n_file:
            raise UserError(f"system.n_particles={n} but system.structure {st.path} holds {n_file} atoms",
                            f"set system.n_particles={n_file} (or null to take it from the file), "
                            "or give a structure with the number you want")
        if n_file < 2:
            raise UserError(f"system.structure {st.path} holds {n_file} atom; at least 2 are needed",
                            "give a structure with more particles")
        n, box = n_file, st.box_size
        L = unit_system.length
        if box_cfg is not None and abs(box_cfg - box) > 1e-3 * box:
            raise UserError(f"system.box_size={box_cfg:g} disagrees with the cubic box of system.structure "
                            f"{st.path} (edge {box:.6g} {L})",
                            "set system.box_size=null to take the box from the file (or fix the file)")
        if density is not None and abs(density - n / box ** 3) > 1e-3 * (n / box ** 3):
            raise UserError(f"system.density={density:g} disagrees with system.structure {st.path} "
                            f"({n} atoms in a box of edge {box:.6g} {L}: density {n / box ** 3:.6g})",
                            "set system.density=null to take the density from the file's box, "
                            f"or system.density={n / box ** 3:.6g}")
        pos = st.positions
    else:
        box = box_cfg if box_cfg is not None else (n / density) ** (1.0 / 3.0)
        lattice = choice(cfg, "lattice", tuple(LATTICE_BASES), prefix="system", default="fcc", what="lattice")
        pos = lattice_positions(n, box, lattice)
    names, species = species_from_config(cfg.get("species"), n)
    if structure is not None and len(names) > 1:
        raise UserError("system.species together with system.structure is not supported yet (the species of a "
                        "structure file's atoms are not read)", "use a lattice start (system.structure=null)")
    return System(n_particles=n, box_size=box, kT=kT, mass=mass,
                  positions=pos, units=unit_system, species=species, species_names=names)
