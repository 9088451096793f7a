"""0 K start for a many-body diamond preset: fit the learned parts of a three_body model (on top of
its SW prior) to the preset's elastic-constant and zero-stress targets on the perfect lattice.

    python scripts/diamond_zero_kelvin_fit.py config=diamond_cpu [more overrides] [--evals 150]

The relaxed-ion stiffness C = (1/V)[U_ee − U_eu U_uu⁺ U_ue] and the stress (1/V) ∂U/∂e of the
perfect crystal come from :mod:`difftre_cli.observables.elastic` (the 0 K fits' functions) applied
to the engine's own energy (prior + model, strain hook); the learned parts listed in
``model.learn`` are fitted by Levenberg–Marquardt (SciPy) with the Jacobian from JAX, residuals
(C − C̃)/(2 % of C̃) for the cubic averages of C11, C12, C44, σ_ii / 0.5 GPa, and 0.05·θ (a
weak pull towards small values: the fit has more parameters than residuals). Float64, 64 atoms
(a perfect lattice's C and σ do not depend on the supercell once the cutoff is below L/2).
Prints C and σ before and after, and the ``model:`` lines that start the 298 K run there.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_ENABLE_X64", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from jax_md import partition, space  # noqa: E402
from scipy.optimize import least_squares  # noqa: E402

from difftre_cli import assemble, units  # noqa: E402
from difftre_cli.config_files import CONFIG_DIR  # noqa: E402
from difftre_cli.observables.elastic import relaxed_voigt, stress_voigt  # noqa: E402


def build(overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=[*overrides, "system.n_particles=64"])
    target = cfg.targets.stiffness
    if str(target.get("unit", "GPa")) != "GPa":
        raise SystemExit(f"targets.stiffness.unit must be GPa here, got {target.unit}")
    c = assemble.build(cfg)
    return c, np.array([float(target.value[k]) for k in ("C11", "C12", "C44")])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. config=diamond_cpu")
    ap.add_argument("--evals", type=int, default=150, help="most Levenberg–Marquardt evaluations")
    args = ap.parse_args()
    c, target = build(args.overrides)
    pot, box = c.potential, float(c.system.box_size)
    R0 = jnp.asarray(c.system.positions, jnp.float64)
    disp, _ = space.periodic(box)
    idx = partition.neighbor_list(disp, box, pot.cutoff + 0.04, format=partition.Dense,
                                  capacity_multiplier=1.0).allocate(R0).idx
    gpa = units.GPA_PER_KJ_MOL_NM3
    params0 = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), pot.init(jax.random.PRNGKey(0)))
    flat0, unravel = jax.flatten_util.ravel_pytree(params0)

    def props(x):
        params = unravel(x)

        def energy(frac, perturbation):
            return pot.energy_from_features(params, (frac * box, idx), strain=perturbation - jnp.eye(3))
        cell = jnp.eye(3) * box
        C = relaxed_voigt(energy, R0 / box, cell) * gpa
        cubic = jnp.stack([jnp.trace(C[:3, :3]) / 3, (C[0, 1] + C[0, 2] + C[1, 2]) / 3, jnp.trace(C[3:, 3:]) / 3])
        return cubic, stress_voigt(energy, R0 / box, cell)[:3] * gpa

    @jax.jit
    def residuals(x):
        cubic, stress = props(x)
        return jnp.concatenate([(cubic - target) / (0.02 * target), stress / 0.5, 0.05 * x])

    def report(x, label):
        cubic, stress = props(jnp.asarray(x))
        print(f"{label}: C11 C12 C44 = {cubic[0]:.1f} {cubic[1]:.1f} {cubic[2]:.1f} GPa "
              f"(targets {target[0]:g} {target[1]:g} {target[2]:g}); stress {float(jnp.mean(stress)):+.3f} GPa")

    report(flat0, "start")
    jac = jax.jit(jax.jacfwd(residuals))
    t0 = time.perf_counter()
    fit = least_squares(lambda x: np.asarray(residuals(jnp.asarray(x))), np.asarray(flat0),
                        jac=lambda x: np.asarray(jac(jnp.asarray(x))), method="lm", max_nfev=args.evals)
    print(f"Levenberg–Marquardt: {fit.nfev} evaluations, {time.perf_counter() - t0:.0f} s ({fit.message})")
    report(fit.x, "fitted")
    values = pot.model.values(unravel(jnp.asarray(fit.x))["model"])
    print("model:   # 0 K fit, scripts/diamond_zero_kelvin_fit.py")
    for part in pot.model.learn:
        v = np.asarray(values[part], np.float64)
        if part == "angle":
            print(f"  angle: [{', '.join(f'{b:.6g}' for b in v.reshape(-1))}]")
        elif part == "pair":
            print(f"  pair_values: [{', '.join(f'{b:.6g}' for b in v.reshape(-1))}]")
        else:
            print(f"  {part}: {float(v.reshape(-1)[0]):.6g}")


if __name__ == "__main__":
    main()
