#!/usr/bin/env python
"""All-atom reference of alanine dipeptide (ACE-ALA-NME, 22 atoms) in implicit water, for
coarse-graining onto its 10 heavy atoms (the first example of the chemtrain paper): positions
and forces of every frame, simulated with OpenMM.

Model and protocol (defaults):
- Force field AMBER ff99SB (Hornak et al. 2006; OpenMM's ``amber99sb.xml``) with OBC2
  generalized-Born implicit solvent (Onufriev, Bashford & Case 2004; ``amber99_obc.xml``,
  mbondi2 radii, OpenMM's native ``GBSAOBCForce``). Not ff14SB + ``implicit/obc2.xml``: that
  pair computes the same OBC2 model through a ``CustomGBForce``, measured 10–35× slower for
  this molecule (1.1 k against 10–39 k steps/s), too slow to sample the φ > 0 basins within
  30 minutes on 2 cores. ff99SB's backbone torsions were fitted to dipeptide/tetrapeptide
  quantum data; ILDN changes only side chains that alanine lacks.
- Open system: no periodic box, no cutoff (``NoCutoff``); OpenMM's default centre-of-mass
  motion remover keeps the molecule at the origin (it changes velocities, not forces).
- Bonds to hydrogen constrained (``HBonds``), Langevin middle integrator (Zhang et al. 2019)
  at 300 K, friction 1/ps, dt = 2 fs.
- Start: heavy atoms from standard internal coordinates (Engh–Huber bond lengths and angles,
  trans peptides, L-alanine, φ = −80°, ψ = 75°), hydrogens added by OpenMM's ``Modeller``
  → energy minimisation → velocities at T → ``--equilibrate-ps`` thrown away → ``--ns`` of
  production, one frame every ``--stride-ps``.

Forces and the constraints: the TRR holds OpenMM's conservative forces (``getForces()``), not
the constraint forces. Mapped onto heavy atoms, a bead's force is the sum over the heavy atom
and the hydrogens bonded to it (``reference.mapping.per: heavy_atom``). Every constraint joins
a hydrogen to its heavy atom, i.e. two atoms of one bead, and a constraint force acts on its
two atoms equally and oppositely along the bond: it cancels in the bead's sum. So the sum of
the conservative forces is the sum of the total forces, the bead's mapped force (Noid et al.
2008). tests/test_reference_alanine.py checks this on a Verlet step: m Δv/dt (which includes
the constraint forces) differs from ``getForces()`` per atom but not per bead.

Output in ``--out`` (default runs/reference/alanine_dipeptide/):
    ala2.pdb      the 22 atoms (Å, as PDB requires), residues ACE ALA NME, elements, CONECT
                  records of every bond (the heavy-atom map reads the bonds from them)
    ala2.trr      every frame's positions (nm) and forces (kJ mol⁻¹ nm⁻¹), written by
                  MDAnalysis; no box (a zero box in the file, read back as none)
    summary.json  lengths, frames, stride, speed, wall time, mean kinetic temperature and the
                  (φ, ψ) basin populations (difftre_cli/molecule/ramachandran.py)

    python scripts/reference_alanine.py                      # the default reference
    python scripts/reference_alanine.py --ns 0.001 --stride-ps 0.1 --equilibrate-ps 0.2 --out /tmp/a
    python scripts/reference_alanine.py --benchmark 20000    # measure speed, exit

Speed (OpenMM 8.6.1, 2 idle cores): Reference platform 39 k steps/s (6.8 μs/day), CPU platform
17 k steps/s with 1 thread, 10 k with 2 (for 22 atoms, threads cost more than they save).
Hence the default platform is Reference (double precision, one core).
Needs OpenMM and MDAnalysis (``pip install -e ".[reference]"``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from difftre_cli.molecule import geometry, ramachandran  # this checkout's, after the path above

DEFAULT_OUT = ROOT / "runs/reference/alanine_dipeptide"
KB = 0.0083144626   # kJ mol⁻¹ K⁻¹
#: residues and heavy atoms in bead order: (residue, [(atom name, element)])
HEAVY = (("ACE", (("CH3", "C"), ("C", "C"), ("O", "O"))),
         ("ALA", (("N", "N"), ("CA", "C"), ("CB", "C"), ("C", "C"), ("O", "O"))),
         ("NME", (("N", "N"), ("C", "C"))))   # NME's methyl: "C" in OpenMM's hydrogen table, renamed CH3


def place(a, b, c, bond: float, angle_deg: float, torsion_deg: float) -> np.ndarray:
    """The atom d bonded to c with |cd| = bond, angle b–c–d and dihedral a–b–c–d (degrees)
    (natural extension reference frame: Parsons et al., J. Comput. Chem. 26, 1063 (2005))."""
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    th, ph = np.radians(angle_deg), np.radians(torsion_deg)
    return c - bond * np.cos(th) * bc + bond * np.sin(th) * (np.cos(ph) * m + np.sin(ph) * n)


def heavy_positions(phi: float = -80.0, psi: float = 75.0) -> np.ndarray:
    """(10, 3) heavy-atom positions (Å) in bead order for backbone dihedrals φ, ψ (degrees):
    Engh & Huber (1991) bond lengths and angles, trans peptide bonds (ω = 180°), L-alanine
    (C(ACE)–N–CA–CB = φ − 120°, as in tleap's extended ACE-ALA-NME)."""
    ch3 = np.zeros(3)
    c0 = np.array([1.52, 0.0, 0.0])
    n1 = place(np.array([0.0, 1.0, 0.0]), ch3, c0, 1.33, 116.2, 180.0)
    ca = place(ch3, c0, n1, 1.46, 121.7, 180.0)
    c1 = place(c0, n1, ca, 1.52, 111.2, phi)
    n2 = place(n1, ca, c1, 1.33, 116.2, psi)
    ch3_2 = place(ca, c1, n2, 1.46, 121.7, 180.0)
    o0 = place(ca, n1, c0, 1.23, 122.7, 0.0)          # O trans to CA across the peptide bond
    o1 = place(ch3_2, n2, c1, 1.23, 122.7, 0.0)
    cb = place(c0, n1, ca, 1.53, 110.5, phi - 120.0)
    return np.stack([ch3, c0, o0, n1, ca, cb, c1, o1, n2, ch3_2])


def make_system(phi: float = -80.0, psi: float = 75.0):
    """(topology, system, positions in nm) of ACE-ALA-NME with hydrogens (22 atoms; heavy atoms
    in the order of HEAVY, each followed by its hydrogens), ff99SB + OBC2, no cutoff, H bonds
    constrained."""
    from openmm import app, unit

    top = app.Topology()
    chain = top.addChain()
    for resname, atoms in HEAVY:
        res = top.addResidue(resname, chain)
        for name, element in atoms:
            top.addAtom(name, app.Element.getBySymbol(element), res)
    top.createStandardBonds()
    ff = app.ForceField("amber99sb.xml", "amber99_obc.xml")
    modeller = app.Modeller(top, 0.1 * heavy_positions(phi, psi) * unit.nanometer)
    modeller.addHydrogens(ff)
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    for atom in modeller.topology.atoms():   # PDB's NME "C" -> AMBER's "CH3": every "C" is then a carbonyl
        if atom.residue.name == "NME" and atom.name == "C":
            atom.name = "CH3"
    pos = modeller.getPositions().value_in_unit(unit.nanometer)
    return modeller.topology, system, np.asarray(pos, dtype=np.float64)


def make_context(system, positions, args):
    """(context, integrator): Langevin at args.temperature, minimised, velocities drawn."""
    import openmm
    from openmm import unit

    integrator = openmm.LangevinMiddleIntegrator(args.temperature * unit.kelvin, args.friction / unit.picosecond,
                                                 args.dt_fs * 1e-3 * unit.picoseconds)
    integrator.setRandomNumberSeed(args.seed)
    platform = openmm.Platform.getPlatformByName(args.platform)
    props = {"Threads": str(args.threads)} if args.platform == "CPU" and args.threads else {}
    context = openmm.Context(system, integrator, platform, props)
    context.setPositions(positions * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 5000)
    context.setVelocitiesToTemperature(args.temperature * unit.kelvin, args.seed)
    return context, integrator


def write_pdb(path: Path, topology, positions_nm) -> None:
    """The atoms as PDB (Å) with residues, elements and CONECT records of every bond."""
    import MDAnalysis as mda

    atoms = list(topology.atoms())
    res = [a.residue.index for a in atoms]
    u = mda.Universe.empty(len(atoms), n_residues=topology.getNumResidues(), atom_resindex=res, trajectory=True)
    u.add_TopologyAttr("name", [a.name for a in atoms])
    u.add_TopologyAttr("type", [a.element.symbol for a in atoms])
    u.add_TopologyAttr("element", [a.element.symbol for a in atoms])
    u.add_TopologyAttr("resname", [r.name for r in topology.residues()])
    u.add_TopologyAttr("resid", [r.index + 1 for r in topology.residues()])
    u.add_TopologyAttr("chainID", ["A"] * len(atoms))
    u.add_bonds([(b[0].index, b[1].index) for b in topology.bonds()])
    u.atoms.positions = 10.0 * np.asarray(positions_nm)
    with warnings.catch_warnings():   # MDAnalysis: no cell (a 1 Å placeholder CRYST1), default altLocs, ...
        warnings.simplefilter("ignore")
        with mda.Writer(str(path), bonds="all", remarks="ACE-ALA-NME, scripts/reference_alanine.py") as w:
            w.write(u.atoms)


class TrajectoryWriter:
    """Frames of positions and forces to a TRR through MDAnalysis (which takes Å and
    kJ mol⁻¹ Å⁻¹ and writes nm and kJ mol⁻¹ nm⁻¹). No box: MDAnalysis writes a zero box for
    dimensions None, and reads it back as None."""

    def __init__(self, path: Path, n_atoms: int):
        import MDAnalysis as mda

        self.u = mda.Universe.empty(n_atoms, trajectory=True, forces=True)
        self.writer = mda.Writer(str(path), n_atoms=n_atoms)

    def frame(self, xyz_nm, forces_kj_mol_nm, time_ps: float) -> None:
        ts = self.u.trajectory.ts
        ts.positions = 10.0 * np.asarray(xyz_nm)
        ts.forces = 0.1 * np.asarray(forces_kj_mol_nm)
        ts.time = time_ps
        self.writer.write(self.u.atoms)

    def close(self) -> None:
        self.writer.close()


def production(context, integrator, writer, args, dof: int, quads) -> dict:
    """Write ``--ns`` of frames; returns φ, ψ (rad; ``quads`` the atom indices of their
    dihedrals), the kinetic temperature (K) per frame and the wall time (s)."""
    from openmm import unit

    every = round(args.stride_ps / (args.dt_fs * 1e-3))
    n_frames = round(args.ns * 1e3 / args.stride_ps)
    if every < 1 or n_frames < 1:
        raise SystemExit("need --stride-ps >= the time step and --ns >= --stride-ps")
    phi_q, psi_q = quads
    xyz = np.empty((n_frames, 8, 3))     # the atoms of φ then of ψ, nm
    temp = np.empty(n_frames)
    t0 = time.perf_counter()
    for k in range(n_frames):
        integrator.step(every)
        st = context.getState(getPositions=True, getForces=True, getEnergy=True)
        x = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        writer.frame(x, st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer),
                     time_ps=args.equilibrate_ps + (k + 1) * args.stride_ps)
        xyz[k] = x[phi_q + psi_q]
        temp[k] = 2.0 * st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole) / (dof * KB)
        if (k + 1) % max(1, n_frames // 10) == 0:
            el = time.perf_counter() - t0
            log(f"  frame {k + 1}/{n_frames}  {(k + 1) * every / el:.0f} steps/s")
    wall = time.perf_counter() - t0
    ang = np.asarray(geometry.dihedrals(xyz, np.array([[0, 1, 2, 3], [4, 5, 6, 7]])))
    return {"phi": ang[:, 0], "psi": ang[:, 1], "temperature": temp, "wall_s": wall,
            "steps": n_frames * every, "n_frames": n_frames}


def simulate(args) -> dict:
    """Build, minimise, equilibrate and run; writes the PDB and TRR, returns the summary."""
    import openmm
    from openmm import unit

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    top, system, pos = make_system()
    context, integrator = make_context(system, pos, args)
    quads = ramachandran.phi_psi_indices([a.name for a in top.atoms()])
    write_pdb(out / "ala2.pdb", top,
              context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    t_eq = time.perf_counter()
    integrator.step(round(args.equilibrate_ps / (args.dt_fs * 1e-3)))
    t_eq = time.perf_counter() - t_eq
    cm = any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces())
    dof = 3 * system.getNumParticles() - system.getNumConstraints() - (3 if cm else 0)
    writer = TrajectoryWriter(out / "ala2.trr", system.getNumParticles())
    try:
        run = production(context, integrator, writer, args, dof, quads)
    finally:
        writer.close()
    speed = run["steps"] / run["wall_s"]
    summary = {
        "molecule": "ACE-ALA-NME (alanine dipeptide), 22 atoms",
        "force_field": "AMBER ff99SB (amber99sb.xml) + OBC2 implicit solvent (amber99_obc.xml, GBSAOBCForce)",
        "nonbonded": "NoCutoff, open system (no periodic box)", "constraints": "HBonds",
        "integrator": "LangevinMiddleIntegrator", "temperature_K": args.temperature,
        "friction_per_ps": args.friction, "dt_fs": args.dt_fs, "seed": args.seed,
        "equilibrate_ps": args.equilibrate_ps, "length_ns": run["n_frames"] * args.stride_ps * 1e-3,
        "stride_ps": args.stride_ps, "n_frames": run["n_frames"],
        "kinetic_temperature_K": float(run["temperature"].mean()),
        "platform": context.getPlatform().getName(), "threads": args.threads if args.platform == "CPU" else None,
        "openmm_version": openmm.__version__, "speed_steps_per_s": speed,
        "speed_ns_per_day": speed * args.dt_fs * 1e-6 * 86400, "equilibration_wall_s": t_eq,
        "wall_time_s": time.perf_counter() - t0,
        "populations": ramachandran.populations(run["phi"], run["psi"]),
        "basins": "difftre_cli/molecule/ramachandran.py BASINS (degrees)",
        "files": {"topology": "ala2.pdb", "trajectory": "ala2.trr"},
        "units": {"trr_positions": "nm", "trr_forces": "kJ mol-1 nm-1", "pdb_positions": "angstrom"},
        "command": args.command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def benchmark(args) -> None:
    _, system, pos = make_system()
    _context, integrator = make_context(system, pos, args)   # the context must live while the integrator runs
    integrator.step(500)
    t = time.perf_counter()
    integrator.step(args.benchmark)
    sps = args.benchmark / (time.perf_counter() - t)
    log(f"ACE-ALA-NME, platform {args.platform}, threads {args.threads}: {sps:.0f} steps/s = "
        f"{sps * args.dt_fs * 1e-6 * 86400:.0f} ns/day")


def log(msg: str) -> None:
    print(msg, flush=True)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", type=float, default=100.0, help="production length (ns)")
    ap.add_argument("--stride-ps", type=float, default=1.0, help="time between written frames (ps)")
    ap.add_argument("--equilibrate-ps", type=float, default=100.0, help="MD thrown away before production (ps)")
    ap.add_argument("--temperature", type=float, default=300.0, help="K")
    ap.add_argument("--friction", type=float, default=1.0, help="Langevin friction (1/ps)")
    ap.add_argument("--dt-fs", type=float, default=2.0, help="time step (fs)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--platform", default="Reference", help="OpenMM platform (Reference, CPU, CUDA, OpenCL)")
    ap.add_argument("--threads", type=int, default=2, help="CPU platform threads (0: OpenMM's default)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--benchmark", type=int, default=0, metavar="STEPS", help="time STEPS MD steps and exit")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    args.command = shlex.join([sys.executable] + (sys.argv if argv is None else [sys.argv[0]] + list(argv)))
    if args.benchmark:
        benchmark(args)
        return {}
    summary = simulate(args)
    log(json.dumps({k: summary[k] for k in ("length_ns", "n_frames", "speed_ns_per_day", "wall_time_s",
                                            "kinetic_temperature_K", "populations")}, indent=1))
    return summary


if __name__ == "__main__":
    main()
