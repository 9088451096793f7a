#!/usr/bin/env python
"""GPU suite: the cost of difftre's headline setups on one device, in one table.

What: LJ fluid MD steps/s at N = 1000, 8000, 64 000 and 256 000 (md_throughput.bench_difftre);
coarse-grained water (901 beads, DimeNet++, 500 snapshots per trajectory as published) and
diamond (1000 atoms, DimeNet++ on the SW prior, 400 snapshots) through update_cost.measure:
MD steps/s, the wall time of a reused and of a resampled DiffTRe update, the update's compile
time and the time to the first update; and each setup's peak memory (the device's
``peak_bytes_in_use`` on a GPU, the process's peak RSS on a CPU).

Why: the presets that matter are GPU-sized; this is the one command to run the day a GPU is
available (≤ 8 minutes on one GPU, by estimate: it has not run on one yet). ``--tiny`` runs
every code path of the full suite on the CPU with small sizes (1–2 minutes on 2 cores), so the
suite cannot rot: tests/test_gpu_suite.py runs it.

How: each setup runs in a child process of this script (``--child NAME``, internal) so that its
peak memory is its own; the parent collects the children's JSON rows and prints the table.
The parent never initialises a JAX backend (on a GPU it would hold device memory).

    python scripts/bench/gpu_suite.py [--json rows.json]          # one GPU, ≤ 8 min
    python scripts/bench/gpu_suite.py --tiny [--json rows.json]   # CPU, the same paths, small
    python scripts/bench/gpu_suite.py --only cg_water             # one setup
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@dataclass(frozen=True)
class Setup:
    """One row of the table: ``kind`` lj (md_throughput.bench_difftre with ``lj``'s keyword
    arguments) or update (update_cost.measure with Hydra ``overrides``, ``repeats`` reused
    updates, one resampled). ``extrapolate_to``: a production length (the published one, where
    the suite samples a shorter one) to which the notes extrapolate the resampled update at the
    measured MD rate."""
    name: str
    kind: str
    note: str
    lj: dict = field(default_factory=dict)
    overrides: tuple = ()
    repeats: int = 3
    extrapolate_to: int | None = None


def _lj(n, steps, repeats, equil):
    return Setup(f"lj_{n}", "lj", f"LJ ρ = 0.7, kT = 1, rc = 2.5, {steps} timed steps, best of {repeats}",
                 lj=dict(n_particles=n, steps=steps, repeats=repeats, equil=equil, skin=0.3, multiplier=1.25))


# water at the published trajectory lengths and snapshot count; only the first equilibration
# from the lattice is shortened (the suite measures cost, not physics)
WATER = ("config=water", "seed=0", "simulator.first_equilibration_steps=1000", "simulator.equilibration_steps=2000",
         "simulator.production_steps=5000", "simulator.every=10")
# diamond keeps the published 400 snapshots (the update's cost) from 10000 production steps, half
# the published 20000 (every 25 instead of 50), to fit the 8 minutes by estimate
DIAMOND = ("config=diamond", "seed=0", "system.n_particles=1000", "simulator.first_equilibration_steps=1000",
           "simulator.equilibration_steps=1000", "simulator.production_steps=10000", "simulator.every=25")
# --tiny: the same setups, small (compiling, not running, is their cost on a CPU). DimeNet++ with
# one block and small bases (tests/test_diamond.py's); water: 64 beads at the preset's density
# (901 / 27 nm³), the RDF range within half the box; diamond: 2 x 2 x 2 cells
TINY_NET = ("model.embed_size=8", "model.out_embed_size=8", "model.int_emb_size=4", "model.num_blocks=1",
            "model.num_spherical=3", "model.num_radial=3", "model.num_dense_out=1", "model.basis_emb_size=2")
WATER_TINY = ("config=water", "seed=0", "system.n_particles=64", f"system.box_size={(64 * 27 / 901) ** (1 / 3):.4f}",
              "observables.rdf.r_max=0.55", "observables.rdf.n_bins=55", *TINY_NET,
              "simulator.first_equilibration_steps=50", "simulator.equilibration_steps=20",
              "simulator.production_steps=40", "simulator.every=10")
# diamond --tiny drops the elastic constants: compiling their θ-gradient (third derivatives of
# the network) costs ~30 s on 2 CPU cores, the rest of the suite ~60 s; tests/test_diamond.py
# checks that observable
DIAMOND_TINY = ("config=diamond", "seed=0", "system.n_particles=64", *TINY_NET, "observables=[stress]", "~targets.stiffness",
                "simulator.first_equilibration_steps=50", "simulator.equilibration_steps=20",
                "simulator.production_steps=100", "simulator.every=25")


def setups(tiny: bool) -> list[Setup]:
    """The suite's rows, full or tiny (the same functions, smaller sizes)."""
    if tiny:
        return [_lj(125, 200, 2, 50),   # one LJ size: the larger ones run the same code (12 s of the test)
                Setup("cg_water", "update", "64 beads, small DimeNet++, 20 + 40 steps, 4 snapshots", overrides=WATER_TINY,
                      repeats=2),
                Setup("diamond", "update", "64 atoms, small DimeNet++, stress only, 20 + 100 steps, 4 snapshots", overrides=DIAMOND_TINY,
                      repeats=2, extrapolate_to=200)]
    return [_lj(1000, 5000, 3, 500), _lj(8000, 2000, 3, 300), _lj(64000, 1000, 3, 200), _lj(256000, 400, 3, 200),
            Setup("cg_water", "update", "config=water: 901 beads, DimeNet++, 2000 + 5000 steps, 500 snapshots as "
                  "published (first equilibration 1000 steps, published 10000)", overrides=WATER),
            Setup("diamond", "update", "config=diamond: 1000 atoms, SW + DimeNet++, 1000 + 10000 steps, 400 "
                  "snapshots (published: 1000 + 20000, first equilibration 10000, here 1000)", overrides=DIAMOND,
                  repeats=2, extrapolate_to=20000)]


