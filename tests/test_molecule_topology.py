"""Molecular topologies (difftre_cli/molecule/topology.py): generated angles and dihedrals,
exclusions by graph distance, the YAML format, MDAnalysis files (PDB with CONECT, GROMACS .itp)
written here, an all-atom topology mapped onto beads, and every bad input as a UserError."""
from __future__ import annotations

import warnings
from itertools import combinations

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from difftre_cli.checks import PROJECT_ROOT
from difftre_cli.errors import UserError
from difftre_cli.molecule import topology as T

CHAIN5 = [(0, 1), (1, 2), (2, 3), (3, 4)]
# isobutane-like centre 1 with a tail: 0-1, 1-2, 1-3, 3-4
BRANCHED = [(0, 1), (1, 2), (1, 3), (3, 4)]


def _top(bonds, n, exclusions=2):
    return T.Topology(tuple(map(str, range(n))), ("A",) * n, T.canonical(bonds, "bonds"),
                      T.generate_angles(bonds, n), T.generate_dihedrals(bonds, n), exclusions)


def _pairs(rows):
    return {tuple(map(int, r)) for r in rows}


def _write_yaml(tmp_path, data, name="mol.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _cfg(path, **kw):
    return {"file": str(path), **kw}


# ---------------------------------------------------------------- generation and exclusions

def test_generated_angles_and_dihedrals_of_chains_and_branches():
    for n in range(2, 8):   # butane-like chains: n − 2 angles, n − 3 dihedrals
        bonds = [(i, i + 1) for i in range(n - 1)]
        assert len(T.generate_angles(bonds, n)) == max(n - 2, 0)
        assert len(T.generate_dihedrals(bonds, n)) == max(n - 3, 0)
    assert _pairs(T.generate_dihedrals([(0, 1), (1, 2), (2, 3)], 4)) == {(0, 1, 2, 3)}
    assert _pairs(T.generate_angles([(1, 0), (2, 1), (1, 3)], 4)) == {(0, 1, 2), (0, 1, 3), (2, 1, 3)}
    star = [(0, k) for k in range(1, 5)]   # neopentane-like: 6 angles, no dihedral
    assert len(T.generate_angles(star, 5)) == 6 and len(T.generate_dihedrals(star, 5)) == 0
    d = T.generate_dihedrals(BRANCHED, 5)
    assert _pairs(d) == {(0, 1, 3, 4), (2, 1, 3, 4)}
    assert (d[:, 0] < d[:, 3]).all()
    ring = [(0, 1), (1, 2), (2, 0)]   # a 3-ring has angles but no proper dihedral
    assert len(T.generate_angles(ring, 3)) == 3 and len(T.generate_dihedrals(ring, 3)) == 0


@pytest.mark.parametrize("bonds, expected", [
    (CHAIN5, {1: {(0, 1), (1, 2), (2, 3), (3, 4)}, 2: {(0, 2), (1, 3), (2, 4)}, 3: {(0, 3), (1, 4)}}),
    (BRANCHED, {1: set(BRANCHED), 2: {(0, 2), (0, 3), (2, 3), (1, 4)}, 3: {(0, 4), (2, 4)}}),
])
def test_exclusions_remove_exactly_the_listed_pairs(bonds, expected):
    top = _top(bonds, 5)
    everything = set(combinations(range(5), 2))
    want = set()
    assert len(top.excluded_pairs(0)) == 0
    for n_bonds in (1, 2, 3):
        want |= expected[n_bonds]
        ex, nb = _pairs(top.excluded_pairs(n_bonds)), _pairs(top.nonbonded_pairs(n_bonds))
        assert ex == want and len(top.excluded_pairs(n_bonds)) == len(want)
        assert nb == everything - want and not (nb & ex) and nb | ex == everything
        assert all(i < j for i, j in ex | nb)
    assert _pairs(top.nonbonded_pairs(0)) == everything


def test_types_species_and_canonical_order():
    top = T.Topology(("a", "b", "c"), ("X", "Y", "X"), [[1, 0], [1, 2]], [[2, 1, 0]], np.zeros((0, 4)))
    assert top.type_names == ("X", "Y") and top.species.tolist() == [0, 1, 0] and top.n_beads == 3
    assert T.canonical(top.bonds, "bonds").tolist() == [[0, 1], [1, 2]]
    assert T.canonical(top.angles, "angles").tolist() == [[0, 1, 2]]


# ---------------------------------------------------------------- reading

def test_alanine_dipeptide_config_reads_10_beads():
    cfg = OmegaConf.load(PROJECT_ROOT / "configs" / "topology" / "alanine_dipeptide.yaml")
    top = T.read(cfg)
    assert top.n_beads == 10 and len(top.bonds) == 9 and top.exclusions == 2
    assert top.type_names == ("CH3", "C", "O", "N", "CA", "CB")
    assert len(top.angles) == 11 and len(top.dihedrals) == 10
    phi, psi = (1, 3, 4, 6), (3, 4, 6, 8)   # C-N-CA-C and N-CA-C-N
    assert {phi, psi} <= _pairs(top.dihedrals)
    T.check_count(top, 10, "the reference trajectory maps to")
    with pytest.raises(UserError, match="topology has 10 beads but the reference trajectory maps to 12") as e:
        T.check_count(top, 12, "the reference trajectory maps to")
    assert e.value.fix
    assert OmegaConf.load(PROJECT_ROOT / "configs" / "topology" / "none.yaml").topology is None
    assert T.read(None) is None


def test_yaml_format_names_indices_and_lists(tmp_path):
    data = {"beads": [{"name": "A", "type": "P"}, {"name": "B", "type": "Q"}, "C", {"name": "D", "type": "P"}],
            "bonds": [["A", "B"], [2, 1], ["C", 3]], "angles": [["A", "B", "C"]],
            "dihedrals": [[3, 2, 1, 0]]}
    path = _write_yaml(tmp_path, data)
    top = T.read(OmegaConf.create(_cfg(path, angles="file", dihedrals="file", exclusions=1)))
    assert top.names == ("A", "B", "C", "D") and top.types == ("P", "Q", "C", "P")
    assert top.bonds.tolist() == [[0, 1], [1, 2], [2, 3]] and top.exclusions == 1
    assert top.angles.tolist() == [[0, 1, 2]] and top.dihedrals.tolist() == [[0, 1, 2, 3]]
    auto = T.read({"file": str(path)})
    assert len(auto.angles) == 2 and len(auto.dihedrals) == 1 and auto.exclusions == 2
    none = T.read({"file": str(path), "angles": "none", "dihedrals": "none"})
    assert none.angles.shape == (0, 3) and none.dihedrals.shape == (0, 4)


def _mda():
    import MDAnalysis
    return MDAnalysis


def _ethane_pdb(tmp_path):
    """An ethane-like molecule with hydrogens written by MDAnalysis as PDB with CONECT records:
    C1 (0), C2 (1), H on C1 (2-4), H on C2 (5-7)."""
    u = _mda().Universe.empty(8, trajectory=True)
    u.add_TopologyAttr("names", ["C1", "C2", "H11", "H12", "H13", "H21", "H22", "H23"])
    u.add_TopologyAttr("types", ["C", "C"] + ["H"] * 6)
    u.add_TopologyAttr("resnames", ["ETH"])
    u.add_bonds([(0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (1, 6), (1, 7)])
    u.atoms.positions = np.random.default_rng(0).uniform(0, 3, (8, 3))
    path = tmp_path / "ethane.pdb"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u.atoms.write(str(path))
    return path


def test_pdb_with_conect_direct_and_mapped_onto_beads(tmp_path):
    path = _ethane_pdb(tmp_path)
    atoms = T.read({"file": str(path)}, n_atoms=8)
    assert atoms.n_beads == 8 and len(atoms.bonds) == 7 and len(atoms.angles) == 12
    assert len(atoms.dihedrals) == 9   # 3 × 3 H-C-C-H
    a2b = np.array([0, 1, 0, 0, 0, 1, 1, -1])   # the last hydrogen in no bead
    beads = T.read({"file": str(path)}, atom_to_bead=a2b, bead_types=["CH3", "CH3"])
    assert beads.names == ("C1", "C2") and beads.types == ("CH3", "CH3") and beads.bonds.tolist() == [[0, 1]]
    assert len(beads.angles) == 0 and len(beads.dihedrals) == 0
    first_atom = T.read({"file": str(path)}, atom_to_bead=np.array([0, 1, 0, 0, 0, 1, 1, 1]))
    assert first_atom.types == ("C", "C")
    # a file of the beads themselves is used as it is, whatever the mapping of the atoms
    two = _write_yaml(tmp_path, {"beads": ["X", "Y"], "bonds": [["X", "Y"]]})
    assert T.read({"file": str(two)}, atom_to_bead=a2b).names == ("X", "Y")

    class Map:   # the fields of reference/mapping.CGMap that atom_to_bead_of reads
        atoms, bead_of_atom, bead_types, type_names = np.array([0, 2, 1, 5]), np.array([0, 0, 1, 1]), [1, 0], ("M", "E")
    a2b, types = T.atom_to_bead_of(Map, 8)
    assert a2b.tolist() == [0, 1, 0, -1, -1, 1, -1, -1] and types == ["E", "M"]


ITP = """
[ moleculetype ]
BUT 3
[ atoms ]
1 CT 1 BUT C1 1 0.0 15.0
2 CM 1 BUT C2 1 0.0 14.0
3 CM 1 BUT C3 1 0.0 14.0
4 CT 1 BUT C4 1 0.0 15.0
[ bonds ]
1 2 1
2 3 1
3 4 1
[ angles ]
1 2 3 1
{angle}
[ dihedrals ]
1 2 3 4 9
"""


def test_gromacs_itp_atoms_bonds_angles_dihedrals(tmp_path):
    path = tmp_path / "butane.itp"
    path.write_text(ITP.format(angle=""))
    top = T.read({"file": str(path), "angles": "file", "dihedrals": "file"})
    assert top.names == ("C1", "C2", "C3", "C4") and top.types == ("CT", "CM", "CM", "CT")
    assert top.bonds.tolist() == [[0, 1], [1, 2], [2, 3]]
    assert top.angles.tolist() == [[0, 1, 2]] and top.dihedrals.tolist() == [[0, 1, 2, 3]]
    auto = T.read({"file": str(path)})
    assert len(auto.angles) == 2 and len(auto.dihedrals) == 1
    top_file = tmp_path / "butane.top"   # a GROMACS .top (MDAnalysis's TOP is AMBER's) is read as ITP
    top_file.write_text(ITP.format(angle=""))
    assert T.read({"file": str(top_file)}).n_beads == 4
    path.write_text(ITP.format(angle="1 2 4 1"))
    with pytest.raises(UserError, match=r"angle C1\(0\)-C2\(1\)-C4\(3\) is not connected by bonds: no bond between "
                                         r"C2\(1\) and C4\(3\)"):
        T.read({"file": str(path), "angles": "file"})


# ---------------------------------------------------------------- bad input

GOOD = {"beads": ["A", "B", "C", "D"], "bonds": [["A", "B"], ["B", "C"], ["C", "D"]]}


@pytest.mark.parametrize("data, cfg, pattern", [
    ({**GOOD, "bonds": [["A", "E"]]}, {}, r"bonds\[0\]: unknown bead 'E'"),
    ({**GOOD, "bonds": [[0, 4]]}, {}, r"bonds\[0\]: bead index 4 out of range \(there are 4 beads"),
    ({**GOOD, "bonds": [["A", "A"]]}, {}, r"bond A\(0\)-A\(0\) joins a bead to itself"),
    ({**GOOD, "bonds": [[0, 1], [1, 0]]}, {}, r"bond A\(0\)-B\(1\) is listed twice"),
    ({**GOOD, "angles": [[0, 1, 0]]}, {"angles": "file"}, r"angle A\(0\)-B\(1\)-A\(0\) lists a bead twice"),
    ({**GOOD, "dihedrals": [[0, 1, 2, 1]]}, {"dihedrals": "file"}, r"dihedral .* lists a bead twice"),
    ({**GOOD, "angles": [[0, 1, 2], [2, 1, 0]]}, {"angles": "file"}, r"angle A\(0\)-B\(1\)-C\(2\) is listed twice"),
    ({"beads": ["A", "A", "C"], "bonds": [["A", "C"]]}, {}, r"bead name 'A' is used by beads 0, 1"),
    ({**GOOD, "angles": [[0, 1, 3]]}, {"angles": "file"},
     r"angle A\(0\)-B\(1\)-D\(3\) is not connected by bonds: no bond between B\(1\) and D\(3\)"),
    ({**GOOD, "dihedrals": [[0, 1, 3, 2]]}, {"dihedrals": "file"},
     r"dihedral A\(0\)-B\(1\)-D\(3\)-C\(2\) is not connected by bonds"),
    (GOOD, {"angles": "file"}, r"topology.angles=file, but .* lists no angles"),
    ({**GOOD, "impropers": []}, {}, r"unknown key\(s\) impropers"),
    ({"beads": ["A", "B"]}, {}, r"has no bonds"),
    ({**GOOD, "bonds": [[0, 1, 2]]}, {}, r"bonds\[0\] must list 2 beads"),
    ({"bonds": [[0, 1]]}, {}, r"'beads' must be a non-empty list"),
    ("beads: [A, B\n", {}, r"cannot read it as YAML"),
    (GOOD, {"exclusions": 4}, r"topology.exclusions must be an integer in \[0, 3\], got 4"),
    (GOOD, {"exclusions": -1}, r"topology.exclusions must be an integer in \[0, 3\]"),
    (GOOD, {"angles": "some"}, r"topology.angles: unknown angles setting 'some'"),
    (GOOD, {"bonds": []}, r"topology: unknown key\(s\) bonds"),
    (GOOD, {"format": "NOPE"}, r"topology.format: unknown topology format 'NOPE'"),
])
def test_bad_topology_is_a_user_error(tmp_path, data, cfg, pattern):
    path = _write_yaml(tmp_path, data)
    with pytest.raises(UserError, match=pattern) as e:
        T.read({"file": str(path), **cfg})
    assert e.value.fix


def test_bad_files_are_user_errors(tmp_path):
    cases = [({"file": str(tmp_path / "missing.yaml")}, "not found"),
             ({}, "topology.file is missing"),
             ({"file": str(tmp_path / "bad.psf")}, r"cannot read .*bad.psf as a topology"),
             ({"file": str(tmp_path / "bad.psf"), "format": "PDB"}, r"cannot read .*bad.psf as a topology"),
             ({"file": str(tmp_path / "plain.pdb")}, r"plain.pdb\) has no bonds")]
    (tmp_path / "bad.psf").write_text("this is not a PSF file\n")
    pdb = _ethane_pdb(tmp_path).read_text().splitlines(keepends=True)
    (tmp_path / "plain.pdb").write_text("".join(line for line in pdb if not line.startswith("CONECT")))
    for cfg, pattern in cases:
        with pytest.raises(UserError, match=pattern) as e:
            T.read(cfg)
        assert e.value.fix
    with pytest.raises(UserError, match="must be a group of keys"):
        T.read("molecule.yaml")
    path = tmp_path / "ethane.pdb"
    with pytest.raises(UserError, match=r"has 8 particles but the system has 10"):
        T.read({"file": str(path)}, n_atoms=10)
    with pytest.raises(UserError, match=r"has 8 particles, but the mapping has 9 atoms in 3 beads"):
        T.read({"file": str(path)}, atom_to_bead=np.array([0, 1, 2] * 3))
    with pytest.raises(UserError, match=r"topology.angles=file, but the file's angles are between atoms"):
        T.read({"file": str(path), "angles": "file"}, atom_to_bead=np.array([0, 0, 0, 0, 0, 1, 1, 1]))
