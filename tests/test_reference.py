"""Reference data of a finer simulation (difftre_cli/reference/): real files written here with
MDAnalysis (GROMACS .gro + .trr, H5MD), ase (extended XYZ) and as LAMMPS dump text, read back,
converted to the run's units and mapped to beads.

The system: water-like 3-atom molecules (O + 2 H, masses 15.999 / 1.008) in a periodic box,
some of them across its faces, with random forces (kJ mol⁻¹ Å⁻¹). Identities checked: a
single-atom bead is that atom (position and force); a centre-of-mass bead is the mass-weighted
mean of its atoms made whole across the boundary, its force the sum of theirs; the same frame
in nm / kJ mol⁻¹ nm⁻¹ (TRR, H5MD), Å / eV (extended XYZ), Å / kcal mol⁻¹ (LAMMPS real) reads
back as the same numbers in the run's units; stride and split are reproducible and disjoint;
streaming yields the frames loading gives, reading only a batch at a time.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write as ase_write

from difftre_cli import cli, commands, reference, units
from difftre_cli.deferred_imports import mdanalysis
from difftre_cli.errors import UserError
from difftre_cli.reference import frames, read
from difftre_cli.reference.write import write_extxyz as write_lj_extxyz
from difftre_cli.system import lattice_positions

MDA = mdanalysis()
L_A = 14.0                       # box edge, Å
N_MOL, N_FRAMES = 6, 7
MASSES = np.array([15.999, 1.008, 1.008])
EV = units.ENERGY_TO_KJ_MOL["eV"]
KCAL = units.ENERGY_TO_KJ_MOL["kcal/mol"]


def water_frames(seed: int = 0):
    """Unwrapped and wrapped positions (F, N, 3) in Å, forces (F, N, 3) in kJ mol⁻¹ Å⁻¹,
    energies (F,) in kJ/mol. Molecule 0's oxygen sits 0.2 Å inside the x = 0 face and its
    hydrogens stick out of it: a molecule split by the boundary in every frame."""
    rng = np.random.default_rng(seed)
    o = rng.uniform(0.0, L_A, (N_FRAMES, N_MOL, 3))
    o[:, 0, 0] = 0.2
    h = o[:, :, None, :] + rng.normal(0.0, 0.6, (N_FRAMES, N_MOL, 2, 3)) + np.array([-0.8, 0.3, 0.1])
    h[:, 0, :, 0] = -0.7
    unwrapped = np.concatenate([o[:, :, None, :], h], axis=2).reshape(N_FRAMES, 3 * N_MOL, 3)
    wrapped = unwrapped - L_A * np.floor(unwrapped / L_A)
    forces = rng.normal(0.0, 50.0, unwrapped.shape)
    return unwrapped, wrapped, forces, rng.normal(-1000.0, 10.0, N_FRAMES)


def _universe(n_mol: int = N_MOL):
    u = MDA.Universe.empty(3 * n_mol, n_residues=n_mol, atom_resindex=np.repeat(np.arange(n_mol), 3),
                           trajectory=True, forces=True)
    u.add_TopologyAttr("name", ["OW", "HW1", "HW2"] * n_mol)
    u.add_TopologyAttr("type", ["O", "H", "H"] * n_mol)
    u.add_TopologyAttr("resname", ["SOL"] * n_mol)
    u.add_TopologyAttr("resid", np.arange(1, n_mol + 1))
    u.add_TopologyAttr("masses", np.tile(MASSES, n_mol))
    u.dimensions = [L_A, L_A, L_A, 90, 90, 90]
    return u


def write_gro_trr(d: Path, pos, frc, box=L_A, name="w", with_forces=True):
    """GROMACS files through MDAnalysis: it writes nm and kJ mol⁻¹ nm⁻¹ (converting from Å)."""
    u = _universe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u.atoms.positions = pos[0]
        u.atoms.write(d / f"{name}.gro")
        with MDA.Writer(str(d / f"{name}.trr"), len(u.atoms)) as w:
            for x, f in zip(pos, frc):
                u.atoms.positions = x
                u.dimensions = [box, box, box, 90, 90, 90]
                if with_forces:
                    u.atoms.forces = f
                else:
                    u.trajectory.ts.has_forces = False
                w.write(u.atoms)
    return d / f"{name}.trr", d / f"{name}.gro"


def write_h5md(d: Path, pos, frc, energies, pressures=None):
    """H5MD through MDAnalysis in nm, kJ mol⁻¹ nm⁻¹; energies as observables/potential_energy
    (and pressures in bar as observables/pressure)."""
    u = _universe()
    path = d / ("w.h5md" if pressures is None else "wp.h5md")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with MDA.Writer(str(path), len(u.atoms), velocities=False, forces=True, lengthunit="nm",
                        forceunit="kJ/(mol*nm)", timeunit="ps") as w:
            for k, (x, f, e) in enumerate(zip(pos, frc, energies)):
                u.atoms.positions, u.atoms.forces = x, f
                u.trajectory.ts.data["potential_energy"] = e
                if pressures is not None:
                    u.trajectory.ts.data["pressure"] = pressures[k]
                w.write(u.atoms)
    with h5py.File(path, "r+") as f:   # H5MD's unit attribute, which MDAnalysis does not write for observables
        f["observables/potential_energy/value"].attrs["unit"] = "kJ mol-1"
        if pressures is not None:
            f["observables/pressure/value"].attrs["unit"] = "bar"
    return path


def write_extxyz(d: Path, pos, frc, energies, name="w.extxyz", cell=None, forces=True):
    """Extended XYZ through ase: Å, eV Å⁻¹ and eV."""
    frames_ = []
    for x, f, e in zip(pos, frc, energies):
        a = Atoms("OHH" * N_MOL, positions=x, cell=[L_A] * 3 if cell is None else cell, pbc=True)
        a.calc = SinglePointCalculator(a, energy=e / EV, **({"forces": f / EV} if forces else {}))
        frames_.append(a)
    ase_write(d / name, frames_, format="extxyz")
    return d / name


def write_dump(d: Path, pos, frc, box=L_A, name="w.lammpstrj", force_factor=1.0 / KCAL, types=None):
    """A LAMMPS dump as LAMMPS writes it (`dump custom id type x y z fx fy fz`), atoms shuffled
    (LAMMPS does not sort them; readers sort by id). Forces in kcal mol⁻¹ Å⁻¹ (units real)."""
    types = np.tile([1, 2, 2], N_MOL) if types is None else types
    lines = []
    rng = np.random.default_rng(1)
    for step, (x, f) in enumerate(zip(pos, frc)):
        lines += ["ITEM: TIMESTEP", str(100 * step), "ITEM: NUMBER OF ATOMS", str(len(x)),
                  "ITEM: BOX BOUNDS pp pp pp", *[f"0.0 {box:.10f}"] * 3, "ITEM: ATOMS id type x y z fx fy fz"]
        for i in rng.permutation(len(x)):
            lines.append(f"{i + 1} {types[i]} " + " ".join(f"{v:.10f}" for v in (*x[i], *(f[i] * force_factor))))
    (d / name).write_text("\n".join(lines) + "\n")
    return d / name


def write_data(d: Path, x):
    """A LAMMPS data file through MDAnalysis: types 1 (O) and 2 (H), masses, O–H bonds."""
    u = MDA.Universe.empty(3 * N_MOL, n_residues=N_MOL, atom_resindex=np.repeat(np.arange(N_MOL), 3), trajectory=True)
    u.add_TopologyAttr("type", ["1", "2", "2"] * N_MOL)
    u.add_TopologyAttr("masses", np.tile(MASSES, N_MOL))
    u.add_TopologyAttr("charges", np.zeros(3 * N_MOL))
    for attr in ("angles", "dihedrals", "impropers"):
        u.add_TopologyAttr(attr, [])
    bonds = [(3 * m, 3 * m + k) for m in range(N_MOL) for k in (1, 2)]
    u.add_bonds(bonds, types=["1"] * len(bonds))
    u.atoms.positions, u.dimensions = x, [L_A, L_A, L_A, 90, 90, 90]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u.atoms.write(d / "w.data")
    return d / "w.data"


def ref_cfg(file, **kw):
    mapping = kw.pop("mapping", {"beads": {"W": "resname SOL"}, "per": "residue", "center": "mass"})
    return {"file": str(file), "mapping": mapping, **kw}


OXYGEN = {"beads": {"O": "name OW"}, "per": "atom", "center": "mass"}
COM = {"beads": {"W": "resname SOL"}, "per": "residue", "center": "mass"}
OXYGEN_XYZ = {"beads": {"O": "name O"}, "per": "atom"}   # extended XYZ without a topology: ase's symbols


@pytest.fixture(scope="module")
def data():
    return water_frames()


@pytest.fixture(scope="module")
def files(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("reference")
    _, wrapped, forces, energies = data
    trr, gro = write_gro_trr(d, wrapped, forces)
    return {"dir": d, "trr": trr, "gro": gro, "h5md": write_h5md(d, wrapped, forces, energies),
            "extxyz": write_extxyz(d, wrapped, forces, energies), "dump": write_dump(d, wrapped, forces)}


# -- units --------------------------------------------------------------------------------------
def test_trajectory_factors_known_values():
    # MDAnalysis (Å, kJ/mol) -> real (nm, kJ/mol): 1 kJ mol⁻¹ Å⁻¹ = 10 kJ mol⁻¹ nm⁻¹
    assert units.trajectory_factors("angstrom", "kJ/mol", units.REAL) == pytest.approx((0.1, 1.0, 10.0))
    # LAMMPS real (Å, kcal/mol) -> real: 1 kcal mol⁻¹ Å⁻¹ = 41.84 kJ mol⁻¹ nm⁻¹
    assert units.trajectory_factors("angstrom", "kcal/mol", units.REAL) == pytest.approx((0.1, 4.184, 41.84))
    # ase (Å, eV) -> real: 1 eV/Å = 964.8533 kJ mol⁻¹ nm⁻¹ (e N_A / 1000 × 10)
    eV_kJ_mol = units.ELEMENTARY_CHARGE_C * 6.02214076e23 / 1e3
    assert units.trajectory_factors("angstrom", "eV", units.REAL)[2] == pytest.approx(10 * eV_kJ_mol, rel=1e-8)
    # MDAnalysis -> metal (Å, eV): 1 kJ/mol = 1/96.485 eV; LAMMPS metal -> metal: identity
    assert units.trajectory_factors("angstrom", "kJ/mol", units.METAL) == pytest.approx((1.0, 1 / eV_kJ_mol, 1 / eV_kJ_mol))
    assert units.trajectory_factors(*units.TRAJECTORY_STYLES["metal"], units.METAL) == (1.0, 1.0, 1.0)
    assert units.trajectory_factors(*units.TRAJECTORY_STYLES["lj"], units.LJ) == (1.0, 1.0, 1.0)
    for args, system in ((("angstrom", "kJ/mol"), units.LJ), (("sigma", "epsilon"), units.REAL)):
        with pytest.raises(UserError, match="no conversion between reduced LJ units and physical"):
            units.trajectory_factors(*args, system)


# -- the mapping ----------------------------------------------------------------------------------
def test_single_atom_map_is_that_atom(files, data):
    _, wrapped, forces, _ = data
    ref = reference.open_reference(ref_cfg(files["trr"], topology=str(files["gro"]), mapping=OXYGEN), units.REAL)
    m = ref.map(np.arange(N_FRAMES))
    assert ref.n_beads == N_MOL and ref.bead_type_names == ("O",) * N_MOL
    o = np.arange(0, 3 * N_MOL, 3)
    np.testing.assert_allclose(m.positions, 0.1 * wrapped[:, o], atol=2e-6)          # Å -> nm
    np.testing.assert_allclose(m.forces, 10.0 * forces[:, o], rtol=2e-6, atol=1e-4)   # kJ/mol/Å -> /nm
    np.testing.assert_allclose(m.boxes, 0.1 * L_A, rtol=1e-6)


def _com(unwrapped, L):
    x = unwrapped.reshape(N_FRAMES, N_MOL, 3, 3)
    c = np.einsum("fmad,a->fmd", x, MASSES / MASSES.sum())
    return c - L * np.floor(c / L)


def test_centre_of_mass_map_across_the_boundary(files, data):
    unwrapped, wrapped, forces, _ = data
    assert np.all(unwrapped[:, 1:3, 0] < 0) and np.all(wrapped[:, 1:3, 0] > L_A / 2)   # molecule 0 is split
    ref = reference.open_reference(ref_cfg(files["trr"], topology=str(files["gro"]), mapping=COM), units.REAL)
    m = ref.map(np.arange(N_FRAMES))
    np.testing.assert_allclose(m.positions, 0.1 * _com(unwrapped, L_A), atol=3e-6)
    assert np.all((m.positions >= 0) & (m.positions < 0.1 * L_A))
    np.testing.assert_allclose(m.forces, 10.0 * forces.reshape(N_FRAMES, N_MOL, 3, 3).sum(axis=2), rtol=1e-5, atol=1e-3)
    # the naive mean of the wrapped atoms of molecule 0 is half a box off: the unwrapping matters
    naive = np.einsum("fad,a->fd", wrapped[:, :3], MASSES / MASSES.sum())
    assert np.all(np.abs(0.1 * naive[:, 0] - m.positions[:, 0, 0]) > 0.1)


def test_centre_of_geometry_and_one_bead_per_selection(files, data):
    unwrapped, _, forces, _ = data
    geo = dict(COM, center="geometry")
    m = reference.open_reference(ref_cfg(files["trr"], topology=str(files["gro"]), mapping=geo), units.REAL).map([2])
    c = unwrapped[2].reshape(N_MOL, 3, 3).mean(axis=1)
    np.testing.assert_allclose(m.positions[0], 0.1 * (c - L_A * np.floor(c / L_A)), atol=3e-6)
    # two bead types, the hydrogens of residues 1-2 as one bead: types in config order
    two = {"beads": {"A": "name OW", "B": "resid 1 2 and not name OW"}, "per": "atom", "center": "mass"}
    ref = reference.open_reference(ref_cfg(files["trr"], topology=str(files["gro"]), mapping=two), units.REAL)
    assert ref.bead_type_names == ("A",) * N_MOL + ("B",) * 4
    whole = dict(two, per="selection")
    m = reference.open_reference(ref_cfg(files["trr"], topology=str(files["gro"]), mapping=whole), units.REAL).map([3])
    np.testing.assert_allclose(m.forces[0, 1], 10.0 * forces[3, [1, 2, 4, 5]].sum(axis=0), rtol=1e-5, atol=1e-3)


def test_site_map_puts_the_bead_on_its_atom_with_the_molecules_force(files, data):
    """center=site: the bead sits on the oxygen (made whole with its molecule) and carries the
    sum of the molecule's forces, not the oxygen's alone."""
    unwrapped, _, forces, _ = data
    site = dict(COM, center="site", site="name OW")
    m = reference.open_reference(ref_cfg(files["trr"], topology=str(files["gro"]), mapping=site), units.REAL).map([0, 3])
    o = unwrapped[[0, 3]][:, ::3]
    np.testing.assert_allclose(m.positions, 0.1 * (o - L_A * np.floor(o / L_A)), atol=3e-6)
    total = forces[[0, 3]].reshape(2, N_MOL, 3, 3).sum(axis=2)
    np.testing.assert_allclose(m.forces, 10.0 * total, rtol=1e-5, atol=1e-3)
    assert np.abs(total - forces[[0, 3]][:, ::3]).max() > 1.0    # the oxygen's own force would be wrong


def test_pressures_from_extxyz_stress_in_run_units(tmp_path):
    """ase's stress (eV/Å³, tension positive) -> the run's pressure: 1 eV/Å³ = 96485.33 kJ mol⁻¹ nm⁻³
    (160.2 GPa); real units here, one-atom beads."""
    rng = np.random.default_rng(1)
    p = np.array([1e-4, -2e-4, 3e-5])   # eV/Å³
    f = write_lj_extxyz(tmp_path / "p.extxyz", rng.uniform(0, 20, (3, 5, 3)), rng.normal(size=(3, 5, 3)), np.zeros(3),
                     20.0, pressures=p)
    m = reference.open_reference(ref_cfg(f, mapping=OXYGEN_XYZ | {"beads": {"A": "name Ar"}}), units.REAL).map([0, 1, 2])
    eV_kJ_mol = units.ELEMENTARY_CHARGE_C * 6.02214076e23 / 1e3
    np.testing.assert_allclose(m.pressures, p * eV_kJ_mol * 1e3, rtol=1e-6)     # eV/Å³ -> kJ/mol/nm³
    np.testing.assert_allclose(m.pressures[0] * units.BAR_PER_KJ_MOL_NM3, 1e-4 * 1.602176634e6, rtol=1e-5)   # bar


def test_pressures_from_h5md_observables_in_run_units(files, data, tmp_path):
    _, wrapped, forces, energies = data
    bar = np.linspace(-300.0, 500.0, N_FRAMES)
    f = write_h5md(tmp_path, wrapped, forces, energies, pressures=bar)
    m = reference.open_reference(ref_cfg(f, topology=str(files["gro"])), units.REAL).map(np.arange(N_FRAMES))
    np.testing.assert_allclose(m.pressures, bar / units.BAR_PER_KJ_MOL_NM3, rtol=1e-6)
    assert reference.open_reference(ref_cfg(files["h5md"], topology=str(files["gro"])), units.REAL).map([0]).pressures \
        is None


def test_same_frame_in_every_format_reads_the_same(files, data):
    """nm / kJ mol⁻¹ nm⁻¹ (TRR, H5MD), Å / eV (extended XYZ), Å / kcal mol⁻¹ (LAMMPS real):
    one frame, the same numbers in the run's units (real: nm, kJ/mol; metal: Å, eV)."""
    unwrapped, _, forces, energies = data
    expect_x, expect_f = 0.1 * _com(unwrapped, L_A), 10.0 * forces.reshape(N_FRAMES, N_MOL, 3, 3).sum(axis=2)
    gro = str(files["gro"])
    cases = {"trr": ref_cfg(files["trr"], topology=gro), "h5md": ref_cfg(files["h5md"], topology=gro),
             "extxyz": ref_cfg(files["extxyz"], topology=gro), "dump": ref_cfg(files["dump"], topology=gro, units="real")}
    for name, cfg in cases.items():
        m = reference.open_reference(cfg, units.REAL).map(np.arange(N_FRAMES))
        np.testing.assert_allclose(m.positions, expect_x, atol=3e-6, err_msg=name)
        np.testing.assert_allclose(m.forces, expect_f, rtol=1e-5, atol=2e-3, err_msg=name)
    for name in ("h5md", "extxyz"):   # the files with energies
        m = reference.open_reference(cases[name], units.REAL).map(np.arange(N_FRAMES))
        np.testing.assert_allclose(m.energies, energies, rtol=1e-9, err_msg=name)
    m = reference.open_reference(cases["dump"], units.METAL).map([4])        # metal: Å, eV
    np.testing.assert_allclose(m.positions[0], 10.0 * expect_x[4], atol=3e-5)
    np.testing.assert_allclose(m.forces[0], expect_f[4] / 10.0 / EV, rtol=1e-5, atol=1e-5)
    assert reference.open_reference(cases["trr"], units.REAL).map([0]).energies is None   # a TRR has none


