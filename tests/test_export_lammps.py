"""`difftre export format=lammps` checked by LAMMPS itself (Debian's `lmp`, installed by .ci/run).

The model is a short force-matching run on the LJ reference (N = 256, ρ = 0.5, kT = 1.5; see
test_force_matching.py); its exported table is run by LAMMPS:

* the table's rows are the model's u and −du/dr at those r to float32 precision;
* one configuration (`run 0`): LAMMPS's potential energy and forces through the table equal
  difftre's own energy and forces of the model (the table's interpolation error only);
* an NVT run at the training state point: LAMMPS's RDF (computed from its dump with the
  project's RDF definition) and its own pressure (`thermo press`) agree with a production run
  of the same model in difftre (production.production_run), within the statistical error of
  the two runs: standard errors from 10 blocks of each run, combined in quadrature.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from difftre_cli import assemble, neighbors, reference
from difftre_cli.export import ExportOptions, export_potential, export_run
from difftre_cli.production import production_run
from difftre_cli.sampler import Trajectory
from difftre_cli.train import train

pytestmark = pytest.mark.skipif(shutil.which("lmp") is None, reason="LAMMPS (lmp) is not installed; .ci/run installs it")

ROOT = Path(__file__).resolve().parent.parent
N = 256
STEPS, EVERY, BLOCKS = 20000, 50, 10


@pytest.fixture(scope="module", autouse=True)
def _compiled_once(module_compilation_cache):
    yield


def _cfg(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(scope="module")
def exported(lj_reference, tmp_path_factory):
    """(cfg, params, the export directory) of a force-matching run on the LJ reference."""
    cfg = _cfg(["config=lj_fm", f"system.n_particles={N}", f"reference.file={lj_reference[0]}",
                "trainer.epochs=4", "trainer.patience=null", "observables=[rdf,pressure]"])
    run = tmp_path_factory.mktemp("fm") / "run"
    out = train(cfg, run, quiet=True)
    manifest = export_run(cfg, run, ExportOptions("lammps"))
    assert manifest["units"] == "lj" and manifest["files"] == ["difftre.table", "in.difftre_pair"]
    return cfg, out["params"], run / "export" / "lammps"


def _lmp(directory: Path, script: str) -> None:
    (directory / "in.run").write_text(script)
    subprocess.run(["lmp", "-in", "in.run", "-log", "log.lammps", "-screen", "none"], cwd=directory, check=True,
                   timeout=600)


def _data_file(path: Path, R: np.ndarray, box: float, types: np.ndarray) -> None:
    n_types = int(types.max()) + 1
    lines = ["LAMMPS data file: one configuration", "", f"{len(R)} atoms", f"{n_types} atom types", "",
             f"0 {box!r} xlo xhi", f"0 {box!r} ylo yhi", f"0 {box!r} zlo zhi", "", "Masses", ""]
    lines += [f"{k + 1} 1.0" for k in range(n_types)] + ["", "Atoms # atomic", ""]
    lines += [f"{i + 1} {t + 1} {float(x)!r} {float(y)!r} {float(z)!r}" for i, (t, (x, y, z)) in enumerate(zip(types, R))]
    path.write_text("\n".join(lines) + "\n")


def _single_point(c, params, table_dir: Path, tmp_path: Path) -> None:
    """LAMMPS `run 0` through the exported table on a shaken lattice (atom types = species)
    against difftre's energy and forces of the same configuration."""
    box = float(c.system.box_size)
    R = np.asarray(c.system.positions, np.float64)
    rng = np.random.default_rng(1)
    R = (R + rng.normal(scale=0.05, size=R.shape)) % box   # a lattice shaken off its symmetry
    _data_file(tmp_path / "frame.data", R, box, np.asarray(c.system.species))
    if table_dir != tmp_path:
        for name in ("difftre.table", "in.difftre_pair"):
            shutil.copy(table_dir / name, tmp_path)
    _lmp(tmp_path, "units lj\natom_style atomic\nread_data frame.data\ninclude in.difftre_pair\n"
                   "neighbor 0.3 bin\nthermo_style custom step pe\nthermo_modify norm no\n"
                   "dump 1 all custom 1 forces.dump id fx fy fz\ndump_modify 1 sort id format float %.12g\n"
                   "run 0\nprint \"PE $(pe:%.12g)\"\n")
    log = (tmp_path / "log.lammps").read_text()
    pe = float(next(line.split()[1] for line in log.splitlines() if line.startswith("PE ")))
    f_lmp = np.loadtxt(tmp_path / "forces.dump", skiprows=9)[:, 1:]
    nbr = neighbors.make_neighbor_fn(box, c.potential.list_cutoff, 0.0, 1.3).allocate(jnp.asarray(R, jnp.float32))
    e_own = float(c.potential.energy_fn(box)(jnp.asarray(R, jnp.float32), nbr, params))
    f_own = np.asarray(c.potential.force_fn(box)(jnp.asarray(R, jnp.float32), nbr, params))
    print(f"LAMMPS pe {pe:.6f}, difftre {e_own:.6f} (rel. {abs(pe / e_own - 1):.1e}); max |ΔF| "
          f"{np.max(np.abs(f_lmp - f_own)):.2e} (rms F {np.sqrt(np.mean(f_own ** 2)):.2f})")
    assert pe == pytest.approx(e_own, rel=2e-5, abs=1e-3)
    assert np.max(np.abs(f_lmp - f_own)) < 1e-3 * np.sqrt(np.mean(f_own ** 2)) + 1e-4


