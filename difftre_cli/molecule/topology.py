"""The topology of coarse-grained molecules: which beads are bonded, the bond angles and proper
dihedrals of the bond graph, and the bead pairs that non-bonded terms skip (exclusions).

The ``topology`` config group (a mapping, or null for none):

- ``file``: a YAML topology (extension .yaml/.yml, format below) or any topology file MDAnalysis
  reads (PSF, PDB with CONECT records, GROMACS .itp/.tpr, ...; a GROMACS .top is read as ITP);
  relative paths are looked up in the working directory, then in the project root;
- ``format``: null (from the extension), ``yaml``, or an MDAnalysis topology format (PSF, ITP, ...);
- ``exclusions``: 0..3 (default 2): non-bonded terms skip pairs at most that many bonds apart
  (1: 1-2 pairs, 2: also 1-3 pairs, as force fields do, 3: also 1-4 pairs);
- ``angles`` / ``dihedrals``: ``auto`` (default: every angle / proper dihedral of the bond graph),
  ``file`` (only those the file lists) or ``none``.

YAML format (bonds, angles and dihedrals name beads by their name when it is unique, or by
0-based index)::

    beads:                 # in the order of the coarse-grained particles
      - {name: CH3, type: CH3}
      - {name: C, type: C}
    bonds: [[CH3, C], [1, 2]]
    angles: [[0, 1, 2]]    # optional
    dihedrals: []          # optional

An all-atom topology is mapped onto beads with ``atom_to_bead`` (see :func:`read`). Canonical
forms: bonds (i, j) with i < j, angles (i, j, k) with the angle at j and i < k, dihedrals
(i, j, k, l) with i < l; rows sorted, each term once.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from ..checks import choice, input_file, mapping, number
from ..errors import UserError
from .topology_files import ARITY, Raw, file_format, read_mda, read_yaml

KEYS = ("file", "format", "exclusions", "angles", "dihedrals")
LIST_MODES = ("auto", "file", "none")
EXAMPLE = "topology=alanine_dipeptide (configs/topology/), or {file: mol.yaml, exclusions: 2}"


@dataclass(frozen=True, eq=False)
class Topology:
    """Beads (``names``, ``types``) and their bonded terms as index arrays in canonical form
    (module docstring). ``exclusions``: the ``topology.exclusions`` setting, the ``n_bonds`` that
    non-bonded terms pass to :meth:`nonbonded_pairs`. Compared and hashed by identity."""

    names: tuple[str, ...]
    types: tuple[str, ...]
    bonds: np.ndarray
    angles: np.ndarray
    dihedrals: np.ndarray
    exclusions: int = 2

    def __post_init__(self):
        for kind, width in ARITY.items():
            object.__setattr__(self, kind, np.asarray(getattr(self, kind), dtype=np.int64).reshape(-1, width))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "types", tuple(str(t) for t in self.types))

    @property
    def n_beads(self) -> int:
        return len(self.names)

    @property
    def type_names(self) -> tuple[str, ...]:
        """The bead types in order of first appearance."""
        return tuple(dict.fromkeys(self.types))

    @property
    def species(self) -> np.ndarray:
        """(N,) each bead's type as an index into :attr:`type_names`."""
        index = {t: i for i, t in enumerate(self.type_names)}
        return np.array([index[t] for t in self.types], dtype=np.int64)

    def excluded_pairs(self, n_bonds: int) -> np.ndarray:
        """(E, 2) the pairs i < j at most ``n_bonds`` bonds apart (shortest path in the bond
        graph): 0 none, 1 the 1-2 pairs, 2 also the 1-3 pairs, 3 also the 1-4 pairs."""
        if n_bonds < 0:
            raise ValueError(f"n_bonds must be >= 0, got {n_bonds}")
        nb = _neighbors(self.bonds, self.n_beads)
        pairs = []
        for i in range(self.n_beads):
            seen, frontier = {i}, {i}
            for _ in range(n_bonds):
                frontier = {k for j in frontier for k in nb[j]} - seen
                seen |= frontier
            pairs.extend((i, j) for j in seen if j > i)
        return _sorted_rows(np.array(pairs, dtype=np.int64).reshape(-1, 2))

    def nonbonded_pairs(self, n_bonds: int) -> np.ndarray:
        """(P, 2) every pair i < j that :meth:`excluded_pairs` does not list."""
        n = self.n_beads
        i, j = np.triu_indices(n, k=1)
        ex = self.excluded_pairs(n_bonds)
        keep = ~np.isin(i * n + j, ex[:, 0] * n + ex[:, 1])
        return np.stack([i[keep], j[keep]], axis=1).astype(np.int64)


