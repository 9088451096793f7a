"""The coarse-grained mapping: atom frames -> bead positions and mapped forces.

A bead is a group of atoms chosen by an MDAnalysis selection per bead type, split per residue,
per molecule (bonded fragment), per atom (one chosen atom per molecule: e.g. ``name OW``), per
heavy atom (each non-hydrogen atom of the selection with the hydrogens bonded to it, whether
selected or not: a united-atom map such as alanine dipeptide onto its 10 heavy atoms) or not
at all (the whole selection is one bead). Its position is the centre of mass or of geometry of
its atoms, or one of its atoms (``center: site``, the atom ``site`` selects, e.g. a water
molecule's oxygen; per heavy atom without ``site``, the heavy atom), taken after the bead is
made whole across the periodic boundaries (every atom at its minimum image from the bead's
first atom: a bead must be smaller than half the box), then wrapped back into the box. In open
space (``reference.open``, no box) positions are used as they are: no image, no wrapping.
Its mapped force is the sum of the forces on its atoms: the multiscale coarse-graining
(force-matching) force of a non-overlapping linear map (Noid et al., J. Chem. Phys. 128, 244114
(2008)). That holds for any site whose weights sum to 1 over the bead's atoms (centre of mass,
of geometry, one atom): moving the whole bead by δ moves its site by δ, so the summed force is
the mean force's estimator (Noid et al.'s condition Σ_i c_Ii d_Ii = 1 with d = 1 on the bead's
atoms). Constraint forces between atoms of one bead (a rigid water, the X–H bonds of a heavy
atom's bead) cancel in the sum.

Beads are ordered by bead type (as listed in ``reference.mapping.beads``), then by their first
atom (per heavy atom: by the heavy atom, which is the bead's first entry). Selections must not
share atoms, nor may a hydrogen be bonded to two heavy atoms of the map.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .settings import BeadMap


@dataclass(frozen=True)
class CGMap:
    """``atoms`` (A,): atom indices bead by bead, each bead's contiguous from ``offsets[b]``;
    ``weights`` (A,): centre weights, summing to 1 within a bead; ``bead_types`` (B,): the type
    of each bead, an index into ``type_names``."""

    atoms: np.ndarray
    offsets: np.ndarray
    weights: np.ndarray
    bead_types: np.ndarray
    type_names: tuple[str, ...]

    @property
    def n_beads(self) -> int:
        return len(self.offsets)

    @property
    def bead_of_atom(self) -> np.ndarray:
        """(A,) the bead of each entry of ``atoms``."""
        sizes = np.diff(np.append(self.offsets, len(self.atoms)))
        return np.repeat(np.arange(self.n_beads), sizes)

    def positions(self, x: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
        """Bead centres (F, B, 3) in [0, box) of atom positions ``x`` (F, N, 3) in boxes (F, 3);
        ``boxes`` None (open space): the centres of the atoms as they are, nothing wrapped."""
        first = x[:, self.atoms[self.offsets]]                       # (F, B, 3) each bead's first atom
        d = x[:, self.atoms] - first[:, self.bead_of_atom]           # (F, A, 3)
        if boxes is not None:
            box = boxes[:, None, :]
            d -= box * np.round(d / box)                             # whole beads: minimum images
        c = first + np.add.reduceat(self.weights[None, :, None] * d, self.offsets, axis=1)
        return c if boxes is None else c - box * np.floor(c / box)

    def forces(self, f: np.ndarray) -> np.ndarray:
        """Mapped forces (F, B, 3): the sum of the atom forces ``f`` (F, N, 3) of each bead."""
        return np.add.reduceat(f[:, self.atoms], self.offsets, axis=1)


def build(universe, bead_map: BeadMap) -> CGMap:
    """The map of ``bead_map`` on the atoms of ``universe`` (an MDAnalysis Universe)."""
    groups, types = [], []
    for k, (name, selection) in enumerate(bead_map.beads):
        for g in _bead_groups(universe, name, selection, bead_map.per):
            groups.append(np.asarray(getattr(g, "indices", g), dtype=int))   # an AtomGroup or index array
            types.append(k)
    atoms = np.concatenate(groups)
    _check_overlap(atoms, groups, types, bead_map)
    offsets = np.cumsum([0] + [len(g) for g in groups[:-1]])
    weights = np.concatenate([_weights(universe, g, bead_map, bead_map.beads[t][0]) for g, t in zip(groups, types)])
    return CGMap(atoms, offsets, weights, np.asarray(types), tuple(n for n, _ in bead_map.beads))


def _bead_groups(universe, name: str, selection: str, per: str) -> list:
    key = f"reference.mapping.beads.{name}"
    try:
        ag = universe.select_atoms(selection)
    except AttributeError as exc:  # NoDataError: a property the topology lacks (residues without a topology)
        raise UserError(f"{key}: the selection {selection!r} needs an atom property the reference's topology lacks "
                        f"({exc})", "give reference.topology (a .gro, .tpr, .pdb or LAMMPS data file of the same atoms), "
                        "or select by name, type or index") from None
    except Exception as exc:  # noqa: BLE001 - MDAnalysis's SelectionError / ValueError on a user's selection string
        raise UserError(f"{key}: MDAnalysis cannot parse the selection {selection!r} ({exc})",
                        "write an MDAnalysis selection, e.g. 'resname SOL', 'name OW', 'type 1', 'index 0:2'") from None
    if len(ag) == 0:
        raise UserError(f"{key}: the selection {selection!r} matches no atom of the reference",
                        "check names against the topology (reference.topology); e.g. 'resname SOL' or 'name OW'")
    if per == "selection":
        return [ag]
    if per == "heavy_atom":
        return _heavy_atom_groups(universe, ag)
    if per == "molecule":
        try:
            fragments = ag.fragments
        except AttributeError as exc:  # NoDataError: no bonds in this topology
            raise UserError(f"reference.mapping.per=molecule: the topology has no bonds to find molecules by ({exc})",
                            "give a topology with bonds (reference.topology: a .tpr, .psf or LAMMPS data file), "
                            "or use reference.mapping.per=residue") from None
        return [f.intersection(ag) for f in fragments]   # a molecule's selected atoms
    parts = ag.split(per)
    if per == "residue" and len(parts) == 1 and len(universe.residues) == 1 and len(ag) > 1:
        raise UserError(f"{key}: reference.mapping.per=residue but the reference has no residues "
                        "(all atoms in one)", "give reference.topology (e.g. a .gro or .pdb with residues) "
                        "or map per atom (reference.mapping.per=atom)")
    return parts


def _is_hydrogen(atoms) -> np.ndarray:
    """(n,) True for hydrogen atoms: element H where the topology has elements, else (and for an
    atom with a blank element) a name starting with H."""
    names = np.char.upper(np.asarray(atoms.names, dtype=str))
    by_name = np.char.startswith(names, "H")
    try:
        elements = np.char.strip(np.asarray(atoms.elements, dtype=str))
    except AttributeError:  # NoDataError: no elements in this topology
        return by_name
    known = elements != ""
    return np.where(known, np.char.upper(elements) == "H", by_name)


def _heavy_atom_groups(universe, ag) -> list[np.ndarray]:
    """[heavy atom, its bonded hydrogens (ascending)] for every non-hydrogen atom of ``ag``."""
    try:
        bonds = universe.atoms.bonds.indices
    except AttributeError:  # NoDataError: no bonds in this topology
        bonds = []
    if len(bonds) == 0:   # e.g. a .gro, or a .pdb without CONECT records
        raise UserError("reference.mapping.per=heavy_atom: the topology has no bonds to find each heavy atom's "
                        "hydrogens by", "give a topology with bonds (reference.topology: a .pdb with CONECT "
                        "records, .tpr, .psf or LAMMPS data file)")
    hydrogen = _is_hydrogen(universe.atoms)
    heavy = ag.indices[~hydrogen[ag.indices]]
    if len(heavy) == 0:
        raise UserError("reference.mapping.per=heavy_atom: the selection matches only hydrogens",
                        "select the heavy atoms (or whole residues) of the molecule, e.g. 'resname ALA'")
    partners = {int(i): [] for i in heavy}
    for i, j in np.asarray(bonds, dtype=int).reshape(-1, 2):
        for a, b in ((i, j), (j, i)):
            if a in partners and hydrogen[b]:
                partners[a].append(int(b))
    return [np.array([i] + sorted(partners[int(i)]), dtype=int) for i in heavy]


def _check_overlap(atoms: np.ndarray, groups: list, types: list, bead_map: BeadMap) -> None:
    uniq, counts = np.unique(atoms, return_counts=True)
    if np.all(counts == 1):
        return
    atom = int(uniq[np.argmax(counts > 1)])
    owners = [bead_map.beads[t][0] for g, t in zip(groups, types) if atom in g]
    raise UserError(f"reference.mapping.beads: atom {atom} belongs to more than one bead "
                    f"(types {', '.join(dict.fromkeys(owners))}): overlapping beads have no MS-CG mapped force here",
                    "make the selections disjoint (e.g. add 'and not name OW' to one of them)")


def _weights(universe, g: np.ndarray, bead_map: BeadMap, name: str) -> np.ndarray:
    if bead_map.center == "site" and bead_map.site is None:   # per heavy atom: on the heavy atom, g[0]
        return np.eye(1, len(g)).ravel()
    if bead_map.center == "site":
        return _site_weights(universe, g, bead_map.site, name)
    if bead_map.center == "geometry" or len(g) == 1:   # a single-atom bead is its atom, whatever its mass
        return np.full(len(g), 1.0 / len(g))
    masses = universe.atoms.masses if hasattr(universe.atoms, "masses") else None   # a topology attribute or none
    m = None if masses is None else np.asarray(masses, dtype=np.float64)[g]
    if m is None or not np.all(np.isfinite(m)) or np.any(m < 0) or m.sum() <= 0:
        raise UserError(f"reference.mapping.center=mass: the atoms of bead type {name} have no masses "
                        f"(got {None if m is None else m.tolist()})",
                        "give reference.topology with masses (.tpr, .gro/.pdb with element names, LAMMPS data), "
                        "or use reference.mapping.center=geometry")
    return m / m.sum()


def _site_weights(universe, g: np.ndarray, site: str, name: str) -> np.ndarray:
    """Weight 1 on the bead's one atom that the ``site`` selection matches, 0 on the others."""
    key = "reference.mapping.site"
    try:
        chosen = np.isin(g, universe.select_atoms(site).indices)
    except Exception as exc:  # noqa: BLE001 - MDAnalysis's SelectionError / NoDataError on a user's string
        raise UserError(f"{key}: MDAnalysis cannot use the selection {site!r} ({exc})",
                        "write an MDAnalysis selection of one atom per bead, e.g. 'name OW'") from None
    if chosen.sum() != 1:
        raise UserError(f"{key}={site!r} matches {int(chosen.sum())} atoms of a bead of type {name} "
                        f"(atoms {g[:6].tolist()}{' ...' if len(g) > 6 else ''}); a site is one atom per bead",
                        "select exactly one atom of every bead, e.g. 'name OW'")
    return chosen.astype(np.float64)