# ------------------------------------------------------------------------ one setup (child)
def import_libraries() -> None:
    """Import JAX, JAX MD, difftre and the two benchmark modules with JAX's persistent
    compilation cache on, in a directory of the suite's own (``gpu_suite_imports`` under
    jax_setup.cache_dir(); none when that is off): importing JAX MD compiles ~120 small programs
    eagerly, ~6 s of every child on 2 CPU cores, which later children load. Afterwards nothing
    more is written there (threshold 1e9 s) and XLA's GPU autotuning cache stays off, so every
    program a setup measures is compiled cold, whatever ran before."""
    from difftre_cli import jax_setup
    base = jax_setup.cache_dir()
    path = None if base is None else base / "gpu_suite_imports"
    try:
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = None
    if path is not None:
        jax_setup.prepare_environment()   # before JAX is imported
    import jax
    jax.config.update("jax_persistent_cache_enable_xla_caches", None)
    if path is not None:
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    sys.path.insert(0, str(HERE))
    for module in ("jax_md", "difftre_cli.assemble", "md_throughput", "update_cost"):
        importlib.import_module(module)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)


def run_setup(setup: Setup) -> dict:
    """Measure one setup in this process; its row (numbers, device, peak memory)."""
    import_libraries()
    t0 = time.perf_counter()
    if setup.kind == "lj":
        from md_throughput import bench_difftre
        res = bench_difftre(**setup.lj)
        row = {"n_particles": setup.lj["n_particles"], "md_steps_per_s": res["steps_per_s"],
               "neighbor_rebuilds": res["rebuilds"], "overflow": bool(res["overflow"])}
    else:
        from update_cost import measure
        row = measure(setup.name, list(setup.overrides), setup.repeats, resamples=1, naive=False)
        if setup.extrapolate_to:
            extra = setup.extrapolate_to - row["production_steps"]
            row["extrapolated_production_steps"] = setup.extrapolate_to
            row["resampled_update_extrapolated_s"] = row["resampled_update_s"] + extra / row["md_steps_per_s"]
    row.update(setup=setup.name, kind=setup.kind, note=setup.note, measure_s=time.perf_counter() - t0)
    row.update(device_info())
    row.update(peak_memory())
    return row


def device_info() -> dict:
    """The first device's platform and kind, JAX's version, the host's CPU count."""
    import jax
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "device_count": jax.device_count(),
            "jax": jax.__version__, "cpu_count": os.cpu_count()}


def peak_memory() -> dict:
    """Peak memory of this process's setup: the device allocator's peak where the backend
    reports one (GPU), else the process's peak resident set (CPU); both kinds are labelled."""
    import resource

    import jax
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:   # backends without allocator statistics
        stats = {}
    peak = stats.get("peak_bytes_in_use")
    if peak is None:
        return {"peak_memory_mb": rss_mb, "peak_memory_kind": "process peak RSS", "peak_rss_mb": rss_mb}
    return {"peak_memory_mb": peak / 2 ** 20, "peak_memory_kind": "device peak_bytes_in_use",
            "peak_rss_mb": rss_mb}