def test_h5md_without_units_needs_declared_units(tmp_path, data):
    unwrapped, wrapped, forces, energies = data
    path = write_h5md(tmp_path, wrapped, forces, energies)   # MDAnalysis writes nm, kJ mol⁻¹ nm⁻¹ ...
    with h5py.File(path, "r+") as f:                          # ... then the unit attributes go
        for name in ("position", "force", "box/edges"):
            f[f"particles/trajectory/{name}/value"].attrs.pop("unit", None)
        for name in ("position", "force"):
            f[f"particles/trajectory/{name}/time"].attrs.pop("unit", None)
    gro = str(tmp_path / "w.gro")
    _universe().atoms.write(gro)
    with pytest.raises(UserError, match="reference.units is missing: the H5MD file"):
        reference.open_reference(ref_cfg(path, topology=gro), units.REAL)
    m = reference.open_reference(ref_cfg(path, topology=gro, units="gromacs"), units.REAL).map(np.arange(N_FRAMES))
    np.testing.assert_allclose(m.positions, 0.1 * _com(unwrapped, L_A), atol=3e-6)
    np.testing.assert_allclose(m.forces, 10.0 * forces.reshape(N_FRAMES, N_MOL, 3, 3).sum(axis=2), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(m.boxes, 0.1 * L_A, rtol=1e-6)
    np.testing.assert_allclose(m.energies, energies, rtol=1e-9)   # the observable's own unit attribute


def test_lammps_dump_with_data_file_one_bead_per_molecule(files, data):
    """Molecules from the data file's bonds, masses from its Masses section: per=molecule is
    the same map as per=residue of the GROMACS files."""
    unwrapped, wrapped, forces, _ = data
    topo = write_data(files["dir"], wrapped[0])
    cfg = ref_cfg(files["dump"], topology=str(topo), units="real",
                  mapping={"beads": {"W": "all"}, "per": "molecule", "center": "mass"})
    m = reference.open_reference(cfg, units.REAL, box=0.1 * L_A, n_particles=N_MOL).load()
    np.testing.assert_allclose(m.positions, 0.1 * _com(unwrapped, L_A), atol=3e-6)
    np.testing.assert_allclose(m.forces, 10.0 * forces.reshape(N_FRAMES, N_MOL, 3, 3).sum(axis=2), rtol=1e-5, atol=2e-3)


def test_lammps_dump_in_lj_units_from_the_projects_lattice(tmp_path):
    """An LJ snapshot (σ, ε): read as it is into reduced units; one bead per atom of type 1."""
    n, L = 32, 3.2
    x = lattice_positions(n, L, "fcc")[None] + np.random.default_rng(3).normal(0, 0.05, (1, n, 3))
    x -= L * np.floor(x / L)
    f = np.random.default_rng(4).normal(0, 1, (1, n, 3))
    types = np.array([1, 2] * (n // 2))
    dump = write_dump(tmp_path, x, f, box=L, force_factor=1.0, types=types)
    cfg = ref_cfg(dump, units="lj", mapping={"beads": {"A": "type 1"}, "per": "atom"})
    ref = reference.open_reference(cfg, units.LJ, box=L, n_particles=n // 2)
    m = ref.load()
    np.testing.assert_allclose(m.positions[0], x[0, ::2], atol=1e-9)
    np.testing.assert_allclose(m.forces[0], f[0, ::2], atol=1e-9)


# -- frames: stride, split, streaming ----------------------------------------------------------------
def test_stride_and_split_are_reproducible_and_disjoint():
    idx = frames.select(100, 5, 95, 3)
    assert idx[0] == 5 and idx[-1] < 95 and np.all(np.diff(idx) == 3)
    a, b = frames.split(idx, 0.25, seed=7), frames.split(idx, 0.25, seed=7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    train, val = a
    assert len(val) == round(0.25 * len(idx)) and not set(train) & set(val)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), idx)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert not np.array_equal(frames.split(idx, 0.25, seed=8)[1], val)       # another seed, another split
    assert len(frames.split(idx, 0.0, seed=0)[1]) == 0


class _Counting:
    """Trajectory.read and ase.io.iread wrapped to record how many frames each read asks for
    and how many passes over an extended-XYZ file start."""

    def __init__(self):
        self.sizes, self.passes = [], 0
        self.real_read, self.real_ase = read.Trajectory.read, read._ase_io()

    def read(self, trajectory, idx):
        self.sizes.append(len(idx))
        return self.real_read(trajectory, idx)

    def iread(self, *args, **kwargs):
        self.passes += 1
        return self.real_ase.iread(*args, **kwargs)


STREAMED = {"trr": ({"topology": "w.gro"}, OXYGEN), "extxyz": ({}, OXYGEN_XYZ),
            "dump": ({"units": "real"}, {"beads": {"O": "type 1"}, "per": "atom"})}


@pytest.mark.parametrize("key", list(STREAMED))
def test_streaming_yields_the_frames_loading_gives(files, monkeypatch, key):
    monkeypatch.chdir(files["dir"])
    extra, mapping = STREAMED[key]
    cfg = ref_cfg(files[key], mapping=mapping, stride=1, start=1, validation_fraction=0.34, split_seed=3,
                  batch_frames=2, **extra)
    ref = reference.open_reference(cfg, units.REAL)
    assert len(ref.split["train"]) == 4                          # (counting the frames: a pass of its own)
    count = _Counting()
    monkeypatch.setattr(read.Trajectory, "read", lambda self, idx: count.read(self, idx))
    monkeypatch.setattr(read, "_ase_io", lambda: count)
    parts = list(ref.batches("train"))
    monkeypatch.undo()
    assert count.sizes == [2, 2], count.sizes                     # never more than a batch read at once
    assert count.passes == (1 if key == "extxyz" else 0)          # extended XYZ: one pass for all batches
    full = ref.load("train")
    np.testing.assert_array_equal(np.concatenate([p.indices for p in parts]), full.indices)
    for attr in ("positions", "forces", "boxes"):
        np.testing.assert_array_equal(np.concatenate([getattr(p, attr) for p in parts]), getattr(full, attr))
    assert len(ref.split["validation"]) == 2 and not set(ref.split["validation"]) & set(full.indices)
    assert sorted([*full.indices, *ref.split["validation"]]) == list(range(1, N_FRAMES))


# -- bad input: UserError naming the key, with a fix ---------------------------------------------------
@pytest.fixture(scope="module")
def bad(files, data):
    d = files["dir"]
    _, wrapped, forces, energies = data
    (d / "garbage.trr").write_bytes(bytes(range(256)) * 4)
    (d / "notes.txt").write_text("not a trajectory\n")
    write_gro_trr(d, wrapped, forces, box=1.1 * L_A, name="bigbox")
    lines = files["extxyz"].read_text().splitlines()
    (d / "truncated.extxyz").write_text("\n".join(lines[:-4]) + "\n")           # the last frame cut short
    (d / "truncated.trr").write_bytes(files["trr"].read_bytes()[:-200])
    lines = files["dump"].read_text().splitlines()
    lines[3 * (9 + 3 * N_MOL) + 12] = "7 1 0.5 abc 0.5 0.0 0.0 0.0"                 # frame 3 damaged
    (d / "damaged.lammpstrj").write_text("\n".join(lines) + "\n")
    write_extxyz(d, wrapped, forces, energies, name="noforces.extxyz", forces=False)
    write_extxyz(d, wrapped, forces, energies, name="tilted.extxyz", cell=[[L_A, 0, 0], [3, L_A, 0], [0, 0, L_A]])
    return d


GRO = {"topology": "w.gro"}
BAD = [
    pytest.param({"file": "missing.trr", **GRO}, {}, ["reference.file", "not found"], id="missing-file"),
    pytest.param({"file": "missing.trr", **GRO, "make": "python scripts/make_it.py"}, {},
                 ["not found", "make it first: python scripts/make_it.py"], id="missing-file-with-make"),
    pytest.param({"file": "w.trr", **GRO, "make": 3}, {}, ["reference.make"], id="make-not-a-string"),
    pytest.param({"file": "notes.txt"}, {}, ["reference.file", "format"], id="unknown-extension"),
    pytest.param({"file": "garbage.trr", **GRO}, {}, ["reference.file", "cannot read"], id="unreadable"),
    pytest.param({"file": "truncated.extxyz", "mapping": OXYGEN_XYZ}, {}, ["reference.file", "truncated"],
                 id="truncated-extxyz"),
    pytest.param({"file": "truncated.trr", **GRO}, {}, ["reference.file", "truncated.trr"], id="truncated-trr"),
    pytest.param({"file": "damaged.lammpstrj", "units": "real", "mapping": {"beads": {"O": "type 1"}, "per": "atom"}},
                 {}, ["reference.file", "frames", "damaged.lammpstrj"], id="damaged-dump"),
    pytest.param({"file": "w.trr", "topology": "notes.txt"}, {}, ["reference.file", "notes.txt"], id="bad-topology"),
    pytest.param({"file": "w.extxyz", "topology": "notes.txt"}, {}, ["reference.topology", "notes.txt"],
                 id="bad-topology-extxyz"),
    pytest.param({"file": "w.extxyz", "format": "pdb"}, {}, ["reference.format", "pdb"], id="unknown-format"),
    pytest.param({"file": "w.trr"}, {}, ["reference.topology", "TRR"], id="trr-without-topology"),
    pytest.param({"file": "w.lammpstrj", "mapping": OXYGEN}, {}, ["reference.units", "LAMMPS dump"],
                 id="dump-without-units"),
    pytest.param({"file": "w.lammpstrj", "units": "si"}, {}, ["reference.units", "si"], id="unknown-units"),
    pytest.param({"file": "w.trr", "units": "real", **GRO}, {}, ["reference.units", "TRR"], id="trr-with-units"),
    pytest.param({"file": "noforces.extxyz", "mapping": OXYGEN_XYZ}, {"require_forces": True},
                 ["reference.file", "no forces"], id="no-forces"),
    pytest.param({"file": "w.trr", **GRO, "mapping": {"beads": {"X": "name CA"}}}, {},
                 ["reference.mapping.beads.X", "matches no atom"], id="selection-matches-nothing"),
    pytest.param({"file": "w.trr", **GRO, "mapping": {"beads": {"X": "name and or"}}}, {},
                 ["reference.mapping.beads.X", "selection"], id="selection-syntax"),
    pytest.param({"file": "w.trr", **GRO, "mapping": {"beads": {"A": "resid 1", "B": "name OW"}, "per": "residue"}},
                 {}, ["reference.mapping.beads", "more than one bead", "A, B"], id="overlapping-beads"),
    pytest.param({"file": "w.extxyz", "mapping": dict(COM, beads={"W": "name O H"})}, {},
                 ["reference.mapping", "no residues"], id="per-residue-without-topology"),
    pytest.param({"file": "w.extxyz"}, {}, ["reference.mapping.beads.W", "topology lacks"],
                 id="selection-needs-topology"),
    pytest.param({"file": "w.lammpstrj", "units": "real", "mapping": {"beads": {"O": "type 1"}, "per": "selection"}},
                 {}, ["reference.mapping.center=mass", "no masses"], id="dump-masses-unknown"),
    pytest.param({"file": "w.trr", **GRO, "mapping": dict(COM, center="site")}, {},
                 ["reference.mapping.center=site needs reference.mapping.site"], id="site-missing"),
    pytest.param({"file": "w.trr", **GRO, "mapping": dict(COM, site="name OW")}, {},
                 ["reference.mapping.site", "center=mass"], id="site-without-center-site"),
    pytest.param({"file": "w.trr", **GRO, "mapping": dict(COM, center="site", site="name HW1 HW2")}, {},
                 ["reference.mapping.site", "matches 2 atoms"], id="site-two-atoms"),
    pytest.param({"file": "w.trr", **GRO, "mapping": dict(COM, per="molecule")}, {},
                 ["reference.mapping.per=molecule", "no bonds"], id="molecule-without-bonds"),
    pytest.param({"file": "bigbox.trr", "topology": "bigbox.gro"}, {"box": 0.1 * L_A},
                 ["reference.file", "box", "system.box_size"], id="box-mismatch"),
    pytest.param({"file": "tilted.extxyz", "mapping": OXYGEN_XYZ}, {}, ["reference.file", "orthorhombic"], id="tilted-box"),
    pytest.param({"file": "w.trr", **GRO}, {"n_particles": 7}, ["reference.mapping", "system.n_particles=7"],
                 id="bead-count"),
    pytest.param({"file": "w.trr", **GRO}, {"units_": units.LJ}, ["reduced LJ"], id="physical-file-in-lj-run"),
    pytest.param({"file": "w.trr", **GRO, "stride": 0}, {}, ["reference.stride"], id="stride-zero"),
    pytest.param({"file": "w.trr", **GRO, "stride": 1, "start": 99}, {}, ["reference.start=99"], id="start-past-end"),
    pytest.param({"file": "w.trr", **GRO, "validation_fraction": 0.99}, {},
                 ["reference.validation_fraction"], id="no-training-frame"),
    pytest.param({"file": "w.trr", **GRO, "every": 2}, {}, ["reference", "every"], id="unknown-key"),
]


@pytest.mark.parametrize("cfg, kw, needles", BAD)
def test_bad_reference_is_a_user_error(bad, monkeypatch, cfg, kw, needles):
    monkeypatch.chdir(bad)
    cfg = {"mapping": COM, **cfg}
    kw = dict(kw)
    system = kw.pop("units_", units.REAL)
    with pytest.raises(UserError) as exc:
        ref = reference.open_reference(cfg, system, **kw)
        ref.load("train")   # the checks of the frames themselves (box, split)
    msg = str(exc.value)
    for needle in needles:
        assert needle in msg, msg
    assert exc.value.fix and len(exc.value.fix) > 10


# -- through the command line: the reference group, validated before anything compiles --------------
def test_reference_group_default_is_none():
    cfg = commands._precompose(["config=tiny"])
    assert cfg.reference is None
    assert commands._precompose(["config=tiny", "reference=water_trr"]).reference.mapping.per == "residue"


def test_cli_validates_the_reference(tmp_path, monkeypatch, capsys):
    """config=tiny (108 LJ particles, ρ = 0.7) with a LAMMPS dump of those 108 atoms in σ, ε."""
    n, L = 108, (108 / 0.7) ** (1 / 3)
    x = lattice_positions(n, L, "fcc")[None]
    write_dump(tmp_path, x, np.ones((1, n, 3)), box=L, name="lj.lammpstrj", force_factor=1.0, types=np.ones(n, int))
    write_dump(tmp_path, x, np.ones((1, n, 3)), box=1.5 * L, name="big.lammpstrj", force_factor=1.0,
               types=np.ones(n, int))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    reached = []
    monkeypatch.setattr(commands, "_hydra_train", lambda: reached.append(True))
    base = ["train", "config=tiny", f"hydra.run.dir={tmp_path / 'run'}", "reference=lammps_dump",
            "reference.units=lj", "~reference.mapping.beads", "+reference.mapping.beads={A: 'type 1'}"]
    assert cli.main([*base, "reference.file=lj.lammpstrj"]) == 0 and reached == [True]   # valid: on to Hydra
    capsys.readouterr()
    (tmp_path / "garbage.trr").write_bytes(bytes(range(256)) * 4)
    for extra, needle in ((["reference.file=big.lammpstrj"], "system.box_size"),
                          (["reference.file=garbage.trr", "reference.units=null", "reference.topology=lj.lammpstrj"],
                           "cannot read"),
                          (["reference.file=lj.lammpstrj", "reference.units=null"], "reference.units"),
                          (["reference.file=nothere.lammpstrj"], "reference.file")):
        with pytest.raises(SystemExit) as exc:
            cli.main([*base, *extra])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "Traceback" not in err and "Exception ignored" not in err, err
        assert "difftre: error:" in err and needle in err and "  fix: " in err, err
    assert reached == [True] and not (tmp_path / "run").exists()
