"""Bonded energy terms of coarse-grained molecules (a prior of the learned potential):

    U = Σ_bonds ½ k (r − r0)² + Σ_angles ½ k (θ − θ0)² + Σ_dihedrals Σ_n k_n (1 + cos(n φ − δ_n))

with r in nm, k_bond in kJ mol⁻¹ nm⁻², θ, θ0 and δ_n in radians, k_angle in kJ mol⁻¹ rad⁻², k_n
in kJ/mol, multiplicities n = 1..M (the GROMACS type-9 / CHARMM dihedral form) and φ the IUPAC
dihedral of geometry.py. Energies in kJ/mol (any consistent units work the same way).

The ``prior.bonded`` config (null: no bonded terms)::

    bonded:
      fit: null            # or boltzmann_inversion: every term's parameters from the reference
      dihedral_terms: 3    # M, the multiplicities 1..M of the cosine series
      bonds:    {"*": {k: 200000.0, r0: 0.15}, "C-N": {k: 300000.0, r0: 0.133}}   # kJ mol⁻¹ nm⁻², nm
      angles:   {"*": {k: 400.0, theta0: 115.0}}                    # kJ mol⁻¹ rad⁻², theta0 in DEGREES
      dihedrals: {"*": {k: [0.0], phase: [0.0]}}                     # kJ/mol per multiplicity, DEGREES

Entries are keyed by the bead types of the term joined by "-" (either direction); "*" is the
default of terms no key matches. ``fit: boltzmann_inversion`` fits every bond, angle and dihedral
on its own (boltzmann.py) and takes no explicit entries.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..checks import mapping, number
from ..errors import UserError
from . import boltzmann
from .terms import ARITY, BondedTerms

KEYS = ("fit", "dihedral_terms", "bonds", "angles", "dihedrals")
FITS = ("boltzmann_inversion",)
EXAMPLES = {"bonds": "{k: 200000.0, r0: 0.15}", "angles": "{k: 400.0, theta0: 115.0}",
            "dihedrals": "{k: [1.0], phase: [0.0]}"}
EXAMPLE = "{fit: null, dihedral_terms: 3, bonds: {'*': " + EXAMPLES["bonds"] + "}, angles: ..., dihedrals: ...}"


def build(cfg, topology, kT: float, positions=None, box=None, prefix: str = "prior.bonded") -> BondedTerms | None:
    """The bonded terms of ``topology`` configured by ``cfg`` (the ``prior.bonded`` mapping; None:
    no bonded terms, None returned). With ``fit: boltzmann_inversion``, ``positions`` (F, N, 3)
    in nm are the reference frames of the beads (``box``: their periodic box edge(s) or None)
    and ``kT`` (kJ/mol) their temperature; otherwise parameters come from the tables by type."""
    if cfg is None:
        return None
    mapping(cfg, prefix, EXAMPLE)
    unknown = sorted(str(k) for k in cfg if k not in KEYS)
    if unknown:
        raise UserError(f"{prefix}: unknown key(s) {', '.join(unknown)}",
                        f"remove them; the {prefix} keys are {', '.join(KEYS)}")
    if topology is None:
        raise UserError(f"{prefix} is set but there is no topology (which beads are bonded)",
                        f"choose one (e.g. topology=alanine_dipeptide), or set {prefix}=null")
    fit = cfg.get("fit")
    if fit is not None and fit not in FITS:
        raise UserError(f"{prefix}.fit: unknown fit method {fit!r}", f"set {prefix}.fit=boltzmann_inversion or null")
    m = number(cfg, "dihedral_terms", prefix=prefix, integer=True, lo=1, hi=boltzmann.MAX_TERMS, required=False,
               default=3, example="3")
    if fit is not None:
        return _fitted(cfg, topology, kT, positions, box, m, prefix)
    tables = {kind: _table(cfg.get(kind), kind, topology, m, prefix) for kind in ARITY}
    p = {kind: [_lookup(tables[kind], row, kind, topology, prefix) for row in getattr(topology, kind)]
         for kind in ARITY}
    b, a = (np.array(p[kind], dtype=np.float64).reshape(-1, 2) for kind in ("bonds", "angles"))
    d = np.array(p["dihedrals"], dtype=np.float64).reshape(-1, 2, m)
    return BondedTerms(topology.bonds, b[:, 0], b[:, 1], topology.angles, a[:, 0], a[:, 1],
                       topology.dihedrals, d[:, 0], d[:, 1])


def _fitted(cfg, topology, kT, positions, box, m: int, prefix: str) -> BondedTerms:
    given = [kind for kind in ARITY if cfg.get(kind) is not None]
    if given:
        raise UserError(f"{prefix}.fit=boltzmann_inversion fits every term, but {prefix} also sets "
                        f"{', '.join(given)}", f"set {', '.join(f'{prefix}.{k}=null' for k in given)}, "
                                               f"or {prefix}.fit=null to use them")
    if positions is None:
        raise UserError(f"{prefix}.fit=boltzmann_inversion needs reference frames of the molecule",
                        f"configure a reference trajectory (reference=...), or set {prefix}.fit=null "
                        f"with explicit {prefix}.bonds/angles/dihedrals")
    return boltzmann.fit(positions, topology, kT, box=box, dihedral_terms=m, key=prefix)


def _table(cfg, kind: str, topology, m: int, prefix: str) -> dict:
    """{canonical type tuple or ("*",): parameters} of ``prior.bonded.<kind>``."""
    at = f"{prefix}.{kind}"
    if cfg is None:
        return {}
    mapping(cfg, at, "{'*': " + EXAMPLES[kind] + "}")
    table = {}
    for key, entry in cfg.items():
        parts = ("*",) if key == "*" else tuple(str(key).split("-"))
        if parts != ("*",) and len(parts) != ARITY[kind]:
            raise UserError(f"{at}: key {key!r} must name {ARITY[kind]} bead types joined by '-', or be '*'",
                            f"e.g. {at}.{'-'.join(topology.type_names[:1] * ARITY[kind])}")
        bad = [t for t in parts if parts != ("*",) and t not in topology.type_names]   # no partial wildcards
        if bad:
            raise UserError(f"{at}.{key}: unknown bead type(s) {', '.join(bad)}",
                            f"the topology's types are {', '.join(topology.type_names)}")
        canon = min(parts, parts[::-1])
        if canon in table:
            raise UserError(f"{at}: {key!r} and another key name the same types", "keep one of them")
        table[canon] = _parameters(entry, kind, m, f"{at}.{key}")
    return table


def _parameters(entry, kind: str, m: int, at: str) -> list:
    """[k, x0] in internal units (radians): bonds and angles scalars, dihedrals lists of M."""
    mapping(entry, at, EXAMPLES[kind])
    keys = {"bonds": ("k", "r0"), "angles": ("k", "theta0"), "dihedrals": ("k", "phase")}[kind]
    unknown = sorted(str(k) for k in entry if k not in keys)
    if unknown:
        raise UserError(f"{at}: unknown key(s) {', '.join(unknown)}", f"give {' and '.join(keys)}: {EXAMPLES[kind]}")
    if kind == "dihedrals":
        return _series(entry, m, at)
    k = number(entry, "k", prefix=at, lo=0.0, example="1000.0")
    if kind == "bonds":
        return [k, number(entry, "r0", prefix=at, lo=0.0, lo_open=True, example="0.15")]
    return [k, math.radians(number(entry, "theta0", prefix=at, lo=0.0, hi=180.0, example="115.0"))]


def _series(entry, m: int, at: str) -> list:
    """[k (M,), phase (M,) in radians] of a dihedral entry, zero-padded to M terms."""
    k, phase = (_number_list(entry.get(key), m, f"{at}.{key}", lo) for key, lo in (("k", 0.0), ("phase", None)))
    if len(k) != len(phase):
        raise UserError(f"{at}: k has {len(k)} terms but phase has {len(phase)}",
                        "give one phase (degrees) per force constant, multiplicities 1, 2, ... in order")
    pad = [0.0] * (m - len(k))
    return [k + pad, [math.radians(x) for x in phase] + pad]


def _number_list(v, m: int, at: str, lo: float | None) -> list[float]:
    """A number or a list of 1..m finite numbers (each >= ``lo`` unless None)."""
    v = [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    ok = isinstance(v, Sequence) and not isinstance(v, str) and 0 < len(v) <= m and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (lo is None or x >= lo)
        for x in v)
    if not ok:
        bound = f", each >= {lo:g}" if lo is not None else ""
        raise UserError(f"{at} must be a list of 1..{m} (dihedral_terms) finite numbers{bound}, got {v!r}",
                        f"set {at}=[{'1.0' if lo is not None else '0.0'}] (one per multiplicity 1, 2, ...)")
    return [float(x) for x in v]


def _lookup(table: dict, row, kind: str, topology, prefix: str) -> list:
    types = tuple(topology.types[i] for i in row)
    canon = min(types, types[::-1])
    if canon in table:
        return table[canon]
    if ("*",) in table:
        return table[("*",)]
    label = "-".join(f"{topology.names[i]}({i})" for i in row)
    key = "-".join(canon)
    raise UserError(f"{prefix}.{kind}: no parameters for the {kind[:-1]} {label} (types {key})",
                    f"add {prefix}.{kind}.{key}: {EXAMPLES[kind]}, or a default '*'")
