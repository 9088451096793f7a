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

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import yaml

from ..checks import choice, input_file, mapping, number
from ..deferred_imports import mdanalysis
from ..errors import UserError

KEYS = ("file", "format", "exclusions", "angles", "dihedrals")
LIST_MODES = ("auto", "file", "none")
YAML_EXTENSIONS = (".yaml", ".yml")
YAML_KEYS = ("beads", "bonds", "angles", "dihedrals")
EXAMPLE = "topology=alanine_dipeptide (configs/topology/), or {file: mol.yaml, exclusions: 2}"
#: number of beads of each term kind (a term's singular name is the kind without its final s)
ARITY = {"bonds": 2, "angles": 3, "dihedrals": 4}


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


@dataclass
class _Raw:
    """A topology as read; angles and dihedrals None where the file has none."""

    names: list
    types: list
    bonds: np.ndarray
    angles: np.ndarray | None = None
    dihedrals: np.ndarray | None = None


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
    raw = _read_yaml(path, key) if fmt == "yaml" else _read_mda(path, fmt, key)
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
    return path, _format(cfg.get("format"), path, key), exclusions, modes


def _format(fmt, path: Path, key: str) -> str | None:
    """``yaml``, an MDAnalysis format name, or None (MDAnalysis picks it from the extension)."""
    if fmt is None:
        if path.suffix.lower() in YAML_EXTENSIONS:
            return "yaml"
        if path.suffix.lower() != ".top":
            return None
        with open(path, errors="replace") as fh:   # GROMACS has [ section ] lines, AMBER %FLAG lines
            return "ITP" if any(line.lstrip().startswith("[") for line, _ in zip(fh, range(200))) else None
    if not isinstance(fmt, str):
        raise UserError(f"{key}.format must be a format name, got {fmt!r}", f"set {key}.format=yaml, PSF, ITP, ...")
    if fmt.lower() == "yaml":
        return "yaml"
    known = mdanalysis()._PARSERS
    if fmt.upper() not in known:
        raise UserError(f"{key}.format: unknown topology format {fmt!r}",
                        f"use yaml or one of MDAnalysis's: {', '.join(sorted(known))}")
    return fmt.upper()


def _read_mda(path: Path, fmt: str | None, key: str) -> _Raw:
    mda = mdanalysis()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # guessed masses/elements: nothing here uses them
            u = mda.Universe(str(path), topology_format=fmt)
    except Exception as exc:   # the parsers raise many kinds (ValueError, IndexError, OSError, ...)
        raise UserError(f"{key}.file: cannot read {path} as a topology ({type(exc).__name__}: {exc})",
                        f"check the file, or set {key}.format to its format (yaml, PSF, PDB, ITP, TPR, ...)") from None
    atoms = u.atoms
    types = atoms.types if hasattr(atoms, "types") else atoms.names
    bonds = _indices(u, "bonds")
    return _Raw(list(atoms.names), list(types), np.zeros((0, 2), np.int64) if bonds is None else bonds,
                _indices(u, "angles"), _indices(u, "dihedrals"))


def _indices(u, kind: str) -> np.ndarray | None:
    """(T, width) atom indices of ``u``'s bonds/angles/dihedrals; None if the file has none."""
    try:
        rows = getattr(u, kind).indices
    except (mdanalysis().exceptions.NoDataError, AttributeError):
        return None
    return np.asarray(rows, dtype=np.int64).reshape(-1, ARITY[kind])


def _read_yaml(path: Path, key: str) -> _Raw:
    where = f"{key}.file ({path.name})"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{where}: cannot read it as YAML ({exc})", "fix the YAML syntax (see configs/topology/data/)")
    example = "{beads: [{name: A, type: A}, ...], bonds: [[0, 1], ...]}"
    if not isinstance(data, Mapping):
        raise UserError(f"{where} must hold a mapping of beads and bonds", f"write it as {example}")
    unknown = sorted(str(k) for k in data if k not in YAML_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}", f"the keys are {', '.join(YAML_KEYS)}")
    names, types = _beads(data.get("beads"), where)
    lists = {kind: _resolve(data.get(kind), kind, names, where) for kind in ARITY}
    return _Raw(names, types, lists["bonds"], lists["angles"], lists["dihedrals"])


def _beads(beads, where: str) -> tuple[list, list]:
    if not isinstance(beads, Sequence) or isinstance(beads, str) or not beads:
        raise UserError(f"{where}: 'beads' must be a non-empty list", "list the beads as [{name: A, type: A}, ...]")
    names, types = [], []
    for b, bead in enumerate(beads):
        if isinstance(bead, str):
            bead = {"name": bead}
        if not isinstance(bead, Mapping) or not isinstance(bead.get("name"), (str, int)) \
                or set(bead) - {"name", "type"}:
            raise UserError(f"{where}: beads[{b}] must be {{name: NAME, type: TYPE}}, got {bead!r}",
                            "give each bead a name and a type (the type defaults to the name)")
        names.append(str(bead["name"]))
        types.append(str(bead.get("type", bead["name"])))
    return names, types


def _resolve(rows, kind: str, names: list, where: str) -> np.ndarray | None:
    """Rows of bead names or indices as an index array; None if the file lists none of ``kind``."""
    if rows is None:
        return None if kind != "bonds" else np.zeros((0, 2), np.int64)
    width, what = ARITY[kind], kind[:-1]
    if isinstance(rows, str) or not isinstance(rows, Sequence):
        raise UserError(f"{where}: '{kind}' must be a list of {width}-bead lists",
                        f"write it as [[{', '.join(map(str, range(width)))}], ...]")
    out = []
    for t, row in enumerate(rows):
        if isinstance(row, str) or not isinstance(row, Sequence) or len(row) != width:
            raise UserError(f"{where}: {kind}[{t}] must list {width} beads, got {row!r}",
                            f"write each {what} as {width} bead names or indices")
        out.append([_bead_index(b, names, f"{kind}[{t}]", where) for b in row])
    return np.array(out, dtype=np.int64).reshape(-1, width)


def _bead_index(b, names: list, at: str, where: str) -> int:
    n = len(names)
    if isinstance(b, bool) or not isinstance(b, (int, str)):
        raise UserError(f"{where}: {at}: {b!r} is neither a bead name nor an index",
                        "name beads by name or 0-based index")
    if isinstance(b, int):
        if not 0 <= b < n:
            raise UserError(f"{where}: {at}: bead index {b} out of range (there are {n} beads, 0..{n - 1})",
                            "use a 0-based bead index below the number of beads")
        return b
    hits = [i for i, name in enumerate(names) if name == b]
    if not hits:
        raise UserError(f"{where}: {at}: unknown bead {b!r}", f"use one of the bead names ({', '.join(names)}) "
                                                              f"or an index 0..{n - 1}")
    if len(hits) > 1:
        raise UserError(f"{where}: {at}: bead name {b!r} is used by beads {', '.join(map(str, hits))}, so it "
                        "cannot name one", "give the beads unique names, or refer to them by 0-based index")
    return hits[0]


def _map_atoms(raw: _Raw, atom_to_bead, bead_types, modes: dict, key: str) -> _Raw:
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
    return _Raw([raw.names[a] for a in first_atom], types, bonds)


def _assemble(raw: _Raw, modes: dict, exclusions: int, where: str, key: str) -> Topology:
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
