#!/usr/bin/env python
"""Cost of running trajectories in bounded chunks (sampler.py) against one compiled call.

LJ fluid, ρ = 0.7, kT = 1, dt = 0.005, rc = 2.5, float32, Langevin, N = 1000 and 8000. The
reference is the pre-chunk sampler's program, rebuilt here from the same MD step: one jit call
of ``fori_loop`` (equilibration) + ``lax.scan`` over snapshots with a static stride, the whole
trajectory in one call. Against it, in the same process and alternating round by round (so
that machine noise hits both alike): ``Sampler.run`` with the default ``chunk_seconds`` (5 s)
and with 0.5 s (ten times more chunk boundaries). Each variant runs the same trajectory
(equilibration + snapshots every 10 steps) from the same state; best of each round, median
over rounds.

    python scripts/bench/chunk_overhead.py [--sizes 1000 8000] [--steps 4000 400] [--rounds 5]

Goal: chunked / one call ≥ 0.95 (no slow-down beyond noise).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore", message="Explicitly requested dtype")


def setup(n):
    import jax
    from omegaconf import OmegaConf
    from difftre_cli import potentials
    from difftre_cli.sampler import SamplerConfig
    from difftre_cli.simulate import Sampler
    from difftre_cli.system import build_system

    system = build_system(OmegaConf.create({"units": "lj", "n_particles": n, "density": 0.7, "kT": 1.0}))
    pot = potentials.build(OmegaConf.create({"kind": "lj", "epsilon": 1.0, "sigma": 1.0}),
                           OmegaConf.create({"kind": "none"}), 2.5)
    cfg = SamplerConfig(integrator="langevin", dt=0.005, every=10)
    sampler = Sampler(pot, system, cfg)
    state, nbrs = sampler.init(jax.random.PRNGKey(0), {})
    res = sampler.run({}, state, nbrs, 2000, 1, 10)            # melt the lattice
    state = res.state
    nbrs = sampler.neighbor_fn.allocate(state.position, extra_capacity=16)
    return sampler, state, nbrs


def one_call_program(sampler):
    """The pre-chunk sampler: the whole trajectory in one compiled call."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    def run(params, st, nb, n_eq, n_snapshots, every):
        def step(i, c):
            s, b, f = c
            s, b, f2 = sampler._advance(params, s, b)
            return s, b, f | f2

        c = lax.fori_loop(0, n_eq, step, (st, nb, jnp.asarray(False)))

        def snap(c, _):
            c = lax.fori_loop(0, every, step, c)
            s, b, f = c
            b, f2, u = sampler._observe(params, s, b)
            return (s, b, f | f2), (s.position, u)
        return lax.scan(snap, c, None, length=n_snapshots)
    return jax.jit(run, static_argnames=("n_snapshots", "every"))


def main():
    import jax
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000])
    ap.add_argument("--steps", type=int, nargs="+", default=[4000, 400])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per variant and round (best kept)")
    args = ap.parse_args()
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} device(s)")
    print(f"{'N':>6} {'steps':>6} {'one call':>10} {'chunked 5s':>11} {'ratio':>6} {'chunked 0.5s':>13} {'ratio':>6}")
    for n, steps in zip(args.sizes, args.steps):
        sampler, state, nbrs = setup(n)
        fine = dataclasses.replace(sampler.cfg, chunk_seconds=0.5)
        n_snap, every = steps // 2 // 10, 10
        n_eq = steps - n_snap * every
        prog = one_call_program(sampler)

        def ref():
            out = prog({}, state, nbrs, np.int32(n_eq), n_snapshots=n_snap, every=every)
            jax.block_until_ready(out)
            assert not bool(out[0][1].did_buffer_overflow)

        def chunked(cfg):
            def go():
                sampler.cfg = cfg
                res = sampler.run({}, state, nbrs, n_eq, n_snap, every)
                jax.block_until_ready(res.trajectory.positions)
                assert res.ok and res.retries == 0
            return go
        variants = {"one": ref, "c5": chunked(dataclasses.replace(fine, chunk_seconds=5.0)), "c05": chunked(fine)}
        for f in variants.values():   # compile, and let the chunk sizes settle
            f(), f()
        rates = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, f in variants.items():
                best = float("inf")
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    f()
                    best = min(best, time.perf_counter() - t)
                rates[k].append(steps / best)
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"{n:>6} {steps:>6} {med['one']:>10.1f} {med['c5']:>11.1f} {med['c5'] / med['one']:>6.3f} "
              f"{med['c05']:>13.1f} {med['c05'] / med['one']:>6.3f}")
        print(f"       per-round ratios 5 s: {[round(a / b, 3) for a, b in zip(rates['c5'], rates['one'])]}; "
              f"0.5 s: {[round(a / b, 3) for a, b in zip(rates['c05'], rates['one'])]}")


if __name__ == "__main__":
    main()