def _neighbors(bonds, n: int) -> list[list[int]]:
    nb = [set() for _ in range(n)]
    for i, j in np.asarray(bonds, dtype=np.int64).reshape(-1, 2):
        nb[i].add(int(j))
        nb[j].add(int(i))
    return [sorted(s) for s in nb]


def _sorted_rows(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])] if len(rows) else rows


def canonical(rows, kind: str) -> np.ndarray:
    """Rows of a term ``kind`` (bonds, angles, dihedrals) in canonical orientation (first index
    below the last; a bond's two beads ascending), sorted."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, ARITY[kind])
    flip = rows[:, 0] > rows[:, -1]
    rows = np.where(flip[:, None], rows[:, ::-1], rows)
    return _sorted_rows(rows)


def generate_angles(bonds, n: int) -> np.ndarray:
    """(A, 3) every angle i-j-k of the bond graph of ``n`` beads (two bonds sharing bead j), once."""
    nb = _neighbors(bonds, n)
    rows = [(i, j, k) for j in range(n) for i, k in combinations(nb[j], 2)]
    return canonical(rows, "angles")


def generate_dihedrals(bonds, n: int) -> np.ndarray:
    """(D, 4) every proper dihedral i-j-k-l of the bond graph (bonds i-j, j-k, k-l; i ≠ l), once."""
    nb = _neighbors(bonds, n)
    rows = [(i, j, k, last) for j, k in canonical(bonds, "bonds")
            for i in nb[j] if i != k for last in nb[k] if last not in (j, i)]
    return canonical(rows, "dihedrals")


def check_count(topology: Topology, n: int, what: str, key: str = "topology") -> None:
    """UserError unless the topology has ``n`` beads; ``what`` completes the sentence, e.g.
    ``check_count(top, 12, "the reference trajectory maps to")`` says "topology has 10 beads
    but the reference trajectory maps to 12"."""
    if topology.n_beads != n:
        raise UserError(f"{key} has {topology.n_beads} beads but {what} {n}",
                        f"make {key}.file list one bead per coarse-grained particle ({n}), in their order")


def read(cfg, n_atoms: int | None = None, atom_to_bead=None, bead_types=None, key: str = "topology"):
    """The :class:`Topology` of the config group ``cfg`` (module docstring), None if ``cfg`` is None.

    ``atom_to_bead`` (n_atoms,) int, −1 for atoms in no bead: the coarse-grained mapping of an
    all-atom topology file; beads I ≠ J are bonded when an atom of I is bonded to an atom of J,
    named after their first atom and typed by ``bead_types`` (one type name per bead; None: the
    first atom's type). A file whose particles are already the beads is used as it is.
    ``n_atoms``: without a mapping, the number of particles the file must have (None: any)."""
    if cfg is None:
        return None
    path, fmt, exclusions, modes = _settings(cfg, key)
    raw = read_yaml(path, key) if fmt == "yaml" else read_mda(path, fmt, key)
    mapped = atom_to_bead is not None and len(raw.names) != _n_mapped(atom_to_bead)
    if mapped:
        if len(raw.names) != len(atom_to_bead):
            raise UserError(f"{key}.file {path.name} has {len(raw.names)} particles, but the mapping has "
                            f"{len(atom_to_bead)} atoms in {_n_mapped(atom_to_bead)} beads",
                            f"give {key}.file the topology of the mapped atoms or of the beads")
        raw = _map_atoms(raw, atom_to_bead, bead_types, modes, key)
    elif atom_to_bead is None and n_atoms is not None and len(raw.names) != n_atoms:
        raise UserError(f"{key}.file {path.name} has {len(raw.names)} particles but the system has {n_atoms}",
                        f"give {key}.file with one particle per bead ({n_atoms})")
    return _assemble(raw, modes, exclusions, f"{key}.file ({path.name})", key)


def _n_mapped(atom_to_bead) -> int:
    a = np.asarray(atom_to_bead, dtype=np.int64)
    return int(a.max()) + 1 if a.size else 0


def _settings(cfg, key: str):
    mapping(cfg, key, EXAMPLE)
    unknown = sorted(str(k) for k in cfg if k not in KEYS)
    if unknown:
        raise UserError(f"{key}: unknown key(s) {', '.join(unknown)}",
                        f"remove them; the {key} keys are {', '.join(KEYS)}")
    if cfg.get("file") is None:
        raise UserError(f"{key}.file is missing", f"set {key}.file=/path/to/molecule.yaml (or {key}=none)")
    path = input_file(cfg.get("file"), f"{key}.file", what="topology file", example="molecule.yaml")
    exclusions = number(cfg, "exclusions", prefix=key, integer=True, lo=0, hi=3, required=False, default=2,
                        example="2")
    modes = {kind: choice(cfg, kind, LIST_MODES, prefix=key, default="auto", what=f"{kind} setting")
             for kind in ("angles", "dihedrals")}
    return path, file_format(cfg.get("format"), path, key), exclusions, modes