def test_lammps_energy_and_forces_through_the_table_equal_the_model(exported, tmp_path):
    cfg, params, table_dir = exported
    _single_point(assemble.build(cfg), params, table_dir, tmp_path)


def test_mixture_tables_in_lammps_equal_the_model(tmp_path):
    """config=lj_mixture (A, B: three pair tables, pair_coeff 1 1 / 1 2 / 2 2) at parameters
    with a non-zero learned part: LAMMPS's energy and forces are difftre's."""
    cfg = _cfg(["config=lj_mixture", "system.n_particles=256"])
    _, c = assemble.build_states(cfg)[0]
    params = c.potential.init(jax.random.PRNGKey(0))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree_util.tree_unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype)
                                                 for x, k in zip(leaves, keys)])
    manifest = export_potential(c, params, ExportOptions("lammps"), tmp_path, "mixture test")
    assert [t["pair"] for t in manifest["tables"]] == ["A-A", "A-B", "B-B"]
    snippet = (tmp_path / "in.difftre_pair").read_text()
    assert "pair_coeff 1 2 difftre.table A-B 2.5" in snippet
    _single_point(c, params, tmp_path, tmp_path)


def test_table_rows_are_the_model_and_its_derivative(exported):
    """At random rows of the written file (r ≥ r_inner): u(r) and −u'(r) of the model itself, to
    float32 precision (jax.grad of the same function the sampler's forces differentiate)."""
    cfg, params, table_dir = exported
    c = assemble.build(cfg)
    (term,) = c.potential.pair_terms()
    lines = (table_dir / "difftre.table").read_text().splitlines()
    k = lines.index("X-X")
    rows = np.array([[float(v) for v in line.split()] for line in lines[k + 3:] if line.strip()])
    r_inner = json.loads((table_dir / "export.json").read_text())["tables"][0]["r_inner"]
    pick = np.random.default_rng(0).choice(np.flatnonzero(rows[:, 1] >= r_inner), 200, replace=False)
    r = jnp.asarray(rows[pick, 1], jnp.float32)
    u = np.asarray(term.u(params, r))
    f = -np.asarray(jax.vmap(jax.grad(lambda x: term.u(params, x[None])[0]))(r))
    np.testing.assert_allclose(rows[pick, 2], u, rtol=1e-5, atol=1e-5 * np.max(np.abs(u)))
    np.testing.assert_allclose(rows[pick, 3], f, rtol=1e-5, atol=1e-5 * np.max(np.abs(f)))


NVT = """units lj
atom_style atomic
lattice fcc 0.5
region box block 0 4 0 4 0 4
create_box 1 box
create_atoms 1 box
mass 1 1.0
include in.difftre_pair
velocity all create 1.5 4928459 loop geom
neighbor 0.3 bin
fix 1 all nvt temp 1.5 1.5 0.5
timestep 0.005
run 2000
reset_timestep 0
fix p all ave/time {every} 1 {every} c_thermo_press file press.txt
dump 1 all custom {every} traj.lammpstrj id type x y z
dump_modify 1 sort id
run {steps}
"""


def _blocks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of per-snapshot values ``x`` (S, ...) from BLOCKS block means."""
    b = np.array([blk.mean(0) for blk in np.array_split(x, BLOCKS)])
    return x.mean(0), b.std(0, ddof=1) / np.sqrt(BLOCKS)


def test_lammps_run_with_the_table_reproduces_rdf_and_pressure(exported, tmp_path):
    cfg, params, table_dir = exported
    for name in ("difftre.table", "in.difftre_pair"):
        shutil.copy(table_dir / name, tmp_path)
    _lmp(tmp_path, NVT.format(every=EVERY, steps=STEPS))
    c = assemble.build(cfg)
    # LAMMPS's frames through the project's reader and RDF definition; LAMMPS's own pressure
    ref = reference.open_reference({"file": str(tmp_path / "traj.lammpstrj"), "units": "lj",
                                    "mapping": {"beads": {"A": "type 1"}, "per": "atom", "center": "geometry"},
                                    "start": 1}, c.system.units, box=float(c.system.box_size), n_particles=N)
    pos = ref.load("train").positions
    feats = c.engine.featurize(Trajectory(pos, np.zeros(len(pos), np.float32), None, None))
    rdf_lmp, rdf_lmp_err = _blocks(np.asarray(c.engine.snapshot_observables_jit(params, feats)["rdf"], np.float64))
    p_lmp, p_lmp_err = _blocks(np.loadtxt(tmp_path / "press.txt")[:, 1])
    # the same model in difftre
    own = production_run(c, params, 2000, STEPS, EVERY, seed=3, chunk=STEPS // BLOCKS)
    rdf_own, rdf_own_err = own.means["rdf"], own.errors["rdf"]
    p_own, p_own_err = float(own.means["pressure"]), float(own.errors["pressure"])
    err = np.sqrt(rdf_lmp_err ** 2 + rdf_own_err ** 2)
    resolved = err > 0
    z = np.abs(rdf_lmp - rdf_own)[resolved] / err[resolved]
    print(f"RDF: max |Δg| {np.max(np.abs(rdf_lmp - rdf_own)):.4f}, max z {z.max():.2f}, rms z {np.sqrt(np.mean(z ** 2)):.2f}; "
          f"pressure LAMMPS {p_lmp:.4f} ± {p_lmp_err:.4f}, difftre {p_own:.4f} ± {p_own_err:.4f}")
    assert np.sqrt(np.mean(z ** 2)) < 2.0 and z.max() < 5.0
    assert abs(p_lmp - p_own) < 4.0 * np.hypot(p_lmp_err, p_own_err)
