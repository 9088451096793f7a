"""Boltzmann inversion of bonded terms (as VOTCA's csg_boltzmann does): every bond, angle and
dihedral of a topology gets its own parameters from its distribution over reference frames,
a starting point for the bonded prior (bonded.py), not a converged coarse-grained force field.

Method, per term (β = 1/kT, kT in kJ/mol):

- bond r (nm): p(r) ∝ r² exp(−βU(r)). The samples, weighted by 1/r² (the Jacobian), are a sample
  of exp(−βU); for U = ½k(r − r0)² that is a Gaussian of mean r0 and variance s² = kT/k, so
  r0 = the weighted mean, k = kT / (weighted variance), in kJ mol⁻¹ nm⁻²;
- angle θ (rad): p(θ) ∝ sin θ exp(−βU(θ)): the same with weights 1/sin θ (sin θ taken ≥
  SIN_FLOOR, so that a frame at an exactly straight angle does not dominate), k in kJ mol⁻¹ rad⁻²;
- dihedral φ: no Jacobian. A periodic histogram of φ (``bins`` bins on (−π, π]) with
  ``pseudocount`` added to every bin (empty bins stay finite) gives U_b = −kT ln p_b; a weighted
  linear least-squares fit of c0 + Σ_n (a_n cos nφ + b_n sin nφ), n = 1..M, with weights
  ∝ counts + pseudocount (the sparse, noisy regions count little, but an empty region still
  pulls the fit up rather than being left free), gives k_n = √(a_n² + b_n²) ≥ 0 and
  δ_n = atan2(b_n, a_n), since k_n (1 + cos(nφ − δ_n)) = k_n + k_n cos δ_n cos nφ
  + k_n sin δ_n sin nφ (the constant is irrelevant).

Limits: the harmonic fits are exact for a harmonic term sampled on its own; a multimodal or
skewed distribution (coupled terms, several conformers) gets the harmonic term of the same
mean and variance, too soft. A term that does not fluctuate (e.g. a constrained bond) would get
an infinite k: the variance is floored at (VAR_FLOOR × scale)², which caps k. Angles near 0 or
180° are truncated distributions: the moments are then biased. Terms are fitted independently
(no iteration against the coarse-grained model's own distributions, as iterative Boltzmann
inversion would do). A cosine series of M terms resolves features of width ~2π/M only.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from . import geometry
from .terms import BondedTerms
from .topology import check_count

#: fewest frames a fit accepts
MIN_FRAMES = 10
#: largest number of dihedral multiplicities
MAX_TERMS = 12
#: smallest sin θ in the angle weights 1/sin θ
SIN_FLOOR = 1e-3
#: smallest standard deviation relative to the scale (r0 for bonds; 1 rad for angles)
VAR_FLOOR = 1e-4


def fit(positions, topology, kT: float, box=None, dihedral_terms: int = 3, bins: int = 72,
        pseudocount: float = 1.0, key: str = "prior.bonded") -> BondedTerms:
    """Bonded terms of every bond, angle and dihedral of ``topology`` from frames ``positions``
    (F, N, 3) in nm at temperature ``kT`` (kJ/mol) (module docstring). ``box``: None (open space),
    the periodic box edge, or per-frame edges (F,) or (F, 3); ``dihedral_terms``: M;
    ``bins``: the dihedral histogram's bins; ``pseudocount``: added to each bin's count."""
    x = np.asarray(positions, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"positions must have shape (frames, beads, 3), got {x.shape}")
    check_count(topology, x.shape[1], "the reference frames have")
    if len(x) < MIN_FRAMES:
        raise UserError(f"{key}.fit=boltzmann_inversion needs at least {MIN_FRAMES} reference frames, got {len(x)}",
                        "use more frames of the reference trajectory (reference.start/stop/stride)")
    if not kT > 0 or not 1 <= dihedral_terms <= MAX_TERMS or bins < 2 * dihedral_terms + 2:
        raise ValueError(f"need kT > 0, 1 <= dihedral_terms <= {MAX_TERMS}, bins > 2 dihedral_terms + 1; "
                         f"got {kT}, {dihedral_terms}, {bins}")
    box = _box(box, len(x))
    r = np.asarray(geometry.bond_lengths(x, topology.bonds, box), np.float64).reshape(len(x), -1)
    theta = np.asarray(geometry.angles(x, topology.angles, box), np.float64).reshape(len(x), -1)
    phi = np.asarray(geometry.dihedrals(x, topology.dihedrals, box), np.float64).reshape(len(x), -1)
    k_bond, r0 = harmonic(r, 1.0 / r ** 2, kT, VAR_FLOOR * np.mean(r, axis=0))
    k_angle, theta0 = harmonic(theta, 1.0 / np.maximum(np.sin(theta), SIN_FLOOR), kT, VAR_FLOOR)
    series = [cosine_series(phi[:, d], kT, dihedral_terms, bins, pseudocount) for d in range(phi.shape[1])]
    k_d = np.array([s[0] for s in series]).reshape(-1, dihedral_terms)
    phase = np.array([s[1] for s in series]).reshape(-1, dihedral_terms)
    return BondedTerms(topology.bonds, k_bond, r0, topology.angles, k_angle, theta0,
                              topology.dihedrals, k_d, phase)


def _box(box, n_frames: int):
    """The box edge(s) broadcast against (F, T, 3) bond vectors, or None."""
    if box is None:
        return None
    b = np.asarray(box, dtype=np.float64)
    if b.ndim == 0 or b.shape == (3,):
        return b
    if b.shape in ((n_frames,), (n_frames, 1), (n_frames, 3)):
        return b.reshape(n_frames, 1, -1)
    raise ValueError(f"box must be an edge, (3,), ({n_frames},) or ({n_frames}, 3); got shape {b.shape}")


def harmonic(x: np.ndarray, weights: np.ndarray, kT: float, floor) -> tuple[np.ndarray, np.ndarray]:
    """(k, x0) of ½k(x − x0)² per column of samples ``x`` (F, T) whose Jacobian-corrected weights
    are ``weights`` (F, T): x0 the weighted mean, k = kT / weighted variance (variance floored at
    ``floor``², a scalar or (T,))."""
    w = weights / np.sum(weights, axis=0)
    x0 = np.sum(w * x, axis=0)
    var = np.sum(w * (x - x0) ** 2, axis=0)
    return kT / np.maximum(var, np.asarray(floor) ** 2), x0


def cosine_series(phi: np.ndarray, kT: float, terms: int, bins: int = 72,
                  pseudocount: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(k_n, δ_n), n = 1..``terms``, of Σ k_n (1 + cos(nφ − δ_n)) fitted to −kT ln p(φ) of the
    samples ``phi`` (F,) in radians (module docstring); k_n ≥ 0 in kT's unit, δ_n in (−π, π]."""
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    counts, _ = np.histogram(np.asarray(phi, dtype=np.float64), bins=edges)
    centers = 0.5 * (edges[1:] + edges[:-1])
    c = counts + pseudocount
    u = -kT * np.log(c / c.sum())
    n = np.arange(1, terms + 1)
    design = np.concatenate([np.ones((bins, 1)), np.cos(np.outer(centers, n)), np.sin(np.outer(centers, n))], axis=1)
    sw = np.sqrt(c / c.sum())
    coef, *_ = np.linalg.lstsq(design * sw[:, None], u * sw, rcond=None)
    a, b = coef[1:terms + 1], coef[terms + 1:]
    return np.hypot(a, b), np.arctan2(b, a)
