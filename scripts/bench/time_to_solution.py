"""Time to solution of the trainers on the LJ preset's problem, in one process.

For each trainer — difftre (config=lj), direct_ad (config=lj_direct_ad), ibi (config=lj_ibi),
all learning the LJ fluid at ρ = 0.5, kT = 1.5 (N = 1000) from the RDF of the true LJ fluid —
train with the generic outer loop (train.Trainer) and, every ``--eval-interval`` seconds of
training, evaluate the current parameters the way ``difftre evaluate`` does (an independent
run with its own seed: equilibration, then ``--eval-steps`` steps, RDF averaged over every
20th step; production.production_observables). The clock counts training only (compilation
included, evaluations excluded); it stops at the first evaluation with RDF RMSE below
``--threshold`` (0.02) or at ``--cap`` seconds of training.

    python scripts/bench/time_to_solution.py            # cap 900 s per trainer, evaluation every 60 s
    python scripts/bench/time_to_solution.py --quick    # cap 240 s, evaluation every 30 s, shorter evaluations
    python scripts/bench/time_to_solution.py --quick --trainers direct_ad --set direct_ad:trainer.steps=100

Prints per trainer the training time to the threshold (or "> cap"), the updates done, the
RMSE history, and the ratios to difftre.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from difftre_cli.config import validate  # noqa: E402
from difftre_cli.production import production_observables  # noqa: E402
from difftre_cli.train import Trainer  # noqa: E402

PRESETS = {"difftre": ["config=lj"], "direct_ad": ["config=lj_direct_ad"], "ibi": ["config=lj_ibi"]}


class Reached(Exception):
    pass


def run_one(name, overrides, args, workdir):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="train", overrides=overrides)
    validate(cfg)
    trainer = Trainer(cfg, Path(workdir) / name, quiet=True)
    c = trainer.c
    target = next(t for t in c.targets.values() if c.observables[t.observable].grid is not None)
    state = {"eval_time": 0.0, "updates": 0, "history": [], "reached": None, "last_eval": 0.0}
    t_start = time.perf_counter()

    def training_time():
        return time.perf_counter() - t_start - state["eval_time"]

    def evaluate(params):
        t0 = time.perf_counter()
        means, _, _ = production_observables(c, params, args.eval_equilibration, args.eval_steps, 20,
                                             seed=int(cfg.seed) + 1)
        rmse = float(np.sqrt(np.mean((np.asarray(means[target.observable]) - np.asarray(target.value)) ** 2)))
        state["eval_time"] += time.perf_counter() - t0
        return rmse

    propose = trainer.regime.propose

    def timed_propose(params, opt_state, lr_scale):
        t = training_time()
        if state["updates"] > 0 and (t - state["last_eval"] >= args.eval_interval or t >= args.cap):
            rmse = evaluate(params)
            state["last_eval"] = t
            state["history"].append((round(t, 1), state["updates"], round(rmse, 4)))
            print(f"  {name}: {t:7.1f} s training, {state['updates']:4d} updates, RDF RMSE {rmse:.4f}", flush=True)
            if rmse < args.threshold:
                state["reached"] = t
                raise Reached
            if t >= args.cap:
                raise Reached
        state["updates"] += 1
        return propose(params, opt_state, lr_scale)

    trainer.regime.propose = timed_propose
    try:
        trainer.run()
    except Reached:
        pass
    return {"time_s": state["reached"], "updates": state["updates"], "history": state["history"],
            "cap_s": args.cap, "final_training_time_s": round(training_time(), 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="cap 240 s, evaluation every 30 s, 4000-step evaluations")
    p.add_argument("--cap", type=float, default=None, help="training seconds per trainer (default 900; quick 240)")
    p.add_argument("--eval-interval", type=float, default=None, help="training seconds between evaluations (60; quick 30)")
    p.add_argument("--eval-steps", type=int, default=None, help="production steps per evaluation (10000; quick 4000)")
    p.add_argument("--eval-equilibration", type=int, default=1000)
    p.add_argument("--threshold", type=float, default=0.02)
    p.add_argument("--trainers", default="difftre,direct_ad,ibi")
    p.add_argument("--set", action="append", default=[], metavar="TRAINER:KEY=VALUE",
                   help="extra Hydra override for one trainer, e.g. direct_ad:trainer.steps=50 (repeatable)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    args.cap = args.cap or (240.0 if args.quick else 900.0)
    args.eval_interval = args.eval_interval or (30.0 if args.quick else 60.0)
    args.eval_steps = args.eval_steps or (4000 if args.quick else 10000)
    logging.getLogger("difftre").setLevel(logging.WARNING)
    for o in args.set:
        if ":" not in o or o.split(":", 1)[0] not in PRESETS:
            p.error(f"--set {o!r}: expected TRAINER:KEY=VALUE with TRAINER one of {list(PRESETS)}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; threshold RDF RMSE {args.threshold}; cap "
          f"{args.cap:g} s; evaluation every {args.eval_interval:g} s of training ({args.eval_steps} steps)")
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.trainers.split(","):
            overrides = PRESETS[name] + ["trainer.updates=100000", "trainer.checkpoint_every=100000"]
            overrides += [o.split(":", 1)[1] for o in args.set if o.split(":", 1)[0] == name]
            results[name] = run_one(name, overrides, args, work)
    print("\ntrainer     time to RMSE<%g [s]   updates   ratio to difftre" % args.threshold)
    ref = results.get("difftre", {}).get("time_s")
    for name, r in results.items():
        t = r["time_s"]
        shown = f"{t:.1f}" if t is not None else f"> {r['final_training_time_s']:.0f} (cap)"
        if ref and t is not None:
            ratio = f"{t / ref:.2f}"
        elif ref:
            ratio = f"> {r['final_training_time_s'] / ref:.2f}"
        else:
            ratio = "n/a"
        print(f"{name:<11} {shown:>22}   {r['updates']:7d}   {ratio:>16}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
