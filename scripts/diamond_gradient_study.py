#!/usr/bin/env python
"""Why a DimeNet++ diamond trains slowly: gradient noise, conditioning and loss balance of the
DiffTRe gradient for the elastic constants, measured at one θ.

Two independent reference trajectories (different seeds) are sampled at the same parameters.
On each, the DiffTRe gradient of every predicted observable component (C11, C12, C44 and the
stress) is computed from its first S snapshots, for growing S:

- **signal-to-noise**: the cosine between the two trajectories' gradients of the same
  component. Pure noise gives ~0, a well-resolved gradient ~1 (for independent estimates
  g + n₁ and g + n₂, cos ≈ |g|²/(|g|² + |n|²), so SNR² = |g|²/|n|² ≈ cos/(1 − cos));
- **conditioning**: the Jacobian J = ∂(C11, C12, C44)/∂θ on all snapshots of both
  trajectories; the eigenvalues of the Gauss–Newton matrix JᵀJ (its non-zero ones are those of
  JJᵀ, 3 × 3) and the cosines between its rows say whether the model can move the three
  constants independently, or only together;
- **loss balance**: each target's loss term γ·MSE and the norm of its gradient.

    python scripts/diamond_gradient_study.py [--n-particles 64] [--snapshots 400] [--blocks 2] \
        [--noise 0.0] [--json out.json] [OVERRIDE ...]

Defaults: config=diamond with the reduced preset's sizes (64 atoms, 2 interaction blocks),
the full preset's trajectory (0.5 ps equilibration after 2 ps from the lattice, 400 snapshots
every 25 fs). ``--noise`` perturbs θ (relative Gaussian noise on every leaf) away from the
zero-output initial network, where only the output layers receive a gradient.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from update_cost import compose  # noqa: E402  (the configs, composed by Hydra as `difftre train` does)


def _flat(tree):
    import jax
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)])


def _components(preds) -> dict:
    """Named scalar components of the predictions (stiffness: C11, C12, C44; stress: σ_ij)."""
    out = {}
    for name, v in preds.items():
        v = np.asarray(v).reshape(-1)
        if name == "stiffness" and v.size == 3:
            labels = ["C11", "C12", "C44"]
        elif name == "stress" and v.size == 9:
            labels = [f"s{i}{j}" for i in "xyz" for j in "xyz"]
        else:
            labels = [f"{name}[{k}]" for k in range(v.size)]
        out.update({lab: (name, k) for k, lab in enumerate(labels)})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-particles", type=int, default=64)
    ap.add_argument("--snapshots", type=int, default=400)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from difftre_cli import assemble
    from difftre_cli.units import GPA_PER_KJ_MOL_NM3

    every = 50
    cfg = compose(["config=diamond", f"system.n_particles={args.n_particles}", f"model.num_blocks={args.blocks}",
                   "simulator.first_equilibration_steps=4000", "simulator.equilibration_steps=1000",
                   f"simulator.production_steps={args.snapshots * every}", f"simulator.every={every}",
                   *args.overrides])
    c = assemble.build(cfg)
    params = c.potential.init(jax.random.PRNGKey(0))
    if args.noise > 0:
        leaves, tree = jax.tree_util.tree_flatten(params)
        rng = np.random.default_rng(0)
        leaves = [x + args.noise * float(np.std(np.asarray(x)) or 1.0) * rng.standard_normal(x.shape).astype(x.dtype)
                  for x in leaves]
        params = jax.tree_util.tree_unflatten(tree, leaves)
    learner, engine = c.learner, c.engine

    t0 = time.perf_counter()
    feats = []
    for seed in (1, 2):
        state, nbrs = c.sampler.init(jax.random.PRNGKey(seed), params)
        res = c.sampler.sample(params, state, nbrs, first=True)
        assert res.ok, res.reason
        feats.append(engine.featurize(res.trajectory))
    print(f"sampled and featurised 2 x {args.snapshots} snapshots in {time.perf_counter() - t0:.0f} s", flush=True)

    preds0, _ = engine.predict(params, feats[0])
    comps = _components(preds0)

    studied = [lab for lab in ("C11", "C12", "C44", "sxx", "syz") if lab in comps]
    index = {lab: k for k, lab in enumerate(studied)}

    @jax.jit
    def jacobian(params, f):
        """The studied components and their gradients (one reverse pass each)."""
        def vec(p):
            preds, _ = engine.predict(p, f)
            return jnp.stack([jnp.ravel(preds[comps[lab][0]])[comps[lab][1]] for lab in studied])
        return vec(params), jax.jacrev(vec)(params)

    @jax.jit
    def term_grads(params, f):
        def one(name):
            return jax.value_and_grad(lambda p: learner.target_losses(engine.predict(p, f)[0])[name])(params)
        return {name: one(name) for name in learner.targets}

    def row(jac, lab):
        return _flat(jax.tree_util.tree_map(lambda x: x[index[lab]], jac))

    report = {"n_particles": args.n_particles, "blocks": args.blocks, "noise": args.noise,
              "n_params": int(_flat(params).size), "snr": [], "conditioning": {}, "balance": {}}
    sizes = [s for s in (25, 50, 100, 200, 400, 800) if s <= args.snapshots]
    print("\ncosine between the two trajectories' gradients (1: resolved, 0: noise)")
    print(f"{'S':>5s} " + " ".join(f"{lab:>8s}" for lab in ("C11", "C12", "C44", "sxx", "syz")))
    for s in sizes:
        sub = [jax.tree_util.tree_map(lambda x: x[:s], f) for f in feats]
        (_, j1), (_, j2) = jacobian(params, sub[0]), jacobian(params, sub[1])
        cos = {}
        for lab in ("C11", "C12", "C44", "sxx", "syz"):
            if lab not in index:
                continue
            a, b = row(j1, lab), row(j2, lab)
            cos[lab] = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))
        report["snr"].append({"snapshots": s, "cos": cos})
        print(f"{s:5d} " + " ".join(f"{cos.get(lab, float('nan')):8.3f}" for lab in ("C11", "C12", "C44", "sxx", "syz")),
              flush=True)

    # conditioning: J of (C11, C12, C44) on both trajectories together (GPa per unit θ)
    both = jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), feats[0], feats[1])
    vals, jac = jacobian(params, both)
    J = np.stack([row(jac, lab) for lab in ("C11", "C12", "C44")]) * GPA_PER_KJ_MOL_NM3
    G = J @ J.T
    eig = np.sort(np.linalg.eigvalsh(G))[::-1]
    norms = np.linalg.norm(J, axis=1)
    cosrows = (J @ J.T) / np.outer(norms, norms)
    c_vals = [float(np.asarray(vals)[index[lab]]) * GPA_PER_KJ_MOL_NM3 for lab in ("C11", "C12", "C44")]
    report["conditioning"] = {"C_GPa": c_vals, "row_norms": norms.tolist(), "gn_eigenvalues": eig.tolist(),
                              "condition_number": float(eig[0] / max(eig[-1], 1e-300)),
                              "row_cosines": cosrows.tolist()}
    print(f"\nC (both trajectories): C11 {c_vals[0]:.1f}  C12 {c_vals[1]:.1f}  C44 {c_vals[2]:.1f} GPa")
    print("|dC/dθ| [GPa per unit θ]: " + "  ".join(f"{lab} {n:.3g}" for lab, n in zip(("C11", "C12", "C44"), norms)))
    print("Gauss-Newton eigenvalues of (C11, C12, C44): " + "  ".join(f"{e:.3g}" for e in eig)
          + f"   condition number {eig[0] / max(eig[-1], 1e-300):.3g}")
    print("cosines between the rows: C11-C12 {:.3f}  C11-C44 {:.3f}  C12-C44 {:.3f}".format(
        cosrows[0, 1], cosrows[0, 2], cosrows[1, 2]))

    # balance of the loss terms
    print("\nloss terms (γ·MSE) and the norms of their gradients, both trajectories")
    for name, (val, g) in term_grads(params, both).items():
        gn = float(np.linalg.norm(_flat(g)))
        report["balance"][name] = {"loss": float(val), "grad_norm": gn}
        print(f"  {name:10s} loss {float(val):10.4g}   |grad| {gn:10.4g}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
