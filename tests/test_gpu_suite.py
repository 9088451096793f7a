"""The GPU suite (scripts/bench/gpu_suite.py) cannot rot: its ``--tiny`` mode runs every setup of
the full suite on the CPU with small sizes (the same functions, LJ through md_throughput and
water and diamond through update_cost), each row has finite positive numbers and the table is
printed; the full suite's overrides still compose. ~1.5-2 min on 2 CPU cores."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "bench" / "gpu_suite.py"
LJ_KEYS = ("n_particles", "md_steps_per_s", "peak_memory_mb", "wall_s")
UPDATE_KEYS = LJ_KEYS + ("snapshots", "reused_update_s", "resampled_update_s", "update_compile_s",
                         "time_to_first_update_s")


def _suite():
    """scripts/bench/gpu_suite.py as a module (registered first: it defines dataclasses)."""
    if "gpu_suite" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
        sys.modules["gpu_suite"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["gpu_suite"]


def test_tiny_covers_every_setup_of_the_full_suite_and_the_full_overrides_compose():
    from hydra import compose, initialize_config_dir
    suite = _suite()
    full, tiny = suite.setups(tiny=False), suite.setups(tiny=True)
    assert {s.kind for s in full} == {s.kind for s in tiny} == {"lj", "update"}
    assert {s.name for s in full if s.kind == "update"} == {s.name for s in tiny if s.kind == "update"}
    assert [s.lj["n_particles"] for s in full if s.kind == "lj"] == [1000, 8000, 64000, 256000]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        for s in full:
            if s.kind == "update":
                cfg = compose(config_name="train", overrides=list(s.overrides))
                assert cfg.simulator.production_steps // cfg.simulator.every in (400, 500)


def test_tiny_suite_prints_one_table_with_every_row(tmp_path):
    out = tmp_path / "rows.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json", str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    rows = {r["setup"]: r for r in json.loads(out.read_text())["rows"]}
    expected = _suite().setups(tiny=True)
    assert set(rows) == {s.name for s in expected}
    for s in expected:
        row = rows[s.name]
        assert "error" not in row, row
        keys = LJ_KEYS if s.kind == "lj" else UPDATE_KEYS
        for key in keys + (("resampled_update_extrapolated_s",) if s.extrapolate_to else ()):
            assert math.isfinite(row[key]) and row[key] > 0, (s.name, key, row[key])
        assert row["peak_memory_kind"] == "process peak RSS" and row["platform"] == "cpu"
    lines = res.stdout.splitlines()
    assert lines[0].startswith("| setup | N | snapshots | MD steps/s |")
    for s in expected:
        assert sum(line.startswith(f"| {s.name} |") for line in lines) == 1
    assert any(line.startswith("wall time of the suite:") for line in lines)
