#!/usr/bin/env python
"""Make the LJ target RDF (and S(k)) with the project's own simulator (``--prior morse``: the
soft-core fluid of config=softcore instead).

Runs the true Lennard-Jones fluid (ε = σ = 1, rc = 2.5, shifted) at the state point of a
preset (default `lj`: N = 1000, ρ = 0.5, kT = 1.5, Langevin, dt = 0.005; override with
system.density=… system.kT=…) for many independent segments and writes the averaged RDF,
computed with exactly the observable definition and grid of the preset, with its provenance
in the header. With 'observables=[rdf,pressure]' it also prints the mean virial pressure; with
'observables=[rdf,sk]' it also computes the static structure factor S(k) (``--only`` picks the
observables written, ``--out`` a file, or a template with ``{name}`` for several):

    python scripts/make_targets.py --segments 40 --only sk --out configs/targets/data/lj_sk_rho0.50_kT1.50.txt \
        'observables=[rdf,sk]'

    python scripts/make_targets.py --segments 100 --out configs/targets/data/lj_rdf_rho0.50_kT1.50.txt \
        system.density=0.5 system.kT=1.5 'observables=[rdf,pressure]'
    python scripts/make_targets.py --segments 150 --out configs/targets/data/lj_rdf_rho0.70_kT1.00.txt \
        system.density=0.7 system.kT=1.0

With several RDF observables (e.g. the partial RDFs of a mixture) ``--out`` is a template with
``{name}``, the observable's name; ``prior=lj`` takes the preset's per-pair ``prior.pairs``:

    python scripts/make_targets.py --config softcore --prior morse --segments 100 \
        --out configs/targets/data/morse_rdf_rho0.50_kT2.00.txt

    python scripts/make_targets.py --config lj_mixture --segments 100 \
        --out 'configs/targets/data/lj_mixture_xA25_{name}.txt' 'system.species={A:0.25,B:0.75}'
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
XUNIT = {"rdf": "sigma", "structure_factor": "1/sigma"}   # gridded observables written as targets


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="lj", help="preset whose system/observables to use")
    ap.add_argument("--segments", type=int, default=200, help="production segments of 1000 steps")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--out", default=str(ROOT / "configs/targets/data/lj_rdf_rho0.50_kT1.50.txt"))
    ap.add_argument("--only", default=None, help="comma-separated observable names to write (default: all)")
    ap.add_argument("--prior", default="lj", help="the true potential: a prior config (configs/prior/NAME.yaml; "
                    "default lj), e.g. morse for the soft-core fluid of config=softcore")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir

    import jax
    from difftre_cli import __version__, assemble
    from difftre_cli.observables.structure_factor import StructureFactor

    # The true potential is the LJ prior with no learnable model; targets are not needed (every
    # RDF / S(k) observable gets a placeholder target so that the components can be built).
    overrides = [f"config={args.config}", f"prior={args.prior}", "model=none", f"seed={args.seed}"] + args.overrides
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose(config_name="train", overrides=overrides)
    from omegaconf import OmegaConf, open_dict
    placeholder = ROOT / "configs/targets/data/placeholder.txt"
    with open_dict(cfg):
        cfg.states = None
        cfg.targets = OmegaConf.create({name: {"file": str(placeholder), "x_unit": XUNIT[o.get("kind", name)]}
                                        for name, o in cfg.observables.items() if o.get("kind", name) in XUNIT})
    grid = np.linspace(0, 40, 4001)
    placeholder.write_text("\n".join(f"{x} 1.0" for x in grid))
    try:
        c = assemble.build(cfg)
    finally:
        placeholder.unlink()
    params = c.potential.init(jax.random.PRNGKey(args.seed))
    state, nbrs = c.sampler.init(jax.random.PRNGKey(args.seed), params)
    rdf_names = list(cfg.targets) if args.only is None else [n for n in cfg.targets if n in args.only.split(",")]
    t0 = time.perf_counter()
    rdfs, kts, pressures = [], [], []
    for seg in range(args.segments):
        res = c.sampler.sample(params, state, nbrs, first=(seg == 0))
        assert res.ok, "reference simulation became unstable"
        state, nbrs = res.state, res.neighbor
        feats = c.engine.featurize(res.trajectory)
        rdfs.append({k: np.asarray(v).mean(0) for k, v in feats.static.items() if k in rdf_names})
        if "pressure" in c.observables:
            pressures.append(float(np.asarray(c.engine.snapshot_observables_jit(params, feats)["pressure"]).mean()))
        kts.append(float(np.mean(res.trajectory.kT)))
        if (seg + 1) % 20 == 0:
            print(f"segment {seg + 1}/{args.segments}  {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    sc = c.sampler.cfg
    cmd = "python scripts/make_targets.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    prior = OmegaConf.to_container(cfg.prior)
    species = ("" if c.system.n_species == 1 else " species " + " ".join(
        f"{n}={k}" for n, k in zip(c.system.species_names, c.system.counts)))
    for name in rdf_names:
        stack = np.array([r[name] for r in rdfs])
        g = stack.mean(0)
        err = stack.std(0, ddof=1) / np.sqrt(len(stack))
        obs = c.observables[name]
        sk = isinstance(obs, StructureFactor)
        what = ("static structure factor S(k)" if sk else "radial distribution function g(r)"
                if obs.pair is None else f"partial RDF g_{'-'.join(obs.pair)}(r)")
        how = (f"S(k) = |Σ_j exp(ik·r_j)|²/N over k = 2πn/L, shell-averaged on {obs.n_bins} bins of |k| in "
               f"({obs.k_min}, {obs.k_max}] 1/sigma" if sk else
               f"Gaussian-smoothed histogram sigma={obs.sigma} on {obs.n_bins} bins in [{obs.r_min}, {obs.r_max}]")
        header = [
            f"difftre target: {what} of the {'Lennard-Jones' if prior['kind'] == 'lj' else prior['kind']} fluid",
            f"made by: {cmd}",
            f"difftre {__version__}, jax {jax.__version__}, device {jax.devices()[0]}",
            f"potential: {json.dumps(prior)} (truncated and shifted at rc={c.potential.cutoff}; reduced units)",
            f"state: N={c.system.n_particles}{species} rho={c.system.density:.4f} kT={c.system.kT} "
            f"box={c.system.box_size:.4f}",
            f"sampler: {sc.integrator} dt={sc.dt} gamma={sc.gamma}; {args.segments} segments x {sc.production_steps} "
            f"steps, snapshot every {sc.every}; first equilibration {sc.first_equilibration_steps}, then "
            f"{sc.equilibration_steps} per segment",
            f"observable: {how}",
            f"measured mean kinetic kT = {np.mean(kts):.4f}; max standard error of {'S' if sk else 'g'} = "
            f"{err.max():.4f}",
            "columns: k [1/sigma]  S(k)  standard_error" if sk else "columns: r [sigma]  g(r)  standard_error",
        ]
        out = Path(args.out.format(name=name))
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as fh:
            fh.write("".join(f"# {h}\n" for h in header))
            for r, gv, ev in zip(obs.grid, g, err):
                fh.write(f"{r:.5f} {gv:.6f} {ev:.6f}\n")
        print(f"wrote {out} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    if pressures:
        p = np.array(pressures)
        print(f"virial pressure (reduced units, set kT): {p.mean():.5f} +- {p.std(ddof=1) / np.sqrt(len(p)):.5f} "
              f"over {len(p)} segments", file=sys.stderr)


if __name__ == "__main__":
    main()
