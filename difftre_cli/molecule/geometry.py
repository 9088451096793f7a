"""Internal coordinates of molecules, differentiable and jit-able: bond lengths, bond angles and
dihedral angles of index tuples into positions R (N, 3).

``box`` is the edge of a periodic cubic box (every bond vector taken at its minimum image) or
None for a molecule in open space (no minimum image at all). Conventions:

- the angle θ_ijk is the angle at the middle atom j, in [0, π];
- the dihedral φ_ijkl is the IUPAC/IUPAC–IUB one, in (−π, π]: the angle between the planes
  (i, j, k) and (j, k, l), positive when, looking along j → k, the bond k–l is rotated clockwise
  from i–j (trans = ±π, cis = 0); the same sign as MDAnalysis's ``calc_dihedrals`` and the
  backbone φ/ψ of proteins.
"""
from __future__ import annotations

import jax.numpy as jnp

from ..neighbors import minimum_image


def bond_vectors(R, i, j, box=None):
    """R_j − R_i for index arrays ``i``, ``j`` (minimum image in a periodic box)."""
    return minimum_image(R[..., j, :] - R[..., i, :], box)


def _norm(v, eps: float = 0.0):
    return jnp.sqrt(jnp.sum(v * v, axis=-1) + eps)


def bond_lengths(R, pairs, box=None):
    """|R_j − R_i| for each row (i, j) of ``pairs`` (B, 2)."""
    pairs = jnp.asarray(pairs)
    return _norm(bond_vectors(R, pairs[:, 0], pairs[:, 1], box))


def angles(R, triples, box=None):
    """The angle at j of each row (i, j, k) of ``triples`` (A, 3), in [0, π].

    Computed as atan2(|a × b|, a · b), accurate near 0 and π (arccos of the cosine is not), with
    a tiny ε under the square root so the gradient is finite at a straight angle."""
    t = jnp.asarray(triples)
    a = bond_vectors(R, t[:, 1], t[:, 0], box)
    b = bond_vectors(R, t[:, 1], t[:, 2], box)
    cross = jnp.cross(a, b)
    return jnp.arctan2(_norm(cross, 1e-30), jnp.sum(a * b, axis=-1))


def dihedrals(R, quads, box=None):
    """The dihedral of each row (i, j, k, l) of ``quads`` (D, 4), in (−π, π] (module docstring).

    φ = atan2(|b2| b1 · (b2 × b3), (b1 × b2) · (b2 × b3)) with b1 = R_j − R_i, b2 = R_k − R_j,
    b3 = R_l − R_k (Blondel & Karplus, J. Comput. Chem. 17, 1132 (1996)): no arccos, smooth
    everywhere except where three atoms are collinear."""
    q = jnp.asarray(quads)
    b1 = bond_vectors(R, q[:, 0], q[:, 1], box)
    b2 = bond_vectors(R, q[:, 1], q[:, 2], box)
    b3 = bond_vectors(R, q[:, 2], q[:, 3], box)
    n1 = jnp.cross(b1, b2)
    n2 = jnp.cross(b2, b3)
    y = _norm(b2) * jnp.sum(b1 * n2, axis=-1)
    x = jnp.sum(n1 * n2, axis=-1)
    return jnp.arctan2(y, x)
