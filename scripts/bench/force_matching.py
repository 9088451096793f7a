#!/usr/bin/env python
"""Force-matching throughput and memory: frames per second of an epoch on one device and on two
(fake CPU devices, XLA_FLAGS=--xla_force_host_platform_device_count=2, each batch split between
them with shard_map), and the peak resident memory of each run.

Reference (--system): ``lj``, the LJ frames of config=lj_fm (scripts/reference_lj.py; N = 1000,
200 frames, 180 for training) and its spline; ``water``, the SPC/E frames of config=water_fm
(reference=water_spce: 901 beads, 300 frames, 270 for training) and config=water_cpu's pair +
three-body model. Plain gradient steps (Adam, no Gauss–Newton matrix), so an epoch is
mini-batch force evaluations and their gradients only. Each configuration runs in a fresh
process: --epochs epochs after a first (compiling) one, best epoch reported.

    python scripts/bench/force_matching.py --batch 20 --epochs 3
    python scripts/bench/force_matching.py --system water --batch 30 --epochs 2

Prints frames/s for 1 and 2 devices and their ratio (2 devices / 1 device, same run); on a
2-core CPU the two fake devices share the two cores XLA already uses for one, so the ratio
measures the cost of the split, not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, resource, sys, time
import jax
from hydra import compose, initialize_config_dir
from difftre_cli import assemble
from difftre_cli.learn.force_matching_regime import ForceMatchingRegime
from difftre_cli.store import RunStore
root, devices, batch, epochs, system = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
preset = {"lj": ["config=lj_fm"], "water": ["config=water_cpu", "reference=water_spce", "trainer=force_matching"]}
with initialize_config_dir(config_dir=root + "/configs", version_base=None):
    cfg = compose(config_name="train", overrides=[*preset[system], "optimizer=adam",
                  "trainer.precondition=none", f"trainer.batch_size={batch}", f"trainer.devices={devices}"])
reg = ForceMatchingRegime(assemble.build(cfg), RunStore("/tmp/fm_bench"), cfg)
params, opt = reg.init(jax.random.PRNGKey(0))
times = []
for e in range(epochs + 1):
    t0 = time.perf_counter()
    prop = reg.propose(params, opt, 1.0)
    params, opt = prop.params, prop.opt_state
    times.append(time.perf_counter() - t0)
best = min(times[1:])
print(json.dumps({"devices": devices, "n_train": reg.n_train, "first_epoch_s": times[0], "epoch_s": best,
                  "frames_per_s": reg.n_train / best, "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "jax_devices": jax.device_count()}))
"""


def run(devices: int, args) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if devices > 1:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(devices), str(args.batch), str(args.epochs),
                          args.system], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--system", choices=("lj", "water"), default="lj")
    args = ap.parse_args()
    ref = {"lj": ("runs/reference/lj_rho0.50_kT1.50.extxyz", "scripts/reference_lj.py --frames 200 --out "
                  "runs/reference/lj_rho0.50_kT1.50.extxyz"),
           "water": ("runs/reference/spce_901.trr", "the command in configs/reference/water_spce.yaml (make:)")}
    file, make = ref[args.system]
    if not (ROOT / file).is_file():
        sys.exit(f"no reference {file}: make it first ({make})")
    one, two = run(1, args), run(2, args)
    for r in (one, two):
        print(f"devices {r['devices']}: epoch {r['epoch_s']:.2f} s ({r['n_train']} frames, first {r['first_epoch_s']:.1f} s), "
              f"{r['frames_per_s']:.1f} frames/s, peak RSS {r['peak_rss_MiB']:.0f} MiB")
    print(f"ratio (2 devices / 1 device): frames/s {two['frames_per_s'] / one['frames_per_s']:.2f}, "
          f"peak RSS {two['peak_rss_MiB'] / one['peak_rss_MiB']:.2f}")


if __name__ == "__main__":
    main()
