"""`difftre targets` (difftre_cli/trajectory_targets.py) on a LAMMPS-written LJ trajectory.

* the RDF it writes is the project's learned-RDF definition of the same frames, exactly (the
  training engine on the frames read at once, against the command's batched pass);
* it agrees with LAMMPS's own `compute rdf` of the same frames, once LAMMPS's histogram gets the
  RDF's Gaussian kernel (targets' smoothing), within the statistical error;
* a mixture mapped by atom type: each partial RDF (A-A, A-B, B-B) is LAMMPS's partial one (a
  swap of the species would move the first peaks by ~0.2 σ);
* the files: three columns with a provenance header, targets.yaml entries a training config
  reads back; potential-dependent observables are skipped and named; bad input is a UserError.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import ase.io
import jax
import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir

from difftre_cli import assemble, reference
from difftre_cli import targets as targets_mod
from difftre_cli.config_files import CONFIG_DIR
from difftre_cli.errors import UserError
from difftre_cli.sampler import Trajectory
from difftre_cli.trajectory_targets import compute, parse_args, write

pytestmark = pytest.mark.skipif(shutil.which("lmp") is None, reason="LAMMPS (lmp) is not installed; .ci/run installs it")

N, EVERY, STEPS = 256, 50, 10000
LAMMPS = f"""units lj
atom_style atomic
lattice fcc 0.5
region box block 0 4 0 4 0 4
create_box 1 box
create_atoms 1 box
mass 1 1.0
velocity all create 1.5 87287 loop geom
pair_style lj/cut 2.5
pair_modify shift yes
pair_coeff 1 1 1.0 1.0 2.5
neighbor 0.6 bin
comm_modify cutoff 3.7
fix 1 all nvt temp 1.5 1.5 0.5
timestep 0.005
run 2000
reset_timestep 0
compute rdf all rdf 150 cutoff 3.0
fix rdf all ave/time {EVERY} {STEPS // EVERY} {STEPS} c_rdf[*] file rdf.lammps mode vector
dump 1 all custom {EVERY} traj.lammpstrj id type x y z
dump_modify 1 sort id
run {STEPS}
"""


@pytest.fixture(scope="module")
def lammps_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lmp")
    (d / "in.lj").write_text(LAMMPS)
    subprocess.run(["lmp", "-in", "in.lj", "-log", "none", "-screen", "none"], cwd=d, check=True, timeout=600)
    return d


def _cfg(d: Path, *extra):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="train", overrides=[
            "config=lj", f"system.n_particles={N}", "reference=lammps_dump", f"reference.file={d / 'traj.lammpstrj'}",
            "reference.units=lj", "reference.start=1", "~reference.mapping.beads",
            "+reference.mapping.beads={X: 'type 1'}", *extra])


@pytest.fixture(scope="module")
def computed(lammps_run):
    cfg = _cfg(lammps_run, "observables=[rdf,pressure]")
    results, meta = compute(cfg, blocks=10)
    return cfg, results, meta


def test_rdf_is_the_training_definition_of_the_same_frames(computed, lammps_run):
    cfg, results, meta = computed
    assert meta["info"]["frames"] == STEPS // EVERY and meta["info"]["skipped"] == ["pressure"]
    c = assemble.build(_cfg(lammps_run))
    ref = reference.open_reference(cfg.reference, c.system.units, box=c.system.box_size, n_particles=N)
    pos = np.asarray(ref.load("train").positions, np.float32)
    feats = c.engine.featurize(Trajectory(pos, np.zeros(len(pos), np.float32), None, None))
    params = c.potential.init(jax.random.PRNGKey(0))
    own = np.asarray(c.engine.snapshot_observables_jit(params, feats)["rdf"])
    grid, mean, err = results["rdf"]
    np.testing.assert_allclose(grid, np.asarray(c.observables["rdf"].grid))
    np.testing.assert_allclose(mean, own.mean(0), rtol=1e-6, atol=1e-6)
    assert np.all(err >= 0) and err.max() > 0


def test_rdf_agrees_with_lammps_compute_rdf_given_the_same_kernel(computed, lammps_run):
    cfg, results, _ = computed
    grid, mean, err = results["rdf"]
    rows = np.loadtxt(lammps_run / "rdf.lammps", comments="#", skiprows=4)   # after the "step nrows" line
    r_lmp, g_lmp = rows[:, 1], rows[:, 2]
    rdf = assemble.build(cfg).observables["rdf"]
    xs, gs = rdf.smooth_target(r_lmp, g_lmp, rdf.sigma)
    g_lmp_smooth = np.interp(grid, xs, gs)
    inside = (grid > 0.8) & (grid < 2.9)
    diff = np.abs(mean - g_lmp_smooth)[inside]
    z = diff / err[inside]
    print(f"max |g_difftre - g_LAMMPS*kernel| = {diff.max():.4f} on (0.8, 2.9) σ; max standard error "
          f"{err.max():.4f}; max z {z.max():.2f}, rms z {np.sqrt(np.mean(z ** 2)):.2f}")
    # the same frames: what differs is LAMMPS's 0.02 σ bins (a kernel on a histogram instead of on
    # the pair distances: ~Δ² g''/24, up to ~0.01 at the first peak), within the statistical error
    assert np.all(diff < 3 * err[inside] + 0.01) and np.sqrt(np.mean(z ** 2)) < 2.0


def test_files_have_provenance_and_are_read_back_as_targets(computed, tmp_path):
    cfg, results, meta = computed
    entries = write(results, meta, tmp_path / "out")
    assert list(entries) == ["rdf"] and entries["rdf"]["x_unit"] == "sigma"
    text = (tmp_path / "out" / "rdf.txt").read_text()
    assert "traj.lammpstrj" in text and "frames: 200" in text and "columns: x, mean, standard error" in text
    listed = yaml.safe_load((tmp_path / "out" / "targets.yaml").read_text())
    assert "pressure" in (tmp_path / "out" / "targets.yaml").read_text().splitlines()[0]
    c = assemble.build(cfg)
    tgt = targets_mod.build({"rdf": listed["rdf"]}, {"rdf": c.observables["rdf"]}, c.system.units)["rdf"]
    np.testing.assert_allclose(tgt.value, results["rdf"][1], rtol=1e-8, atol=1e-9)


def test_pressure_is_read_where_the_trajectory_has_one(lj_reference, tmp_path):
    """The LJ reference carries each frame's pressure (as extended-XYZ stress): `targets` averages
    it as read (block standard error) and writes a value target in the run's unit."""
    file, n = lj_reference
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=["config=lj_fm", f"system.n_particles={n}",
                                                      f"reference.file={file}", "observables=[rdf,pressure]"])
    results, meta = compute(cfg, blocks=5)
    frames = list(ase.io.iread(str(file), index=":"))
    p = np.array([-np.trace(a.get_stress(voigt=False)) / 3 for a in frames])
    _, mean, err = results["pressure"]
    assert float(mean) == pytest.approx(p.mean(), rel=1e-10)
    assert float(err) == pytest.approx(np.array([b.mean() for b in np.array_split(p, 5)]).std(ddof=1) / 5 ** 0.5)
    entries = write(results, meta, tmp_path / "out")
    assert entries["pressure"] == {"value": pytest.approx(p.mean()), "observable": "pressure", "unit": "epsilon/sigma^3"}
    c = assemble.build(cfg)
    tgt = targets_mod.build({"pressure": entries["pressure"]}, {"pressure": c.observables["pressure"]},
                            c.system.units)["pressure"]
    assert float(tgt.value) == pytest.approx(p.mean())


