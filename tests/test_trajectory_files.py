"""A run's trajectories open where users look (store.py, topology.py, export/trajectories.py):

* H5MD files ``trajectories/ref_XXXXX.h5md`` plus ``topology.pdb`` open in MDAnalysis with the
  README's one-liners, executed as written there: real units (converted to Å, species names
  from the config) and reduced units (a trained config=tiny run, positions in σ);
* runs written before (``.h5`` files, no topology) are still read, linked and exported;
* ``difftre export format=xyz|dcd|pdb|xtc|trr|lammpstrj`` writes every trajectory in a form MDAnalysis
  reads back with the same positions, box and (dump) types; errors are user errors.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import MDAnalysis as mda
import numpy as np
import pytest

from difftre_cli import units
from difftre_cli.errors import UserError
from difftre_cli.export.trajectories import export_trajectories
from difftre_cli.sampler import Trajectory
from difftre_cli.store import RunStore

README = Path(__file__).resolve().parent.parent / "README.md"
S, N, BOX = 5, 30, 3.0
SPECIES = np.array([0] * 20 + [1] * 10, np.int32)


def readme_block(marker: str) -> str:
    """The README's ```python block that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def run_readme_block(marker: str, run: Path) -> dict:
    """Execute the README block with its example run directory replaced by ``run``."""
    code = re.sub(r'^run = .*$', f"run = {str(run)!r}", readme_block(marker), flags=re.M)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    return ns


@pytest.fixture
def real_run(tmp_path):
    """A real-unit run directory (nm, ps) with two species, written by the run store."""
    rng = np.random.default_rng(1)
    pos = rng.uniform(0, BOX, (S, N, 3)).astype(np.float32)
    traj = Trajectory(pos, rng.normal(size=S), np.full(S, 2.47), 100 * np.arange(1, S + 1))
    store = RunStore(tmp_path / "run")
    for k in range(2):
        store.write_trajectory(k, traj, BOX, 0.002, units.get("real"), species=SPECIES, species_names=("OW", "Na"))
    return store.dir, traj


def test_readme_one_liner_opens_a_real_unit_run(real_run):
    run, traj = real_run
    u = run_readme_block("ref_00000.h5md\")\n", run)["u"]
    assert u.atoms.n_atoms == N and u.trajectory.n_frames == S
    assert list(u.atoms.names) == ["OW"] * 20 + ["Na"] * 10 and list(u.residues.resnames) == list(u.atoms.names)
    for i, ts in enumerate(u.trajectory):   # nm -> Å
        np.testing.assert_allclose(ts.positions, traj.positions[i] * 10.0, rtol=1e-6)
        np.testing.assert_allclose(ts.dimensions, [BOX * 10.0] * 3 + [90.0] * 3, rtol=1e-6)
        assert ts.time == pytest.approx(traj.step[i] * 0.002)
    with h5py.File(run / "trajectories" / "ref_00000.h5md", "r") as f:
        np.testing.assert_array_equal(f["particles/all/species"][()], SPECIES)
        assert f["particles/all/position/value"].attrs["unit"] == "nm"


def test_readme_one_liner_opens_a_trained_reduced_unit_run(tiny_run):
    _, run, proc = tiny_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    store = RunStore(run)
    assert [p.suffix for p in store.trajectory_files()] == [".h5md"] * len(store.trajectory_files())
    u = run_readme_block("convert_units=False", run)["u"]
    first = store.read_trajectory(0)
    assert u.atoms.n_atoms == first.positions.shape[1] and u.trajectory.n_frames == len(first.step)
    assert set(u.atoms.names) == {"X"}
    for i, ts in enumerate(u.trajectory):   # σ, not converted
        np.testing.assert_allclose(ts.positions, first.positions[i], rtol=1e-6)
        assert ts.data["step"] == first.step[i]


def test_an_older_run_with_h5_files_is_read_linked_and_exported(real_run, tmp_path):
    run, traj = real_run
    for p in (run / "trajectories").glob("*.h5md"):
        p.rename(p.with_suffix(".h5"))
    (run / "topology.pdb").unlink()
    store = RunStore(run)
    assert [p.name for p in store.trajectory_files()] == ["ref_00000.h5", "ref_00001.h5"]
    np.testing.assert_array_equal(store.read_trajectory(1).positions, traj.positions)
    store.write_checkpoint(update=1, trees={}, attrs={}, metrics=[], n_trajectories=2, config_yaml="", versions={})
    with h5py.File(store.checkpoint_path, "r") as f:   # the external links follow the old names
        np.testing.assert_array_equal(f["trajectories/ref_00001/particles/all/position/value"][()], traj.positions)
    m = export_trajectories(run, "dcd", tmp_path / "dcd")   # a format MDAnalysis writes with the topology
    assert m["files"] == ["ref_00000.dcd", "ref_00001.dcd"] and m["frames"] == 2 * S
    assert (run / "topology.pdb").is_file()   # rebuilt from the first frame, species kept
    u = mda.Universe(str(run / "topology.pdb"))
    assert list(u.atoms.names) == ["OW"] * 20 + ["Na"] * 10


