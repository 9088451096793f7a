"""The backbone dihedrals (φ, ψ) of a capped amino acid (alanine dipeptide, ACE-ALA-NME) and the
populations of its conformational basins on the Ramachandran map.

Basins (degrees; every interval half-open [lo, hi); the first row that contains a point wins and
a point in no row is ``other``):

    ======  ==============  =============================  =====================================
    basin   φ               ψ                              minimum it holds (φ, ψ) ≈
    ======  ==============  =============================  =====================================
    αR      [−180, 0)       [−120, 50)                     (−70, −40)  right-handed helix
    C5      [−180, −110)    [50, 180) ∪ [−180, −120)       (−150, 160) extended β
    C7eq    [−110, 0)       [50, 180) ∪ [−180, −120)       (−80, 75), with PII (−75, 145)
    αL      [0, 180)        [0, 120)                       (60, 45)    left-handed helix
    C7ax    [0, 180)        [−120, 0)                      (70, −70)
    other   anything else   (φ > 0 with |ψ| ≥ 120)
    ======  ==============  =============================  =====================================

The basin names are the usual ones of the alanine dipeptide's conformers in vacuum and implicit
solvent (e.g. Apostolakis, Ferrara & Caflisch, J. Chem. Phys. 110, 2099 (1999); Bolhuis,
Dellago & Chandler, Proc. Natl. Acad. Sci. USA 97, 5877 (2000)). The rectangle edges are this
module's own choice, not a published table: they run along the free-energy barriers of the map
(φ = 0, and the ridges between αR and the extended region near ψ ≈ −120° and 50°), and C5 and
C7eq, one broad basin in implicit solvent, are split at φ = −110°. Populations depend a little
on those edges; compare only numbers computed with this table.
"""
from __future__ import annotations

import numpy as np

#: (name, φ interval, ψ intervals), degrees, half-open [lo, hi); first match wins
BASINS: tuple[tuple[str, tuple[float, float], tuple[tuple[float, float], ...]], ...] = (
    ("alpha_R", (-180.0, 0.0), ((-120.0, 50.0),)),
    ("C5", (-180.0, -110.0), ((50.0, 180.0), (-180.0, -120.0))),
    ("C7eq", (-110.0, 0.0), ((50.0, 180.0), (-180.0, -120.0))),
    ("alpha_L", (0.0, 180.0), ((0.0, 120.0),)),
    ("C7ax", (0.0, 180.0), ((-120.0, 0.0),)),
)
OTHER = "other"
#: every basin name, in table order, ``other`` last
NAMES = tuple(b[0] for b in BASINS) + (OTHER,)


def _degrees(angle) -> np.ndarray:
    """Radians -> degrees in [−180, 180) (180° itself becomes −180°)."""
    d = np.degrees(np.asarray(angle, dtype=np.float64))
    return (d + 180.0) % 360.0 - 180.0


def membership(f, s, xp=np):
    """(..., len(NAMES)) booleans: the basin of every (φ, ψ) given in degrees in [−180, 180) —
    the first table row containing the point, ``other`` for the rest. ``xp``: numpy, or
    jax.numpy inside a jitted observable (observables/basins.py): one rule for both."""
    taken = xp.zeros(xp.shape(f), bool)
    rows = []
    for _, (flo, fhi), psi_ranges in BASINS:
        inside = (f >= flo) & (f < fhi) & xp.any(xp.stack([(s >= lo) & (s < hi) for lo, hi in psi_ranges]), axis=0)
        rows.append(inside & ~taken)
        taken = taken | inside
    rows.append(~taken)
    return xp.stack(rows, -1)


def assign(phi, psi) -> np.ndarray:
    """The basin index (into :data:`NAMES`) of every (φ, ψ), both in radians, same shape."""
    f, s = np.broadcast_arrays(_degrees(phi), _degrees(psi))
    return np.argmax(membership(f, s), axis=-1)


def populations(phi, psi) -> dict[str, float]:
    """{basin name: fraction of the frames in it} for dihedrals ``phi``, ``psi`` (radians, one
    value per frame); the fractions sum to 1 (:data:`NAMES` order, ``other`` last)."""
    idx = assign(phi, psi).ravel()
    if idx.size == 0:
        raise ValueError("populations of no frame: phi and psi are empty")
    counts = np.bincount(idx, minlength=len(NAMES))
    return {name: float(c) / idx.size for name, c in zip(NAMES, counts)}


def phi_psi_indices(names) -> tuple[list[int], list[int]]:
    """(φ quad, ψ quad): atom indices of φ = C(prev)–N–CA–C and ψ = N–CA–C–N(next) of the one
    residue with a ``CA`` in the atom ``names`` (in bonded order, hydrogens anywhere or absent).

    For the 10 heavy atoms of ACE-ALA-NME — ACE CH3 C O, ALA N CA CB C O, NME N CH3 — this is
    ([1, 3, 4, 6], [3, 4, 6, 8]); for the 22 atoms of OpenMM's ACE-ALA-NME, ([4, 6, 8, 14],
    [6, 8, 14, 16]). C is the carbonyl carbon (name ``C``) and N the amide nitrogen (``N``)."""
    names = [str(n).strip() for n in names]
    ca = [i for i, n in enumerate(names) if n == "CA"]
    if len(ca) != 1:
        raise ValueError(f"need exactly one atom named CA, found {len(ca)} in {names}")
    a = ca[0]
    n_before = [i for i in range(a) if names[i] == "N"]
    c_after = [i for i in range(a + 1, len(names)) if names[i] == "C"]
    if not n_before or not c_after:
        raise ValueError(f"no N before or C after the CA in {names}")
    n, c = n_before[-1], c_after[0]
    c_prev = [i for i in range(n) if names[i] == "C"]
    n_next = [i for i in range(c + 1, len(names)) if names[i] == "N"]
    if not c_prev or not n_next:
        raise ValueError(f"no capping C before N or N after C in {names}: φ and ψ need both neighbours")
    return [c_prev[-1], n, a, c], [n, a, c, n_next[0]]
