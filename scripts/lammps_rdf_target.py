#!/usr/bin/env python
"""An LJ RDF target as LAMMPS users have it: LAMMPS's own `compute rdf` histogram (no smoothing),
saved as a CSV with a header row `r,g`, at the state point of config=lj (ε = σ = 1, rc = 2.5,
shifted; N = 1000 on a simple-cubic start, ρ = 0.5, kT = 1.5, Nosé–Hoover, dt = 0.005).

It is the input of the smoothing measurement (configs/README.md, "Targets from your own data";
scripts/bench/README.md): train config=lj on it with and without targets.rdf.histogram=true.

    python scripts/lammps_rdf_target.py --steps 200000 --out runs/reference/lj_rdf_lammps_hist.csv
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

SCRIPT = """units lj
atom_style atomic
lattice sc 0.5
region box block 0 10 0 10 0 10
create_box 1 box
create_atoms 1 box
mass 1 1.0
velocity all create 1.5 {seed} loop geom
pair_style lj/cut 2.5
pair_modify shift yes
pair_coeff 1 1 1.0 1.0 2.5
neighbor 0.6 bin
comm_modify cutoff 3.7
fix 1 all nvt temp 1.5 1.5 0.5
timestep 0.005
run 10000
reset_timestep 0
compute rdf all rdf 150 cutoff 3.0
fix rdf all ave/time {every} {n} {steps} c_rdf[*] file rdf.lammps mode vector
run {steps}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200000)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=4928459)
    ap.add_argument("--out", type=Path, default=Path("runs/reference/lj_rdf_lammps_hist.csv"))
    args = ap.parse_args()
    if shutil.which("lmp") is None:
        raise SystemExit("LAMMPS (lmp) is not installed (Debian: apt-get install lammps)")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        script = SCRIPT.format(seed=args.seed, every=args.every, n=args.steps // args.every, steps=args.steps)
        (Path(d) / "in.lj").write_text(script)
        subprocess.run(["lmp", "-in", "in.lj", "-log", "none", "-screen", "none"], cwd=d, check=True)
        rows = np.loadtxt(Path(d) / "rdf.lammps", comments="#", skiprows=4)   # after the "step nrows" line
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# LAMMPS compute rdf (150 bins to 3.0 sigma, unsmoothed histogram) of the LJ fluid at rho = 0.5, "
              f"kT = 1.5, N = 1000: {args.steps} steps after 10000, every {args.every}; "
              f"python scripts/lammps_rdf_target.py --steps {args.steps} --every {args.every} --seed {args.seed}\n")
    body = "r,g\n" + "".join(f"{r:.6f},{g:.8f}\n" for r, g in rows[:, 1:3])
    args.out.write_text(header + body)
    print(f"wrote {args.out} ({len(rows)} bins) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
