#!/usr/bin/env python
"""Finite-temperature elastic constants of Stillinger–Weber silicon by the stress-fluctuation
method, checked against the 0 K relaxed-ion values and against stress–strain slopes.

1. For each temperature: NVT Langevin MD (difftre_cli.solid_md.SolidMD, JAX MD; the sampler
   interface's case for general boxes) of the n×n×n diamond supercell at the 0 K lattice
   constant; every ``--every`` steps the Born stress and Born stiffness
   (difftre_cli.observables.stress.born_terms) and the kinetic stress are recorded;
   C = ⟨C^B⟩ − Ωβ Cov(σ^B) + kinetic term (observables.stiffness), errors by a jackknife over
   ``--blocks`` contiguous blocks. The 0 K row is elastic.relaxed_voigt of the unit cell.
2. At ``--strain-temperature``: the box is strained h → (I + ε) h by ±δ (uniaxial e1 and shear
   e4, engineering), the mean total (virial) stress of each run is fitted against the
   strain (the unstrained point is the fluctuation run; cubic polynomial by default), and the slopes B11 = dσxx/de1,
   B12 = d(σyy + σzz)/2/de1, B44 = dσyz/de4 are compared with the fluctuation C turned into the
   same stress–strain coefficients (stiffness.stress_strain_moduli, which adds the prestress
   terms of the thermal stress). The bias of the strain design from the crystal's nonlinearity is
   measured at 0 K on the relaxed unit cell with the same strains.

Output: a table on stdout, ``--out`` JSON (+ PNG next to it; per-snapshot arrays in an .npz).

Measured with the defaults (216 atoms at a = 5.430950 Å, Langevin γ = 50 ps⁻¹, dt = 1 fs, 100 ps
per temperature with snapshots every 20 fs, 20 jackknife blocks; ~55 min on the shared 2-core
machine), GPa:

      T (K)   P       C11              C12              C44
      0               151.42           76.42            56.45     (0 K relaxed-ion)
     50     0.060   151.27 ± 0.002    76.51 ± 0.001    55.24 ± 0.77
    150     0.180   150.95 ± 0.005    76.69 ± 0.003    55.74 ± 0.65
    300     0.358   150.42 ± 0.008    76.93 ± 0.006    56.38 ± 0.64
    600     0.692   148.32 ± 0.028    76.99 ± 0.016    52.73 ± 0.90
    → 0             151.44 ± 0.002    76.43 ± 0.002    55.03 ± 0.80   (linear fit T ≤ 300 K)

    300 K, B = dσ/dε   stress–strain slope   fluctuation      difference
    B11                150.10 ± 0.09        150.06 ± 0.01    +0.04 ± 0.09
    B12                 77.23 ± 0.11         77.29 ± 0.01    −0.06 ± 0.11
    B44                 55.55 ± 0.39         56.03 ± 0.64    −0.47 ± 0.75

(strains ±1 %, ±2 % for 25 ps each, cubic fit; the same design's bias at 0 K is < 0.001 GPa).
dt = 0.5 fs at 300 K (25 ps) gives C11 150.41 ± 0.014, C12 76.91 ± 0.010: no time-step bias seen.
Usage: PYTHONPATH=. python scripts/stress_fluctuation_sw.py [--temperatures 50 150 300 600] ...
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
A0 = 5.430950          # Å, SW zero-stress lattice constant at 0 K (README)
MASS = 28.0855         # amu


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=3, help="n for the n×n×n conventional supercell (8n³ atoms)")
    p.add_argument("--lattice-constant", type=float, default=A0)
    p.add_argument("--temperatures", type=float, nargs="+", default=[50.0, 150.0, 300.0, 600.0])
    p.add_argument("--production-ps", type=float, default=100.0)
    p.add_argument("--equilibration-ps", type=float, default=5.0)
    p.add_argument("--every", type=int, default=20, help="MD steps between snapshots")
    p.add_argument("--dt-fs", type=float, default=1.0)
    p.add_argument("--friction", type=float, default=50.0, help="Langevin friction, ps⁻¹")
    p.add_argument("--blocks", type=int, default=20)
    p.add_argument("--strain-temperature", type=float, default=300.0)
    p.add_argument("--strains", type=float, nargs="*", default=[0.01, 0.02],
                   help="magnitudes δ; runs at ±δ for e1 and e4 (empty: no stress–strain runs)")
    p.add_argument("--strain-ps", type=float, default=25.0)
    p.add_argument("--fit-degree", type=int, default=3, help="polynomial degree of the stress–strain fit")
    p.add_argument("--strain-equilibration-ps", type=float, default=2.0,
                   help="per strained run, which starts from the unstrained run's last configuration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "stress_fluctuation_sw" / "result.json")
    p.add_argument("--report", type=Path, default=None, help="only print the table (and PNG) of an earlier JSON")
    return p.parse_args(argv)


def jackknife(fn, arrays, n_blocks):
    """Estimate and jackknife standard error of ``fn(*arrays)`` over contiguous blocks."""
    n = len(arrays[0])
    edges = np.linspace(0, n, n_blocks + 1).astype(int)
    full = np.asarray(fn(*arrays))
    vals = np.array([np.asarray(fn(*[np.concatenate([a[:edges[i]], a[edges[i + 1]:]]) for a in arrays]))
                     for i in range(n_blocks)])
    err = np.sqrt((n_blocks - 1) / n_blocks * np.sum((vals - vals.mean(0)) ** 2, axis=0))
    return full, err


def main(argv=None):
    args = parse(argv)
    if args.report is not None:
        result = json.loads(args.report.read_text())
        _report(result)
        _plot(args.report.with_suffix(".png"), result)
        return
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from omegaconf import OmegaConf

    from difftre_cli import units
    from difftre_cli.crystal import DIAMOND_BASIS, supercell
    from difftre_cli.observables import elastic, stiffness, stress
    from difftre_cli.potentials.classical import build_classical
    from difftre_cli.solid_md import MDSettings, SolidMD

    G = units.GPA_PER_EV_A3
    pot = build_classical(OmegaConf.create({"kind": "sw", "learnable": ["epsilon"]}))
    frac0, box0 = supercell(DIAMOND_BASIS, np.eye(3) * args.lattice_constant, (args.cells,) * 3)
    n = frac0.shape[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "n_atoms": n, "units": "GPa", "convention": "tension positive; Voigt xx yy zz yz xz xy; "
              "C from Lagrangian-strain Born terms; B = dσ/dε stress-strain coefficients"}

    # ---- 0 K reference: relaxed-ion tensor of the unit cell -----------------------------------
    uf, uc = jnp.asarray(DIAMOND_BASIS), jnp.asarray(np.eye(3) * args.lattice_constant)
    e_unit = elastic.periodic_energy(lambda d: pot.energy_fn(d, {}), uc)
    C0 = np.asarray(elastic.relaxed_voigt(e_unit, uf, uc)) * G
    result["zero_kelvin"] = dict(zip(("C11", "C12", "C44"), map(float, stiffness.cubic_constants(C0))))

    def settings(T):
        return MDSettings(temperature=T, dt_fs=args.dt_fs, friction_per_ps=args.friction, steps_per_snapshot=args.every)

    def n_snap(ps):
        return max(1, int(round(ps * 1000 / args.dt_fs / args.every)))

    def n_steps(ps):
        return int(ps * 1000 / args.dt_fs)

    def born_observer(md, frac, p, nb, params):
        u = stress.energy_of_strain_fractional(md.energy, frac, neighbor=nb, params=params)
        sB, CB = stress.born_terms(u, md.volume)
        return dict(sB=sB, CB=CB, sK=stress.kinetic_stress(p, md.mass, md.volume))

    def stress_observer(md, frac, p, nb, params):
        u = stress.energy_of_strain_fractional(md.energy, frac, neighbor=nb, params=params)
        return dict(s=stress.born_stress(u, md.volume) + stress.kinetic_stress(p, md.mass, md.volume))

    def sample(md, key, frac, eq_ps, ps):
        """Equilibration then production through the sampler interface (one segment)."""
        res = md.run({}, *md.init(key, {}, frac), n_steps(eq_ps), n_snap(ps), args.every)
        if not res.ok:
            raise SystemExit(f"MD at T = {md.settings.temperature:g} K failed: {res.reason}")
        return res

    # ---- temperature series ------------------------------------------------------------------
    key = jax.random.PRNGKey(args.seed)
    series, arrays, states = [], {}, {}
    for T in args.temperatures:
        key, sub = jax.random.split(key)
        t0 = time.time()
        md = SolidMD(pot, box0, MASS, settings(T), observe=born_observer)
        res = sample(md, sub, frac0, args.equilibration_ps, args.production_ps)
        states[T] = res
        out = {k: np.asarray(v) for k, v in res.trajectory.energies.items()}
        out["kT"] = np.asarray(res.trajectory.kT)
        arrays[T] = out
        V, kT = md.volume, md.settings.kT

        def cub(sB, CB):
            S = len(sB)
            w = jnp.full(S, 1.0 / S)
            return np.array(stiffness.cubic_constants(stiffness.reweighted_stiffness(
                w, jnp.asarray(sB), jnp.asarray(CB), n, V, kT))) * G

        def parts(sB, CB):
            born = np.array(stiffness.cubic_constants(CB.mean(0))) * G
            cov = (sB[:, :, None] * sB[:, None, :]).mean(0) - np.outer(sB.mean(0), sB.mean(0))
            fl = np.array(stiffness.cubic_constants(V / kT * cov)) * G
            return np.concatenate([born, fl])

        def mean_stress(sB, sK):
            return (sB + sK).mean(0) * G
        c, ce = jackknife(cub, (out["sB"], out["CB"]), args.blocks)
        pa, pae = jackknife(parts, (out["sB"], out["CB"]), args.blocks)
        s, se = jackknife(mean_stress, (out["sB"], out["sK"]), args.blocks)
        kin = np.array(stiffness.cubic_constants(stiffness.kinetic_stiffness(n, V, kT))) * G
        row = {"T": T, "T_kinetic": float(out["kT"].mean() / units.KB_EV_PER_K),   # kT = Σp²/m/(3N)
               "snapshots": int(len(out["sB"])), "ps": args.production_ps,
               "C11": float(c[0]), "C12": float(c[1]), "C44": float(c[2]),
               "C11_err": float(ce[0]), "C12_err": float(ce[1]), "C44_err": float(ce[2]),
               "born": pa[:3].tolist(), "born_err": pae[:3].tolist(),
               "fluctuation": pa[3:].tolist(), "fluctuation_err": pae[3:].tolist(), "kinetic": kin.tolist(),
               "stress": s.tolist(), "stress_err": se.tolist(),
               "pressure": float(-s[:3].mean()), "pressure_err": float(np.sqrt(np.mean(se[:3] ** 2) / 3)),
               "wall_s": time.time() - t0, "reallocations": res.retries, "cutoff_capacity": md.cutoff_capacity,
               "list_capacity": int(res.neighbor.idx.shape[1])}
        series.append(row)
        print(f"T = {T:6.1f} K (kinetic {row['T_kinetic']:6.1f} K, {row['snapshots']} snapshots, "
              f"{row['wall_s']:.0f} s): "
              f"C11 {c[0]:7.2f} ± {ce[0]:.2f}  C12 {c[1]:7.2f} ± {ce[1]:.2f}  C44 {c[2]:7.2f} ± {ce[2]:.2f} GPa, "
              f"P = {row['pressure']:.3f} GPa", flush=True)
        result["series"] = series
        _save(args.out, result, arrays)

    # ---- cost of the Born terms per snapshot, on the last equilibrated state ------------------------
    obs = jax.jit(lambda x, p, nb: born_observer(md, x, p, nb, {}))
    sfn = jax.jit(lambda s, nb: md.step_fn(s, nb, {}))
    st, nb = res.state, res.neighbor
    jax.block_until_ready(obs(st.position, st.momentum, nb))
    jax.block_until_ready(sfn(st, nb))

    def best(f, *a, reps=20):
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            jax.block_until_ready(f(*a))
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))
    result["cost_ms"] = {"T": float(args.temperatures[-1]), "cutoff_capacity": md.cutoff_capacity,
                         "list_capacity": int(nb.idx.shape[1]),
                         "born_terms_per_snapshot": 1e3 * best(obs, st.position, st.momentum, nb),
                         "md_step": 1e3 * best(sfn, st, nb)}
    print(f"N = {n}, T = {args.temperatures[-1]:g} K: Born terms {result['cost_ms']['born_terms_per_snapshot']:.2f} ms "
          f"per snapshot, MD step {result['cost_ms']['md_step']:.2f} ms (median of 20, float64, this machine's load)")
    _save(args.out, result, arrays)

    # ---- stress–strain slopes at one temperature ------------------------------------------------
    if args.strains:
        Ts = args.strain_temperature
        if Ts not in arrays:
            raise SystemExit(f"--strain-temperature {Ts} must be one of --temperatures")
        base = arrays[Ts]
        s0, s0e = jackknife(lambda sB, sK: (sB + sK).mean(0) * G, (base["sB"], base["sK"]), args.blocks)
        points = {"e1": [(0.0, s0, s0e)], "e4": [(0.0, s0, s0e)]}
        runs = []
        for comp, col in (("e1", 0), ("e4", 3)):
            for d in args.strains:
                for sign in (1.0, -1.0):
                    e = np.zeros(6)
                    e[col] = sign * d
                    box = (np.eye(3) + np.asarray(elastic.strain_matrix(jnp.asarray(e)))) @ box0
                    key, sub = jax.random.split(key)
                    t0 = time.time()
                    md = SolidMD(pot, box, MASS, settings(Ts), observe=stress_observer)
                    res = sample(md, sub, states[Ts].state.position, args.strain_equilibration_ps, args.strain_ps)
                    sm, sme = jackknife(lambda s: s.mean(0) * G, (np.asarray(res.trajectory.energies["s"]),),
                                        args.blocks)
                    points[comp].append((sign * d, sm, sme))
                    runs.append({"component": comp, "strain": sign * d, "stress": sm.tolist(), "stress_err": sme.tolist(),
                                 "wall_s": time.time() - t0, "reallocations": res.retries,
                                 "cutoff_capacity": md.cutoff_capacity})
                    print(f"  {comp} = {sign * d:+.4f}: σ = {np.round(sm, 3).tolist()} ± {np.round(sme, 3).tolist()} GPa "
                          f"({time.time() - t0:.0f} s)", flush=True)
        deg = args.fit_degree
        slopes = {"B11": _fit(points["e1"], lambda s: s[0], deg),
                  "B12": _fit(points["e1"], lambda s: 0.5 * (s[1] + s[2]), deg),
                  "B44": _fit(points["e4"], lambda s: s[3], deg)}

        md = SolidMD(pot, box0, MASS, settings(Ts))
        V, kT = md.volume, md.settings.kT

        def fluct_B(sB, CB, sK):
            S = len(sB)
            w = jnp.full(S, 1.0 / S)
            C = stiffness.reweighted_stiffness(w, jnp.asarray(sB), jnp.asarray(CB), n, V, kT)
            sig = stiffness.stress_from_averages(jnp.asarray(sB).mean(0), n, V, kT)
            B = np.asarray(stiffness.stress_strain_moduli(C, sig)) * G
            return np.array([np.mean(np.diag(B)[:3]), np.mean(B[[1, 2], [0, 0]]), np.mean(np.diag(B)[3:])])
        fb, fbe = jackknife(fluct_B, (base["sB"], base["CB"], base["sK"]), args.blocks)
        bias = _design_bias_0k(pot, args.lattice_constant, args.strains, deg)
        cmp = {}
        for i, k in enumerate(("B11", "B12", "B44")):
            slope, err = slopes[k]
            comb = float(np.hypot(err, fbe[i]))
            cmp[k] = {"stress_strain": slope, "stress_strain_err": err, "fluctuation": float(fb[i]),
                      "fluctuation_err": float(fbe[i]), "difference": slope - float(fb[i]), "combined_err": comb,
                      "design_bias_0K": bias[k]}
        result["stress_strain"] = {"T": Ts, "runs": runs, "comparison": cmp}
        _save(args.out, result, arrays)

    _report(result)
    _plot(args.out.with_suffix(".png"), result)
    print(f"wrote {args.out}")


def _fit(points, pick, degree):
    """Slope at zero strain and its standard error of a weighted polynomial of ``degree`` through
    (strain, stress, error) points (difftre_cli.stress_strain.fit_slope). A degree ≥ 2 keeps the
    curvature (third-order constants, visible in these runs) out of the slope even when the
    per-point errors, and so the weights, are not symmetric in ±e."""
    from difftre_cli.stress_strain import fit_slope
    if len(points) <= degree:
        raise SystemExit(f"--fit-degree {degree} needs more than {degree} strain points")
    return fit_slope([p[0] for p in points], [pick(p[1]) for p in points], [max(pick(p[2]), 1e-12) for p in points],
                     degree)


def _design_bias_0k(pot, a, strains, degree):
    """Slope of the same strain design minus the exact tangent, at 0 K on the relaxed unit cell
    (relaxed ions): the systematic error of the finite strains, GPa."""
    import jax.numpy as jnp

    from difftre_cli import units
    from difftre_cli.crystal import DIAMOND_BASIS
    from difftre_cli.observables import elastic, stiffness, stress

    cell0 = np.eye(3) * a
    uf = jnp.asarray(DIAMOND_BASIS)
    e0 = elastic.periodic_energy(lambda d: pot.energy_fn(d, {}), jnp.asarray(cell0))
    C0 = np.asarray(elastic.relaxed_voigt(e0, uf, jnp.asarray(cell0))) * units.GPA_PER_EV_A3
    s0 = np.asarray(stress.born_stress(stress.energy_of_strain_fractional(e0, uf), abs(np.linalg.det(cell0))))
    B0 = np.asarray(stiffness.stress_strain_moduli(C0, s0 * units.GPA_PER_EV_A3))

    def energy_of_box(params, frac, box):
        from jax_md import space
        disp, _ = space.periodic_general(box, fractional_coordinates=True)
        return pot.energy_fn(disp, {})(frac)

    pts = {"e1": [], "e4": []}
    for comp, col in (("e1", 0), ("e4", 3)):
        for d in [0.0] + [s * x for x in strains for s in (1.0, -1.0)]:
            e = np.zeros(6)
            e[col] = d
            box = jnp.asarray((np.eye(3) + np.asarray(elastic.strain_matrix(jnp.asarray(e)))) @ cell0)
            frac, box, _ = elastic.relax(energy_of_box, uf, box, elastic.RelaxOptions(force_tol=1e-9, max_steps=20000), {})
            en = elastic.periodic_energy(lambda dd: pot.energy_fn(dd, {}), box)
            sig = np.asarray(stress.born_stress(stress.energy_of_strain_fractional(en, frac), abs(float(jnp.linalg.det(box)))))
            pts[comp].append((d, sig * units.GPA_PER_EV_A3, np.ones(6)))
    return {"B11": _fit(pts["e1"], lambda s: s[0], degree)[0] - B0[0, 0],
            "B12": _fit(pts["e1"], lambda s: 0.5 * (s[1] + s[2]), degree)[0] - 0.5 * (B0[1, 0] + B0[2, 0]),
            "B44": _fit(pts["e4"], lambda s: s[3], degree)[0] - B0[3, 3]}


def _save(path: Path, result: dict, arrays: dict):
    path.write_text(json.dumps(result, indent=1))
    np.savez_compressed(path.with_suffix(".npz"), **{f"T{T:g}_{k}": v for T, a in arrays.items() for k, v in a.items()})


def _report(result):
    z = result["zero_kelvin"]
    print("\nStress-fluctuation elastic constants of SW silicon, N =", result["n_atoms"], "(GPa, ± jackknife s.e.)")
    print(f"{'T (K)':>7} {'T_kin':>7} {'P':>8} {'C11':>16} {'C12':>16} {'C44':>16}   C44 = Born − fluct + kin")
    print(f"{0:7.0f} {'':>7} {'':>8} {z['C11']:16.2f} {z['C12']:16.2f} {z['C44']:16.2f}   (0 K relaxed-ion)")
    for r in result.get("series", []):
        print(f"{r['T']:7.0f} {r['T_kinetic']:7.1f} {r['pressure']:8.3f} "
              f"{r['C11']:8.2f} ± {r['C11_err']:5.3f} {r['C12']:8.2f} ± {r['C12_err']:5.3f} "
              f"{r['C44']:8.2f} ± {r['C44_err']:5.3f}   "
              f"{r['born'][2]:.2f} − {r['fluctuation'][2]:.2f} + {r['kinetic'][2]:.3f}")
    low = [r for r in result.get("series", []) if r["T"] <= 300.0]
    if len(low) >= 2:
        line = []
        for k in ("C11", "C12", "C44"):
            T = np.array([r["T"] for r in low])
            y = np.array([r[k] for r in low])
            err = np.array([max(r[k + "_err"], 1e-6) for r in low])
            A = np.stack([np.ones_like(T), T], axis=1) / err[:, None]
            cov = np.linalg.inv(A.T @ A)
            c = cov @ A.T @ (y / err)
            line.append(f"{c[0]:8.2f} ± {np.sqrt(cov[0, 0]):5.3f}")
        print(f"{'→ 0':>7} {'':>7} {'':>8} " + " ".join(line) + "   (linear in T through T ≤ 300 K, weighted)")
    cost = result.get("cost_ms")
    if cost:
        print(f"cost per snapshot of the Born terms (σ^B, C^B): {cost['born_terms_per_snapshot']:.2f} ms; "
              f"one MD step {cost['md_step']:.2f} ms")
    ss = result.get("stress_strain")
    if ss:
        print(f"\nStress–strain slope vs fluctuation at T = {ss['T']:g} K (B = dσ/dε incl. prestress terms; GPa)")
        print(f"{'':5} {'slope':>16} {'fluctuation':>16} {'difference':>18} {'design bias 0 K':>16}")
        for k, v in ss["comparison"].items():
            print(f"{k:5} {v['stress_strain']:9.2f} ± {v['stress_strain_err']:4.2f} {v['fluctuation']:9.2f} ± "
                  f"{v['fluctuation_err']:4.2f} {v['difference']:+9.2f} ± {v['combined_err']:4.2f} {v['design_bias_0K']:+16.3f}")


def _plot(path: Path, result):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    series = result.get("series", [])
    if not series:
        return
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    T = [r["T"] for r in series]
    ss = result.get("stress_strain")
    for ax, k, b, c in zip(axes, ("C11", "C12", "C44"), ("B11", "B12", "B44"), ("C0", "C1", "C2")):
        ax.errorbar(T, [r[k] for r in series], yerr=[r[k + "_err"] for r in series], fmt="o-", color=c, capsize=3,
                    label=f"{k}, stress fluctuation")
        ax.plot([0], [result["zero_kelvin"][k]], "s", color=c, mfc="none", label=f"{k}, 0 K relaxed-ion")
        if ss:
            v = ss["comparison"][b]
            ax.errorbar([ss["T"] - 12], [v["fluctuation"]], yerr=[v["fluctuation_err"]], fmt="D", color="k",
                        mfc="none", capsize=3, label=f"{b} = dσ/dε from fluctuation")
            ax.errorbar([ss["T"] + 12], [v["stress_strain"]], yerr=[v["stress_strain_err"]], fmt="^", color="k",
                        capsize=3, label=f"{b}, stress–strain slope")
        ax.set_xlabel("T (K)")
        ax.set_ylabel("GPa")
        ax.set_title(f"SW Si, N = {result['n_atoms']}: {k}", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
