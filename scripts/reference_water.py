#!/usr/bin/env python
"""All-atom reference for the coarse-grained water example: O–O RDF, O–O–O ADF, tetrahedral
order q and pressure of rigid SPC/E water, simulated with OpenMM.

Model and protocol (defaults):
- SPC/E water (Berendsen, Grigera & Straatsma 1987; OpenMM's ``spce.xml``), rigid (SETTLE),
  901 molecules in a cubic periodic box of 3 nm (ρ = 998.3 g/l), T = 296.15 K.
  SPC/E rather than TIP4P/2005: three sites are cheaper on the 2 CPU cores this was made on
  (OpenMM ships no TIP4P/2005 force field file), and its O–O structure is close to experiment.
- PME electrostatics, Lennard-Jones and real-space cutoff 1.0 nm with the long-range
  dispersion correction (energy and pressure).
- Langevin middle integrator (Zhang et al. 2019), friction 1/ps, dt = 2 fs.
- Start: molecules on a cubic lattice with random orientations → energy minimisation →
  velocities at T → ``--discard-ps`` of MD thrown away → production until ``--length-ps``
  (total, including the discarded part), one snapshot every ``--every-ps``.
- Pressure: OpenMM's ``MonteCarloBarostat.computeCurrentPressure`` (frequency 0, so the
  barostat never moves the box): the instantaneous pressure from the *molecular* virial
  (finite difference of the energy under a scaling of the molecules' centres) plus the
  kinetic term. Reported as mean ± standard error from block averages (``--blocks``).

Coarse-graining: every molecule maps to its oxygen. The RDF, ADF and q of the oxygens are
computed with difftre's own observables, built from ``--observables`` (default: the
observables of ``config=water``, composed as ``difftre train config=water`` does), so target and
learned model use identical definitions (grid, smoothing, cutoff weights).

Output (HDF5, the format of ``difftre_cli.target_files.read_curve`` with a group per target):
    /rdf/x (nm), /rdf/y, /rdf/y_err          O–O g(r); x_unit attribute "nm"
    /adf/x (rad), /adf/y, /adf/y_err         O–O–O p(α), ∫p dα = 1; x_unit attribute "rad"
    /pressure  attrs value, stderr, unit=bar; dataset series (bar, per snapshot)
    /tetrahedral_q  attrs value, stderr; dataset series
    root attributes: provenance (model, box, N, T, lengths, OpenMM version, platform,
    command line, date, seed, speed).

    python scripts/reference_water.py                                   # 70 ps, 500 snapshots
    python scripts/reference_water.py --length-ps 520 --save-trajectory /tmp/o.npz
    python scripts/reference_water.py --from-trajectory /tmp/o.npz       # re-analyse only
    python scripts/reference_water.py --length-ps 70 --discard-ps 10 --every-ps 0.2 \\
        --save-atoms runs/reference/spce_901 --out runs/reference/spce_901_targets.h5   # config=water_fm
    python scripts/reference_water.py --benchmark 1000                  # measure speed, exit

Speed (OpenMM 8.6.1, CPU platform, 901 molecules): 128 steps/s (22 ns/day) with 2 threads on
2 idle cores, 81 steps/s with 1 thread. The committed configs/targets/data/water_spce_296K.h5
ran 270 ps (20 ps discarded, 2500 snapshots) at 34 steps/s on 2 cores shared with other jobs
(67 min); its attributes record the exact commands.

Needs the optional extra ``pip install -e ".[reference]"`` (OpenMM).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform as pyplatform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "configs/targets/data/water_spce_296K.h5"
#: g/mol, H2O with IUPAC standard atomic weights (as OpenMM's element table)
WATER_MOLAR_MASS = 18.01528
AVOGADRO = 6.02214076e23


def density_g_per_l(n_molecules: int, box_nm: float) -> float:
    return n_molecules * WATER_MOLAR_MASS / AVOGADRO / (box_nm * 1e-8) ** 3  # g per dm³ (1 nm = 1e-8 dm)


def block_stderr(series: np.ndarray, n_blocks: int):
    """Mean over the leading axis and its standard error from ``n_blocks`` contiguous blocks
    (the tail that does not fill a block is dropped for the error only)."""
    series = np.asarray(series, float)
    mean = series.mean(0)
    nb = int(min(n_blocks, len(series)))
    if nb < 2:
        return mean, np.full_like(mean, np.nan)
    size = len(series) // nb
    blocks = series[: nb * size].reshape((nb, size) + series.shape[1:]).mean(1)
    return mean, blocks.std(0, ddof=1) / np.sqrt(nb)


# ----------------------------------------------------------------------------------------
def build_water(n_molecules: int, box_nm: float, seed: int):
    """OpenMM topology and initial positions (nm): molecules on a simple cubic lattice
    (random subset of the sites when n is not a cube), random orientations, SPC/E geometry
    (O–H 0.1 nm, H–O–H 109.47°)."""
    from openmm import app, unit

    rng = np.random.default_rng(seed)
    side = int(np.ceil(n_molecules ** (1.0 / 3.0) - 1e-9))
    spacing = box_nm / side
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = grid[np.sort(rng.permutation(len(grid))[:n_molecules])]
    top = app.Topology()
    chain = top.addChain()
    oxygen, hydrogen = app.Element.getBySymbol("O"), app.Element.getBySymbol("H")
    angle, bond = np.deg2rad(109.47), 0.1
    pos = np.empty((n_molecules, 3, 3))
    for m, s in enumerate(sites):
        res = top.addResidue("HOH", chain)
        o = top.addAtom("O", oxygen, res)
        h1 = top.addAtom("H1", hydrogen, res)
        h2 = top.addAtom("H2", hydrogen, res)
        top.addBond(o, h1)
        top.addBond(o, h2)
        rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        centre = (s + 0.5) * spacing
        pos[m] = [centre, centre + bond * rot[0], centre + bond * (np.cos(angle) * rot[0] + np.sin(angle) * rot[1])]
    top.setPeriodicBoxVectors(np.eye(3) * box_nm * unit.nanometer)
    return top, pos.reshape(-1, 3)


def make_simulation(args):
    """(context, integrator, barostat, system) of SPC/E water at the requested state point."""
    import openmm
    from openmm import app, unit

    top, pos = build_water(args.molecules, args.box, args.seed)
    ff = app.ForceField("spce.xml")
    system = ff.createSystem(top, nonbondedMethod=app.PME, nonbondedCutoff=args.cutoff * unit.nanometer,
                             constraints=app.HBonds, rigidWater=True, ewaldErrorTolerance=5e-4)
    for f in system.getForces():
        if isinstance(f, openmm.NonbondedForce):
            f.setUseDispersionCorrection(True)
    # frequency 0: never attempts a volume move, only provides computeCurrentPressure
    barostat = openmm.MonteCarloBarostat(1.0 * unit.bar, args.temperature * unit.kelvin, 0)
    system.addForce(barostat)
    integrator = openmm.LangevinMiddleIntegrator(args.temperature * unit.kelvin, args.friction / unit.picosecond,
                                                 args.dt_fs * 1e-3 * unit.picoseconds)
    integrator.setRandomNumberSeed(args.seed)
    plat = openmm.Platform.getPlatformByName(args.platform)
    props = {"Threads": str(args.threads)} if args.platform == "CPU" and args.threads else {}
    context = openmm.Context(system, integrator, plat, props)
    context.setPositions(pos * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 2000)
    context.setVelocitiesToTemperature(args.temperature * unit.kelvin, args.seed)
    return context, integrator, barostat, system


def simulate(args) -> dict:
    """Run the all-atom simulation; oxygen positions (S, N, 3) in nm and per-snapshot scalars."""
    import openmm
    from openmm import unit

    t0 = time.perf_counter()
    context, integrator, barostat, system = make_simulation(args)
    setup_s = time.perf_counter() - t0
    steps_per_ps = 1.0 / (args.dt_fs * 1e-3)
    every = int(round(args.every_ps * steps_per_ps))
    discard = int(round(args.discard_ps * steps_per_ps))
    total = int(round(args.length_ps * steps_per_ps))
    if every < 1 or total - discard < every:
        raise SystemExit("need --every-ps >= dt and --length-ps - --discard-ps >= --every-ps")
    n_snap = (total - discard) // every
    oxygens = np.arange(0, 3 * args.molecules, 3)
    dof = 6 * args.molecules - 3        # rigid molecules; createSystem removes the centre-of-mass motion
    t1 = time.perf_counter()
    integrator.step(discard)
    t_eq = time.perf_counter() - t1
    log(f"equilibrated {args.discard_ps:g} ps in {t_eq:.0f} s ({discard / max(t_eq, 1e-9):.0f} steps/s)")
    pos = np.empty((n_snap, args.molecules, 3), np.float32)
    pressure, epot, temp = np.empty(n_snap), np.empty(n_snap), np.empty(n_snap)
    atoms = None if args.save_atoms is None else AtomWriter(args.save_atoms, args.molecules, args.box)
    t1 = time.perf_counter()
    for s in range(n_snap):
        integrator.step(every)
        st = context.getState(getPositions=True, getEnergy=True, getForces=atoms is not None,
                              enforcePeriodicBox=True)
        xyz = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        pos[s] = np.mod(xyz[oxygens], args.box)
        if atoms is not None:
            atoms.frame(xyz, st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer),
                        time_ps=(discard + (s + 1) * every) * args.dt_fs * 1e-3)
        epot[s] = st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / args.molecules
        temp[s] = 2.0 * st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole) / (dof * 0.0083144626)
        pressure[s] = barostat.computeCurrentPressure(context).value_in_unit(unit.bar)
        if (s + 1) % max(1, n_snap // 10) == 0:
            el = time.perf_counter() - t1
            log(f"  snapshot {s + 1}/{n_snap}  {(s + 1) * every / el:.0f} steps/s  P={pressure[:s + 1].mean():.0f} bar")
    t_prod = time.perf_counter() - t1
    if atoms is not None:
        atoms.close()
        log(f"all-atom frames with forces: {atoms.trr} (atoms: {atoms.gro})")
    speed = (discard + n_snap * every) / (t_eq + t_prod)
    state = context.getPlatform()
    meta = {
        "water_model": "SPC/E (rigid, OpenMM spce.xml)",
        "n_molecules": args.molecules, "box_nm": args.box,
        "density_g_per_l": density_g_per_l(args.molecules, args.box),
        "temperature_K": args.temperature, "dt_fs": args.dt_fs, "friction_per_ps": args.friction,
        "integrator": "LangevinMiddleIntegrator",
        "electrostatics": f"PME, cutoff {args.cutoff} nm, ewaldErrorTolerance 5e-4",
        "lennard_jones": f"cutoff {args.cutoff} nm with long-range dispersion correction",
        "constraints": "rigid water (SETTLE)",
        "length_ps": args.length_ps, "discarded_ps": args.discard_ps, "every_ps": args.every_ps,
        "n_snapshots": int(n_snap), "seed": args.seed,
        "openmm_version": openmm.__version__, "platform": state.getName(),
        "threads": args.threads if args.platform == "CPU" else None,
        "speed_steps_per_s": speed, "speed_ns_per_day": speed * args.dt_fs * 1e-6 * 86400,
        "wall_time_s": setup_s + t_eq + t_prod,
        "pressure_method": "MonteCarloBarostat(frequency=0).computeCurrentPressure: molecular virial by finite "
                           "differences of the energy under scaling of molecular centres, plus the kinetic term",
        "host": pyplatform.node(), "simulated_with": shlex.join([sys.executable] + sys.argv),
        "simulated_on": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return {"positions": pos, "pressure": pressure, "epot": epot, "temperature": temp, "meta": meta}


class AtomWriter:
    """All-atom frames with forces for bottom-up training (the ``reference`` group reads them):
    ``PREFIX.gro`` (atom and residue names; MDAnalysis guesses O/H masses from the names) and
    ``PREFIX.trr`` (positions, forces and box of every snapshot), written by MDAnalysis's GROMACS
    writers in GROMACS units (nm, kJ/mol/nm). The forces are OpenMM's conservative forces without
    the SETTLE constraint forces; those cancel in a molecule's sum, the centre-of-mass bead force."""

    def __init__(self, prefix: Path, n_molecules: int, box_nm: float):
        import MDAnalysis as mda

        self.gro, self.trr = Path(f"{prefix}.gro"), Path(f"{prefix}.trr")
        self.gro.parent.mkdir(parents=True, exist_ok=True)
        n = 3 * n_molecules
        u = mda.Universe.empty(n, n_residues=n_molecules, atom_resindex=np.repeat(np.arange(n_molecules), 3),
                               trajectory=True, forces=True)
        u.add_TopologyAttr("name", ["OW", "HW1", "HW2"] * n_molecules)
        u.add_TopologyAttr("type", ["O", "H", "H"] * n_molecules)
        u.add_TopologyAttr("resname", ["SOL"] * n_molecules)
        u.add_TopologyAttr("resid", np.arange(1, n_molecules + 1))
        u.dimensions = [10.0 * box_nm] * 3 + [90.0] * 3
        self.u, self.first = u, True
        self.writer = mda.Writer(str(self.trr), n_atoms=n)

    def frame(self, xyz_nm, forces_kj_mol_nm, time_ps: float) -> None:
        ts = self.u.trajectory.ts
        self.u.atoms.positions = 10.0 * np.asarray(xyz_nm)                # MDAnalysis: Å, kJ/(mol Å)
        ts.forces = 0.1 * np.asarray(forces_kj_mol_nm)
        ts.time = time_ps
        if self.first:
            self.u.atoms.write(str(self.gro))
            self.first = False
        self.writer.write(self.u.atoms)

    def close(self) -> None:
        self.writer.close()


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------
def water_observables():
    """The observables of config=water (the preset's list of observables and its RDF grid)."""
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="train", overrides=["config=water"]).observables


