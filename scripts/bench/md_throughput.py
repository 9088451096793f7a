#!/usr/bin/env python
"""MD throughput of the difftre engine vs plain JAX MD vs LAMMPS (one core).

Lennard-Jones fluid, ρ = 0.7, kT = 1, dt = 0.005, rc = 2.5, float32, NVT. For each N the
system starts on a simple-cubic lattice (N = n³; fcc when N = 4n³ and not a cube), is
equilibrated briefly, then K steps are timed after compilation (best of --repeats).

    python scripts/bench/md_throughput.py --sizes 1000 8000 --steps 1000 200 --json out.json

Goal: difftre ≥ 1/3 of LAMMPS's one-core steps/s at every size.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import warnings

import numpy as np

warnings.filterwarnings("ignore", message="Explicitly requested dtype")

RHO, KT, DT, RC = 0.7, 1.0, 0.005, 2.5
GOAL = 1.0 / 3.0


def lattice(n_particles: int, density: float = RHO):
    """Lattice positions in [0, L) and kind: sc if N = n³, else fcc (N = 4n³)."""
    box = (n_particles / density) ** (1.0 / 3.0)
    n = round(n_particles ** (1.0 / 3.0))
    if n ** 3 == n_particles:
        kind, basis = "sc", np.zeros((1, 3))
    else:
        n = round((n_particles / 4) ** (1.0 / 3.0))
        if 4 * n ** 3 != n_particles:
            raise SystemExit(f"N={n_particles} is neither n³ nor 4n³")
        kind = "fcc"
        basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    g = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = (g[:, None, :] + basis[None] + 0.25).reshape(-1, 3) * (box / n)
    return sites.astype(np.float32), box, kind, n


def _timed(fn, repeats):
    """Best wall and CPU time over ``repeats`` calls (fn must block)."""
    best_wall = best_cpu = math.inf
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best_wall, best_cpu


# --------------------------------------------------------------------------- difftre
def bench_difftre(n_particles, steps, repeats, equil, skin, multiplier):
    import jax
    from difftre_cli import potentials, sampler, simulate, units
    from difftre_cli.system import System

    pos, box, _, _ = lattice(n_particles)
    system = System(n_particles=n_particles, box_size=box, kT=KT, mass=1.0, positions=pos,
                    units=units.get("lj"), species=np.zeros(n_particles, np.int32))
    pot = potentials.build({"kind": "lj", "epsilon": 1.0, "sigma": 1.0}, {"kind": "none"}, RC)
    cfg = sampler.SamplerConfig(integrator="langevin", dt=DT, gamma=1.0, skin=skin,
                                capacity_multiplier=multiplier)
    md = simulate.Sampler(pot, system, cfg)
    params = pot.init(jax.random.PRNGKey(0))
    state, nbrs = md.init(jax.random.PRNGKey(1), params)

    def run(state, nbrs, n):
        # the sampler interface as training uses it: n steps in chunks of ~chunk_seconds each
        res = md.run(params, state, nbrs, n - 1, 1, 1)
        jax.block_until_ready(res.state.position)
        return res.state, res.neighbor, res.retries

    # equilibrate (re-allocating as the lattice melts), then size the list on the fluid
    for _ in range(3):
        state, nbrs, _ = run(state, nbrs, equil)
        nbrs = md.neighbor_fn.allocate(state.position)
    for extra in (0, 8, 16, 32, 64):
        nbrs = md.neighbor_fn.allocate(state.position, extra_capacity=extra)
        out = run(state, nbrs, steps)  # compile + check
        if out[2] == 0:
            break
    builds = int(out[1].num_builds) - int(nbrs.num_builds)
    wall, cpu = _timed(lambda: run(state, nbrs, steps), repeats)
    return dict(steps_per_s=steps / wall, steps_per_cpu_s=steps / cpu, rebuilds=builds,
                max_neighbors=int(nbrs.max_occupancy), candidate_capacity=int(nbrs.candidate_capacity),
                overflow=out[2] > 0)


# ---------------------------------------------------------------------- plain JAX MD
def bench_jax_md(n_particles, steps, repeats, equil):
    import jax
    import jax.numpy as jnp
    from jax_md import energy, partition, simulate, space

    pos, box, _, _ = lattice(n_particles)
    R = jnp.asarray(pos)
    disp, shift = space.periodic(box)
    nfn, efn = energy.lennard_jones_neighbor_list(disp, box, r_cutoff=RC, dr_threshold=0.3,
                                                  format=partition.Sparse)
    init, apply = simulate.nvt_langevin(efn, shift, DT, KT, gamma=1.0)
    nbrs = nfn.allocate(R)
    st = init(jax.random.PRNGKey(0), R, neighbor=nbrs)

    def make(n):
        @jax.jit
        def sim(st, nb):
            def body(i, c):
                s, b = c
                b = b.update(s.position)
                return apply(s, neighbor=b), b
            return jax.lax.fori_loop(0, n, body, (st, nb))
        return sim

    eq, sim = make(equil), make(steps)
    for _ in range(3):
        st, nbrs = eq(st, nbrs)
        jax.block_until_ready(st)
        nbrs = nfn.allocate(st.position)
    out = sim(st, nbrs)
    jax.block_until_ready(out)
    if bool(out[1].did_buffer_overflow):
        nbrs = nfn.allocate(st.position, extra_capacity=32)
        out = sim(st, nbrs)
    wall, cpu = _timed(lambda: jax.block_until_ready(sim(st, nbrs)), repeats)
    return dict(steps_per_s=steps / wall, steps_per_cpu_s=steps / cpu,
                overflow=bool(out[1].did_buffer_overflow))


# --------------------------------------------------------------------------- LAMMPS
LAMMPS_INPUT = """units lj
atom_style atomic
lattice {kind} {rho}
region box block 0 {n} 0 {n} 0 {n}
create_box 1 box
create_atoms 1 box
mass 1 1.0
velocity all create {kT} 12345 loop geom
pair_style lj/cut {rc}
pair_coeff 1 1 1.0 1.0 {rc}
neighbor 0.3 bin
neigh_modify every 1 delay 0 check yes
fix 1 all nvt temp {kT} {kT} 0.5
timestep {dt}
thermo {steps}
run {equil}
run {steps}
"""


def bench_lammps(n_particles, steps, repeats, equil, lmp):
    _, _, kind, n = lattice(n_particles)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    best = math.inf
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in.lj"
        inp.write_text(LAMMPS_INPUT.format(kind=kind, rho=RHO, n=n, kT=KT, rc=RC, dt=DT,
                                           steps=steps, equil=equil))
        for _ in range(repeats):
            res = subprocess.run([lmp, "-in", str(inp), "-log", "none", "-nocite"], cwd=tmp,
                                 env=env, capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                raise RuntimeError(f"lmp failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
            loops = re.findall(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms",
                               res.stdout)
            t, procs, nsteps, atoms = loops[-1]
            assert int(nsteps) == steps and int(atoms) == n_particles and int(procs) == 1
            best = min(best, float(t))
    return dict(steps_per_s=steps / best)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000])
    ap.add_argument("--steps", type=int, nargs="+", default=[1000, 200],
                    help="timed steps per size (one value, or one per size)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per engine; best is kept")
    ap.add_argument("--equil", type=int, default=200, help="equilibration steps")
    ap.add_argument("--skin", type=float, default=0.3, help="difftre neighbour-list skin")
    ap.add_argument("--capacity-multiplier", type=float, default=1.25)
    ap.add_argument("--no-lammps", action="store_true")
    ap.add_argument("--no-jax-md", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    args = ap.parse_args(argv)
    steps = args.steps if len(args.steps) == len(args.sizes) else [args.steps[0]] * len(args.sizes)

    lmp = None if args.no_lammps else shutil.which("lmp")
    import jax
    rows = []
    for n, k in zip(args.sizes, steps):
        row = {"N": n, "steps": k}
        print(f"N={n}: difftre ...", file=sys.stderr, flush=True)
        row["difftre"] = bench_difftre(n, k, args.repeats, args.equil, args.skin, args.capacity_multiplier)
        if not args.no_jax_md:
            print(f"N={n}: plain JAX MD ...", file=sys.stderr, flush=True)
            row["jax_md"] = bench_jax_md(n, k, args.repeats, args.equil)
        if lmp:
            print(f"N={n}: LAMMPS ...", file=sys.stderr, flush=True)
            row["lammps"] = bench_lammps(n, max(k, 1000), args.repeats, args.equil, lmp)
        rows.append(row)

    def get(r, eng):
        return r.get(eng, {}).get("steps_per_s", float("nan"))

    print(f"\njax {jax.__version__}, {os.cpu_count()} CPU(s), skin={args.skin}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    hdr = f"{'N':>6} {'difftre':>10} {'jax-md':>10} {'LAMMPS':>10} {'dt/LAMMPS':>10} {'dt/jax-md':>10} {'rebuilds':>9}"
    print(hdr)
    ok = True
    for r in rows:
        d, p, l = get(r, "difftre"), get(r, "jax_md"), get(r, "lammps")
        ratio_l, ratio_p = d / l, d / p
        r["ratio_lammps"], r["ratio_jax_md"] = ratio_l, ratio_p
        if not math.isnan(ratio_l):
            ok &= ratio_l >= GOAL
        print(f"{r['N']:>6} {d:>10.1f} {p:>10.1f} {l:>10.1f} {ratio_l:>10.2f} {ratio_p:>10.2f} "
              f"{r['difftre']['rebuilds']:>5}/{r['steps']}")
    has_lammps = any("lammps" in r for r in rows)
    verdict = ("PASS" if ok else "FAIL") if has_lammps else "N/A (no LAMMPS)"
    print(f"{verdict}: difftre >= 1/3 of LAMMPS one-core steps/s at every size (steps/s = wall clock, best of {args.repeats})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "verdict": verdict, "skin": args.skin,
                                         "jax": jax.__version__}, indent=2, default=float))
    return 0 if (ok or not has_lammps) else 1


if __name__ == "__main__":
    sys.exit(main())