# ------------------------------------------------------------------------- the suite (parent)
def run_child(setup: Setup, tiny: bool, timeout: float) -> dict:
    """Run one setup in a child process of this script; its row, or a row naming the failure.
    The child's own output goes to stderr, so that stdout carries only the table."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if tiny:
        env["JAX_PLATFORMS"] = "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", setup.name, "--row-json", str(out)]
        cmd += ["--tiny"] if tiny else []
        print(f"[gpu_suite] {setup.name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, env=env, stdout=sys.stderr, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = None
        if rc == 0 and out.exists():   # wall_s: the child's, start and imports included
            return dict(json.loads(out.read_text()), wall_s=time.perf_counter() - t0)
    error = f"timed out after {timeout:.0f} s" if rc is None else f"exit {rc}"
    return {"setup": setup.name, "kind": setup.kind, "note": setup.note, "error": error,
            "wall_s": time.perf_counter() - t0}


def default_backend(env: dict) -> str:
    """JAX's default backend, asked of a child process (the parent keeps no device)."""
    res = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"], env=env,
                         capture_output=True, text=True, timeout=300)
    return res.stdout.strip().splitlines()[-1] if res.returncode == 0 and res.stdout.strip() else "unknown"


COLUMNS = [("setup", "setup"), ("N", "n_particles"), ("snapshots", "snapshots"), ("MD steps/s", "md_steps_per_s"),
           ("reused update s", "reused_update_s"), ("resampled update s", "resampled_update_s"),
           ("update compile s", "update_compile_s"), ("time to first update s", "time_to_first_update_s"),
           ("peak memory MB", "peak_memory_mb"), ("wall s", "wall_s")]


def fmt(value) -> str:
    """A cell: integers as they are, floats to 3-4 significant digits, missing as —."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool) or isinstance(value, (int, str)):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def table(rows: list[dict]) -> str:
    """The rows as one Markdown table (a failed setup shows its error)."""
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [fmt(r.get(k)) for _, k in COLUMNS]
        if "error" in r:
            cells[3] = f"failed: {r['error']}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(rows: list[dict], wall: float, tiny: bool) -> list[str]:
    """The lines under the table: device, versions, memory kind, each setup's settings, wall time."""
    ok = [r for r in rows if "error" not in r]
    first = ok[0] if ok else {}
    device = f"{first.get('platform', '?')}: {first.get('device_kind', '?')} (x{first.get('device_count', '?')})"
    out = [f"device {device}; {first.get('cpu_count', '?')} CPU(s); jax {first.get('jax', _version('jax'))}, "
           f"jaxlib {_version('jaxlib')}; {'--tiny' if tiny else 'full suite'}; "
           f"{time.strftime('%Y-%m-%d %H:%M')}",
           f"peak memory: {', '.join(sorted({r['peak_memory_kind'] for r in ok})) or '—'}, per setup (one process each)"]
    for r in rows:
        line = f"{r['setup']}: {r['note']}"
        if r.get("overflow"):
            line += "; the neighbour list overflowed in the timed run: its steps/s are not valid"
        if "resampled_update_extrapolated_s" in r:
            line += (f"; resampled update extrapolated to {r['extrapolated_production_steps']} production steps "
                     f"at the measured MD rate: {fmt(r['resampled_update_extrapolated_s'])} s")
        out.append(line)
    out.append("update compile: the first update, compilation included; time to first update: from the "
               "config to the first update done (first trajectory and all compilation included); wall s: the "
               "setup's process, start and imports included")
    out.append(f"wall time of the suite: {wall:.1f} s" + ("" if tiny else " (goal ≤ 480 s on one GPU)"))
    return out


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="small sizes on the CPU (JAX_PLATFORMS=cpu): every code path")
    ap.add_argument("--only", nargs="+", default=None, metavar="SETUP", help="these setups only (names as in the table)")
    ap.add_argument("--json", type=Path, default=None, help="write all rows here")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per setup (default 600, --tiny 300)")
    ap.add_argument("--force", action="store_true", help="run the full suite even without a GPU (hours on a CPU)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--row-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    chosen = {s.name: s for s in setups(args.tiny)}
    unknown = sorted(set(args.only or []) - set(chosen))
    if unknown:
        ap.error(f"unknown setup(s) {unknown}; choose from {sorted(chosen)}")
    if args.child:
        args.row_json.write_text(json.dumps(run_setup(chosen[args.child]), indent=1, default=float))
        return 0
    if not (args.tiny or args.force) and (backend := default_backend(dict(os.environ))) == "cpu":
        print(f"gpu_suite: JAX's default backend is {backend}: the full suite would take hours there; "
              "use --tiny (or --force)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    timeout = args.timeout or (300.0 if args.tiny else 600.0)
    rows = [run_child(s, args.tiny, timeout) for name, s in chosen.items() if not args.only or name in args.only]
    wall = time.perf_counter() - t0
    print(table(rows))
    print("\n".join(notes(rows, wall, args.tiny)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "wall_s": wall, "tiny": args.tiny}, indent=1, default=float))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
