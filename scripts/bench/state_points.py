#!/usr/bin/env python
"""Wall time of one sampling segment of two state points: one after another on one device
(trainer.state_parallel=sequential) vs together over two devices, each chunk one
jit(shard_map) call (trainer.state_parallel=devices, difftre_cli/parallel.py), measured in the
same process; both chunked by the preset's simulator.chunk_seconds.

On CPU the two devices are faked with XLA_FLAGS=--xla_force_host_platform_device_count=2,
set here before JAX is imported; the sequential segments run on the first of them. Default
setup: the two state points of config=lj_thermal (LJ, ρ = 0.5, kT = 1.5 and 2.5, N = 1000
each), a segment = the preset's 100 equilibration + 500 production steps. Both modes start
every repetition from the same states (the end of a warm-up segment), after compilation; the
script also checks that the two modes give bit-identical trajectories. Then the two state
points' DiffTRe gradients on those trajectories: one after another on the first device vs each
on its own device (dispatched together, as learn/multistate.py does in devices mode).

    python scripts/bench/state_points.py [--config lj_thermal] [--n-particles 1000] [--repeats 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="lj_thermal", help="a preset with (at least) two state points")
    ap.add_argument("--n-particles", type=int, default=None, help="override system.n_particles")
    ap.add_argument("--equilibration", type=int, default=None, help="override simulator.equilibration_steps")
    ap.add_argument("--production", type=int, default=None, help="override simulator.production_steps")
    ap.add_argument("--devices", type=int, default=2, help="CPU devices to fake (ignored on GPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(ROOT))
    import jax
    import numpy as np
    from hydra import compose, initialize_config_dir

    from difftre_cli import assemble
    from difftre_cli.parallel import StateGroup

    overrides = [f"config={args.config}"]
    for key, v in (("system.n_particles", args.n_particles), ("simulator.equilibration_steps", args.equilibration),
                   ("simulator.production_steps", args.production)):
        if v is not None:
            overrides.append(f"{key}={v}")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="train", overrides=overrides)
    states = assemble.build_states(cfg)[:2]
    if len(states) < 2:
        raise SystemExit(f"config={args.config} has fewer than two state points (states:)")
    names = [n for n, _ in states]
    samplers = [c.sampler for _, c in states]
    params = states[0][1].potential.init(jax.random.PRNGKey(0))
    init = [s.init(k, params) for s, k in zip(samplers, jax.random.split(jax.random.PRNGKey(1), 2))]

    def sequential(sim, nbrs):
        out = [s.sample(params, st, nb) for s, st, nb in zip(samplers, sim, nbrs)]
        jax.block_until_ready([r.trajectory for r in out])
        return out

    group = StateGroup(samplers)

    def devices(sim, nbrs):
        out = group.sample(params, sim, nbrs, [False, False], [0, 1])
        out = [out[0], out[1]]
        jax.block_until_ready([r.trajectory for r in out])
        return out

    # warm-up: compile both modes; the sequential warm-up segment's end is every repetition's start
    t0 = time.perf_counter()
    warm = sequential([st for st, _ in init], [nb for _, nb in init])
    compile_seq = time.perf_counter() - t0
    sim, nbrs = [r.state for r in warm], [r.neighbor for r in warm]
    t0 = time.perf_counter()
    devices(sim, nbrs)
    compile_dev = time.perf_counter() - t0
    sequential(sim, nbrs)

    times = {"sequential": [], "devices": []}
    outs = {}
    for rep in range(args.repeats):
        order = ("sequential", "devices") if rep % 2 == 0 else ("devices", "sequential")
        for mode in order:
            fn = sequential if mode == "sequential" else devices
            t0 = time.perf_counter()
            outs[mode] = fn(sim, nbrs)
            times[mode].append(time.perf_counter() - t0)
    identical = all(np.asarray(x).tobytes() == np.asarray(y).tobytes()
                    for a, b in zip(outs["sequential"], outs["devices"])
                    for x, y in zip(jax.tree_util.tree_leaves((a.trajectory, a.state)),
                                    jax.tree_util.tree_leaves((b.trajectory, b.state))))
    # the per-state DiffTRe gradients on those trajectories: one after another on the first
    # device vs each on the device that sampled it (dispatched together, as learn/multistate.py does)
    learners = [c.learner for _, c in states]
    feats = {m: [c.engine.featurize(r.trajectory) for (_, c), r in zip(states, outs[m])] for m in outs}
    on = {"sequential": [None, None], "devices": [group.device(0), group.device(1)]}

    def grads(mode):
        ps = [params if d is None else jax.device_put(params, d) for d in on[mode]]
        return jax.block_until_ready([lr.grad(p, f) for lr, p, f in zip(learners, ps, feats[mode])])

    for mode in ("sequential", "devices"):   # compile
        grads(mode)
    gtimes = {"sequential": [], "devices": []}
    for rep in range(3 * args.repeats):
        for mode in (("sequential", "devices") if rep % 2 == 0 else ("devices", "sequential")):
            t0 = time.perf_counter()
            grads(mode)
            gtimes[mode].append(time.perf_counter() - t0)
    gmed = {m: statistics.median(v) for m, v in gtimes.items()}
    med = {m: statistics.median(v) for m, v in times.items()}
    sc = samplers[0].cfg
    n = int(states[0][1].system.n_particles)
    print(f"2 state points of config={args.config} ({', '.join(names)}), N = {n} each; segment = "
          f"{sc.equilibration_steps} equilibration + {sc.production_steps} production steps per state point")
    print(f"devices: {', '.join(str(d) for d in group.devices)} (jax {jax.__version__}, {os.cpu_count()} host cores)")
    print(f"first call incl. compilation: sequential {compile_seq:.1f} s, devices {compile_dev:.1f} s")
    for m in ("sequential", "devices"):
        print(f"{m:>10}: {med[m]:.3f} s per segment of both state points (median of {args.repeats}: "
              f"{', '.join(f'{t:.3f}' for t in times[m])})")
    ratio = med["sequential"] / med["devices"]
    print(f"ratio sequential / devices: {ratio:.2f}x   (trajectories bit-identical: {identical})")
    gratio = gmed["sequential"] / gmed["devices"]
    print(f"per-state gradients ({learners[0].__class__.__name__}.grad, {int(feats['devices'][0].u_ref.shape[0])} "
          f"snapshots each): sequential {gmed['sequential'] * 1e3:.1f} ms, devices {gmed['devices'] * 1e3:.1f} ms "
          f"(median of {3 * args.repeats}), ratio {gratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "states": names, "n_particles": n,
                                               "times_s": times, "median_s": med, "ratio": ratio,
                                               "identical": identical, "grad_times_s": gtimes,
                                               "grad_median_s": gmed, "grad_ratio": gratio}, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
