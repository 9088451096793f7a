"""Shared fixtures."""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import pytest

#: The test files that take longest, longest first (seconds of all their tests in a full run with
#: --durations=0, clean clone, idle 2-core AMD EPYC, 2026-12-06: 277, 242, 180, 157, 151, 142, 142,
#: 113, 105, 101, 91, 85, 84, 81, 80, 74, 73, 70, 69, 68, 67, 63, 62; the suite's tests: 3611 s).
#: With `-n 2 --dist loadfile` the workers take whole files in the order below, then the rest in
#: collection order, so a long file does not start last while the other worker is idle
#: (pytest-xdist's own order, files with more tests first, started the GPU suite's file, 2 tests
#: and ~3 min, near the end). Only the order: a file missing here still runs.
LONGEST_FIRST = ("test_force_matching.py", "test_gpu_suite.py", "test_state_parallel.py", "test_manybody.py",
                 "test_static.py", "test_compile_ahead.py", "test_cli.py", "test_mixture.py", "test_neighbors.py",
                 "test_stress.py", "test_stress_strain.py", "test_bad_input.py", "test_molecule_training.py",
                 "test_diamond.py", "test_adf.py", "test_kill_resume.py", "test_robustness.py", "test_gauss_newton.py",
                 "test_loss_rise.py", "test_gnn.py", "test_interleave.py", "test_step_rule.py", "test_chunks.py",
                 "test_observables.py")


def pytest_configure(config):
    """Keep the file order of :data:`LONGEST_FIRST` under pytest-xdist (which otherwise
    reorders files by their number of tests)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """The files of :data:`LONGEST_FIRST` first, in its order; within a file, and for the other
    files, the collection order (a stable sort)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.path)).name, len(rank)))


#: JAX's precision when nothing switched it (float32 unless the environment asks for float64)
X64_DEFAULT = os.environ.get("JAX_ENABLE_X64", "0").strip().lower() in ("1", "true", "yes", "on")


@pytest.fixture(autouse=True)
def _x64_unchanged(request):
    """Every test starts in the default precision and ends with ``jax_enable_x64`` as it found it.

    A test that runs a command in this process (``cli.main``, ``load_run``) switches float64 on
    or off for the process, as those do for a user's: restored here, with a warning naming the
    test (use the ``single_precision`` or ``double_precision`` fixture). A module fixture that
    yields inside ``jax.enable_x64(True)`` keeps float64 on for every later test of the worker (a
    thread-local override that ``jax.config.update`` cannot undo): it made resume tests of other
    files compare float64 runs with float32 ones, depending on the file order. A test that
    starts in the wrong precision fails here, naming itself, instead of somewhere else."""
    import jax
    if bool(jax.config.jax_enable_x64) != X64_DEFAULT:
        pytest.fail(f"jax_enable_x64 is {not X64_DEFAULT} at the start of {request.node.nodeid}: a fixture or an "
                    "earlier test left it (e.g. a fixture that yields inside `jax.enable_x64`)", pytrace=False)
    yield
    if bool(jax.config.jax_enable_x64) != X64_DEFAULT:
        jax.config.update("jax_enable_x64", X64_DEFAULT)
        warnings.warn(f"{request.node.nodeid} left jax_enable_x64={not X64_DEFAULT}; restored", stacklevel=1)


@pytest.fixture(scope="session", autouse=True)
def _session_compilation_cache(tmp_path_factory):
    """One fresh persistent compilation cache (jax_setup.py) per test run, shared by its CLI
    subprocesses, its xdist workers and the test processes themselves (programs compiling in
    ≥ 0.2 s): hermetic, nothing written to the user's ~/.cache, and a program one test compiled
    is loaded by the next that builds it — the same executable, the same numbers (the resume
    and kill tests compare across processes bit for bit on that). A subset of five in-process
    files: 137 -> 116 s. Tests that study the cache itself set their own directories."""
    old = os.environ.get("DIFFTRE_COMPILATION_CACHE")
    if old is None:
        base = tmp_path_factory.getbasetemp()
        root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base   # the run's, not the worker's
        os.environ["DIFFTRE_COMPILATION_CACHE"] = str(root / "xla_cache")
    if os.environ["DIFFTRE_COMPILATION_CACHE"] == "off":
        yield
    else:
        with _cache_in_process(os.environ["DIFFTRE_COMPILATION_CACHE"], min_seconds=0.2):
            yield
    if old is None:
        os.environ.pop("DIFFTRE_COMPILATION_CACHE", None)


