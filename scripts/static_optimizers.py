#!/usr/bin/env python
"""Every optimiser of ``trainer=static`` on both elastic presets: a table of the fitted parameters,
C11 / C12 / C44 (GPa, Voigt), final loss, iterations (loss evaluations), converged flag and wall
time (compile time in brackets), as the runs report them (``train.train``, the shared loop).

Also checks why SW (ε, λ) and EDIP (A, λ) end at the same C: both are nearest-neighbour models in
diamond whose pair force vanishes at a = 5.43 Å (zero stress), so at fixed geometry their C depend
only on a bond-stretch and a bond-bending constant, which the two learnable parameters scale
independently. Both reachable C-sets are then the same 2-D cone; the script compares the curves
C12/C11 → C44/C11 that a λ-scan traces for each potential.

Usage: PYTHONPATH=. python scripts/static_optimizers.py [--presets si_sw_elastic si_edip_elastic]
       [--optimizers adam lbfgs bfgs cg nelder_mead] [--updates 200]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compose(overrides):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return hcompose(config_name="train", overrides=overrides)


def ratio_curve(preset, np, scales=(0.4, 0.6, 0.8, 1.0, 1.25, 1.6, 2.0, 2.5)):
    """(C12/C11, C44/C11) of a preset's potential at its start energy scale and lam × scale: the
    elastic constants are homogeneous of degree one in the energy scale (ε for SW, and for EDIP
    A with lam at a fixed ratio), so with two parameters the ratios trace a curve."""
    import jax.numpy as jnp

    from difftre_cli.learn.static import build_problem
    prob = build_problem(compose([f"config={preset}"]))
    i_lam = prob.x_names.index("lam")
    out = []
    for s in scales:
        x = np.ones(len(prob.x_names))
        x[i_lam] = s
        C = np.asarray(prob.props(prob.learn_of(jnp.asarray(x)))["C_voigt"])
        out.append((C[0, 1] / C[0, 0], C[3, 3] / C[0, 0]))
    stress = np.asarray(prob.props(prob.learn_of(jnp.ones(len(prob.x_names))))["stress"])
    print(f"{preset}: stress at the start parameters (a = 5.43 Å) {np.round(stress, 3)} GPa", flush=True)
    return np.array(out).T


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["si_sw_elastic", "si_edip_elastic"])
    ap.add_argument("--optimizers", nargs="+", default=["adam", "lbfgs", "bfgs", "cg", "nelder_mead"])
    ap.add_argument("--updates", type=int, default=200)
    args = ap.parse_args(argv)
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np

    from difftre_cli.train import train
    curves = {}
    print(f"{'preset':16s} {'optimiser':12s} {'parameters':34s} {'C11':>8s} {'C12':>8s} {'C44':>8s} "
          f"{'loss':>10s} {'|grad|':>8s} {'iter (fev)':>11s} {'conv':>5s} {'wall s (compile)':>17s}", flush=True)
    for preset in args.presets:
        for opt in args.optimizers:
            cfg = compose([f"config={preset}", f"optimizer={opt}", f"trainer.updates={args.updates}"])
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                out = train(cfg, tmp, quiet=True)
                wall = time.perf_counter() - t0
            last = out["rows"][-1]
            par = " ".join(f"{k}={v:.6g}" for k, v in out["params"].items())
            print(f"{preset:16s} {opt:12s} {par:34s} {last['C11']:8.3f} {last['C12']:8.3f} {last['C44']:8.3f} "
                  f"{last['loss']:10.6g} {last['grad_norm']:8.1e} {out['iterations']:>5d} ({out['n_fev']:>3d}) {str(out['converged']):>5s} "
                  f"{wall:9.1f} ({out['compile_s']:.1f})  {out['message'][:48]}", flush=True)
        curves[preset] = ratio_curve(preset, np)
    if len(curves) == 2:
        (pa, (ra, qa)), (pb, (rb, qb)) = curves.items()
        order = np.argsort(rb)
        inside = (ra > rb.min()) & (ra < rb.max())
        q_interp = np.interp(ra[inside], rb[order], qb[order])
        print(f"\nshape of the reachable C-sets: C12/C11 -> C44/C11 along {pa}'s lam-scan vs {pb}'s (interpolated)")
        for r, q1, q2 in zip(ra[inside], qa[inside], q_interp):
            print(f"  C12/C11 = {r:.5f}:  C44/C11 {pa} {q1:.5f}   {pb} {q2:.5f}   difference {q1 - q2:+.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