def analyse(traj: dict, observables_file: Path | None, chunk: int = 50) -> dict:
    """Per-snapshot values of the configured θ-independent observables (difftre's own
    definitions; None: those of config=water) for the oxygen trajectory."""
    import jax
    import jax.numpy as jnp
    from omegaconf import OmegaConf

    from difftre_cli import neighbors
    from difftre_cli import observables as obs_mod
    from difftre_cli import units
    from difftre_cli.observables.tetrahedral import TetrahedralQ
    from difftre_cli.potentials import distances_on_list

    meta = traj["meta"]
    box, n = float(meta["box_nm"]), int(meta["n_molecules"])
    obs_cfg = water_observables() if observables_file is None else OmegaConf.load(observables_file)
    obs = {k: o for k, o in obs_mod.build(obs_cfg).items() if not o.depends_on_params}
    ctx = obs_mod.Context(n_particles=n, volume=box ** 3, kT=units.KB_KJ_PER_MOL_K * float(meta["temperature_K"]))
    reach = max(o.reach for o in obs.values())
    if reach > 0.5 * box:
        raise SystemExit(f"observable reach {reach:.3g} nm exceeds half the box ({0.5 * box:.3g} nm)")
    nbr_fn = neighbors.make_neighbor_fn(box, reach, 0.0, 1.3)
    pos = jnp.asarray(np.asarray(traj["positions"], np.float64))   # float64 where x64 is on

    def one(nb, R):
        nb = nbr_fn.rebuild(R, nb)
        q = {"r": distances_on_list(R, nb.idx, box), "R": R, "idx": nb.idx, "box": box}
        vals = {k: o.snapshot(ctx, q) for k, o in obs.items()}
        for k, o in obs.items():      # diagnostics: neighbours in reach, particles with a q_i
            vals[f"{k}:max_in_reach"] = jnp.max(jnp.sum(q["r"] < o.reach, axis=1))
            if isinstance(o, TetrahedralQ):   # per-particle q_i: which particles have 4 neighbours
                vals[f"{k}:coverage"] = jnp.mean(o.per_particle(q)[1])
        return nb, vals

    run = jax.jit(lambda nb, Rs: jax.lax.scan(one, nb, Rs))
    nb = nbr_fn.allocate(pos[0], extra_capacity=8)
    out = {}
    for start in range(0, len(pos), chunk):
        for attempt in range(5):
            nb_new, vals = run(nb, pos[start:start + chunk])
            if not bool(nb_new.did_buffer_overflow):
                break
            nb = nbr_fn.allocate(pos[start], extra_capacity=16 * 2 ** attempt)
        else:
            raise RuntimeError("neighbour list kept overflowing")
        nb = nb_new
        for k, v in vals.items():
            out.setdefault(k, []).append(np.asarray(v))
    out = {k: np.concatenate(v, 0) for k, v in out.items()}
    diagnostics = {k: float(np.max(v)) if k.endswith(":max_in_reach") else float(np.min(v))
                   for k, v in out.items() if ":" in k}
    return {"observables": obs, "values": out, "diagnostics": diagnostics}


