"""Topology files as read (molecule/topology.py): the beads' names and types and the bonded rows
of a YAML topology (the format in topology.py's docstring) or of any topology file MDAnalysis
reads, before mapping atoms onto beads and checking the terms."""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..deferred_imports import mdanalysis
from ..errors import UserError

YAML_EXTENSIONS = (".yaml", ".yml")
YAML_KEYS = ("beads", "bonds", "angles", "dihedrals")
#: number of beads of each term kind (a term's singular name is the kind without its final s)
ARITY = {"bonds": 2, "angles": 3, "dihedrals": 4}


@dataclass
class Raw:
    """A topology as read; angles and dihedrals None where the file has none."""

    names: list
    types: list
    bonds: np.ndarray
    angles: np.ndarray | None = None
    dihedrals: np.ndarray | None = None


def file_format(fmt, path: Path, key: str) -> str | None:
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


def read_mda(path: Path, fmt: str | None, key: str) -> Raw:
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
    return Raw(list(atoms.names), list(types), np.zeros((0, 2), np.int64) if bonds is None else bonds,
                _indices(u, "angles"), _indices(u, "dihedrals"))


def _indices(u, kind: str) -> np.ndarray | None:
    """(T, width) atom indices of ``u``'s bonds/angles/dihedrals; None if the file has none."""
    try:
        rows = getattr(u, kind).indices
    except (mdanalysis().exceptions.NoDataError, AttributeError):
        return None
    return np.asarray(rows, dtype=np.int64).reshape(-1, ARITY[kind])


def read_yaml(path: Path, key: str) -> Raw:
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
    return Raw(names, types, lists["bonds"], lists["angles"], lists["dihedrals"])


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