def test_bad_targets_input_is_a_user_error(lammps_run):
    with pytest.raises(UserError, match="blocks=1"):
        parse_args(["blocks=1"])
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        no_reference = compose(config_name="train", overrides=["config=lj"])
    with pytest.raises(UserError, match="reference is none"):
        compute(no_reference)
    with pytest.raises(UserError, match="positions alone"):
        compute(_cfg(lammps_run, "observables=[pressure]"))


MIXTURE = """units lj
atom_style atomic
lattice fcc 0.7
region box block 0 5 0 5 0 5
create_box 2 box
create_atoms 1 box
set type 1 type/ratio 2 0.5 12345
mass * 1.0
velocity all create 1.0 87287 loop geom
pair_style lj/cut 2.5
pair_modify shift yes
pair_coeff 1 1 1.0 0.9 2.5
pair_coeff 1 2 1.0 1.0 2.5
pair_coeff 2 2 1.0 1.1 2.5
neighbor 0.6 bin
comm_modify cutoff 3.7
fix 1 all nvt temp 1.0 1.0 0.5
timestep 0.005
run 2000
reset_timestep 0
compute rdf all rdf 150 1 1 1 2 2 2 cutoff 3.0
fix rdf all ave/time 50 80 4000 c_rdf[*] file rdf.lammps mode vector
dump 1 all custom 50 traj.lammpstrj id type x y z
dump_modify 1 sort id
run 4000
"""


def test_partial_rdfs_of_a_mixture_follow_the_bead_types(tmp_path):
    """config=lj_mixture's partial RDFs (A-A, A-B, B-B) from a LAMMPS A/B mixture mapped by atom
    type: each is LAMMPS's partial `compute rdf` of the same frames given the kernel."""
    (tmp_path / "in.mix").write_text(MIXTURE)
    subprocess.run(["lmp", "-in", "in.mix", "-log", "none", "-screen", "none"], cwd=tmp_path, check=True, timeout=600)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=[
            "config=lj_mixture", "reference=lammps_dump", f"reference.file={tmp_path / 'traj.lammpstrj'}",
            "reference.units=lj", "reference.start=1", "~reference.mapping.beads",
            "+reference.mapping.beads={A: 'type 1', B: 'type 2'}"])
    results, _ = compute(cfg, blocks=8)
    rows = np.loadtxt(tmp_path / "rdf.lammps", comments="#", skiprows=4)   # r, gAA, cAA, gAB, cAB, gBB, cBB
    rdf = assemble.build_states(cfg)[0][1].observables
    for name, col in (("rdf_AA", 2), ("rdf_AB", 4), ("rdf_BB", 6)):
        grid, mean, err = results[name]
        xs, gs = rdf[name].smooth_target(rows[:, 1], rows[:, col], rdf[name].sigma)
        diff = np.abs(mean - np.interp(grid, xs, gs))[(grid > 0.7) & (grid < 2.9)]
        print(f"{name}: max |Δg| {diff.max():.4f}")
        assert diff.max() < 0.03, name   # the same frames; 0.02 σ bins of 1/4 of the pairs each


def test_one_species_takes_any_bead_name(lammps_run, computed):
    """reference=lammps_dump's own mapping names its bead O, config=lj's species is X: with one
    species on both sides the name is free, and the RDF is the same."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=[
            "config=lj", f"system.n_particles={N}", "reference=lammps_dump",
            f"reference.file={lammps_run / 'traj.lammpstrj'}", "reference.units=lj", "reference.start=1"])
    results, _ = compute(cfg, blocks=10)
    np.testing.assert_allclose(results["rdf"][1], computed[1]["rdf"][1], rtol=1e-6, atol=1e-7)
