"""Time to solution of the trainers on several problems, in one process.

For each problem and trainer — difftre (the problem's preset), direct_ad (its preset with
trainer=direct_ad and Adam 0.02, clipped at 1, as config=lj_direct_ad) and ibi (its preset with
trainer=ibi model=table, as config=lj_ibi) — train with the generic outer loop (train.Trainer)
and, every ``--eval-interval`` seconds of training, evaluate the model the run would leave (the
current parameters, or their average with ``trainer.average``) the way ``difftre evaluate``
does (an independent run with its own seed: equilibration, then ``--eval-steps`` steps, RDFs
averaged over every 20th step; production.production_observables; several state points: each
of them). The error is the RMSE of every target RDF against the
evaluated one, averaged over the targets (the partial RDFs of a mixture, and its state
points). The clock counts training only (compilation included, evaluations excluded); a
trainer stops at the first evaluation below the lowest of ``--thresholds`` or at ``--cap``
seconds of training.

Problems: ``lj`` (config=lj: the LJ fluid at ρ = 0.5, kT = 1.5 from its RDF, prior (σ/r)¹²
plus a spline), ``softcore`` (config=softcore: the same model on the RDF of a Morse fluid at
ρ = 0.5, kT = 2.0, whose core is softer than the prior and whose well is wider than LJ's),
``lj_mixture`` (config=lj_mixture: three compositions of a binary LJ mixture, nine partial
RDFs, one set of pair potentials).

    python scripts/bench/time_to_solution.py                      # all problems, cap 600 s per trainer
    python scripts/bench/time_to_solution.py --quick --problems lj --trainers difftre
    python scripts/bench/time_to_solution.py --set difftre:trainer.step_rule=fixed   # the old step rule
    python scripts/bench/time_to_solution.py --merge a.json b.json --plot tts.png      # runs' results together
    python scripts/bench/time_to_solution.py --floor --trainers '' --problems lj_mixture  # the noise floor only

Prints per problem and trainer the training time to each threshold (or "> cap"), the updates,
the RMSE history and the ratios to difftre; ``--plot`` draws RMSE against training time, one
panel per problem. ``--floor`` first evaluates each problem's true potential the same way (three
seeds): its RMSE is the evaluation's noise floor, which no trained model can be told apart from,
so a threshold near it is no test of a trainer.
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

PROBLEMS = {"lj": "config=lj", "softcore": "config=softcore", "lj_mixture": "config=lj_mixture"}
#: each trainer's overrides on top of a problem's preset (for lj: config=lj_direct_ad, config=lj_ibi); the
#: baselines leave the last iterate (a preset's trainer.average is DiffTRe's choice)
TRAINERS = {"difftre": [],
            "direct_ad": ["trainer=direct_ad", "optimizer=adam", "optimizer.lr=0.02", "optimizer.clip_norm=1.0",
                          "trainer.average=null"],
            "ibi": ["trainer=ibi", "model=table", "trainer.average=null"]}


class Reached(Exception):
    pass


def _rdf_targets(trainer):
    """[(components, target)] of every gridded target (RDFs) of every state point."""
    cs = getattr(trainer.regime, "cs", None) or [trainer.c]
    return [(c, t) for c in cs for t in c.targets.values() if c.observables[t.observable].grid is not None]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="train", overrides=overrides)
    validate(cfg)
    return cfg


def evaluated_rmse(targets, params, args, seed: int) -> float:
    """The RDF RMSE a trainer is judged by: an independent run at ``params`` (equilibration, then
    ``--eval-steps`` steps, RDFs every 20), mean over the targets of every state point."""
    errors, means = [], {}
    for c, target in targets:
        if id(c) not in means:
            means[id(c)] = production_observables(c, params, args.eval_equilibration, args.eval_steps, 20,
                                                  seed=seed)[0]
        diff = np.asarray(means[id(c)][target.observable]) - np.asarray(target.value)
        errors.append(float(np.sqrt(np.mean(diff ** 2))))
    return float(np.mean(errors))


def truth_floor(problem, args, workdir, seeds=(1, 2, 3)) -> list[float]:
    """The evaluated RMSE of the problem's true potential: its prior group set to the ground
    truth's kind (each problem's prior group holds its true potential: lj's LJ, the mixture's LJ
    with its per-pair σ, softcore's Morse) and the model at its zero start. The evaluation's
    noise floor: a threshold near it cannot be told from noise."""
    truth = _compose([PROBLEMS[problem]]).ground_truth.kind
    cfg = _compose([PROBLEMS[problem], f"prior={truth}"])
    trainer = Trainer(cfg, Path(workdir) / f"{problem}_truth", quiet=True)
    params, _ = trainer.regime.init(jax.random.PRNGKey(int(cfg.seed)))
    if any(np.any(np.asarray(x) != 0) for x in jax.tree_util.tree_leaves(params)):
        raise SystemExit(f"{problem}: the model does not start at zero; the truth cannot be evaluated this way")
    return [round(evaluated_rmse(_rdf_targets(trainer), params, args, seed=int(cfg.seed) + s), 4) for s in seeds]


def run_one(label, overrides, args, workdir):
    cfg = _compose(overrides)
    trainer = Trainer(cfg, Path(workdir) / label, quiet=True)
    targets = _rdf_targets(trainer)
    state = {"eval_time": 0.0, "updates": 0, "history": [], "reached": {}, "last_eval": 0.0}
    t_start = time.perf_counter()
    lowest = min(args.thresholds)

    def training_time():
        return time.perf_counter() - t_start - state["eval_time"]

    def evaluate(params):
        t0 = time.perf_counter()
        rmse = evaluated_rmse(targets, params, args, seed=int(cfg.seed) + 1)
        state["eval_time"] += time.perf_counter() - t0
        return rmse

    propose = trainer.regime.propose

    def timed_propose(params, opt_state, lr_scale):
        t = training_time()
        if state["updates"] > 0 and (t - state["last_eval"] >= args.eval_interval or t >= args.cap):
            rmse = evaluate(trainer.model(params))   # what the run would leave (trainer.average)
            state["last_eval"] = t
            state["history"].append((round(t, 1), state["updates"], round(rmse, 4)))
            print(f"  {label}: {t:7.1f} s training, {state['updates']:4d} updates, RDF RMSE {rmse:.4f}", flush=True)
            for th in args.thresholds:
                if rmse < th and str(th) not in state["reached"]:
                    state["reached"][str(th)] = (round(t, 1), state["updates"])
            if rmse < lowest or t >= args.cap:
                raise Reached
        state["updates"] += 1
        return propose(params, opt_state, lr_scale)

    trainer.regime.propose = timed_propose
    try:
        trainer.run()
    except Reached:
        pass
    return {"reached": state["reached"], "updates": state["updates"], "history": state["history"],
            "cap_s": args.cap, "final_training_time_s": round(training_time(), 1), "overrides": overrides}


def report(problem, results, thresholds):
    print(f"\n{problem}: trainer   " + "   ".join(f"time to RMSE<{th:g} [s] (updates)  ratio" for th in thresholds))
    for name, r in results.items():
        cells = []
        for th in thresholds:
            hit, ref = r["reached"].get(str(th)), results.get("difftre", {}).get("reached", {}).get(str(th))
            if hit:
                shown = f"{hit[0]:.1f} ({hit[1]})"
                ratio = f"{hit[0] / ref[0]:.2f}" if ref else "n/a"
            else:
                shown = f"> {r['final_training_time_s']:.0f} (cap)"
                ratio = f"> {r['final_training_time_s'] / ref[0]:.2f}" if ref else "n/a"
            cells.append(f"{shown:>26} {ratio:>6}")
        print(f"{'':>{len(problem) + 2}}{name:<10}" + "   ".join(cells))


def plot(all_results, thresholds, path, floors=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(all_results), figsize=(4.2 * len(all_results), 3.4), squeeze=False)
    for ax, (problem, results) in zip(axes[0], all_results.items()):
        for name, r in results.items():
            h = np.asarray(r["history"], float).reshape(-1, 3)
            ax.plot(h[:, 0], h[:, 2], "o-", ms=3, label=name)
        for th in thresholds:
            ax.axhline(th, color="grey", lw=0.8, ls="--")
        if floors and problem in floors:   # the true potential's evaluated RMSE: the noise floor
            ax.axhspan(min(floors[problem]), max(floors[problem]), color="grey", alpha=0.25, label="truth")
        ax.set(yscale="log", xlabel="training wall time [s]", ylabel="evaluated RDF RMSE", title=problem)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def merge(args) -> int:
    """One report and one plot from several runs' --json files (problems and trainers joined)."""
    all_results, thresholds, floors = {}, None, {}
    for path in args.merge:
        data = json.loads(Path(path).read_text())
        thresholds = thresholds or data["args"]["thresholds"]
        floors.update(data.get("floors", {}))
        for prob, results in data["results"].items():
            all_results.setdefault(prob, {}).update(results)
    order = list(TRAINERS)
    for prob in all_results:
        all_results[prob] = {k: all_results[prob][k] for k in order if k in all_results[prob]}
        report(prob, all_results[prob], thresholds)
    if args.plot:
        plot(all_results, thresholds, args.plot, floors)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="cap 240 s, evaluation every 30 s, 4000-step evaluations")
    p.add_argument("--cap", type=float, default=None, help="training seconds per trainer (default 600; quick 240)")
    p.add_argument("--eval-interval", type=float, default=None, help="training seconds between evaluations (30; quick 30)")
    p.add_argument("--eval-steps", type=int, default=None, help="production steps per evaluation (10000; quick 4000)")
    p.add_argument("--eval-equilibration", type=int, default=1000)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.02],
                   help="RMSE thresholds; a trainer stops below the lowest (e.g. 0.02 0.01)")
    p.add_argument("--problems", default="lj,softcore,lj_mixture")
    p.add_argument("--trainers", default="difftre,direct_ad,ibi", help="comma-separated; '' with --floor: none")
    p.add_argument("--floor", action="store_true",
                   help="first evaluate each problem's true potential (3 seeds): the evaluation's noise floor")
    p.add_argument("--set", action="append", default=[], metavar="TRAINER:KEY=VALUE",
                   help="extra Hydra override for one trainer, e.g. direct_ad:trainer.steps=50 (repeatable)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--plot", default=None, help="RMSE against training time, one panel per problem (PNG)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="train nothing: report (and --plot) the results of earlier --json files together")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args)
    args.cap = args.cap or (240.0 if args.quick else 600.0)
    args.eval_interval = args.eval_interval or 30.0
    args.eval_steps = args.eval_steps or (4000 if args.quick else 10000)
    logging.getLogger("difftre").setLevel(logging.WARNING)
    for o in args.set:
        if ":" not in o or o.split(":", 1)[0] not in TRAINERS:
            p.error(f"--set {o!r}: expected TRAINER:KEY=VALUE with TRAINER one of {list(TRAINERS)}")
    problems = args.problems.split(",")
    for prob in problems:
        if prob not in PROBLEMS:
            p.error(f"--problems: unknown {prob!r}; the problems are {', '.join(PROBLEMS)}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; load average {os.getloadavg()[0]:.2f}; "
          f"thresholds {args.thresholds}; cap {args.cap:g} s; evaluation every {args.eval_interval:g} s of training "
          f"({args.eval_steps} steps)", flush=True)
    all_results, floors = {}, {}
    with tempfile.TemporaryDirectory() as work:
        for prob in problems:
            if args.floor:
                floors[prob] = truth_floor(prob, args, work)
                print(f"{prob}: the true potential's evaluated RMSE (noise floor) {floors[prob]}", flush=True)
            results = all_results[prob] = {}
            for name in [t for t in args.trainers.split(",") if t]:
                overrides = [PROBLEMS[prob], *TRAINERS[name], "trainer.updates=100000", "trainer.checkpoint_every=100000"]
                overrides += [o.split(":", 1)[1] for o in args.set if o.split(":", 1)[0] == name]
                results[name] = run_one(f"{prob}_{name}", overrides, args, work)
            report(prob, results, args.thresholds)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    for prob, results in all_results.items():
        report(prob, results, args.thresholds)
        if prob in floors:
            print(f"{prob}: the true potential's evaluated RMSE (noise floor) {floors[prob]}")
    if args.plot:
        plot(all_results, args.thresholds, args.plot, floors)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": all_results, "floors": floors},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