def _map_atoms(raw: Raw, atom_to_bead, bead_types, modes: dict, key: str) -> Raw:
    """An all-atom topology's beads (see :func:`read`)."""
    for kind in ("angles", "dihedrals"):
        if modes[kind] == "file":
            raise UserError(f"{key}.{kind}=file, but the file's {kind} are between atoms, not beads",
                            f"set {key}.{kind}=auto (from the bead bonds) or give a topology of the beads")
    a2b = np.asarray(atom_to_bead, dtype=np.int64)
    n = _n_mapped(a2b)
    atoms = np.flatnonzero(a2b >= 0)
    beads, first = np.unique(a2b[atoms], return_index=True)
    if len(beads) != n:
        raise ValueError(f"atom_to_bead leaves beads {sorted(set(range(n)) - set(beads))} without atoms")
    if bead_types is not None and len(bead_types) != n:
        raise ValueError(f"bead_types has {len(bead_types)} entries for {n} beads")
    first_atom = atoms[first]
    pairs = a2b[raw.bonds].reshape(-1, 2)
    pairs = pairs[(pairs >= 0).all(axis=1) & (pairs[:, 0] != pairs[:, 1])]
    bonds = np.unique(np.sort(pairs, axis=1), axis=0) if len(pairs) else pairs
    types = list(bead_types) if bead_types is not None else [raw.types[a] for a in first_atom]
    return Raw([raw.names[a] for a in first_atom], types, bonds)


def _assemble(raw: Raw, modes: dict, exclusions: int, where: str, key: str) -> Topology:
    n = len(raw.names)
    bonds = _checked(raw.bonds, "bonds", raw.names, where)
    if n > 1 and not len(bonds):
        raise UserError(f"{where} has no bonds", "list the bonds (a PDB file needs CONECT records)")
    lists = {}
    for kind, generate in (("angles", generate_angles), ("dihedrals", generate_dihedrals)):
        given = raw.__dict__[kind]
        if modes[kind] == "auto":
            lists[kind] = generate(bonds, n)
        elif modes[kind] == "none":
            lists[kind] = np.zeros((0, ARITY[kind]), np.int64)
        elif given is None:
            raise UserError(f"{key}.{kind}=file, but {where} lists no {kind}", f"set {key}.{kind}=auto, or list them")
        else:
            lists[kind] = _checked(given, kind, raw.names, where)
            _check_connected(lists[kind], bonds, kind, raw.names, where, key)
    return Topology(tuple(raw.names), tuple(raw.types), bonds, lists["angles"], lists["dihedrals"], exclusions)


def _label(row, names) -> str:
    return "-".join(f"{names[i]}({i})" for i in row)


def _checked(rows: np.ndarray, kind: str, names: list, where: str) -> np.ndarray:
    """Canonical rows; a UserError for a repeated bead in a row, or a term listed twice."""
    what = kind[:-1]
    for row in rows:
        if len(set(row.tolist())) < len(row):
            problem = "joins a bead to itself" if kind == "bonds" else "lists a bead twice"
            raise UserError(f"{where}: {what} {_label(row, names)} {problem}",
                            f"a {what} needs {len(row)} different beads: fix or remove it")
    rows = canonical(rows, kind)
    dup = np.flatnonzero((rows[1:] == rows[:-1]).all(axis=1))
    if len(dup):
        raise UserError(f"{where}: {what} {_label(rows[dup[0]], names)} is listed twice (in either direction)",
                        f"list each {what} once")
    return rows


def _check_connected(rows: np.ndarray, bonds: np.ndarray, kind: str, names: list, where: str, key: str) -> None:
    """UserError for an angle or dihedral whose consecutive beads are not all bonded."""
    bonded = {(int(i), int(j)) for i, j in bonds}
    for row in rows:
        for a, b in zip(row[:-1], row[1:]):
            if (min(a, b), max(a, b)) not in bonded:
                raise UserError(f"{where}: {kind[:-1]} {_label(row, names)} is not connected by bonds: no bond "
                                f"between {names[a]}({a}) and {names[b]}({b})",
                                f"add that bond, remove the {kind[:-1]}, or set {key}.{kind}=auto")


def atom_to_bead_of(cg_map, n_atoms: int) -> tuple[np.ndarray, list[str]]:
    """``(atom_to_bead, bead_types)`` for :func:`read` from a reference mapping (an object with
    ``atoms``, ``bead_of_atom``, ``bead_types`` and ``type_names``, as reference/mapping.CGMap)."""
    a2b = np.full(n_atoms, -1, dtype=np.int64)
    a2b[np.asarray(cg_map.atoms)] = np.asarray(cg_map.bead_of_atom)
    return a2b, [cg_map.type_names[t] for t in cg_map.bead_types]
