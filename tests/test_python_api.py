"""The trained model in Python (difftre_cli/trained_run.py): ``load_run`` on the tiny run of the
end-to-end tests (conftest.tiny_run) gives the energy and forces difftre computes itself — the
potential's own kernels at the checkpoint's parameters, the engine's U_θ of stored snapshots, the
reference energies stored with the first trajectory — the pair curve of `difftre evaluate`, bad
paths as UserErrors, the README's example running as written, and a cheap ``import difftre_cli``."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difftre_cli import load_run
from difftre_cli.errors import UserError
from difftre_cli.evaluate_md import potential_curve
from difftre_cli.learn.boltzmann import initial_params
from difftre_cli.store import RunStore
from difftre_cli.trained_run import TrainedRun

README = Path(__file__).resolve().parent.parent / "README.md"
README_RUN = "runs/lj/2026-01-01_12-00-00"


@pytest.fixture(scope="module")
def run(tiny_run):
    _, path, proc = tiny_run
    if proc.returncode != 0:
        pytest.skip("training failed (reported by test_cli.py::test_train_tiny_end_to_end)")
    return load_run(path)


def test_import_of_the_package_does_not_import_jax():
    script = ("import sys, difftre_cli\nassert 'jax' not in sys.modules, 'jax imported'\n"
              "assert callable(difftre_cli.load_run) and 'jax' in sys.modules\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_energy_and_forces_are_difftres(run):
    """Energy and forces at the checkpoint's parameters equal the potential's own kernels with
    the parameters read the project's way (RunStore, as evaluate reads them), on the run's
    last snapshot; forces are −∇U; ``neighbor=None`` allocates a list itself."""
    pot, box = run.potential, run.box_size
    _, trees, _, _ = RunStore(run.path).read_checkpoint({"params": pot.init(jax.random.PRNGKey(0))})
    params = trees["params"]
    R = run.positions
    nbrs = run.neighbor_fn().allocate(R)
    energy, force = run.energy_fn(), run.force_fn()
    e = float(energy(R, neighbor=nbrs))
    assert np.isfinite(e) and e == float(pot.energy_fn(box)(R, nbrs, params))
    assert float(energy(R)) == pytest.approx(e, rel=1e-6)
    f = np.asarray(force(R, neighbor=nbrs))
    np.testing.assert_array_equal(f, np.asarray(pot.force_fn(box)(R, nbrs, params)))
    np.testing.assert_allclose(f, -np.asarray(jax.grad(energy)(R, neighbor=nbrs)), rtol=1e-4, atol=1e-4)
    assert np.abs(f).max() > 1.0


def test_energy_is_the_engines_and_the_stored_reference_energy(run):
    """U(R) of every snapshot of the last trajectory equals U_θ of the observable engine that
    DiffTRe reweights with; at the run's initial parameters (DiffTRe's regime: the first half of
    the seed's key) it equals the reference energies the sampler stored with the first one."""
    store = RunStore(run.path)
    n = len(store.trajectory_files())
    last, first = store.read_trajectory(n - 1), store.read_trajectory(0)
    nbr_fn = run.neighbor_fn()
    nbrs = nbr_fn.allocate(jnp.asarray(last.positions[0]), extra_capacity=16)

    def energies(energy, positions):   # one list, rebuilt for every snapshot
        @jax.jit
        def one(R):
            nb = nbr_fn.rebuild(R, nbrs)
            return energy(R, neighbor=nb), nb.did_buffer_overflow
        u, overflow = jax.lax.map(one, jnp.asarray(positions))
        assert not overflow.any()
        return np.asarray(u)

    engine = run.components.engine
    u_engine = np.asarray(engine.snapshot_energies(run.params, engine.featurize(last).r)[0])
    np.testing.assert_allclose(energies(run.energy_fn(), last.positions), u_engine, rtol=1e-5)

    params0 = initial_params(run.components, jax.random.split(jax.random.PRNGKey(int(run.config.seed)))[0],
                             run.config.trainer.get("init_from"))
    u0 = energies(run.energy_fn(params=params0), first.positions)
    np.testing.assert_allclose(u0, np.asarray(first.energies), rtol=1e-5)
    assert not np.allclose(u0, energies(run.energy_fn(), first.positions))   # the trained parameters differ


def test_potential_curve_is_evaluates(run):
    curve = potential_curve(run.components, run.params, run.config)
    np.testing.assert_allclose(run.potential_curve(np.asarray(curve["r"])), curve["total"], rtol=1e-6, atol=1e-6)
    with pytest.raises(UserError, match="pair='A-B'"):
        run.potential_curve([1.0], pair="A-B")
    many_body = SimpleNamespace(potential=SimpleNamespace(one_body=False, pair_terms=lambda: ()))
    with pytest.raises(UserError, match="many-body"):
        TrainedRun(run.path, run.config, run.params, "", many_body).potential_curve([1.0])


def test_readme_example_runs_as_written(run, capsys):
    """The code block of README.md's "Using the trained model in Python", with the run's path."""
    section = README.read_text().split("## Using the trained model in Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert code.count(README_RUN) == 1
    exec(compile(code.replace(README_RUN, str(run.path)), "README.md", "exec"), {})
    printed = capsys.readouterr().out.split("[")[0]
    assert np.isfinite(float(printed))


def test_bad_paths_are_user_errors(run, tmp_path):
    with pytest.raises(UserError, match="not a difftre run directory") as exc:
        load_run(tmp_path)
    assert "difftre train" in exc.value.fix
    shutil.copytree(run.path / ".hydra", tmp_path / "started" / ".hydra")
    with pytest.raises(UserError, match="no checkpoint") as exc:
        load_run(tmp_path / "started")
    assert "resume=" in exc.value.fix
    with pytest.raises(UserError, match="state=hot"):
        load_run(run.path, state="hot")
