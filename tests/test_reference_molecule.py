"""Heavy-atom maps of molecules in open space (reference.mapping.per=heavy_atom, reference.open)
and the Ramachandran basins of difftre_cli/molecule/ramachandran.py.

The molecule: two ethanol-like molecules C1(H3)–C2(H2)–O(H), written by MDAnalysis as a PDB
with CONECT records and a TRR without a box (nm, kJ mol⁻¹ nm⁻¹), random forces in
kJ mol⁻¹ Å⁻¹. One hydrogen is listed before its carbon and the hydroxyl H before its oxygen;
molecule 1 lies far out at negative coordinates. Identities: each bead is its heavy atom's
position, unchanged (no wrapping, no image), and carries the sum of the forces on the heavy
atom and its bonded hydrogens; beads in heavy-atom order.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write as ase_write

from difftre_cli import reference, units
from difftre_cli.deferred_imports import mdanalysis
from difftre_cli.errors import UserError
from difftre_cli.molecule import ramachandran
from difftre_cli.reference import mapping

MDA = mdanalysis()
#: one molecule: (name, element), H listed before its carbon and the hydroxyl H before its O
ATOMS = [("H11", "H"), ("C1", "C"), ("H12", "H"), ("H13", "H"), ("C2", "C"), ("H21", "H"), ("H22", "H"),
         ("HO", "H"), ("O", "O")]
BONDS = [(1, 0), (1, 2), (1, 3), (1, 4), (4, 5), (4, 6), (4, 8), (8, 7)]
#: per molecule: heavy atom -> the atoms of its bead
GROUPS = [[1, 0, 2, 3], [4, 5, 6], [8, 7]]
N_MOL, N_FRAMES = 2, 5
NA = len(ATOMS)


def molecule_frames(seed: int = 0):
    """Positions (F, 18, 3) in Å (molecule 1 near (−40, −35, 50) Å) and forces in kJ mol⁻¹ Å⁻¹."""
    rng = np.random.default_rng(seed)
    heavy = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [2.0, 1.3, 0.0]])
    one = np.empty((NA, 3))
    one[[1, 4, 8]] = heavy
    for h, parent in ((0, 1), (2, 1), (3, 1), (5, 4), (6, 4), (7, 8)):
        one[h] = one[parent] + rng.normal(0.0, 0.6, 3)
    pos = np.stack([one, one + np.array([-40.0, -35.0, 50.0])]).reshape(1, N_MOL * NA, 3)
    pos = pos + rng.normal(0.0, 0.05, (N_FRAMES, N_MOL * NA, 3))
    return pos, rng.normal(0.0, 50.0, pos.shape)


def _universe(elements: bool = True, bonds: bool = True):
    n = N_MOL * NA
    u = MDA.Universe.empty(n, n_residues=N_MOL, atom_resindex=np.repeat(np.arange(N_MOL), NA), trajectory=True,
                           forces=True)
    u.add_TopologyAttr("name", [a for a, _ in ATOMS] * N_MOL)
    u.add_TopologyAttr("resname", ["ETH"] * N_MOL)
    u.add_TopologyAttr("resid", np.arange(1, N_MOL + 1))
    if elements:
        u.add_TopologyAttr("element", [e for _, e in ATOMS] * N_MOL)
    if bonds:
        u.add_bonds([(i + m * NA, j + m * NA) for m in range(N_MOL) for i, j in BONDS])
    return u


def write_files(d: Path, pos, frc, box: float | None = None):
    """ethanol.pdb (CONECT, elements), ethanol.gro (no bonds) and ethanol.trr (no box unless ``box``)."""
    u = _universe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u.atoms.positions = pos[0]
        with MDA.Writer(str(d / "ethanol.pdb"), bonds="all") as w:
            w.write(u.atoms)
        u.atoms.write(d / "ethanol.gro")
        with MDA.Writer(str(d / "ethanol.trr"), len(u.atoms)) as w:
            for x, f in zip(pos, frc):
                u.atoms.positions, u.atoms.forces = x, f
                u.dimensions = None if box is None else [box, box, box, 90, 90, 90]
                w.write(u.atoms)
    return d / "ethanol.trr", d / "ethanol.pdb"


HEAVY = {"beads": {"X": "resname ETH"}, "per": "heavy_atom"}


def cfg(d: Path, **kw):
    mapping_ = kw.pop("mapping", HEAVY)
    return {"file": str(d / "ethanol.trr"), "topology": str(d / "ethanol.pdb"), "open": True, "mapping": mapping_,
            **kw}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("molecule")
    pos, frc = molecule_frames()
    write_files(d, pos, frc)
    return d, pos, frc


def _expected(pos, frc):
    """Heavy-atom positions (Å) and summed forces (kJ mol⁻¹ Å⁻¹), beads in heavy-atom order."""
    groups = [[a + m * NA for a in g] for m in range(N_MOL) for g in GROUPS]
    return pos[:, [g[0] for g in groups]], np.stack([frc[:, g].sum(axis=1) for g in groups], axis=1)


def test_heavy_atom_map_in_open_space(data):
    d, pos, frc = data
    ref = reference.open_reference(cfg(d), units.REAL)
    assert ref.n_beads == 3 * N_MOL and ref.bead_type_names == ("X",) * 6
    np.testing.assert_array_equal(ref.cg_map.atoms[ref.cg_map.offsets], [1, 4, 8, 10, 13, 17])   # heavy atoms
    m = ref.map(np.arange(N_FRAMES))
    x, f = _expected(pos, frc)
    assert m.boxes is None
    np.testing.assert_allclose(m.positions, 0.1 * x, atol=2e-6)          # unchanged: molecule 1 stays at −40 Å
    assert np.all(m.positions[:, 3:, 0] < -3.5)
    np.testing.assert_allclose(m.forces, 10.0 * f, rtol=1e-5, atol=1e-3)
    assert np.abs(f - frc[:, [1, 4, 8, 10, 13, 17]]).max() > 1.0         # the heavy atom's own force would be wrong


def test_heavy_atom_centre_of_mass_and_two_bead_types(data):
    d, pos, frc = data
    com = reference.open_reference(cfg(d, mapping=dict(HEAVY, center="mass")), units.REAL).map([1])
    u = MDA.Universe(str(d / "ethanol.pdb"))
    masses = u.atoms.masses
    g = [1, 0, 2, 3]
    np.testing.assert_allclose(com.positions[0, 0], 0.1 * masses[g] @ pos[1, g] / masses[g].sum(), atol=2e-6)
    two = {"beads": {"C": "name C1 C2", "O": "name O HO"}, "per": "heavy_atom"}
    ref = reference.open_reference(cfg(d, mapping=two), units.REAL)
    assert ref.bead_type_names == ("C",) * 4 + ("O",) * 2              # by type, then by heavy atom
    m = ref.map([2])
    np.testing.assert_allclose(m.forces[0, 4], 10.0 * frc[2, [8, 7]].sum(axis=0), rtol=1e-5, atol=1e-3)


def test_hydrogens_by_element_or_by_name():
    u = _universe(elements=True)
    u.atoms[1].element = "C"
    np.testing.assert_array_equal(mapping._is_hydrogen(u.atoms)[:NA], [e == "H" for _, e in ATOMS])
    no_elements = _universe(elements=False)
    np.testing.assert_array_equal(mapping._is_hydrogen(no_elements.atoms)[:NA], [e == "H" for _, e in ATOMS])
    blank = _universe(elements=True)
    blank.atoms[0].element = ""      # a blank element: its name decides
    assert mapping._is_hydrogen(blank.atoms)[0]


def test_periodic_heavy_atom_map_still_wraps(tmp_path):
    pos, frc = molecule_frames()
    write_files(tmp_path, pos, frc, box=30.0)
    m = reference.open_reference(cfg(tmp_path, open=False), units.REAL, box=3.0).map([0])
    x, _ = _expected(pos, frc)
    np.testing.assert_allclose(m.positions[0], 0.1 * (x[0] - 30.0 * np.floor(x[0] / 30.0)), atol=3e-6)


def test_extxyz_without_cell_reads_in_open_space(tmp_path):
    pos, frc = molecule_frames()
    frames = []
    for x, f in zip(pos, frc):
        a = Atoms("".join(e for _, e in ATOMS) * N_MOL, positions=x, pbc=False)
        a.calc = SinglePointCalculator(a, forces=f / units.ENERGY_TO_KJ_MOL["eV"])
        frames.append(a)
    ase_write(tmp_path / "m.extxyz", frames, format="extxyz")
    oxygens = {"beads": {"O": "name O"}, "per": "atom"}
    c = {"file": str(tmp_path / "m.extxyz"), "mapping": oxygens, "open": True}
    m = reference.open_reference(c, units.REAL).map([0, 4])
    np.testing.assert_allclose(m.positions, 0.1 * pos[[0, 4]][:, [8, 17]], atol=1e-9)
    with pytest.raises(UserError, match="reference.open=true"):
        reference.open_reference(dict(c, open=False), units.REAL).map([0])


@pytest.mark.parametrize("change, needles", [
    pytest.param({"open": False}, ["no periodic box", "reference.open=true"], id="boxless-needs-open"),
    pytest.param({"open": "yes"}, ["reference.open must be true or false"], id="open-not-bool"),
    pytest.param({"topology": "ethanol.gro"}, ["per=heavy_atom", "no bonds"], id="heavy-atom-without-bonds"),
    pytest.param({"mapping": {"beads": {"H": "name H*"}, "per": "heavy_atom"}}, ["only hydrogens"], id="only-h"),
    pytest.param({"mapping": {"beads": {"A": "name C1", "B": "name C1 C2"}, "per": "heavy_atom"}},
                 ["more than one bead", "A, B"], id="atom-in-two-beads"),
    pytest.param({"mapping": dict(HEAVY, site="name C*")}, ["reference.mapping.site", "matches"], id="site-of-oxygen"),
])
def test_bad_molecule_reference_is_a_user_error(data, change, needles):
    d, _, _ = data
    c = cfg(d)
    c.update({k: str(d / v) if k == "topology" else v for k, v in change.items()})
    with pytest.raises(UserError) as exc:
        reference.open_reference(c, units.REAL).map([0])
    for needle in needles:
        assert needle in str(exc.value), str(exc.value)
    assert exc.value.fix


# -- Ramachandran basins ------------------------------------------------------------------------
def test_basins_of_known_points_and_populations_sum_to_one():
    pts = {"alpha_R": (-70, -40), "C5": (-150, 160), "C7eq": (-80, 75), "alpha_L": (60, 45), "C7ax": (70, -70),
           "other": (70, 170)}
    phi, psi = np.radians([p[0] for p in pts.values()]), np.radians([p[1] for p in pts.values()])
    assert [ramachandran.NAMES[k] for k in ramachandran.assign(phi, psi)] == list(pts)
    # the same points shifted by 2π, and ψ = 180° (= −180°), belong to the same basins
    np.testing.assert_array_equal(ramachandran.assign(phi + 2 * np.pi, psi - 2 * np.pi), ramachandran.assign(phi, psi))
    assert ramachandran.NAMES[int(ramachandran.assign(np.radians(-150.0), np.pi))] == "C5"
    rng = np.random.default_rng(0)
    pop = ramachandran.populations(rng.uniform(-np.pi, np.pi, 5000), rng.uniform(-np.pi, np.pi, 5000))
    assert list(pop) == list(ramachandran.NAMES) and sum(pop.values()) == pytest.approx(1.0)
    assert pop["alpha_R"] == pytest.approx(0.5 * 170 / 360, abs=0.02)      # its area fraction on a uniform map


def test_phi_psi_indices_of_heavy_atoms_and_all_atoms():
    heavy = ["CH3", "C", "O", "N", "CA", "CB", "C", "O", "N", "CH3"]
    assert ramachandran.phi_psi_indices(heavy) == ([1, 3, 4, 6], [3, 4, 6, 8])
    all_atoms = ["CH3", "H1", "H2", "H3", "C", "O", "N", "H", "CA", "HA", "CB", "HB1", "HB2", "HB3", "C", "O", "N",
                 "H", "CH3", "H1", "H2", "H3"]
    assert ramachandran.phi_psi_indices(all_atoms) == ([4, 6, 8, 14], [6, 8, 14, 16])
    with pytest.raises(ValueError, match="CA"):
        ramachandran.phi_psi_indices(["N", "C"])
