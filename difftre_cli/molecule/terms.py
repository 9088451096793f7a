"""The bonded terms of a molecule as arrays, and their energy:

    U = Σ_bonds ½ k (r − r0)² + Σ_angles ½ k (θ − θ0)² + Σ_dihedrals Σ_n k_n (1 + cos(n φ − δ_n))

with r in nm, k_bond in kJ mol⁻¹ nm⁻², θ, θ0 and δ_n in radians, k_angle in kJ mol⁻¹ rad⁻², k_n
in kJ/mol, multiplicities n = 1..M (the GROMACS type-9 / CHARMM dihedral form) and φ the IUPAC
dihedral of geometry.py. Built from the config by bonded.py or fitted by boltzmann.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from . import geometry

#: index-tuple width of each kind of term
ARITY = {"bonds": 2, "angles": 3, "dihedrals": 4}


@dataclass(frozen=True, eq=False)
class BondedTerms:
    """Index arrays and parameters of every bonded term (module docstring for the units):
    ``bonds`` (B, 2), ``k_bond`` and ``r0`` (B,); ``angles`` (A, 3) with the angle at the middle
    bead, ``k_angle`` and ``theta0`` (A,); ``dihedrals`` (D, 4), ``k_dihedral`` and ``phase``
    (D, M), column n − 1 for multiplicity n. Compared and hashed by identity (numpy fields)."""

    bonds: np.ndarray
    k_bond: np.ndarray
    r0: np.ndarray
    angles: np.ndarray
    k_angle: np.ndarray
    theta0: np.ndarray
    dihedrals: np.ndarray
    k_dihedral: np.ndarray
    phase: np.ndarray

    def __post_init__(self):
        for kind, width in ARITY.items():
            object.__setattr__(self, kind, np.asarray(getattr(self, kind), dtype=np.int64).reshape(-1, width))
        for name in ("k_bond", "r0", "k_angle", "theta0"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        m = np.shape(self.k_dihedral)[-1] if np.ndim(self.k_dihedral) == 2 else 1
        for name in ("k_dihedral", "phase"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1, m))

    @property
    def n_terms(self) -> int:
        """M, the number of multiplicities of the dihedral cosine series."""
        return self.k_dihedral.shape[1]

    def term_energies(self, R, box=None) -> dict:
        """Each term's energy (kJ/mol) at positions ``R`` (N, 3) in nm: ``{"bonds": (B,),
        "angles": (A,), "dihedrals": (D,)}``. ``box``: periodic cubic box edge or None."""
        dtype = jnp.result_type(R, float)
        r = geometry.bond_lengths(R, self.bonds, box)
        theta = geometry.angles(R, self.angles, box)
        phi = geometry.dihedrals(R, self.dihedrals, box)
        n = jnp.arange(1, self.n_terms + 1, dtype=dtype)
        k_d, phase = jnp.asarray(self.k_dihedral, dtype), jnp.asarray(self.phase, dtype)
        return {"bonds": 0.5 * jnp.asarray(self.k_bond, dtype) * (r - jnp.asarray(self.r0, dtype)) ** 2,
                "angles": 0.5 * jnp.asarray(self.k_angle, dtype) * (theta - jnp.asarray(self.theta0, dtype)) ** 2,
                "dihedrals": jnp.sum(k_d * (1.0 + jnp.cos(n * phi[:, None] - phase)), axis=-1)}

    def energy(self, R, box=None):
        """The total bonded energy (kJ/mol), a JAX scalar, of positions ``R`` (N, 3) in nm."""
        return sum(jnp.sum(e) for e in self.term_energies(R, box).values())
