#!/usr/bin/env python
"""Start-up with and without the persistent compilation cache: the same ``difftre train``
twice in a row on this machine, the first with an empty cache directory, the second with what
the first left there.

Times, from the start of each process: the first progress line of the first trajectory
(``trajectory: step``: everything compiled that the sampler needs), the first update
(``update 1/``) and the end of the process; and the ratio first/second run of each.

    python scripts/bench/startup.py                      # the 1000-particle reference setup
    python scripts/bench/startup.py --setup lj           # config=lj
    python scripts/bench/startup.py --setup lj_mixture   # config=lj_mixture: three state points
    python scripts/bench/startup.py --setup water --no-update   # config=water: first progress only

Goal (issue 18): the second run reaches its first update at least 3x sooner. The cache is
jax_setup.py's (``$DIFFTRE_COMPILATION_CACHE``, by default under ``$XDG_CACHE_HOME``); this
script points it at a temporary directory, so the user's cache is neither used nor touched.

What no cache can remove: each process records, through ``jax.monitoring``, the wall-time spans
in which any of its threads traced a program, lowered it or compiled it (a cache hit is the
loading of the executable inside that span). The first update less the union of those spans is
the run's floor: imports, Hydra, setup and the programs' execution (the first trajectory's MD).
The warm run's floor bounds the ratio any compilation cache could reach, even one that skipped
tracing: empty-cache first update / warm floor. Spans of a background compile thread that
overlap the main thread's work are removed as well, so the floor is a lower bound and the
bound on the ratio an upper one.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the update_cost.py reference setup (plain DiffTRe, N = 1000, ρ = 0.7, kT = 1, 100 snapshots)
SETUPS = {
    "reference": ["config=lj_liquid", "system.n_particles=1000", "system.density=0.7", "system.kT=1.0",
                  "simulator.production_steps=1000", "simulator.every=10", "trainer.precondition=none"],
    "lj": ["config=lj"],
    "lj_mixture": ["config=lj_mixture"],
    "water": ["config=water"],
}
MARKS = {"first progress": "trajectory: step", "first update": "update 1/"}
#: JAX's compile-path events (jax/_src/dispatch.py); the backend span includes a cache load
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
#: ``difftre <argv>`` (cli.main) with a listener that writes the compile spans to $SPANS_FILE at exit
PROBE = f"""
import atexit, json, os, sys
import jax.monitoring
spans = []
def listen(event, start, end, **_):
    if event in {COMPILE_EVENTS!r}:
        spans.append((start, end))
jax.monitoring.register_event_time_span_listener(listen)
def save():   # list(): a compile thread may still append
    with open(os.environ["SPANS_FILE"], "w") as f:
        f.write(json.dumps(list(spans)))
atexit.register(save)
from difftre_cli import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def union_seconds(spans, end: float) -> float:
    """Length of the union of the (start, stop) intervals, clipped to [0, end]."""
    total, reach = 0.0, 0.0
    for a, b in sorted((max(a, 0.0), min(b, end)) for a, b in spans):
        if b > max(a, reach):
            total += b - max(a, reach)
            reach = b
    return total


def run(overrides, cache: Path, run_dir: Path, stop_after: str, timeout: float) -> dict:
    """One ``difftre train`` process: seconds from its start to each mark and to its end."""
    spans_file = run_dir.with_suffix(".spans.json")
    # TF_CPP_MIN_LOG_LEVEL: the probe imports JAX before cli.main can set it (jax_setup.py)
    env = dict(os.environ, DIFFTRE_COMPILATION_CACHE=str(cache), PYTHONUNBUFFERED="1",
               SPANS_FILE=str(spans_file), TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    cmd = [sys.executable, "-c", PROBE, "train", *overrides, "trainer.updates=1", f"hydra.run.dir={run_dir}"]
    t0, wall0 = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen, tail = {}, []
    for line in proc.stdout:
        t = time.perf_counter() - t0
        tail = (tail + [line])[-20:]
        for name, mark in MARKS.items():
            if name not in seen and mark in line:
                seen[name] = round(t, 2)
        if stop_after in seen and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        if t > timeout:
            proc.kill()
    rc = proc.wait()
    seen["end"] = round(time.perf_counter() - t0, 2)
    if stop_after not in seen:
        raise SystemExit(f"`difftre {' '.join(cmd[3:])}` ended (exit {rc}) before its {stop_after}:\n{''.join(tail)}")
    if not spans_file.is_file():
        raise SystemExit(f"`difftre {' '.join(cmd[3:])}` (exit {rc}) left no compile spans:\n{''.join(tail)}")
    spans = [(a - wall0, b - wall0) for a, b in json.loads(spans_file.read_text())]
    compiling = union_seconds(spans, seen[stop_after])
    seen["compiling"] = round(compiling, 2)
    seen["floor"] = round(seen[stop_after] - compiling, 2)
    return seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", choices=list(SETUPS), default="reference")
    ap.add_argument("--no-update", action="store_true", help="stop at the first progress line (long first trajectories)")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per run")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args(argv)
    stop_after = "first progress" if args.no_update else "first update"
    overrides = SETUPS[args.setup] + args.overrides
    print(f"load average {os.getloadavg()[0]:.2f}; difftre train {' '.join(overrides)} trainer.updates=1", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "xla"
        rows = [run(overrides, cache, Path(tmp) / f"run{i}", stop_after, args.timeout) for i in (1, 2)]
        n_files = sum(1 for _ in cache.rglob("*") if _.is_file())
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 1e6
    print(f"cache after the first run: {n_files} files, {size:.0f} MB")
    print(f"{'seconds from start':22s} {'empty cache':>12s} {'warm cache':>12s} {'ratio':>7s}")
    for key in [*MARKS, "end"]:
        if key in rows[0] and key in rows[1]:
            print(f"{key:22s} {rows[0][key]:12.1f} {rows[1][key]:12.1f} {rows[0][key] / rows[1][key]:7.2f}")
    print(f"{'  of which compiling':22s} {rows[0]['compiling']:12.1f} {rows[1]['compiling']:12.1f}"
          "   (tracing, lowering, compiling or loading; any thread)")
    print(f"{'  floor (the rest)':22s} {rows[0]['floor']:12.1f} {rows[1]['floor']:12.1f}"
          "   (imports, Hydra, setup, execution)")
    best = rows[0][stop_after] / rows[1]["floor"]
    print(f"the most any compilation cache could give: {rows[0][stop_after]:.1f} / {rows[1]['floor']:.1f} s"
          f" = {best:.2f}x to the {stop_after}")
    if not args.no_update:
        ratio = rows[0]["first update"] / rows[1]["first update"]
        print(f"{'PASS' if ratio >= 3 else 'FAIL'}: the second run reaches its first update {ratio:.2f}x sooner (goal 3x)")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"setup": args.setup, "overrides": overrides, "runs": rows,
                                         "cache_files": n_files, "cache_mb": size}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
