"""Per-snapshot stress of a periodic system for any potential (pair, many-body, neural network),
and the Born terms of the stress-fluctuation formula, by autodiff with respect to the strain.

Conventions
-----------
- **Sign: tension positive.** A stretched crystal has σ > 0; an ideal gas has σ = −ρ k_B T · I,
  i.e. σ = −P for a hydrostatic state (pressure P = −tr σ / 3). This is the sign of
  ``elastic.stress_voigt`` and the opposite of LAMMPS's ``pxx`` (a pressure).
- **Voigt order** (xx, yy, zz, yz, xz, xy) as in :mod:`.elastic`. Stresses are the tensor
  components (no factor 2 on shears); strains are Voigt vectors with engineering shears
  e4 = 2 ε_yz, …, turned into a symmetric matrix by ``elastic.strain_matrix``. With these,
  ∂U/∂e_α is Ω σ_α for every α and ∂²U/∂e_α∂e_β is Ω C_αβ (C44 = C_yzyz).
- **Box**: a (3, 3) matrix h whose *columns* are the lattice vectors (JAX MD's
  ``space.periodic_general``); Cartesian positions are R = frac @ hᵀ. A homogeneous deformation
  F maps h → F h and every position r → F r (fractional coordinates unchanged). Volume Ω = |det h|.
- **Units** are those of the energy and length (metal units: eV, Å → stress in eV Å⁻³;
  ``units.GPA_PER_EV_A3`` converts to GPa). Momenta p = m v in mass·length/time of the same system.

Stress
------
σ = σ_kin + σ_conf with σ_kin = −(1/Ω) Σ_i p_i ⊗ p_i / m_i (:func:`kinetic_stress`) and

    σ_conf = (1/Ω) ∂U(F h, F R)/∂ε |_{ε=0} = (1/Ω) [ −Σ_i F_i ⊗ R_i + (∂U/∂h) hᵀ ]

(F_i the force on atom i; the second form is :func:`box_derivative_stress`, the formulation of
the virial valid for many-body and neural-network potentials under periodic boundaries, written
for column lattice vectors; with row vectors it reads −FᵀR + (∂U/∂h)ᵀ h). For a pair potential
both reduce to −(1/Ω) Σ_{i<j} r_ij ⊗ f_ij, the textbook pair virial. :func:`born_stress` computes
σ_conf as a gradient with respect to the six strain components, which is what the observable engine uses.

Born terms and the strain measure
---------------------------------
:func:`born_terms` returns σ^B = (1/Ω) ∂U/∂η and C^B = (1/Ω) ∂²U/∂η∂η at η = 0, with η the
Lagrangian (Green) strain, F = (I + 2η)^{1/2}; the code uses F = I + η − η²/2, which has the
same FᵀF = I + 2η up to second order and hence the same first and second derivatives at η = 0
(U depends on F only through FᵀF, being rotation invariant). The Lagrangian C^B is the one that
enters the stress-fluctuation formula (Lutsko, J. Appl. Phys. 65, 2991 (1989); Clavier et al.,
Mol. Simul. 43, 1413 (2017)); for a pair potential it is (1/Ω) Σ (φ'' − φ'/r) r_i r_j r_k r_l / r².
``measure="linear"`` (F = I + ε, as in ``elastic.affine_voigt``) gives the same σ^B and a C^B
that differs by terms linear in the stress; the two agree at zero stress only.

Protocol for the observable engine (see :mod:`.stiffness` for the ensemble side)
---------------------------------------------------------------------------------
For every stored snapshot i (fractional positions ``frac_i`` in the box ``h`` of the NVT run)
and the current parameters θ::

    u_i = energy_of_strain_fractional(energy_fn_θ, frac_i, neighbor=nbrs_i)   # e ↦ U_θ(F(e) h, F(e) R_i)
    sB_i, CB_i = born_terms(u_i, volume)                  # (6,), (6, 6); both depend on θ
    w = reweight.weights(beta, U_θ, U_ref)                # (S,)
    C = stiffness.reweighted_stiffness(w, sB, CB, n, volume, kT)

``energy_fn_θ(frac, neighbor=..., perturbation=F)`` is any JAX MD energy on a
``periodic_general(box, fractional_coordinates=True)`` space (the ``perturbation`` keyword
applies F to every displacement); an energy that takes Cartesian positions and the box instead,
``energy(R, box)``, goes through :func:`energy_of_strain_cartesian`. ``jax.vmap`` or
``lax.map`` over the snapshots; everything is differentiable in θ.

Cost: one forward-over-reverse pass (6 JVPs of the gradient with respect to the 6 strain
components) per snapshot, about 6 Hessian-vector products. Measured for SW silicon, N = 216 at
300 K, float64 on this 2-core CPU (shared, medians): energy 1.2 ms, forces 1.9 ms, σ^B alone
2.2 ms, σ^B and C^B together 30 ms (one Hessian-vector product 4.0 ms; jacfwd∘jacfwd is 110 ms).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from .elastic import VOIGT_PAIRS, strain_matrix

MEASURES = ("lagrangian", "linear")


def deformation(e, measure: str = "lagrangian"):
    """Deformation gradient F (3, 3) of the Voigt strain ``e`` (engineering shears).

    ``lagrangian``: F = I + η − η²/2, the symmetric stretch (I + 2η)^{1/2} to second order
    (exact for first and second derivatives at η = 0); ``linear``: F = I + ε."""
    m = strain_matrix(e)
    eye = jnp.eye(3, dtype=m.dtype)
    if measure == "lagrangian":
        return eye + m - 0.5 * m @ m
    if measure == "linear":
        return eye + m
    raise ValueError(f"unknown strain measure {measure!r}; use one of {MEASURES}")


def energy_of_strain_fractional(energy_fn: Callable, frac, measure: str = "lagrangian", **kwargs) -> Callable:
    """``e ↦ U(F(e) h, F(e) R)`` for a JAX MD energy on ``periodic_general`` with fractional
    coordinates: ``energy_fn(frac, perturbation=F, **kwargs)`` (kwargs e.g. ``neighbor=``)."""
    return lambda e: energy_fn(frac, perturbation=deformation(e, measure), **kwargs)


def energy_of_strain_cartesian(energy_fn: Callable, R, box, measure: str = "lagrangian") -> Callable:
    """``e ↦ U(F(e) R, F(e) h)`` for an energy of Cartesian positions R (N, 3) and the box h
    (columns are lattice vectors): ``energy_fn(R, box)``."""
    def u(e):
        F = deformation(e, measure)
        return energy_fn(R @ F.T, F @ box)
    return u


def _zero_strain(dtype=None):
    return jnp.zeros(6, dtype=dtype if dtype is not None else jnp.result_type(float))


def born_stress(energy_of_strain: Callable, volume, dtype=None):
    """Configurational (Born) stress σ^B = (1/Ω) ∂U/∂e at e = 0, Voigt (6,), energy/length³."""
    return jax.grad(energy_of_strain)(_zero_strain(dtype)) / volume


def born_stiffness(energy_of_strain: Callable, volume, dtype=None):
    """Born stiffness C^B = (1/Ω) ∂²U/∂e∂e at e = 0, Voigt (6, 6), energy/length³."""
    return born_terms(energy_of_strain, volume, dtype)[1]


def born_terms(energy_of_strain: Callable, volume, dtype=None):
    """``(σ^B, C^B)`` together: one forward-over-reverse pass (the gradient comes for free)."""
    def grad_twice(e):
        g = jax.grad(energy_of_strain)(e)
        return g, g
    H, g = jax.jacfwd(grad_twice, has_aux=True)(_zero_strain(dtype))
    return g / volume, 0.5 * (H + H.T) / volume


def tensor_to_voigt_stress(s):
    """Symmetric (…, 3, 3) stress → (…, 6) Voigt (xx, yy, zz, yz, xz, xy), tensor components."""
    s = 0.5 * (s + jnp.swapaxes(s, -1, -2))
    return jnp.stack([s[..., i, j] for i, j in VOIGT_PAIRS], axis=-1)


def voigt_to_tensor_stress(v):
    """(…, 6) Voigt stress → symmetric (…, 3, 3)."""
    v = jnp.asarray(v)
    rows = [[v[..., 0], v[..., 5], v[..., 4]],
            [v[..., 5], v[..., 1], v[..., 3]],
            [v[..., 4], v[..., 3], v[..., 2]]]
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def kinetic_stress(momenta, masses, volume):
    """σ_kin = −(1/Ω) Σ_i p_i ⊗ p_i / m_i, Voigt (6,). ``masses`` scalar or (N,)."""
    m = jnp.broadcast_to(jnp.asarray(masses, momenta.dtype), momenta.shape[:1])
    t = jnp.einsum("ia,ib,i->ab", momenta, momenta, 1.0 / m)
    return -tensor_to_voigt_stress(t) / volume


def virial_stress(energy_of_strain: Callable, momenta, masses, volume, dtype=None):
    """Instantaneous total stress σ_kin + σ^B, Voigt (6,), tension positive."""
    return kinetic_stress(momenta, masses, volume) + born_stress(energy_of_strain, volume, dtype)


def box_derivative_stress(energy_fn: Callable, R, box):
    """σ_conf = (1/Ω) [Σ_i ∂U/∂R_i ⊗ R_i + (∂U/∂h) hᵀ] = (1/Ω) [−Σ_i F_i ⊗ R_i + (∂U/∂h) hᵀ]
    for an energy ``energy_fn(R, box)`` of Cartesian positions and the box (columns are lattice
    vectors), Voigt (6,). Equals :func:`born_stress` of :func:`energy_of_strain_cartesian`; kept
    as the explicit form for potentials whose box dependence is easier to differentiate
    directly."""
    dR, dh = jax.grad(energy_fn, argnums=(0, 1))(R, box)
    W = dR.T @ R + dh @ box.T
    return tensor_to_voigt_stress(W) / jnp.abs(jnp.linalg.det(box))
