"""A/B of the pair force kernel: all columns of the dense list (``block=None``, the kernel before
the column blocks) against the kernel on the occupied column blocks only (``block=B``), in one
process, interleaved, best of ``--rounds`` (pair_kernels.pair_forces_and_energy).

The fluid is md_throughput.py's (LJ or the spline model, ρ = 0.7, kT = 1, rc = 2.5, skin 0.3,
equilibrated from the lattice), its list allocated on the fluid (width ~95, the rows' maximum
× 1.25) and with the width the training sampler carries after its lattice start (``--wide``,
140). Per (model, width, kernel): the force call (100 chained calls in one compiled loop), one
Langevin step on a fixed list (force + integrator, 100 steps in one loop), the training
sampler's step (its chunk program: 1000 steps with list updates and a snapshot every 10), and
the compile times of the step and chunk programs. All programs are compiled first, then run in
rounds, each keeping its best.

    python scripts/bench/pair_blocks.py                         # LJ, widths ~95 and 140, B = 8 16 32
    python scripts/bench/pair_blocks.py --models lj spline --blocks 16 --rounds 7
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="Explicitly requested dtype")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import md_throughput as mt


def force_of(pot, box, block):
    """The sampler's force function of ``pot`` with the kernel's ``block`` set explicitly."""
    from difftre_cli import pair_kernels

    def force(R, neighbor, params, **unused):
        return pair_kernels.pair_forces_and_energy(lambda p, r, j: pot.pair(p, r), params, R, neighbor.idx, box,
                                                   pot.cutoff, block=block)[0]
    return force


def timers(s, width_nbrs, block, calls=100):
    """(force timer, step timer, step compile seconds) of one kernel variant on one list."""
    import jax
    from jax_md import simulate as jmd_simulate
    from jax_md import space

    box = float(s.system.box_size)
    force = force_of(s.md.potential, box, block)
    _, shift = space.periodic(box)
    _, step = jmd_simulate.nvt_langevin(force, shift, mt.DT, mt.KT, gamma=1.0)
    R, p, nb = s.state.position, s.params, width_nbrs
    t = time.perf_counter()
    step_t = mt._loop_timer(lambda i, st, nb, p: step(st, neighbor=nb, params=p), s.state, calls, nb, p)
    compile_s = time.perf_counter() - t
    force_t = mt._loop_timer(lambda i, x, nb, p: x + 1e-9 * force(x, nb, p), R, calls, nb, p)
    jax.block_until_ready(force(R, nb, p))
    return force_t, step_t, compile_s


def chunk_timer(s, nbrs, block, steps=1000, every=10):
    """(timer, compile + first call s) of the sampler's chunk program (``steps`` steps, a snapshot
    every ``every``: list updates and recording included) with the force kernel's ``block``: a
    sampler bound while ``pair_kernels.pair_forces_and_energy`` has that default."""
    import functools

    from difftre_cli import pair_kernels, simulate
    kernel = pair_kernels.pair_forces_and_energy
    pair_kernels.pair_forces_and_energy = functools.partial(kernel, block=block)
    try:
        md = simulate.Sampler(s.md.potential, s.system, s.md.cfg)
    finally:
        pair_kernels.pair_forces_and_energy = kernel
    t = time.perf_counter()
    timer, _, overflow = mt._chunk_timer(md, s.params, s.state, nbrs, every, 0, steps // every, steps // every)
    if overflow:
        raise SystemExit("the list overflowed in the chunk")
    return timer, time.perf_counter() - t


def check_same(s, nb, blocks):
    """The blocked kernels' forces and energy equal the full-width kernel's on ``nb``."""
    import numpy as np

    from difftre_cli import pair_kernels
    pot, box = s.md.potential, float(s.system.box_size)
    out = {b: pair_kernels.pair_forces_and_energy(lambda p, r, j: pot.pair(p, r), s.params, s.state.position,
                                                  nb.idx, box, pot.cutoff, block=b) for b in [None, *blocks]}
    for b in blocks:
        np.testing.assert_allclose(np.asarray(out[b][0]), np.asarray(out[None][0]), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(float(out[b][1]), float(out[None][1]), rtol=1e-5)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lj"], choices=["lj", "spline"])
    ap.add_argument("--blocks", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--wide", type=int, default=140, help="the training sampler's list width")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args(argv)
    import numpy as np

    from difftre_cli import pair_kernels
    rows = []
    for model in args.models:
        s = mt.equilibrated(args.n, 200, 0.3, 1.25, model, steps=200)
        fluid = s.md.neighbor_fn.allocate(s.state.position)
        wide = s.md.neighbor_fn.allocate(s.state.position, extra_capacity=args.wide - fluid.max_occupancy)
        occ = int(pair_kernels.occupied_width(fluid.idx))
        mean = float(np.mean(np.sum(np.asarray(fluid.idx) < args.n, axis=1)))
        for nb in (fluid, wide):
            check_same(s, nb, args.blocks)
            for block in [None, *args.blocks]:
                f, st, c = timers(s, nb, block)
                ch, ch_c = chunk_timer(s, nb, block)
                rows.append({"model": model, "width": nb.max_occupancy, "occupied": occ, "mean": mean,
                             "block": block, "force": f, "step": st, "chunk": ch, "compile_s": c,
                             "chunk_compile_s": ch_c})
    for _ in range(args.rounds):
        for row in rows:
            for k in ("force", "step", "chunk"):
                row[k + "_ms"] = min(row.get(k + "_ms", math.inf), row[k]())
    print(f"load (uptime): {os.getloadavg()}")
    print("| model | list width | occupied width (mean) | kernel | force [ms] | step, fixed list [ms] "
          "| sampler step [ms] | compile: step, chunk [s] |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["width"] == r["width"] and b["block"] is None)
        kernel = "all columns" if r["block"] is None else f"B = {r['block']}"
        cells = " | ".join(f"{r[k]:.3f} ({base[k] / r[k]:.2f}x)" for k in ("force_ms", "step_ms", "chunk_ms"))
        print(f"| {r['model']} | {r['width']} | {r['occupied']} ({r['mean']:.1f}) | {kernel} | {cells} "
              f"| {r['compile_s']:.2f}, {r['chunk_compile_s']:.2f} |")


if __name__ == "__main__":
    main()
