#!/usr/bin/env python
"""DiffTRe vs direct automatic differentiation through the dynamics, on the double well.

The cost comparison of Thaler & Zavadlav (Nat. Commun. 12, 6884 (2021), double-well example)
with the spline replaced by an MLP u_θ(x) (2 hidden layers of 100) on top of the prior
75 (x − 0.5)²: for one and the same Langevin trajectory (same initial state, same noise; N
kept states one every n = 100 steps after N_eq skipped ones) it measures in one process

* the wall time of one gradient of the density-profile loss by DiffTRe (reweighting the N
  stored states; the integrator is not differentiated) and by direct AD (backpropagation
  through all (N + N_eq)·n BAOAB steps, checkpointed per step), and their ratio s_g;
* the speed-up per update including sampling: direct AD's gradient (its forward pass is the
  simulation) vs DiffTRe's simulation + featurisation + gradient (no trajectory reuse);
* the rule-of-thumb estimate s_g ≈ G·n·(1 + N_eq/N), with G measured separately: the cost of
  backpropagating through one integrator step of B particles relative to one DiffTRe
  gradient over B states (B = 10000, where per-call overheads vanish);
* the gradient norm as a function of trajectory length for both methods.

The published setup could afford direct AD only for N = 10 kept states after N_eq = 1
(1100 steps, one particle); we report that and longer trajectories (N = 100, 1000, …, one
particle, N_eq = N/10), and the preset's own trajectory (100 particles × 100 states,
11000 steps). The published figures: s_g = 486, 3.7 per update.

    python scripts/bench/gradients.py --out runs/bench_gradients          # ~5 min on 2 CPU cores
    python scripts/bench/gradients.py --quick --out /tmp/bench            # ~1 min

Direct AD's gradient grows with the trajectory length only where nearby trajectories diverge;
Langevin friction damps that. ``--gamma`` overrides the preset's friction (γ = 5) and
``--norms-only`` skips the timings, e.g. the weak-friction study:

    python scripts/bench/gradients.py --norms-only --gamma 0.05 --out runs/bench_gradients_gamma0.05
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def compose(overrides):
    from hydra import compose as hcompose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return hcompose(config_name="train", overrides=overrides)


def timed(fn, *args, repeats=3):
    """(compile + first call time, median of ``repeats`` further calls, result)."""
    import jax
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, (statistics.median(times) if times else first), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs/bench_gradients"), help="directory for gradients.json/png")
    ap.add_argument("--quick", action="store_true", help="N in {10, 100} only, fewer repeats")
    ap.add_argument("--lengths", default="10,30,100,300,1000", help="kept states N (one particle) to compare")
    ap.add_argument("--seeds", type=int, default=3, help="trajectories per length for the gradient norms")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gamma", type=float, default=None, help="Langevin friction (default: the preset's)")
    ap.add_argument("--norms-only", action="store_true", help="gradient norms vs length only (no timings)")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from difftre_cli import __version__, assemble
    from difftre_cli.config import validate
    from difftre_cli.onebody import OneBodySampler, build_line_system

    lengths = [10, 100] if args.quick else [int(v) for v in args.lengths.split(",")]
    repeats = 1 if args.quick else args.repeats
    seeds = 1 if args.quick else args.seeds
    every, B = 100, 10000

    cfg = compose(["config=double_well", "model=mlp_1d", "seed=0"])
    validate(cfg)
    c = assemble.build(cfg)
    learner, engine, pot = c.learner, c.engine, c.potential
    obs = c.observables["density"]
    target = jnp.asarray(c.targets["density"].value)
    gamma = float(c.targets["density"].gamma)
    params = pot.init(jax.random.PRNGKey(0))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    base_cfg = c.sampler.cfg
    if args.gamma is not None:
        base_cfg = dataclasses.replace(base_cfg, gamma=args.gamma)

    difftre_grad = jax.jit(jax.grad(lambda p, f: learner.loss(p, f)[0]))
    difftre_loss = jax.jit(lambda p, f: learner.loss(p, f)[0])

    def make_sampler(n_particles, n_states, n_eq):
        system = build_line_system({**dict(cfg.system), "n_particles": n_particles})
        scfg = dataclasses.replace(base_cfg, first_equilibration_steps=n_eq * every, equilibration_steps=0,
                                   production_steps=n_states * every, every=every)
        return OneBodySampler(pot, system, scfg)

    def make_direct(sampler, n_states, n_eq):
        """Loss of the trajectory average of the density profile, as a function of θ through
        every integrator step (same initial state and noise as ``sampler.sample``)."""
        step = jax.checkpoint(lambda st, p: sampler.step_fn(st, p))

        def loss(p, state):
            def one(st, _):
                return step(st, p), None
            st, _ = lax.scan(one, state, None, length=n_eq * every)

            def keep(st, _):
                st, _ = lax.scan(one, st, None, length=every)
                return st, obs.profile(st.position)
            _, profiles = lax.scan(keep, st, None, length=n_states)
            return gamma * jnp.mean((profiles.mean(0) - target) ** 2)
        return jax.jit(jax.value_and_grad(loss))

    def norm(tree):
        return float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(tree))))

    def compare(n_particles, n_states, n_eq, seed, time_it):
        sampler = make_sampler(n_particles, n_states, n_eq)
        state, _ = sampler.init(jax.random.PRNGKey(seed), params)
        t_sample_first, t_sample, res = timed(lambda: sampler.sample(params, state, None, first=True),
                                              repeats=repeats if time_it else 0)
        assert res.ok, res.reason
        feats = jax.block_until_ready(engine.featurize(res.trajectory))    # compiles for this shape
        t0 = time.perf_counter()
        feats = jax.block_until_ready(engine.featurize(res.trajectory))
        t_feat = time.perf_counter() - t0
        direct = make_direct(sampler, n_states, n_eq)
        reps = repeats if time_it else 0
        d_first, t_d, g_d = timed(difftre_grad, params, feats, repeats=max(reps, 1) * 20 if time_it else 0)
        a_first, t_a, (loss_a, g_a) = timed(direct, params, state, repeats=reps)
        loss_d = float(difftre_loss(params, feats))
        row = {"particles": n_particles, "kept_states_per_particle": n_states, "equilibration_states": n_eq,
               "states_N": n_states * n_particles, "steps": (n_states + n_eq) * every, "seed": seed,
               "loss_difftre": loss_d, "loss_direct": float(loss_a),
               "grad_norm_difftre": norm(g_d), "grad_norm_direct": norm(g_a)}
        if time_it:
            row.update({"t_grad_difftre_s": t_d, "t_grad_direct_s": t_a, "t_sample_s": t_sample,
                        "t_featurize_s": t_feat, "compile_difftre_s": d_first, "compile_direct_s": a_first,
                        "s_g": t_a / t_d, "s_update": t_a / (t_sample + t_feat + t_d)})
        return row

    t_start = time.perf_counter()
    rows = []
    for n in lengths:
        n_eq = max(1, n // 10)
        for seed in range(seeds):
            row = compare(1, n, n_eq, seed, time_it=(seed == 0 and not args.norms_only))
            rows.append(row)
            print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    if args.norms_only:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        summary = {"difftre": __version__, "jax": jax.__version__, "device": str(jax.devices()[0]),
                   "integrator": f"BAOAB dt={base_cfg.dt} gamma={base_cfg.gamma}, one state kept every {every} steps",
                   "rows": rows, "wall_s": time.perf_counter() - t_start}
        (out / "gradients.json").write_text(json.dumps(summary, indent=1))
        plot(out / "gradients.png", rows, None)
        print(f"\ngradient norms, {summary['integrator']} (mean over {seeds} trajectories)")
        print(f"{'N states':>9} {'steps':>7} {'|g| DiffTRe':>12} {'|g| direct':>11}")
        for n in lengths:
            sel = [r for r in rows if r["kept_states_per_particle"] == n]
            print(f"{n:>9} {sel[0]['steps']:>7} {np.mean([r['grad_norm_difftre'] for r in sel]):>12.4g} "
                  f"{np.mean([r['grad_norm_direct'] for r in sel]):>11.4g}")
        return
    # the preset's own trajectory: 100 particles x 100 states after 10 skipped (N = 10000 states)
    preset = compare(int(cfg.system.n_particles), base_cfg.n_snapshots, base_cfg.equilibration_steps // every, 0,
                     time_it=True) if not args.quick else None
    if preset:
        print(json.dumps(preset), flush=True)

    # G: backprop through one BAOAB step of B particles vs one DiffTRe gradient over B states
    samp_b = make_sampler(B, 1, 0)
    state_b, _ = samp_b.init(jax.random.PRNGKey(7), params)
    # (the momentum: a BAOAB step's new force, hence its dependence on θ, enters the final half kick)
    one_step = jax.jit(jax.grad(lambda p, st: jnp.sum(samp_b.step_fn(st, p).momentum ** 2)))
    _, t_step_b, _ = timed(one_step, params, state_b, repeats=max(repeats, 3))
    res_b = samp_b.sample(params, state_b, None, first=True)
    feats_b = engine.featurize(res_b.trajectory)
    _, t_states_b, _ = timed(difftre_grad, params, feats_b, repeats=max(repeats, 3))
    G = t_step_b / t_states_b
    n_eq_ratio = 0.1
    estimate = G * every * (1 + n_eq_ratio)

    published = next(r for r in rows if r["kept_states_per_particle"] == 10 and "s_g" in r)
    summary = {
        "difftre": __version__, "jax": jax.__version__, "device": str(jax.devices()[0]),
        "model": "prior 75 (x-0.5)^2 + MLP 2x100 (swish)", "n_params": int(n_params),
        "integrator": f"BAOAB dt={base_cfg.dt} gamma={base_cfg.gamma}, one state kept every {every} steps",
        "published_setup": published, "preset_setup": preset, "rows": rows,
        "G": G, "G_parts_s": {"backprop_one_step_B_particles": t_step_b, "difftre_grad_B_states": t_states_b, "B": B},
        "s_g_rule_of_thumb": estimate, "rule": "s_g ~ G n (1 + N_eq/N), n = 100, N_eq/N = 0.1",
        "published_figures": {"s_g": 486, "s_update": 3.7}, "wall_s": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gradients.json").write_text(json.dumps(summary, indent=1))
    plot(out / "gradients.png", rows, preset)

    print(f"\nDiffTRe vs direct AD, double well, MLP 2x100 ({n_params} parameters), {summary['integrator']}")
    print(f"{'N states':>9} {'steps':>7} {'t DiffTRe [s]':>14} {'t direct [s]':>13} {'s_g':>8} {'t sample [s]':>13} "
          f"{'s_update':>9} {'|g| DiffTRe':>12} {'|g| direct':>11}")
    for r in [r for r in rows if "s_g" in r] + ([preset] if preset else []):
        lab = f"{r['states_N']}" + ("*" if r["particles"] > 1 else "")
        print(f"{lab:>9} {r['steps']:>7} {r['t_grad_difftre_s']:>14.5f} {r['t_grad_direct_s']:>13.4f} {r['s_g']:>8.1f} "
              f"{r['t_sample_s']:>13.4f} {r['s_update']:>9.2f} {r['grad_norm_difftre']:>12.4g} {r['grad_norm_direct']:>11.4g}")
    if preset:
        print("  * the preset's trajectory: 100 particles x 100 kept states (one particle each per state)")
    print(f"G = {G:.2f} (one-step backprop of {B} particles {t_step_b * 1e3:.2f} ms / DiffTRe gradient over {B} states "
          f"{t_states_b * 1e3:.2f} ms); rule of thumb s_g ~ G n (1 + N_eq/N) = {estimate:.0f}")
    print(f"published setup (N = 10, N_eq = 1, 1100 steps): s_g = {published['s_g']:.0f} (published 486), "
          f"per update {published['s_update']:.2f} (published 3.7)")
    print(f"wrote {out / 'gradients.json'} and {out / 'gradients.png'} ({summary['wall_s']:.0f} s)")


def plot(path, rows, preset):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    lengths = sorted({r["kept_states_per_particle"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, lab, col in (("grad_norm_direct", "direct AD", "C3"), ("grad_norm_difftre", "DiffTRe", "C0")):
        per = [[r[key] for r in rows if r["kept_states_per_particle"] == n] for n in lengths]
        steps = [110 * n for n in lengths]
        axes[0].errorbar(steps, [np.mean(p) for p in per], yerr=[np.std(p) for p in per], marker="o", color=col,
                         label=lab, capsize=3)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("trajectory length [steps] (N kept states x 110)")
    axes[0].set_ylabel("|grad loss| (mean +- sd over trajectories)")
    axes[0].legend()
    timed_rows = [r for r in rows if "s_g" in r]
    st = [r["steps"] for r in timed_rows]
    axes[1].loglog(st, [r["t_grad_direct_s"] for r in timed_rows], "o-", color="C3", label="direct AD gradient")
    axes[1].loglog(st, [r["t_grad_difftre_s"] for r in timed_rows], "o-", color="C0", label="DiffTRe gradient")
    axes[1].loglog(st, [r["t_sample_s"] for r in timed_rows], "s--", color="gray", label="sampling (forward MD)")
    if preset:
        axes[1].plot([preset["steps"]], [preset["t_grad_direct_s"]], "*", color="C3", ms=12,
                     label="preset (100 particles): direct")
        axes[1].plot([preset["steps"]], [preset["t_grad_difftre_s"]], "*", color="C0", ms=12,
                     label="preset (100 particles): DiffTRe")
    axes[1].set_xlabel("trajectory length [steps]")
    axes[1].set_ylabel("wall time [s]")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