@pytest.mark.parametrize("fmt", ["xyz", "dcd", "pdb", "xtc", "trr"])
def test_exported_trajectories_read_back_in_mdanalysis(real_run, tmp_path, fmt):
    run, traj = real_run
    m = export_trajectories(run, fmt, tmp_path / fmt)
    assert m["files"] == [f"ref_00000.{fmt}", f"ref_00001.{fmt}"] and "Angstrom" in m["unit_note"]
    path = tmp_path / fmt / f"ref_00001.{fmt}"
    u = mda.Universe(str(path)) if fmt in ("xyz", "pdb") else mda.Universe(str(run / "topology.pdb"), str(path))
    assert u.trajectory.n_frames == S and u.atoms.n_atoms == N
    tol = {"xyz": 1e-4, "pdb": 2e-3, "xtc": 6e-3}.get(fmt, 1e-5)   # the formats' own precision (Å)
    for i, ts in enumerate(u.trajectory):
        np.testing.assert_allclose(ts.positions, traj.positions[i] * 10.0, atol=tol)
        if fmt not in ("xyz", "pdb"):   # MDAnalysis reads a multi-model PDB's one CRYST1 for no model
            np.testing.assert_allclose(ts.dimensions[:3], [BOX * 10.0] * 3, rtol=1e-5)
    if fmt == "xyz":   # extended XYZ: every frame's comment line has the periodic cell (OVITO, ase read it)
        comments = path.read_text().splitlines()[1::N + 2]
        assert len(comments) == S and all(f'Lattice="{BOX * 10.0:.8g} 0 0 0' in c and 'pbc="T T T"' in c
                                          for c in comments)


@pytest.mark.parametrize("style, scale", [(None, 10.0), ("metal", 10.0)])
def test_lammps_dump_reads_back_with_types_and_box(real_run, tmp_path, style, scale):
    run, traj = real_run
    m = export_trajectories(run, "lammpstrj", tmp_path / "dump", lammps_units=style)
    path = tmp_path / "dump" / "ref_00000.lammpstrj"
    assert m["files"] == ["ref_00000.lammpstrj", "ref_00001.lammpstrj"]
    u = mda.Universe(str(path), format="LAMMPSDUMP")   # MDAnalysis's dump reader: lengths in Å
    assert u.trajectory.n_frames == S
    np.testing.assert_array_equal(u.atoms.types.astype(int), SPECIES + 1)
    order = np.argsort(u.atoms.ids)
    for i, ts in enumerate(u.trajectory):
        np.testing.assert_allclose(ts.positions[order], traj.positions[i] * scale, atol=2e-5)
        np.testing.assert_allclose(ts.dimensions[:3], [BOX * scale] * 3, rtol=1e-6)
        assert ts.data["step"] == traj.step[i]


def test_export_without_trajectories_or_with_a_bad_unit_style_is_a_user_error(real_run, tmp_path):
    run, _ = real_run
    with pytest.raises(UserError, match="no reference trajectories") as exc:
        export_trajectories(tmp_path / "empty", "xyz")
    assert exc.value.fix
    with pytest.raises(UserError, match="units=nano"):
        export_trajectories(run, "lammpstrj", tmp_path / "d", lammps_units="nano")
    assert not (tmp_path / "d").exists()


def test_export_trajectory_through_the_cli(tiny_run, tmp_path):
    """`difftre export run=RUN format=dcd` in-process on a copy of the trained tiny run."""
    from difftre_cli import cli
    _, run, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    assert cli.main(["export", f"run={copy}", "format=dcd"]) == 0
    store = RunStore(copy)
    out = copy / "export" / "dcd"
    files = sorted(out.glob("*.dcd"))
    assert [p.stem for p in files] == [p.stem for p in store.trajectory_files()]
    u = mda.Universe(str(copy / "topology.pdb"), str(files[-1]))
    last = store.read_trajectory(len(files) - 1)
    np.testing.assert_allclose(u.trajectory[-1].positions, last.positions[-1], rtol=1e-5, atol=1e-5)
