#!/usr/bin/env python
"""An LJ reference trajectory with forces, made with the project's own sampler, for the
bottom-up trainers (trainer=force_matching, relative_entropy; config=lj_fm).

Runs the true Lennard-Jones fluid (ε = σ = 1, truncated and shifted at rc = 2.5) at a preset's
state point (default `lj`: N = 1000, ρ = 0.5, kT = 1.5, Langevin, dt = 0.005), keeps a frame
every ``--every`` steps after ``--equilibration`` steps, computes the noise-free forces of each
frame with the sampler's own force function, and writes extended XYZ in reduced units (read
it with reference.units=lj):

    python scripts/reference_lj.py --frames 200 --out runs/reference/lj_rho0.50_kT1.50.extxyz
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from difftre_cli import assemble, neighbors
from difftre_cli.reference.write import write_extxyz

ROOT = Path(__file__).resolve().parent.parent


def lj_frames(cfg, n_frames: int, every: int, equilibration: int, seed: int):
    """(positions (F, N, 3), forces (F, N, 3), energies (F,), box, pressures (F,)) of the true LJ
    fluid of ``cfg``; a frame's pressure is N k_BT/V − W/(3V), W = ∂U(sR)/∂s at s = 1 (the
    configurational virial; the thermostat's k_BT, not the frame's kinetic energy)."""
    with open_dict(cfg):
        cfg.prior, cfg.model, cfg.states = {"kind": "lj", "epsilon": 1.0, "sigma": 1.0}, {"kind": None}, None
        cfg.simulator.first_equilibration_steps = equilibration
        cfg.simulator.production_steps, cfg.simulator.every = n_frames * every, every
    c = assemble.build(cfg)
    s = c.sampler
    params = c.potential.init(jax.random.PRNGKey(seed))
    state, nbrs = s.init(jax.random.PRNGKey(seed), params)
    res = s.sample(params, state, nbrs, first=True)
    if not res.ok:
        raise RuntimeError(f"the LJ run was unstable: {res.reason}")
    box = float(c.system.box_size)
    force = jax.jit(c.potential.force_fn(box))
    nbr_fn = neighbors.make_neighbor_fn(box, c.potential.list_cutoff, 0.0, 1.3)
    pos = np.asarray(res.trajectory.positions)
    pot = c.potential
    virial = jax.jit(lambda R, idx: jax.grad(lambda s: pot.energy_from_features(params, pot.features_on_list(R, idx, box),
                                                                                 s))(1.0))
    frc, prs = [], []
    n, volume, kT = pos.shape[1], box ** 3, float(c.system.kT)
    for R in pos:
        nb = nbr_fn.allocate(jnp.asarray(R))
        frc.append(np.asarray(force(jnp.asarray(R), nb, params)))
        prs.append(n * kT / volume - float(virial(jnp.asarray(R), nb.idx)) / (3.0 * volume))
    return pos, np.stack(frc), np.asarray(res.trajectory.energies), box, np.array(prs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="lj")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--every", type=int, default=50, help="steps between frames")
    ap.add_argument("--equilibration", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "runs/reference/lj_rho0.50_kT1.50.extxyz"))
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (system.density=…)")
    args = ap.parse_args()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="train", overrides=[f"config={args.config}", *args.overrides])
    t0 = time.perf_counter()
    pos, frc, eng, box, prs = lj_frames(cfg, args.frames, args.every, args.equilibration, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_extxyz(out, pos, frc, eng, box, pressures=prs)
    print(f"{out}: {len(pos)} frames of {pos.shape[1]} atoms, box {box:.6g} sigma, "
          f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
