"""Isothermal elastic stiffness at finite temperature by the stress-fluctuation method, built from
(reweighted) ensemble averages of per-snapshot Born terms, so that it is differentiable in the
potential's parameters θ (DiffTRe, Thaler & Zavadlav, Nat. Commun. 12, 6884 (2021)).

Canonical ensemble at constant strain (fixed box h, N atoms, temperature T, volume Ω):

    C_ijkl = ⟨C^B_ijkl⟩ − (Ω / k_B T) (⟨σ^B_ij σ^B_kl⟩ − ⟨σ^B_ij⟩⟨σ^B_kl⟩)
             + (N k_B T / Ω)(δ_ik δ_jl + δ_il δ_jk)

(Lutsko, J. Appl. Phys. 65, 2991 (1989); Clavier, Desbiens, Bourasseau, Lachet, Brusselle-Dupend
& Rousseau, Mol. Simul. 43, 1413 (2017)), with σ^B, C^B the first and second derivatives of U
with respect to the Lagrangian strain divided by Ω (:func:`.stress.born_terms`). The last term is
the momenta's contribution, integrated analytically (Maxwell–Boltzmann momenta at the thermostat
temperature); in Voigt form it is (N k_B T / Ω) diag(2, 2, 2, 1, 1, 1). C is the second
derivative of the Helmholtz free energy with respect to the Lagrangian strain per volume: the
relaxed-ion (isothermal) stiffness, in the limit of good sampling; with T → 0 it tends to the
0 K relaxed-ion tensor of ``elastic.relaxed_voigt`` (the fluctuation term becomes the internal
relaxation (1/Ω) Λᵀ H⁺ Λ). The mean stress is ⟨σ⟩ = ⟨σ^B⟩ − (N k_B T / Ω) I.

Under a stress σ the slope of the Cauchy stress against a small linear strain applied to the
box, B_ijkl = ∂σ_ij/∂ε_kl (what a stress–strain run measures), differs from C by terms linear in
σ (Wallace, Thermodynamics of Crystals (1972)); :func:`stress_strain_moduli` converts.

All inputs and outputs are Voigt (6,) / (6, 6) in energy/length³ (eV Å⁻³ in metal units).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .. import reweight
from .elastic import VOIGT_PAIRS
from .stress import voigt_to_tensor_stress

_HYDROSTATIC = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])


def kinetic_stiffness(n, volume, kT):
    """(N k_B T / Ω)(δ_ik δ_jl + δ_il δ_jk) in Voigt form: (N k_B T / Ω) diag(2, 2, 2, 1, 1, 1)."""
    return n * kT / volume * jnp.diag(jnp.array([2.0, 2.0, 2.0, 1.0, 1.0, 1.0]))


def stiffness_from_averages(avg_CB, avg_sB, avg_sBsB, n, volume, kT):
    """Stress-fluctuation stiffness (6, 6) from the three averages ⟨C^B⟩ (6, 6), ⟨σ^B⟩ (6,) and
    ⟨σ^B ⊗ σ^B⟩ (6, 6) (each reweighted separately), N atoms, volume Ω and thermal energy kT."""
    cov = avg_sBsB - jnp.outer(avg_sB, avg_sB)
    C = avg_CB - (volume / kT) * cov + kinetic_stiffness(n, volume, kT)
    return 0.5 * (C + C.T)


def stress_from_averages(avg_sB, n, volume, kT):
    """Mean total stress ⟨σ⟩ = ⟨σ^B⟩ − (N k_B T / Ω) I, Voigt (6,), tension positive."""
    return avg_sB - n * kT / volume * jnp.asarray(_HYDROSTATIC, dtype=jnp.asarray(avg_sB).dtype)


def averages(w, sB, CB):
    """Weighted ⟨C^B⟩, ⟨σ^B⟩, ⟨σ^B ⊗ σ^B⟩ from per-snapshot σ^B (S, 6), C^B (S, 6, 6) and
    normalised weights w (S,) (``reweight.weights``; uniform 1/S for a plain average)."""
    return (reweight.average(w, CB), reweight.average(w, sB),
            reweight.average(w, sB[:, :, None] * sB[:, None, :]))


def reweighted_stiffness(w, sB, CB, n, volume, kT):
    """C (6, 6) from per-snapshot Born terms and weights; differentiable in θ through w, sB, CB."""
    return stiffness_from_averages(*averages(w, sB, CB), n, volume, kT)


def voigt_to_tensor4(Cv):
    """6×6 Voigt stiffness → (3, 3, 3, 3) tensor with the minor symmetries."""
    Cv = jnp.asarray(Cv)
    idx = np.zeros((3, 3), int)
    for a, (i, j) in enumerate(VOIGT_PAIRS):
        idx[i, j] = idx[j, i] = a
    return Cv[idx[:, :, None, None], idx[None, None, :, :]]


def stress_strain_moduli(Cv, stress):
    """Stress–strain coefficients B_ijkl = ∂σ_ij/∂ε_kl (Cauchy stress, linear strain applied as
    h → (I + ε) h), Voigt (6, 6), from the free-energy stiffness C (Lagrangian strain) and the
    stress σ (Voigt, tension positive) of the reference state:

        B_ijkl = C_ijkl + ½(δ_ik σ_jl + δ_il σ_jk + σ_ik δ_jl + σ_il δ_jk) − σ_ij δ_kl

    Under a pressure P (σ = −P I): B11 = C11 − P, B12 = C12 + P, B44 = C44 − P. B is not symmetric
    in general (B_ijkl ≠ B_klij unless σ is hydrostatic or zero)."""
    C = voigt_to_tensor4(Cv)
    s = voigt_to_tensor_stress(jnp.asarray(stress, dtype=C.dtype))
    d = jnp.eye(3, dtype=C.dtype)
    B = (C + 0.5 * (jnp.einsum("ik,jl->ijkl", d, s) + jnp.einsum("il,jk->ijkl", d, s)
                    + jnp.einsum("ik,jl->ijkl", s, d) + jnp.einsum("il,jk->ijkl", s, d))
         - jnp.einsum("ij,kl->ijkl", s, d))
    idx = np.array(VOIGT_PAIRS)
    return B[idx[:, 0][:, None], idx[:, 1][:, None], idx[:, 0][None, :], idx[:, 1][None, :]]


def cubic_constants(Cv):
    """(C11, C12, C44) of a cubic crystal as the averages over the cubic-equivalent entries."""
    Cv = jnp.asarray(Cv)
    c11 = (Cv[0, 0] + Cv[1, 1] + Cv[2, 2]) / 3.0
    c12 = (Cv[0, 1] + Cv[0, 2] + Cv[1, 2] + Cv[1, 0] + Cv[2, 0] + Cv[2, 1]) / 6.0
    c44 = (Cv[3, 3] + Cv[4, 4] + Cv[5, 5]) / 3.0
    return c11, c12, c44
