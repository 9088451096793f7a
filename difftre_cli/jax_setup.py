"""JAX settings of a run: the precision switch and the persistent compilation cache.

Compilation dominates the start of a run with a graph network: on 2 CPU cores
``config=water`` spends ~1.5 s compiling the parameter initialisers (6.5 s before they were
drawn on the host, gnn.host_initializer), ~3.5 s the first force evaluation and ~7 s the MD
chunk program before its first step (first progress line 26 s after the command starts). JAX's persistent compilation
cache (``jax_compilation_cache_dir``) stores every compiled program on disk, keyed by the
program, the compiler options and the JAX/XLA versions, so a resumed run, ``difftre evaluate``,
a rerun and every job of a ``--multirun`` sweep load them instead (the numbers are the same:
the same executable runs).

The command line turns the cache on before it imports the libraries
(:func:`cache_library_imports`): the few small programs they compile on import (6 for ``difftre
train``, once jax_md.rigid_body is deferred: deferred_imports.py) are loaded by a later process.

Where: ``$DIFFTRE_COMPILATION_CACHE`` if set (``off`` disables it), else
``$XDG_CACHE_HOME/difftre/xla`` (``~/.cache/difftre/xla``). A directory that cannot be created
or written (read-only home on a cluster node) only disables the cache, with a log line.

XLA 0.10 logs two ERROR lines for every executable it loads from the cache on CPU ("Target
machine feature +prefer-no-gather is not supported ...", openxla/xla#44565, jax-ml/jax#38445:
LLVM tuning flags mistaken for missing CPU features; the executable loads and runs). With the
cache on, :func:`prepare_environment` therefore sets ``TF_CPP_MIN_LOG_LEVEL=3`` (XLA's C++ log
threshold) unless the user set it (to anything but JAX's own default, 1); it must run before
JAX is imported, which is why this module
imports JAX only inside :func:`configure`.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("difftre")

CACHE_ENV = "DIFFTRE_COMPILATION_CACHE"
#: XLA's backend optimisation level (LLVM's; XLA's default is 3) for two kinds of program whose
#: compilation outweighs their run. Featurising a trajectory (neighbour-list rebuilds, RDF
#: histograms in a scan): level 2 compiles in 0.4 s instead of 1.9 s and runs 20 % faster
#: (config=lj, 2 CPU cores; never slower on lj_mixture, water_cpu, water). A sampler's
#: initial state (one force evaluation): level 0. The MD chunk and the update keep level 3 (at 2
#: the LJ chunk runs ~15 % and the update ~10 % slower). Measured: scripts/bench/README.md.
FEATURIZE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 2}
RUN_ONCE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
#: programs that compile faster than this are not cached. 0: every program is, even the ~25
#: small ones (< 0.1 s each) of a DiffTRe start; loading them is faster than compiling them. The
#: update_cost reference setup's warm run spent 3.9 s compiling at 0.5 s, 1.1 s at 0.1 s; its
#: compile spans (tracing included, scripts/bench/startup.py) 2.8 s at 0.1 s and 2.3 s at 0
#: (3 rounds each, alternating; 14 → 40 cache files, 1 MB)
MIN_COMPILE_SECONDS = 0.0


def cache_dir() -> Path | None:
    """The compilation cache directory this process would use (None: disabled)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in ("off", "none", "0", "false", "no"):
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "difftre" / "xla"


def enable_compilation_cache() -> Path | None:
    """Point JAX's persistent compilation cache at :func:`cache_dir`; the directory, or None."""
    path = cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as exc:
        log.info("compilation cache disabled (%s); set %s to a writable directory to enable it", exc, CACHE_ENV)
        return None
    import jax   # after prepare_environment (module doc)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path


def repair_cache(path: Path, settle_seconds: float = 60.0) -> tuple[int, list[str]]:
    """Read every entry of the compilation cache in ``path`` and delete those that do not
    decompress: (entries that read, names removed). JAX writes an entry in place, so a process
    killed while writing one (SIGKILL, a job's time limit, a full disk) leaves it truncated; JAX
    then warns "Error reading persistent compilation cache entry" and compiles again in every
    later run, and never rewrites the entry (it exists). Deleting an entry only costs its
    compilation once more. Entries written in the last ``settle_seconds`` are left alone (another
    process may be writing them). ~1.2 s for 90 MB of entries on 2 CPU cores: ``difftre doctor``."""
    from jax._src import compilation_cache   # after prepare_environment (module doc); JAX's own decompressor
    n_ok, removed = 0, []
    for entry in sorted(Path(path).glob("*-cache")):
        try:
            if time.time() - entry.stat().st_mtime < settle_seconds:
                continue
        except FileNotFoundError:   # deleted meanwhile
            continue
        try:
            compilation_cache.decompress_executable(entry.read_bytes())
            n_ok += 1
        except Exception:   # noqa: BLE001 - whatever the codec raises on a truncated stream
            entry.unlink(missing_ok=True)
            entry.with_name(entry.name[:-len("-cache")] + "-atime").unlink(missing_ok=True)
            removed.append(entry.name)
    return n_ok, removed


def cache_library_imports() -> None:
    """Turn the cache on before the libraries are imported, for the programs their imports
    compile (module doc)."""
    enable_compilation_cache()


def prepare_environment() -> None:
    """Process environment for XLA, before JAX is imported (module doc)."""
    # "1" is what ``import jax`` sets when the variable is unset, so a process started from
    # Python that imported JAX (a notebook, a test, a launcher) passes it on: treat it as unset
    if cache_dir() is not None and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1") == "1":
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    # difftre only writes PNG files (plots.py selects Agg). Selected here, before matplotlib is
    # imported, ``matplotlib.use("Agg")`` has nothing left to switch and does not load pyplot,
    # which deferred_imports.py defers to the first plot (not a user's own choice of backend)
    os.environ.setdefault("MPLBACKEND", "Agg")


def configure(precision: str) -> None:
    """The JAX settings of a ``train``/``evaluate`` run (before anything is compiled)."""
    import jax   # after prepare_environment (module doc)
    jax.config.update("jax_enable_x64", precision == "double")
    enable_compilation_cache()
