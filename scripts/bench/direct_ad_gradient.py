"""How good is the direct-AD gradient? Compare it with DiffTRe's gradient at the same θ.

On the LJ preset's problem (config=lj_direct_ad: ρ = 0.5, kT = 1.5, N = 1000, RDF target),
at θ (the initial model, or ``--params FILE.npz`` with a ``knot_values`` array, e.g. taken
from a run's checkpoint): equilibrate, then

* the reference: DiffTRe's gradient of the same loss, Σ γ MSE(⟨g⟩, g*), from ``--ref-steps``
  production steps per trajectory (every 5th kept), twice (independent trajectories, so the
  reference's own noise shows as cos(ref₁, ref₂));
* for each T in ``--T``: ``--segments`` consecutive unrolled segments of T steps (the state
  carries over, as in training), each with ``--every`` snapshot stride; per segment the
  backpropagated gradient g_k and the cosine with the reference; then the cosine of the
  mean gradient, the mean pairwise cosine between segments (noise) and the norms.

    python scripts/bench/direct_ad_gradient.py --T 200 1000 --segments 6
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from difftre_cli import assemble  # noqa: E402
from difftre_cli.config import validate  # noqa: E402
from difftre_cli.learn.direct_ad import DirectAD  # noqa: E402


def cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[200])
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--segments", type=int, default=6)
    p.add_argument("--ref-steps", type=int, default=10000)
    p.add_argument("--params", default=None, help="npz with knot_values (default: the initial zero model)")
    p.add_argument("--config", default="lj_direct_ad")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides, e.g. simulator.gamma=5")
    p.add_argument("--per-knot", action="store_true", help="also print each parameter's gradient statistics")
    args = p.parse_args(argv)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="train", overrides=[f"config={args.config}", f"seed={args.seed}",
                                                      f"simulator.production_steps={args.ref_steps}",
                                                      "simulator.every=5", "simulator.equilibration_steps=200"]
                        + list(args.override))
    validate(cfg)
    c = assemble.build(cfg)
    key = jax.random.PRNGKey(args.seed)
    params = c.potential.init(key)
    if args.params:
        kv = np.load(args.params)["knot_values"]
        params = {"model": {"knot_values": jax.numpy.asarray(kv, params["model"]["knot_values"].dtype)}}
    flat0, _ = ravel_pytree(params)
    print(f"θ: |knots| = {np.linalg.norm(np.asarray(flat0)):.3f}", flush=True)
    state, nbrs = c.sampler.init(key, params)

    # reference: DiffTRe gradients on two independent long trajectories
    refs, preds = [], []
    t0 = time.perf_counter()
    for i in range(2):
        res = c.sampler.sample(params, state, nbrs, first=(i == 0))
        assert res.ok, res.reason
        state, nbrs = res.state, res.neighbor
        feats = c.engine.featurize(res.trajectory)
        loss, losses, pred, n_eff, g = c.learner.grad(params, feats)
        refs.append(np.asarray(ravel_pytree(g)[0]))
        preds.append(pred)
        rmse = float(np.sqrt(np.mean((np.asarray(pred["rdf"]) - np.asarray(c.targets["rdf"].value)) ** 2)))
        print(f"ref {i}: loss {float(loss):.3e}  RDF RMSE {rmse:.4f}  |g| {np.linalg.norm(refs[-1]):.3e}", flush=True)
        del feats
    ref = 0.5 * (refs[0] + refs[1])
    print(f"cos(ref1, ref2) = {cos(refs[0], refs[1]):.3f}   ({time.perf_counter() - t0:.0f} s)", flush=True)

    for T in args.T:
        ad = DirectAD(c, steps=T, every=args.every, remat=True)
        nb_o = ad.allocate_obs_list(state.position)
        st, nb_e = state, nbrs
        gs, losses_ = [], []
        t0 = time.perf_counter()
        for k in range(args.segments):
            loss, aux, g = ad.grad(params, st, nb_e, nb_o)
            losses_a, preds_a, st, nb_e, nb_o, stable, overflow = aux
            assert bool(stable) and not bool(overflow)
            gs.append(np.asarray(ravel_pytree(g)[0]))
            losses_.append(float(loss))
        dt = (time.perf_counter() - t0) / args.segments
        gs = np.array(gs)
        pair = [cos(gs[i], gs[j]) for i in range(len(gs)) for j in range(i + 1, len(gs))]
        mean = gs.mean(0)
        print(f"T={T} every={args.every}: {dt:.1f} s/segment; segment loss "
              f"{np.mean(losses_):.3e} ± {np.std(losses_):.1e}", flush=True)
        print("   cos(g_k, ref): " + " ".join(f"{cos(g, ref):+.2f}" for g in gs))
        print(f"   cos(mean_k g_k, ref) = {cos(mean, ref):+.3f}; mean pairwise cos(g_i, g_j) = {np.mean(pair):+.3f}; "
              f"|g_k| {np.mean(np.linalg.norm(gs, axis=1)):.3e} (ref {np.linalg.norm(ref):.3e}); "
              f"projection ratio (g_k·ref)/|ref|² = {np.mean(gs @ ref) / (ref @ ref):.3f}", flush=True)
        if args.per_knot:
            print("   per parameter: ref, mean_k g_k, std_k g_k")
            for i in range(ref.size):
                print(f"   {i:3d} {ref[i]:+.2e} {mean[i]:+.2e} {gs[:, i].std():.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
