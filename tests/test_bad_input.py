"""Bad input, group by group and file by file: every case stops with exit code 2 and one
'difftre: error:' line that names the key or file, a 'fix:' line, no traceback, no run
directory and no change to the input files. Most cases run in-process through ``cli.main``
(compose + validate, nothing compiled); a few run the CLI as a real subprocess.

Also here: the structure-file path when the input is good (positions and box from the file,
units converted, positions wrapped), and good .npz/.h5 targets.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.io import write as ase_write

from difftre_cli import cli, commands
from difftre_cli.config import validate
from difftre_cli.system import build_system, lattice_positions

ROOT = Path(__file__).resolve().parent.parent
N, RHO = 108, 0.7                       # config=tiny
L = (N / RHO) ** (1.0 / 3.0)            # its box edge (σ): half box 2.68, tiny's RDF reaches 2.56
STRUCT = ["system.structure_unit=sigma", "system.n_particles=null", "system.density=null"]
REAL = ["system.units=real", "system.kT=null", "system.temperature=300"]
PRESSURE = ["observables=[rdf,pressure]", "targets=[lj_liquid_rdf,lj_liquid_pressure]"]


def _atoms(symbols=f"Ar{N}", positions=None, cell=(L, L, L), pbc=True):
    pos = lattice_positions(N, L, "fcc") if positions is None else positions
    return Atoms(symbols, positions=pos, cell=cell, pbc=pbc)


def make_inputs(d: Path) -> None:
    """Every good and bad input file the cases below name (relative to the working directory)."""
    # structure files
    ase_write(d / "start.xyz", _atoms())                               # extxyz with a cubic cell
    text = (d / "start.xyz").read_text().splitlines()
    (d / "start.foo").write_text("\n".join(text) + "\n")
    (d / "truncated.xyz").write_text("\n".join(text[:40]) + "\n")      # header says 108 atoms
    nan = list(text)
    nan[7] = "Ar nan 0.5 0.5"
    (d / "nan.xyz").write_text("\n".join(nan) + "\n")
    (d / "empty.xyz").write_text("")
    (d / "blank.xyz").write_text("\n   \n\n")
    (d / "garbage.xyz").write_text("this is not\na structure file at all\n")
    (d / "binary.pdb").write_bytes(bytes(range(1, 256)) * 8)
    ase_write(d / "nocell.xyz", Atoms(f"Ar{N}", positions=lattice_positions(N, L, "fcc")), format="xyz")
    ase_write(d / "box.xyz", _atoms(cell=(L, L, 1.2 * L)))
    ase_write(d / "tilted.xyz", _atoms(cell=[[L, 0, 0], [0.3 * L, L, 0], [0, 0, L]]))
    ase_write(d / "slab.xyz", _atoms(pbc=(True, True, False)))
    ase_write(d / "mixture.xyz", _atoms(symbols=f"Ar{N // 2}Kr{N // 2}"))
    pos = lattice_positions(N, L, "fcc")
    pos[1] = pos[0] + 0.05                                             # 0.05 σ < 0.1 × 2.5 σ
    ase_write(d / "overlap.xyz", _atoms(positions=pos))
    ase_write(d / "shifted.xyz", _atoms(positions=lattice_positions(N, L, "fcc") + np.array([L, -L, 2 * L])))
    (d / "structdir").mkdir()

    # target files (config=tiny's RDF grid is (0, 2.4])
    x = np.linspace(0.0, 3.0, 61)
    y = 1.0 + 0.1 * np.sin(x)
    good = "\n".join(f"{a:.3f} {b:.5f}" for a, b in zip(x, y))
    (d / "ragged.txt").write_text(good + "\n2.95\n")                   # a cut-off last line
    rows = good.splitlines()
    rows[20] += " 7.0"
    (d / "ragged3.txt").write_text("\n".join(rows) + "\n")
    (d / "single.txt").write_text("1.0 1.0\n")
    (d / "binary.txt").write_bytes(bytes(range(128, 256)) * 4)
    (d / "targetdir").mkdir()
    np.savez(d / "good.npz", x=x, y=y)
    np.savez(d / "noxy.npz", r=x, g=y)
    np.savez(d / "twod.npz", x=x[:, None], y=y[:, None])
    np.savez(d / "lengths.npz", x=x, y=y[:-1])
    (d / "garbage.npz").write_text("0.0 1.0\n1.0 1.0\n")
    (d / "empty.npz").write_bytes(b"")
    (d / "text.h5").write_text("x y\n0 1\n3 1\n")
    with h5py.File(d / "good.h5", "w") as f:
        f["x"], f["y"] = x, y
    with h5py.File(d / "noxy.h5", "w") as f:
        f["r"] = x
    np.savetxt(d / "good.txt", np.c_[x, y])
    np.savetxt(d / "header.csv", np.c_[x, y], delimiter=",", header="r,g", comments="")
    (d / "gmx.xvg").write_text('# gmx rdf\n@ title "g(r)"\n@TYPE xy\n' + good + "\n")


# (overrides after config=tiny, words the error line must contain)
CASES = [
    # top level
    pytest.param(["seed=-1"], ["seed", "-1"], id="seed-negative"),
    pytest.param(["seed=1.5"], ["seed", "1.5"], id="seed-non-integer"),
    pytest.param(["seed=abc"], ["seed", "abc"], id="seed-string"),
    # system
    pytest.param(["system.units=cgs"], ["system.units", "cgs"], id="units-unknown"),
    pytest.param(["system.temperature=300"], ["system.temperature", "reduced LJ"], id="temperature-in-lj-units"),
    pytest.param(["system.units=real"], ["system.kT", "real units"], id="kT-in-real-units"),
    pytest.param(["system.units=real", "system.kT=null"], ["system.temperature"], id="real-units-no-temperature"),
    pytest.param(["system.kT=null"], ["system.kT"], id="kT-missing"),
    pytest.param(["system.kT=0"], ["system.kT"], id="kT-zero"),
    pytest.param(["system.mass=-1"], ["system.mass"], id="mass-negative"),
    pytest.param(["system.lattice=hcp"], ["system.lattice", "hcp"], id="lattice-unknown"),
    pytest.param(["system.box_size=-3"], ["system.box_size"], id="box-size-negative"),
    pytest.param(["system.n_particles=1"], ["system.n_particles"], id="n-particles-one"),
    pytest.param(["system.n_particles=100.5"], ["system.n_particles", "100.5"], id="n-particles-fraction"),
    # structure files
    pytest.param(["system.structure=nofile.xyz", *STRUCT], ["system.structure", "nofile.xyz", "not found"],
                 id="structure-missing"),
    pytest.param(["system.structure=structdir", *STRUCT], ["system.structure", "structdir", "directory"],
                 id="structure-directory"),
    pytest.param(["system.structure=empty.xyz", *STRUCT], ["system.structure", "empty.xyz", "empty"],
                 id="structure-empty"),
    pytest.param(["system.structure=blank.xyz", *STRUCT], ["system.structure", "blank.xyz", "empty"],
                 id="structure-blank"),
    pytest.param(["system.structure=garbage.xyz", *STRUCT], ["system.structure", "garbage.xyz", "cannot read"],
                 id="structure-garbage"),
    pytest.param(["system.structure=binary.pdb", *STRUCT], ["system.structure", "binary.pdb"],
                 id="structure-binary"),
    pytest.param(["system.structure=truncated.xyz", *STRUCT], ["system.structure", "truncated.xyz", "cannot read"],
                 id="structure-truncated"),
    pytest.param(["system.structure=nan.xyz", *STRUCT], ["system.structure", "nan.xyz", "NaN"], id="structure-nan"),
    pytest.param(["system.structure=nocell.xyz", *STRUCT], ["system.structure", "no periodic"],
                 id="structure-no-cell"),
    pytest.param(["system.structure=slab.xyz", *STRUCT], ["system.structure", "no periodic"],
                 id="structure-not-periodic-in-z"),
    pytest.param(["system.structure=box.xyz", *STRUCT], ["system.structure", "box.xyz", "non-cubic"],
                 id="structure-orthorhombic"),
    pytest.param(["system.structure=tilted.xyz", *STRUCT], ["system.structure", "non-cubic"],
                 id="structure-triclinic"),
    pytest.param(["system.structure=mixture.xyz", *STRUCT], ["system.structure", "several species"],
                 id="structure-two-species"),
    pytest.param(["system.structure=overlap.xyz", *STRUCT], ["system.structure", "overlap.xyz", "closer than"],
                 id="structure-overlapping-atoms"),
    pytest.param(["system.structure=start.xyz", "system.structure_unit=sigma", "system.n_particles=200",
                  "system.density=null"], ["system.n_particles=200", "108"], id="structure-n-particles-differ"),
    pytest.param(["system.structure=start.xyz", "system.structure_unit=sigma", "system.n_particles=null",
                  "system.density=0.5"], ["system.density=0.5", "start.xyz"], id="structure-density-conflict"),
    pytest.param(["system.structure=start.xyz", *STRUCT, "system.box_size=7"], ["system.box_size=7", "start.xyz"],
                 id="structure-box-size-conflict"),
    pytest.param(["system.structure=start.xyz", "system.n_particles=null", "system.density=null"],
                 ["system.structure_unit", "σ"], id="structure-unit-undeclared-in-lj"),
    pytest.param(["system.structure=start.xyz", "system.structure_unit=nm", "system.n_particles=null",
                  "system.density=null"], ["system.structure_unit", "'nm'"], id="structure-unit-nm-in-lj"),
    pytest.param(["system.structure=start.xyz", "system.structure_unit=furlong", *REAL],
                 ["system.structure_unit", "furlong"], id="structure-unit-unknown-real"),
    pytest.param(["system.structure=start.foo", *STRUCT], ["system.structure", "start.foo", "format"],
                 id="structure-unknown-extension"),
    pytest.param(["system.structure=start.xyz", "system.structure_format=nope", *STRUCT],
                 ["system.structure_format", "nope"], id="structure-format-unknown"),
    pytest.param(["system.structure=start.xyz", *REAL], ["system.density", "start.xyz"],
                 id="structure-angstrom-box-vs-density-real"),
    # prior
    pytest.param(["prior.kind=buckingham"], ["prior.kind", "buckingham"], id="prior-kind"),
    pytest.param(["prior.epsilon=-1"], ["prior.epsilon"], id="prior-epsilon-negative"),
    pytest.param(["prior.sigma=0"], ["prior.sigma"], id="prior-sigma-zero"),
    pytest.param(["prior.exponent=abc"], ["prior.exponent", "abc"], id="prior-exponent-string"),
    pytest.param(["prior=harmonic", "prior.k=-1"], ["prior.k"], id="prior-harmonic-k"),
    pytest.param(["prior=none", "+prior.sigma=1"], ["prior", "sigma"], id="prior-none-extra-key"),
    # model
    pytest.param(["model.kind=gnn"], ["model.kind", "gnn"], id="model-kind"),
    pytest.param(["model.n_knots=3"], ["model.n_knots"], id="model-knots"),
    pytest.param(["model.cutoff=0"], ["model.cutoff"], id="model-cutoff-zero"),
    pytest.param(["model.cutoff=3.0"], ["model.cutoff", "half the box"], id="model-cutoff-half-box"),
    pytest.param(["model.r_min=2.6"], ["model.r_min"], id="model-r-min-beyond-cutoff"),
    pytest.param(["model=mlp", "model.hidden=[32,0]"], ["model.hidden"], id="mlp-hidden-zero"),
    pytest.param(["model=mlp", "model.hidden=abc"], ["model.hidden", "abc"], id="mlp-hidden-string"),
    pytest.param(["model=mlp", "model.n_basis=0"], ["model.n_basis"], id="mlp-n-basis"),
    # simulator
    pytest.param(["simulator.kind=verlet"], ["simulator.kind", "verlet"], id="integrator"),
    pytest.param(["simulator.integrator=nve"], ["simulator.integrator", "renamed to simulator.kind"],
                 id="integrator-old-key"),
    pytest.param(["simulator.gamma=0"], ["simulator.gamma"], id="langevin-gamma"),
    pytest.param(["simulator=nose_hoover", "simulator.chain_length=0"], ["simulator.chain_length"], id="nh-chain"),
    pytest.param(["simulator=nose_hoover", "simulator.tau_steps=-1"], ["simulator.tau_steps"], id="nh-tau"),
    pytest.param(["simulator.skin=-0.1"], ["simulator.skin"], id="skin-negative"),
    pytest.param(["simulator.every=0"], ["simulator.every"], id="every-zero"),
    pytest.param(["simulator.production_steps=5"], ["simulator.production_steps", "simulator.every"],
                 id="production-shorter-than-every"),
    pytest.param(["simulator.equilibration_steps=-1"], ["simulator.equilibration_steps"], id="equilibration-negative"),
    pytest.param(["simulator.capacity_multiplier=0.5"], ["simulator.capacity_multiplier"], id="capacity"),
    pytest.param(["+simulator.tau=1"], ["simulator", "tau"], id="simulator-unknown-key"),
    # observables
    pytest.param(["observables.rdf.kind=dynamic_structure_factor"], ["observables.rdf.kind", "dynamic_structure_factor"], id="observable-kind"),
    pytest.param(["observables.rdf.r_max=0"], ["observables.rdf.r_max"], id="rdf-r-max-zero"),
    pytest.param(["observables.rdf.r_max=3.0"], ["observables.rdf.r_max", "half the box"], id="rdf-r-max-half-box"),
    pytest.param(["observables.rdf.r_min=2.5"], ["observables.rdf.r_max", "r_min"], id="rdf-r-min-above-r-max"),
    pytest.param(["observables.rdf.n_bins=1"], ["observables.rdf.n_bins"], id="rdf-n-bins"),
    pytest.param(["observables.rdf.sigma=-0.1"], ["observables.rdf.sigma"], id="rdf-sigma-negative"),
    # targets
    pytest.param(["targets=[lj_liquid_rdf,lj_liquid_pressure]"], ["targets.pressure", "no observable"],
                 id="target-observable-not-configured"),
    pytest.param(["+targets.rdf.observable=adf"], ["targets.rdf", "adf"], id="target-observable-unknown"),
    pytest.param(["targets.rdf.gamma=-1"], ["targets.rdf.gamma"], id="target-gamma-negative"),
    pytest.param(["targets.rdf.gamma=abc"], ["targets.rdf.gamma", "abc"], id="target-gamma-string"),
    pytest.param(["targets.rdf.x_unit=null"], ["targets.rdf.x_unit"], id="target-x-unit-missing"),
    pytest.param(["targets.rdf.x_unit=nm"], ["targets.rdf.x_unit", "nm"], id="target-x-unit-real-in-lj"),
    pytest.param(["targets.rdf.file=null"], ["targets.rdf.file"], id="target-file-unset"),
    pytest.param([*PRESSURE, "targets.pressure.value=null"], ["targets.pressure.value"], id="scalar-value-missing"),
    pytest.param([*PRESSURE, "targets.pressure.value=abc"], ["targets.pressure.value", "abc"], id="scalar-value-string"),
    pytest.param([*PRESSURE, "targets.pressure.unit=null"], ["targets.pressure.unit"], id="scalar-unit-missing"),
    pytest.param([*PRESSURE, "targets.pressure.unit=bar"], ["targets.pressure.unit", "bar"], id="scalar-bar-in-lj"),
    pytest.param(["targets.rdf.file=ragged.txt"], ["targets.rdf.file", "ragged.txt", "line 62", "truncated"],
                 id="target-truncated-last-line"),
    pytest.param(["targets.rdf.file=ragged3.txt"], ["targets.rdf.file", "ragged3.txt", "ragged", "line 21"],
                 id="target-ragged-row"),
    pytest.param(["targets.rdf.file=single.txt"], ["targets.rdf.file", "single point"], id="target-one-point"),
    pytest.param(["targets.rdf.file=binary.txt"], ["targets.rdf.file", "binary.txt", "not a text file"],
                 id="target-binary-text"),
    pytest.param(["targets.rdf.file=targetdir"], ["targets.rdf.file", "targetdir", "directory"],
                 id="target-directory"),
    pytest.param(["targets.rdf.file=noxy.npz"], ["targets.rdf.file", "noxy.npz", "x and y"], id="npz-no-xy"),
    pytest.param(["targets.rdf.file=twod.npz"], ["targets.rdf.file", "1-D"], id="npz-2d-arrays"),
    pytest.param(["targets.rdf.file=lengths.npz"], ["targets.rdf.file", "differ in length"], id="npz-lengths"),
    pytest.param(["targets.rdf.file=garbage.npz"], ["targets.rdf.file", "garbage.npz", ".npz"], id="npz-garbage"),
    pytest.param(["targets.rdf.file=empty.npz"], ["targets.rdf.file", "empty.npz", "empty"], id="npz-empty"),
    pytest.param(["targets.rdf.file=text.h5"], ["targets.rdf.file", "text.h5", "HDF5"], id="h5-not-hdf5"),
    pytest.param(["targets.rdf.file=noxy.h5"], ["targets.rdf.file", "noxy.h5", "'x'"], id="h5-no-datasets"),
    pytest.param(["+targets.rdf.colums=[0,1]"], ["targets.rdf", "unknown key", "colums"], id="target-unknown-key"),
    pytest.param(["+targets.rdf.columns=[r,g]"], ["targets.rdf.columns", "no header"], id="target-columns-no-header"),
    pytest.param(["+targets.rdf.weight=chi2"], ["targets.rdf.weight", "chi2"], id="target-weight-unknown"),
    pytest.param(["+targets.rdf.weight=inverse_variance", "targets.rdf.file=good.txt"],
                 ["targets.rdf.weight", "no error column"], id="target-inverse-variance-no-error"),
    pytest.param(["+targets.rdf.weight=inverse_variance"], ["targets.rdf.weight", "zero, negative", "the last at x"],
                 id="target-inverse-variance-zero-error"),
    pytest.param(["+targets.rdf.smooth=yes"], ["targets.rdf.smooth", "yes"], id="target-smooth-word"),
    pytest.param(["+targets.rdf.histogram=maybe"], ["targets.rdf.histogram", "maybe"], id="target-histogram-word"),
    # optimizer
    pytest.param(["optimizer.kind=rmsprop"], ["optimizer.kind", "rmsprop"], id="optimizer-kind"),
    pytest.param(["optimizer.name=sgd"], ["optimizer.name", "renamed to optimizer.kind"], id="optimizer-old-key"),
    pytest.param(["optimizer.lr=abc"], ["optimizer.lr", "abc"], id="optimizer-lr-string"),
    pytest.param(["optimizer.b1=1.0"], ["optimizer.b1"], id="adam-b1-one"),
    pytest.param(["optimizer.b2=-0.1"], ["optimizer.b2"], id="adam-b2-negative"),
    pytest.param(["optimizer.decay_to=0"], ["optimizer.decay_to"], id="decay-to-zero"),
    pytest.param(["optimizer.decay_to=1.5"], ["optimizer.decay_to"], id="decay-to-above-one"),
    pytest.param(["optimizer.schedule=cosine"], ["optimizer.schedule", "cosine"], id="schedule-unknown"),
    pytest.param(["optimizer.clip_norm=0"], ["optimizer.clip_norm"], id="clip-norm-zero"),
    pytest.param(["optimizer=sgd", "optimizer.momentum=1.5"], ["optimizer.momentum"], id="sgd-momentum"),
    # trainer
    pytest.param(["trainer.kind=relent"], ["trainer.kind", "relent"], id="trainer-kind"),
    pytest.param(["trainer.updates=2.5"], ["trainer.updates"], id="updates-fraction"),
    pytest.param(["trainer.max_failures=0"], ["trainer.max_failures"], id="max-failures"),
    pytest.param(["trainer.lr_reduction=0"], ["trainer.lr_reduction"], id="lr-reduction-zero"),
    pytest.param(["trainer.lr_reduction=1.5"], ["trainer.lr_reduction"], id="lr-reduction-above-one"),
    pytest.param(["trainer.precondition=newton"], ["trainer.precondition", "newton"], id="precondition"),
    pytest.param(["trainer.checkpoint_every=0"], ["trainer.checkpoint_every"], id="checkpoint-every"),
    pytest.param(["trainer.fisher_damping=-1"], ["trainer.fisher_damping"], id="fisher-damping"),
    pytest.param(["trainer.damping=-1"], ["trainer.damping"], id="gauss-newton-damping"),
    pytest.param(["trainer.shrinkage=1.5"], ["trainer.shrinkage"], id="shrinkage-above-one"),
    pytest.param(["trainer=relative_entropy", "trainer.precondition=gauss_newton"],
                 ["trainer.precondition=gauss_newton", "relative entropy"], id="gauss-newton-relative-entropy"),
    pytest.param(["trainer.precondition=gauss_newton"], ["trainer.precondition=gauss_newton", "optimizer=adam",
                                                        "Newton step"], id="gauss-newton-adam"),
    # evaluate
    pytest.param(["evaluate.production_steps=0"], ["evaluate.production_steps"], id="evaluate-steps-zero"),
    pytest.param(["evaluate.every=0"], ["evaluate.every"], id="evaluate-every-zero"),
    pytest.param(["evaluate.equilibration_steps=-5"], ["evaluate.equilibration_steps"], id="evaluate-eq-negative"),
    pytest.param(["evaluate.production_steps=5"], ["evaluate.production_steps", "evaluate.every"],
                 id="evaluate-shorter-than-every"),
    # ground truth
    pytest.param(["ground_truth.kind=buckingham"], ["ground_truth.kind", "buckingham"], id="ground-truth-kind"),
    pytest.param(["ground_truth.sigma=-1"], ["ground_truth.sigma"], id="ground-truth-sigma"),
]

# Every case here is also in CASES (in process, same message checks); the subprocess adds what a
# user sees from the console (exit code, stderr, no traceback). One case per reader stays in the
# default suite (structure file, text target, HDF5 target, config check); the others, the same
# reader's other errors, run with -m slow (~10 s each: a process importing JAX).
SUBPROCESS_CASES = [
    pytest.param(["system.structure=nofile.xyz", *STRUCT], ["system.structure", "nofile.xyz"], id="structure-missing",
                 marks=pytest.mark.slow),
    pytest.param(["system.structure=truncated.xyz", *STRUCT], ["system.structure", "truncated.xyz"],
                 id="structure-truncated"),
    pytest.param(["system.structure=start.xyz", "system.structure_unit=sigma", "system.n_particles=200",
                  "system.density=null"], ["system.n_particles", "108"], id="structure-n-particles-differ",
                 marks=pytest.mark.slow),
    pytest.param(["targets.rdf.file=ragged.txt"], ["targets.rdf.file", "ragged.txt"], id="target-truncated"),
    pytest.param(["targets.rdf.file=text.h5"], ["targets.rdf.file", "HDF5"], id="h5-not-hdf5"),
    pytest.param(["system.units=real"], ["system.kT"], id="kT-in-real-units"),
]


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


def assert_user_error(code, out: str, err: str, needles) -> None:
    """Exit 2; exactly one 'difftre: error:' line naming every needle, followed by a 'fix:' line."""
    assert code == 2, f"exit code {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err, err
    lines = err.splitlines()
    idx = [i for i, ln in enumerate(lines) if ln.startswith("difftre: error:")]
    assert len(idx) == 1, err
    line = lines[idx[0]]
    for needle in needles:
        assert needle in line, f"{needle!r} not named in: {line!r}"
    fix = lines[idx[0] + 1] if idx[0] + 1 < len(lines) else ""
    assert fix.startswith("  fix: ") and len(fix.strip()) > len("fix: ") + 3, err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    make_inputs(d)
    return d


@pytest.fixture
def at_inputs(inputs, monkeypatch):
    """cwd = the input files; Hydra must never be reached; no input file may change."""
    monkeypatch.chdir(inputs)
    monkeypatch.setattr(sys, "argv", list(sys.argv))

    def reached():
        raise AssertionError("validation passed: the bad input reached Hydra")

    monkeypatch.setattr(commands, "_hydra_train", reached)
    before = _tree(inputs)
    yield inputs
    assert _tree(inputs) == before
    assert not (inputs / "runs").exists()


def test_table_size():
    ids = [p.id for p in CASES] + [p.id for p in SUBPROCESS_CASES]
    assert len(CASES) >= 40 and len(SUBPROCESS_CASES) >= 5
    assert len(set(p.id for p in CASES)) == len(CASES), ids


@pytest.mark.parametrize("overrides, needles", CASES)
def test_bad_input(at_inputs, tmp_path, capsys, overrides, needles):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "config=tiny", f"hydra.run.dir={run}", *overrides])
    cap = capsys.readouterr()
    assert_user_error(exc.value.code, cap.out, cap.err, needles)
    assert not run.exists()


@pytest.mark.parametrize("overrides, needles", SUBPROCESS_CASES)
def test_bad_input_subprocess(inputs, tmp_path, overrides, needles):
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("JAX_PLATFORMS", "cpu")
    before = _tree(inputs)
    proc = subprocess.run([sys.executable, "-m", "difftre_cli.cli", "train", "config=tiny",
                           f"hydra.run.dir={run}", *overrides],
                          cwd=inputs, env=env, capture_output=True, text=True, timeout=120)
    assert_user_error(proc.returncode, proc.stdout, proc.stderr, needles)
    assert not run.exists()
    assert not (inputs / "runs").exists() and not (inputs / "outputs").exists()
    assert _tree(inputs) == before


# -- the good paths next to the bad ones --------------------------------------------------------
def _compose(overrides):
    return commands._precompose(["config=tiny", *overrides])


def test_structure_file_sets_positions_box_and_count(at_inputs):
    cfg = _compose(["system.structure=start.xyz", *STRUCT])
    validate(cfg)
    system = build_system(cfg.system)
    assert system.n_particles == N
    assert system.box_size == pytest.approx(L, rel=1e-9)
    np.testing.assert_allclose(system.positions, lattice_positions(N, L, "fcc"), atol=1e-6)
    # values that agree with the file are accepted too
    validate(_compose(["system.structure=start.xyz", "system.structure_unit=sigma", f"system.n_particles={N}",
                       f"system.density={RHO}"]))


def test_structure_positions_outside_the_box_are_wrapped(at_inputs):
    system = build_system(_compose(["system.structure=shifted.xyz", *STRUCT]).system)
    assert np.all(system.positions >= 0) and np.all(system.positions < system.box_size)
    d = system.positions - lattice_positions(N, L, "fcc")
    np.testing.assert_allclose(d - system.box_size * np.round(d / system.box_size), 0.0, atol=1e-6)


def test_structure_in_angstrom_is_converted_to_nm(at_inputs):
    system = build_system(_compose(["system.structure=start.xyz", *REAL, "system.n_particles=null",
                                    "system.density=null"]).system)
    assert system.units.name == "real"
    assert system.box_size == pytest.approx(0.1 * L, rel=1e-9)       # the file's Å, in nm
    np.testing.assert_allclose(system.positions, 0.1 * lattice_positions(N, L, "fcc"), atol=1e-7)


def test_lattice_start_is_unchanged_without_structure(at_inputs):
    system = build_system(_compose([]).system)
    np.testing.assert_array_equal(system.positions, lattice_positions(N, L, "fcc"))


@pytest.mark.parametrize("name", ["good.npz", "good.h5", "good.txt", "header.csv", "gmx.xvg"])
def test_good_target_files_pass(at_inputs, name):
    validate(_compose([f"targets.rdf.file={name}"]))