def write_h5(path: Path, traj: dict, ana: dict, n_blocks: int, command: str) -> dict:
    import h5py

    meta = dict(traj["meta"])
    meta["density_g_per_l"] = density_g_per_l(int(meta["n_molecules"]), float(meta["box_nm"]))
    meta.update({"analysed_with": command, "observables_config": str(ana.get("observables_file", "")),
                 "analysed_on": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "coarse_graining": "each molecule -> its oxygen", "blocks": n_blocks})
    meta.update({f"diagnostic {k}": v for k, v in ana["diagnostics"].items()})
    summary = {"diagnostics": ana["diagnostics"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with h5py.File(tmp, "w") as f:
        for k, v in meta.items():
            f.attrs[k] = v if v is not None else "none"
        for name, o in ana["observables"].items():
            vals = ana["values"][name]
            mean, err = block_stderr(vals, n_blocks)
            g = f.create_group(name)
            g.attrs["kind"] = type(o).__name__
            g.attrs["definition"] = json.dumps({k: v for k, v in vars(o).items()
                                                if isinstance(v, (int, float, str, bool))})
            if o.grid is not None:
                g.create_dataset("x", data=np.asarray(o.grid, float))
                g.create_dataset("y", data=mean)
                g.create_dataset("y_err", data=err)
                g.attrs["x_unit"] = "rad" if o.unit_kind == "angle" else "nm"
                b = int(np.argmax(mean))
                summary[name] = {"peak_x": float(o.grid[b]), "peak_y": float(mean[b]), "peak_y_err": float(err[b])}
                if o.unit_kind == "angle":
                    summary[name]["peak_deg"] = float(np.degrees(o.grid[b]))
            else:
                g.attrs["value"], g.attrs["stderr"] = float(mean), float(err)
                g.create_dataset("series", data=vals.astype(np.float32))
                summary[name] = {"value": float(mean), "stderr": float(err)}
        p_mean, p_err = block_stderr(traj["pressure"], n_blocks)
        g = f.create_group("pressure")
        g.attrs.update({"value": float(p_mean), "stderr": float(p_err), "unit": "bar"})
        g.create_dataset("series", data=np.asarray(traj["pressure"], np.float32))
        summary["pressure_bar"] = {"value": float(p_mean), "stderr": float(p_err)}
        for key, label, unit in (("epot", "potential_energy", "kJ/mol per molecule"), ("temperature", "temperature", "K")):
            m, e = block_stderr(traj[key], n_blocks)
            f.attrs[f"{label}_mean"], f.attrs[f"{label}_stderr"], f.attrs[f"{label}_unit"] = float(m), float(e), unit
            summary[label] = {"value": float(m), "stderr": float(e), "unit": unit}
    tmp.replace(path)
    return summary


def save_trajectory(path: Path, traj: dict) -> None:
    np.savez_compressed(path, positions=traj["positions"], pressure=traj["pressure"], epot=traj["epot"],
                        temperature=traj["temperature"], meta=json.dumps(traj["meta"]))


def load_trajectory(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as d:
        return {"positions": d["positions"], "pressure": d["pressure"], "epot": d["epot"],
                "temperature": d["temperature"], "meta": json.loads(str(d["meta"]))}


def benchmark(args) -> None:
    context, integrator, _, _ = make_simulation(args)
    integrator.step(100)
    t = time.perf_counter()
    integrator.step(args.benchmark)
    dt = time.perf_counter() - t
    sps = args.benchmark / dt
    log(f"{args.molecules} SPC/E molecules, platform {args.platform}, threads {args.threads}: "
        f"{sps:.0f} steps/s = {sps * args.dt_fs * 1e-6 * 86400:.1f} ns/day")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", type=int, default=901)
    ap.add_argument("--box", type=float, default=3.0, help="cubic box side (nm)")
    ap.add_argument("--temperature", type=float, default=296.15, help="K")
    ap.add_argument("--dt-fs", type=float, default=2.0)
    ap.add_argument("--friction", type=float, default=1.0, help="Langevin friction (1/ps)")
    ap.add_argument("--cutoff", type=float, default=1.0, help="real-space and LJ cutoff (nm)")
    ap.add_argument("--length-ps", type=float, default=70.0, help="total MD length including --discard-ps")
    ap.add_argument("--discard-ps", type=float, default=20.0, help="equilibration thrown away")
    ap.add_argument("--every-ps", type=float, default=0.1, help="snapshot interval")
    ap.add_argument("--blocks", type=int, default=10, help="blocks for the standard errors")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--platform", default="CPU", help="OpenMM platform (CPU, CUDA, OpenCL, Reference)")
    ap.add_argument("--threads", type=int, default=2, help="CPU platform threads (0: OpenMM's default)")
    ap.add_argument("--observables", type=Path, default=None,
                    help="difftre observables config (YAML); default: the observables of config=water")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--save-trajectory", type=Path, help="also write the oxygen trajectory (.npz)")
    ap.add_argument("--save-atoms", type=Path, metavar="PREFIX",
                    help="also write every snapshot's atoms with forces: PREFIX.gro + PREFIX.trr (bottom-up training)")
    ap.add_argument("--from-trajectory", type=Path, help="skip the simulation, analyse this .npz")
    ap.add_argument("--benchmark", type=int, default=0, metavar="STEPS", help="time STEPS MD steps and exit")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    command = shlex.join([sys.executable] + (sys.argv if argv is None else [sys.argv[0]] + list(argv)))
    if args.benchmark:
        benchmark(args)
        return {}
    if args.from_trajectory:
        traj = load_trajectory(args.from_trajectory)
    else:
        traj = simulate(args)
        if args.save_trajectory:
            save_trajectory(args.save_trajectory, traj)
    ana = analyse(traj, args.observables)
    ana["observables_file"] = args.observables or "config=water"
    summary = write_h5(args.out, traj, ana, args.blocks, command)
    log(json.dumps({"out": str(args.out), "speed_steps_per_s": traj["meta"]["speed_steps_per_s"], **summary},
                   indent=1))
    return summary


if __name__ == "__main__":
    import jax

    jax.config.update("jax_enable_x64", True)     # reference averages in double precision
    main()
