#!/usr/bin/env python
"""Cross-check of the relaxed-ion elastic constants of SW and EDIP silicon against LAMMPS.

Ours: relax → relaxed-ion tensor from one autodiff Hessian in (positions, strain) (difftre_cli.learn.static).
LAMMPS: finite strain. For each Voigt strain component e_j = ±δ the 3×3×3 conventional-cell
supercell (216 atoms, a = 5.43 Å) is deformed with ``change_box ... remap``, the atoms are
relaxed at fixed box (``minimize``), and the stress σ_i = −p_i (LAMMPS metal units: bar) is read;
C_ij = (σ_i(+δ) − σ_i(−δ)) / 2δ. Both use the same fixed cell. At a = 5.43 Å the cell carries a small
pressure p (SW 0.053 GPa, EDIP 0.028 GPa); then finite-strain stress derivatives (LAMMPS) and
energy second derivatives (ours) differ by the known prestress terms (Wallace): C12 by p and C44
by p/2, C11 not at all. ``--zero-stress`` evaluates both at each potential's own zero-stress
lattice constant, where the two definitions coincide. The parameter files are written from the config's defaults
(configs/classical/*.yaml) in LAMMPS's sw / edip formats.

Usage: PYTHONPATH=. python scripts/lammps_elastic.py [--lmp /usr/bin/lmp] [--delta 1e-4] [--zero-stress]
Skips (exit 0, message) when no LAMMPS binary or pair style is available.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GPA_PER_BAR = 1e-4


def sw_file(p: dict) -> str:
    # element1 element2 element3 epsilon sigma a lambda gamma costheta0 A B p q tol
    return (f"Si Si Si {p['epsilon']!r} {p['sigma']!r} {p['a']!r} {p['lam']!r} {p['gamma']!r} {p['cos_theta0']!r} "
            f"{p['A']!r} {p['B']!r} {p['p']!r} {p['q']!r} 0.0\n")


def edip_file(p: dict) -> str:
    # element1 element2 element3 A B cutoffA cutoffC alpha beta eta gamma lambda mu rho sigma Q0 u1 u2 u3 u4
    keys = ["A", "B", "a", "c", "alpha", "beta", "eta", "gamma", "lam", "mu", "rho", "sigma", "Q0", "u1", "u2", "u3", "u4"]
    return "Si Si Si " + " ".join(repr(float(p[k])) for k in keys) + "\n"


STRAIN_CMD = {0: "x scale {s}", 1: "y scale {s}", 2: "z scale {s}",
              3: "yz delta {d_lz}", 4: "xz delta {d_lz}", 5: "xy delta {d_ly}"}


def lammps_stress(lmp: str, style: str, potfile: Path, a: float, n: int, j: int | None, d: float, work: Path):
    length = n * a
    strain = ""
    if j is not None:
        strain = "change_box all " + STRAIN_CMD[j].format(s=1 + d, d_lz=d * length, d_ly=d * length) + " remap units box"
    inp = f"""units metal
