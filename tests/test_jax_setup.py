"""The persistent compilation cache (jax_setup.py): where it goes, that a run fills it, that a
second run loading it computes the same numbers, and that an unusable cache only disables it."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cli_env, difftre_train_cmd

from difftre_cli import jax_setup

TINY = ["config=tiny", "seed=1", "trainer.updates=2"]


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(jax_setup.CACHE_ENV, "off")
    assert jax_setup.cache_dir() is None
    monkeypatch.setenv(jax_setup.CACHE_ENV, str(tmp_path / "c"))
    assert jax_setup.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(jax_setup.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert jax_setup.cache_dir() == tmp_path / "xdg" / "difftre" / "xla"


def _train(tmp: Path, name: str, cache, **extra_env) -> subprocess.CompletedProcess:
    env = cli_env()
    env[jax_setup.CACHE_ENV] = str(cache)
    env.update(extra_env)
    return subprocess.run(difftre_train_cmd([*TINY, f"hydra.run.dir={tmp / name}"]), cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow   # suite time (issue: default suite <= 15 min on 2 cores): two training processes
def test_second_run_loads_the_cache_and_computes_the_same_numbers(tmp_path):
    cache = tmp_path / "cache"
    first = _train(tmp_path, "a", cache)
    assert first.returncode == 0, first.stderr[-2000:]
    # the sampler's chunk program and the DiffTRe update are the programs worth caching
    for program in ("jit__chunk_impl", "jit__step_impl"):
        assert any(p.name.startswith(program + "-") for p in cache.iterdir()), program
    entries = sorted(p.name for p in cache.glob("*-cache"))
    # JAX says which programs it loaded from the cache
    # (started as from a Python process that imported JAX, which sets TF_CPP_MIN_LOG_LEVEL=1)
    second = _train(tmp_path, "b", cache, JAX_LOG_COMPILES="1", TF_CPP_MIN_LOG_LEVEL="1")
    assert second.returncode == 0, second.stderr[-2000:]
    log = second.stdout + second.stderr
    for program in ("jit__chunk_impl", "jit__step_impl"):
        assert f"cache hit for '{program}'" in log, program
    # every program is cached (jax_setup.MIN_COMPILE_SECONDS = 0), the small ones and those
    # that the imports compile (jax_setup.cache_library_imports) included: each "compilation"
    # of the second process was a load (JAX logs both), and it wrote no new entry
    compiled = log.count("Finished XLA compilation of ")
    assert compiled > 10 and log.count("Persistent compilation cache hit for ") == compiled
    assert sorted(p.name for p in cache.glob("*-cache")) == entries
    # XLA's spurious ERROR lines on loading a CPU executable (jax_setup.py) are not shown
    assert "Target machine feature" not in second.stdout + second.stderr
    a = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    b = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    timing = {i for i, name in enumerate(a[0].split(",")) if name.endswith("_time")}
    assert timing, "metrics.csv records the sampling and update times"

    def values(lines):   # everything but the wall times, to the last digit
        return [[v for i, v in enumerate(line.split(",")) if i not in timing] for line in lines]
    assert values(a) == values(b)


def test_repair_deletes_a_truncated_entry_and_keeps_the_others(tmp_path):
    """A process killed while JAX wrote an entry leaves it truncated (JAX writes in place);
    ``difftre doctor`` (jax_setup.repair_cache) deletes exactly such entries."""
    import jax
    from jax._src import compilation_cache as cc
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    old = {k: getattr(jax.config, k) for k in keys}
    cache = tmp_path / "c"
    try:
        for k, v in zip(keys, (str(cache), 0.0, 0)):
            jax.config.update(k, v)
        cc.reset_cache()
        x = jax.numpy.arange(5.0)
        jax.jit(lambda v: v * 2.75 - 0.5)(x).block_until_ready()
        jax.jit(lambda v: jax.numpy.sin(v) + 3.5)(x).block_until_ready()
    finally:
        for k, v in old.items():
            jax.config.update(k, v)
        cc.reset_cache()
    entries = sorted(cache.glob("*-cache"))
    assert len(entries) >= 2
    assert jax_setup.repair_cache(cache, settle_seconds=0.0) == (len(entries), [])
    data = entries[0].read_bytes()
    entries[0].write_bytes(data[: len(data) // 2])
    assert jax_setup.repair_cache(cache) == (0, [])   # just written: maybe still being written, left alone
    os.utime(entries[0], (time.time() - 120, time.time() - 120))
    n_ok, removed = jax_setup.repair_cache(cache)
    assert removed == [entries[0].name] and n_ok == 0
    assert not entries[0].exists() and all(e.exists() for e in entries[1:])
    assert jax_setup.repair_cache(cache, settle_seconds=0.0) == (len(entries) - 1, [])


def test_unusable_cache_directory_only_disables_the_cache(tmp_path, monkeypatch, caplog):
    """A cache path under a file (a read-only home on a cluster node fails the same way) gives
    no cache and a log line that names the variable, and nothing is raised (the run goes on)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(jax_setup.CACHE_ENV, str(blocker / "cache"))
    with caplog.at_level("INFO", logger="difftre"):
        assert jax_setup.enable_compilation_cache() is None
    assert "compilation cache disabled" in caplog.text and jax_setup.CACHE_ENV in caplog.text