@contextlib.contextmanager
def _cache_in_process(directory: str, min_seconds: float = 0.0):
    """JAX's persistent compilation cache in this (test) process, in ``directory``; the previous
    settings are restored afterwards."""
    import jax
    from jax._src import compilation_cache as cc
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (directory, min_seconds, 0)):
        jax.config.update(k, v)
    cc.reset_cache()
    try:
        yield
    finally:
        for k, v in old.items():
            jax.config.update(k, v)
        cc.reset_cache()


@pytest.fixture
def persistent_compilation_cache(tmp_path_factory):
    """Every program of this test in the run's persistent compilation cache (the session's,
    _session_compilation_cache; a fresh directory of its own when that is off), for a test that
    builds the same programs several times (e.g. a run and its resumed continuation): the later
    builds load the executables instead of compiling them, as a resumed `difftre train` does
    (jax_setup.py), and other tests load them too. Only for speed: a loaded executable is the
    one a fresh compilation gives. The previous settings are restored afterwards."""
    with _cache_in_process(_run_cache_or(tmp_path_factory, "xla_cache_in_process")):
        yield


@pytest.fixture(scope="module")
def module_compilation_cache(tmp_path_factory):
    """The same for every test of a module (a module whose tests train the same small configs)."""
    with _cache_in_process(_run_cache_or(tmp_path_factory, "xla_cache_module")):
        yield


def _run_cache_or(tmp_path_factory, name: str) -> str:
    """The run's cache directory, or a fresh one when the run's cache is off."""
    run = os.environ.get("DIFFTRE_COMPILATION_CACHE", "off")
    return run if run != "off" else str(tmp_path_factory.mktemp(name))


@contextlib.contextmanager
def _x64(enabled: bool):
    import jax
    old = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", enabled)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


@pytest.fixture
def single_precision():
    """Run a test in float32 (the default precision) and restore the previous x64 setting."""
    with _x64(False):
        yield


@pytest.fixture
def double_precision():
    """Run a test in float64 (finite differences need it) and restore the previous x64 setting."""
    with _x64(True):
        yield


def difftre_train_cmd(args) -> list[str]:
    """The console script (or its module) running `difftre train ARGS`."""
    import shutil
    import sys
    exe = shutil.which("difftre")
    return ([exe] if exe else [sys.executable, "-m", "difftre_cli.cli"]) + ["train", *args]


def train_in_process(args, run_dir, resume: bool = False) -> dict:
    """`difftre train ARGS` as the CLI runs it (validate, precision, ``train``) in this process,
    into ``run_dir`` (``resume``: continue its checkpoint, as ``resume=RUN_DIR`` does): the
    uninterrupted reference of a test whose interrupted run is a CLI process, without a process
    start-up (importing JAX MD: ~10 s). Its programs go to the
    session's compilation cache, which the later CLI processes load (the same executables)."""
    from hydra import compose, initialize_config_dir

    from difftre_cli.config import validate
    from difftre_cli.config_files import CONFIG_DIR
    from difftre_cli.train import train
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=list(args))
    validate(cfg)
    with _x64(cfg.precision == "double"), _cache_in_process(os.environ["DIFFTRE_COMPILATION_CACHE"]):
        return train(cfg, run_dir, resume=resume, quiet=True)


def cli_env() -> dict:
    """The environment of a CLI subprocess: CPU JAX, Hydra's short errors."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.fixture(scope="session")
def lj_reference(tmp_path_factory):
    """(extended-XYZ file, N): 30 frames of the true LJ fluid (N = 256, ρ = 0.5, kT = 1.5, 50
    steps apart) with noise-free forces and pressures (as ase stress), made by scripts/reference_lj.py's ``lj_frames`` with
    the project's own sampler: the reference of the bottom-up trainers' tests."""
    import importlib.util
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from difftre_cli.reference.write import write_extxyz
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("reference_lj", root / "scripts" / "reference_lj.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    n = 256   # ρ = 0.5: box 8 σ, more than twice the cutoff
    with initialize_config_dir(config_dir=str(root / "configs"), version_base=None):
        cfg = compose(config_name="train", overrides=["config=lj", f"system.n_particles={n}"])
    pos, frc, eng, box, prs = mod.lj_frames(cfg, n_frames=30, every=50, equilibration=2000, seed=7)
    return write_extxyz(tmp_path_factory.mktemp("lj") / "lj.extxyz", pos, frc, eng, box, pressures=prs), n


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(cwd, run directory, the CompletedProcess) of `difftre train config=tiny seed=0` through the
    console script: the trained run of the end-to-end tests (test_cli.py: train, evaluate, its
    curve files) and of the Python API's (test_python_api.py), trained once per process."""
    import subprocess
    cwd = tmp_path_factory.mktemp("e2e")
    run = cwd / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run(difftre_train_cmd(["config=tiny", "seed=0", f"hydra.run.dir={run}"]), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    return cwd, run, proc