boundary p p p
atom_style atomic
lattice diamond {a}
region box prism 0 {n} 0 {n} 0 {n} 0 0 0
create_box 1 box
create_atoms 1 box
mass 1 28.0855
pair_style {style}
pair_coeff * * {potfile} Si
{strain}
thermo_style custom step pe pxx pyy pzz pyz pxz pxy
min_style cg
minimize 0.0 1.0e-12 10000 100000
run 0
variable sxx equal -pxx
variable syy equal -pyy
variable szz equal -pzz
variable syz equal -pyz
variable sxz equal -pxz
variable sxy equal -pxy
print "STRESS ${{sxx}} ${{syy}} ${{szz}} ${{syz}} ${{sxz}} ${{sxy}}"
"""
    f = work / "in.elastic"
    f.write_text(inp)
    out = subprocess.run([lmp, "-in", str(f), "-log", "none", "-echo", "none"], capture_output=True, text=True, cwd=work)
    for line in out.stdout.splitlines():
        if line.startswith("STRESS"):
            return np.array([float(x) for x in line.split()[1:]]) * GPA_PER_BAR
    raise RuntimeError(f"LAMMPS failed ({style}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def lammps_elastic(lmp: str, style: str, params: dict, a: float, n: int, delta: float) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pot = work / f"Si.{style}"
        pot.write_text(sw_file(params) if style == "sw" else edip_file(params))
        C = np.zeros((6, 6))
        for j in range(6):
            plus = lammps_stress(lmp, style, pot, a, n, j, delta, work)
            minus = lammps_stress(lmp, style, pot, a, n, j, -delta, work)
            C[:, j] = (plus - minus) / (2 * delta)
    return C


def zero_stress_a(kind: str, a: float) -> float:
    """Lattice constant at zero stress of the config's potential (our cell relaxation)."""
    import jax
    jax.config.update("jax_enable_x64", True)
    from omegaconf import OmegaConf

    from difftre_cli.crystal import build_crystal
    from difftre_cli.learn.static import _property_fn
    from difftre_cli.observables.elastic import RelaxOptions
    from difftre_cli.potentials.classical import build_classical
    pot = build_classical(OmegaConf.load(ROOT / "configs" / "classical" / f"{kind}.yaml"))
    crystal = build_crystal(OmegaConf.create({"lattice_constant": a}))
    props = jax.jit(_property_fn(pot, crystal, RelaxOptions(cell=True, force_tol=1e-10), False))({})
    return float(props["box"][0, 0])


def ours(kind: str, a: float) -> tuple[np.ndarray, dict]:
    import jax
    jax.config.update("jax_enable_x64", True)
    from omegaconf import OmegaConf

    from difftre_cli.crystal import build_crystal
    from difftre_cli.learn.static import _property_fn
    from difftre_cli.observables.elastic import RelaxOptions
    from difftre_cli.potentials.classical import build_classical
    cfg = OmegaConf.load(ROOT / "configs" / "classical" / f"{kind}.yaml")
    pot = build_classical(cfg)
    crystal = build_crystal(OmegaConf.create({"lattice_constant": a}))
    props = jax.jit(_property_fn(pot, crystal, RelaxOptions(cell=False, force_tol=1e-10), False))({})
    return np.asarray(props["C_voigt"]), dict(pot.values)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lmp", default=shutil.which("lmp") or "/usr/bin/lmp")
    ap.add_argument("--delta", type=float, default=1e-4)
    ap.add_argument("--a", type=float, default=5.43)
    ap.add_argument("--cells", type=int, default=3)
    ap.add_argument("--zero-stress", action="store_true",
                    help="use each potential's own zero-stress lattice constant instead of --a")
    args = ap.parse_args(argv)
    if not Path(args.lmp).exists():
        print(f"no LAMMPS binary at {args.lmp}: cross-check skipped")
        return 0
    styles = subprocess.run([args.lmp, "-h"], capture_output=True, text=True).stdout
    published = {"sw": (151.4, 76.4, 56.4), "edip": (172.0, 64.7, 72.8)}
    print(f"relaxed-ion elastic constants, GPa (Voigt), a = {args.a} Å, LAMMPS: {args.cells}^3 cells, δ = {args.delta}")
    print(f"{'potential':9s} {'':7s} {'ours':>10s} {'LAMMPS':>10s} {'published':>10s} {'ours-LAMMPS':>12s}")
    for kind in ("sw", "edip"):
        if f" {kind} " not in styles:
            print(f"{kind}: pair style not in this LAMMPS build, skipped")
            continue
        a = zero_stress_a(kind, args.a) if args.zero_stress else args.a
        C, params = ours(kind, a)
        L = lammps_elastic(args.lmp, kind, params, a, args.cells, args.delta)
        for name, (i, j), pub in zip(("C11", "C12", "C44"), ((0, 0), (0, 1), (3, 3)), published[kind]):
            print(f"{kind:9s} {name:7s} {C[i, j]:10.4f} {L[i, j]:10.4f} {pub:10.1f} {C[i, j] - L[i, j]:12.2e}"
                  + (f"   a = {a:.6f} Å" if args.zero_stress else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
