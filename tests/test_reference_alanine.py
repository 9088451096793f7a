"""scripts/reference_alanine.py: the ACE-ALA-NME start structure, the constraint forces' cancellation
in the heavy-atom bead sums, and a 0.2 ps run read back through configs/reference/alanine_dipeptide
(skipped without OpenMM, the `reference` extra)."""
from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from difftre_cli import reference, units
from difftre_cli.deferred_imports import mdanalysis
from difftre_cli.molecule import geometry, ramachandran

ROOT = Path(__file__).resolve().parent.parent
MDA = mdanalysis()
#: the 22 atoms of OpenMM's ACE-ALA-NME: the atoms of each heavy-atom bead (heavy atom first)
BEADS = [[0, 1, 2, 3], [4], [5], [6, 7], [8, 9], [10, 11, 12, 13], [14], [15], [16, 17], [18, 19, 20, 21]]


def _script():
    spec = importlib.util.spec_from_file_location("reference_alanine", ROOT / "scripts/reference_alanine.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_start_structure_has_the_requested_dihedrals_and_is_l_alanine():
    x = _script().heavy_positions(phi=-63.0, psi=141.0)
    phi, psi = ramachandran.phi_psi_indices(["CH3", "C", "O", "N", "CA", "CB", "C", "O", "N", "CH3"])
    ang = np.degrees(np.asarray(geometry.dihedrals(x, np.array([phi, psi, [0, 1, 3, 4], [4, 6, 8, 9]]))))
    np.testing.assert_allclose(ang[:2], [-63.0, 141.0], atol=1e-3)
    assert abs(abs(ang[2]) - 180.0) < 1e-3 and abs(abs(ang[3]) - 180.0) < 1e-3     # trans peptide bonds
    # L-alanine: N–C–CA–CB = +122° in tleap's ACE-ALA-NME (openmmtools' alanine-dipeptide-gbsa PDB); D: −122°
    improper = np.degrees(float(geometry.dihedrals(x, np.array([[3, 6, 4, 5]]))[0]))
    assert 110.0 < improper < 135.0
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    assert d[np.triu_indices(10, 1)].min() > 1.1          # Å: no clashes


def test_constraint_forces_cancel_in_the_heavy_atom_bead_sums():
    """A Verlet step's m Δv/dt holds the conservative and the constraint forces; per atom it
    differs from getForces() (the constraint forces, large on H and its heavy atom), per bead
    (heavy atom + its hydrogens) it does not: every constraint is inside one bead."""
    openmm = pytest.importorskip("openmm")
    from openmm import unit

    mod = _script()
    _, system, pos = mod.make_system()
    bead_of = {a: b for b, atoms in enumerate(BEADS) for a in atoms}
    pairs = [system.getConstraintParameters(k)[:2] for k in range(system.getNumConstraints())]
    assert len(pairs) == 12 and all(bead_of[i] == bead_of[j] for i, j in pairs)
    for k in reversed(range(system.getNumForces())):      # it changes velocities: not a force
        if isinstance(system.getForce(k), openmm.CMMotionRemover):
            system.removeForce(k)
    dt = 0.002
    integ = openmm.VerletIntegrator(dt)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    integ.step(5)
    st = ctx.getState(getVelocities=True, getForces=True)
    v0, f = st.getVelocities(asNumpy=True)._value, st.getForces(asNumpy=True)._value   # nm/ps, kJ/mol/nm
    integ.step(1)
    v1 = ctx.getState(getVelocities=True).getVelocities(asNumpy=True)._value
    m = np.array([system.getParticleMass(i)._value for i in range(system.getNumParticles())])
    total = m[:, None] * (v1 - v0) / dt                  # conservative + constraint forces, kJ/mol/nm
    assert np.abs(total - f).max() > 50.0               # the constraint forces per atom
    per_bead = [np.stack([a[g].sum(0) for g in BEADS]) for a in (total, f)]
    np.testing.assert_allclose(per_bead[0], per_bead[1], atol=1e-6 * np.abs(f).max())


def test_short_run_maps_to_ten_beads_with_summed_forces(tmp_path):
    pytest.importorskip("openmm")
    out = tmp_path / "ala"
    summary = _script().main(["--ns", "0.0002", "--stride-ps", "0.02", "--equilibrate-ps", "0.1", "--out", str(out)])
    assert {p.name for p in out.iterdir()} == {"ala2.pdb", "ala2.trr", "summary.json"}
    assert json.loads((out / "summary.json").read_text())["n_frames"] == summary["n_frames"] == 10
    assert sum(summary["populations"].values()) == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u = MDA.Universe(str(out / "ala2.pdb"), str(out / "ala2.trr"))
        frames = [(ts.dimensions, ts.positions.copy(), ts.forces.copy()) for ts in u.trajectory]
    assert len(u.atoms) == 22 and len(u.bonds) == 21 and len(frames) == 10
    assert list(u.atoms.elements).count("H") == 12 and all(dims is None for dims, _, _ in frames)
    x = np.stack([p for _, p, _ in frames])                       # Å
    f = np.stack([q for _, _, q in frames])                       # kJ mol⁻¹ Å⁻¹
    cfg = OmegaConf.load(ROOT / "configs/reference/alanine_dipeptide.yaml")
    cfg.file, cfg.topology, cfg.validation_fraction = str(out / "ala2.trr"), str(out / "ala2.pdb"), 0.0
    ref = reference.open_reference(cfg, units.REAL, require_forces=True)
    mapped = ref.load()
    assert ref.n_beads == 10 and mapped.boxes is None
    np.testing.assert_allclose(mapped.positions, 0.1 * x[:, [g[0] for g in BEADS]], atol=1e-6)   # nm
    np.testing.assert_allclose(mapped.forces, 10.0 * np.stack([f[:, g].sum(1) for g in BEADS], 1), rtol=1e-5,
                               atol=1e-3)
    # φ, ψ of the beads (geometry.dihedrals) = MDAnalysis's of the atoms; the summary's populations are theirs
    from MDAnalysis.lib.distances import calc_dihedrals

    quads = np.array(ramachandran.phi_psi_indices(["CH3", "C", "O", "N", "CA", "CB", "C", "O", "N", "CH3"]))
    ours = np.asarray(geometry.dihedrals(mapped.positions, quads))
    atom_quads = ramachandran.phi_psi_indices(list(u.atoms.names))
    theirs = np.stack([calc_dihedrals(*(x[:, i].astype(np.float64) for i in q)) for q in atom_quads], axis=1)
    np.testing.assert_allclose(np.angle(np.exp(1j * (ours - theirs))), 0.0, atol=1e-4)
    assert ramachandran.populations(ours[:, 0], ours[:, 1]) == summary["populations"]
