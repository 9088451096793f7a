"""Zero-temperature properties of a periodic crystal, differentiable in the potential's parameters.

- :func:`relax`: FIRE (JAX MD's ``minimize.fire_descent``) on the positions, optionally with the
  cell strain as extra degrees of freedom, followed by one Newton step at the minimum. At a
  minimum the Newton step does not move the structure, but its derivative with respect to the
  parameters θ is the implicit-function derivative dz*/dθ = −H⁻¹ ∂²U/∂z∂θ, so gradients never
  flow through the FIRE iterations (cf. Blondel et al., "Efficient and modular implicit
  differentiation", NeurIPS 2022).
- :func:`affine_voigt`: the Born (affine, clamped-ion) elastic tensor (1/V) ∂²U/∂e_α∂e_β.
- :func:`relaxed_voigt`: the relaxed-ion tensor C = C_affine − (1/V) Λᵀ H⁺ Λ including the internal
  (non-affine) relaxation of the basis atoms, from one dense Hessian in (positions, strain);
  :func:`relaxed_voigt_jaxmd` is JAX MD's ``elasticity.athermal_moduli`` for comparison.
- :func:`force_constants`: the Cartesian Hessian ∂²U/∂R_iα∂R_jβ, shape (N, 3, N, 3), eV Å⁻².

Notation. Strain in Voigt form e = (e_xx, e_yy, e_zz, 2e_yz, 2e_xz, 2e_xy) (engineering shears),
so the 6×6 Voigt stiffness is C_αβ = (1/V) ∂²U/∂e_α∂e_β and C44 = C_yzyz. Mandel notation uses
√2-weighted shears: C^M = W C^V W with W = diag(1, 1, 1, √2, √2, √2), so C^M_44 = 2 C44 and
the Frobenius norm of C^M equals that of the fourth-rank tensor. Strains are small linear
strains applied as box → (I + ε) box; at a zero-stress reference (relaxed cell) the second
derivatives are the stress–strain coefficients. Units: eV Å⁻³ (convert with units.GPA_PER_EV_A3).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax_md import elasticity, minimize, space

#: Voigt index → Cartesian index pair.
VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
MANDEL_WEIGHTS = np.array([1.0, 1.0, 1.0, np.sqrt(2.0), np.sqrt(2.0), np.sqrt(2.0)])


def strain_matrix(e):
    """Symmetric 3×3 strain from the Voigt vector e (engineering shears e4 = 2ε_yz, …)."""
    return jnp.array([[e[0], e[5] / 2, e[4] / 2],
                      [e[5] / 2, e[1], e[3] / 2],
                      [e[4] / 2, e[3] / 2, e[2]]])


def tensor_to_voigt(C):
    """(3, 3, 3, 3) stiffness tensor → 6×6 Voigt matrix."""
    idx = jnp.array(VOIGT_PAIRS)
    return C[idx[:, 0][:, None], idx[:, 1][:, None], idx[:, 0][None, :], idx[:, 1][None, :]]


def voigt_to_mandel(C):
    w = jnp.asarray(MANDEL_WEIGHTS, dtype=jnp.asarray(C).dtype)
    return C * w[:, None] * w[None, :]


def mandel_to_voigt(C):
    w = jnp.asarray(MANDEL_WEIGHTS, dtype=jnp.asarray(C).dtype)
    return C / (w[:, None] * w[None, :])


def cubic_voigt(c11, c12, c44):
    """6×6 Voigt stiffness of a cubic crystal."""
    C = np.zeros((6, 6))
    C[:3, :3] = c12
    C[np.arange(3), np.arange(3)] = c11
    C[np.arange(3, 6), np.arange(3, 6)] = c44
    return C


def bulk_modulus(Cv):
    """Voigt-average bulk modulus (C11 + C22 + C33 + 2(C12 + C13 + C23)) / 9; for cubic (C11 + 2 C12)/3."""
    return (jnp.trace(Cv[:3, :3]) + 2.0 * (Cv[0, 1] + Cv[0, 2] + Cv[1, 2])) / 9.0


# ------------------------------------------------------------------------------------------
def periodic_energy(make_energy, cell):
    """``E(frac, box=..., perturbation=...)`` on JAX MD's general periodic space with
    fractional coordinates; ``make_energy(displacement)`` builds the JAX MD energy."""
    disp, _ = space.periodic_general(cell, fractional_coordinates=True)
    return make_energy(disp)


def affine_voigt(energy_fn, frac, cell):
    """Born (clamped-ion) stiffness (1/V) ∂²U/∂e∂e at e = 0, 6×6 Voigt, energy units per volume.

    ``energy_fn(frac, perturbation=F)`` must apply the affine map F to every displacement
    (any JAX MD energy on a ``periodic_general`` space does)."""
    eye = jnp.eye(3, dtype=frac.dtype)

    def u(e):
        return energy_fn(frac, perturbation=eye + strain_matrix(e))
    return jax.hessian(u)(jnp.zeros(6, frac.dtype)) / jnp.abs(jnp.linalg.det(cell))


def stress_voigt(energy_fn, frac, cell):
    """(1/V) ∂U/∂e at e = 0 (Voigt, energy per volume; positive = tensile)."""
    eye = jnp.eye(3, dtype=frac.dtype)
    g = jax.grad(lambda e: energy_fn(frac, perturbation=eye + strain_matrix(e)))(jnp.zeros(6, frac.dtype))
    return g / jnp.abs(jnp.linalg.det(cell))


def _translations(n: int, n_rows: int, dtype):
    """(3 n_rows, 3) orthonormal rigid translations of the first ``n`` of ``n_rows`` rows."""
    return jnp.zeros((n_rows, 3, 3), dtype).at[:n].set(jnp.eye(3, dtype=dtype)[None]).reshape(-1, 3) / jnp.sqrt(n)


def relaxed_voigt(energy_fn, frac, cell, with_force_constants: bool = False):
    """Relaxed-ion stiffness, 6×6 Voigt, from one dense Hessian of U(u, e) in the atomic
    displacements u (Cartesian) and the Voigt strain e at (0, 0):

        C = (1/V) [U_ee − U_eu U_uu⁺ U_ue]

    (the Born term minus the internal relaxation: the Schur complement of the position block).
    U_uu has the three translation zero modes, which U_ue is orthogonal to (a uniform translation
    exerts no stress); they are lifted by adding the translation projector before the solve.
    With ``with_force_constants`` also returns U_uu, the force constants (N, 3, N, 3).

    Same quantity as JAX MD's ``elasticity.athermal_moduli`` (CG on Hessian-vector products,
    one Jacobian per strain), computed here with a single ``jax.hessian`` of size 3N + 6, which
    compiles several times faster and differentiates without a custom linear solve."""
    n = frac.shape[0]
    eye = jnp.eye(3, dtype=frac.dtype)
    inv = jnp.linalg.inv(cell)

    def u_of(z):
        u = z[:3 * n].reshape(n, 3)
        return energy_fn(_cartesian_tangent(frac, u, inv), perturbation=eye + strain_matrix(z[3 * n:]))
    H = jax.hessian(u_of)(jnp.zeros(3 * n + 6, frac.dtype))
    Huu, Hue, Hee = H[:3 * n, :3 * n], H[:3 * n, 3 * n:], H[3 * n:, 3 * n:]
    trans = _translations(n, n, frac.dtype)
    scale = jnp.mean(jnp.abs(jnp.diag(Huu)))
    C = (Hee - Hue.T @ jnp.linalg.solve(Huu + scale * trans @ trans.T, Hue)) / jnp.abs(jnp.linalg.det(cell))
    C = 0.5 * (C + C.T)
    if with_force_constants:
        return C, Huu.reshape(n, 3, n, 3)
    return C


def relaxed_voigt_jaxmd(energy_fn, frac, cell, cg_tol: float = 1e-10):
    """The same relaxed-ion tensor by JAX MD's ``athermal_moduli`` (CG on the tethered Hessian),
    converted to Voigt notation: an independent implementation, used by the tests as a check."""
    C = elasticity.athermal_moduli(energy_fn, cg_tol=cg_tol)(frac, cell)
    return tensor_to_voigt(C)


def force_constants(energy_fn, frac, cell):
    """Cartesian force constants ∂²U/∂R_iα∂R_jβ, shape (N, 3, N, 3).

    JAX MD's ``space.transform`` carries a custom JVP that reads a tangent of fractional
    coordinates as a Cartesian displacement, so derivatives of a ``periodic_general`` energy with
    respect to ``frac`` are already Cartesian (``cell`` is unused; kept for the signature)."""
    del cell
    return jax.hessian(energy_fn)(frac)


def _cartesian_tangent(frac0, u, inv):
    """Fractional coordinates frac0 + u·inv^T whose *tangent* is u itself: with JAX MD's
    convention (see :func:`force_constants`) derivatives with respect to u are then Cartesian."""
    return frac0 + jax.lax.stop_gradient(u @ inv.T - u) + u


# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RelaxOptions:
    cell: bool = False          # also relax the cell (six strain components, zero pressure)
    max_steps: int = 2000       # FIRE steps at most
    force_tol: float = 1e-6     # eV/Å (generalised forces on strain in eV/Å as well, see relax)


def relax(energy_of_box, frac0, cell0, opts: RelaxOptions, params):
    """Relax positions (and the cell when ``opts.cell``) of a periodic crystal.

    ``energy_of_box(params, frac, box)`` is the energy in eV; ``frac`` are fractional coordinates
    with respect to ``box``. Returns ``(frac, box, max_force)``: differentiable in ``params`` through
    the implicit-function derivative (see the module docstring); ``max_force`` is the largest
    residual generalised force after the Newton step. The returned ``frac`` follows JAX MD's
    convention for fractional coordinates: its tangents (d frac/dθ) are Cartesian displacements,
    which is what every JAX MD energy and displacement function expects of them.

    Degrees of freedom z: Cartesian displacements u (N rows, Å) of the atoms from their
    reference positions in the reference cell, then (with ``opts.cell``) two rows holding the
    Voigt strain e times L = V^(1/3), so that every component of z is a length in Å.
    """

    n = frac0.shape[0]
    dtype = frac0.dtype
    inv0 = jnp.linalg.inv(cell0)
    length = jnp.abs(jnp.linalg.det(cell0)) ** (1.0 / 3.0)
    n_rows = n + 2 if opts.cell else n

    def unpack(z):
        u = z[:n]
        if opts.cell:
            e = z[n:].reshape(6) / length
            box = (jnp.eye(3, dtype=dtype) + strain_matrix(e)) @ cell0
        else:
            box = cell0
        return _cartesian_tangent(frac0, u, inv0), box   # fractional coordinates in the (strained) box

    def energy_z(z, p):
        frac, box = unpack(z)
        return energy_of_box(p, frac, box)

    p_fixed = jax.lax.stop_gradient(params)
    _, shift = space.free()
    init, apply = minimize.fire_descent(lambda z: energy_z(z, p_fixed), shift, dt_start=0.05, dt_max=0.2)
    z_init = jnp.zeros((n_rows, 3), dtype)

    def max_force(state):
        return jnp.max(jnp.abs(state.force))

    def cond(carry):
        state, i = carry
        return (i < opts.max_steps) & (max_force(state) > opts.force_tol)

    def body(carry):
        state, i = carry
        return apply(state), i + 1

    state, _ = jax.lax.while_loop(cond, body, (init(z_init), 0))
    z0 = jax.lax.stop_gradient(state.position)

    # one Newton step: value z0 at a minimum, derivative = implicit-function derivative
    # H is a constant of the step (stop_gradient): its own parameter derivative multiplies g = 0,
    # and leaving it out keeps third derivatives of the energy out of the compiled graph.
    g = jax.grad(energy_z)(z0, params).reshape(-1)
    H = jax.lax.stop_gradient(jax.hessian(energy_z)(z0, p_fixed).reshape(n_rows * 3, n_rows * 3))
    trans = _translations(n, n_rows, dtype)
    scale = jnp.mean(jnp.abs(jnp.diag(H)))
    H_reg = H + scale * trans @ trans.T     # lifts the 3 translation zero modes; g ⟂ translations
    z = z0 - jnp.linalg.solve(H_reg, g).reshape(n_rows, 3)
    frac, box = unpack(z)
    residual = jnp.max(jnp.abs(jax.grad(energy_z)(jax.lax.stop_gradient(z), p_fixed)))
    return frac, box, residual
