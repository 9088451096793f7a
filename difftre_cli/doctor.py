"""``difftre doctor``: what is installed, what JAX runs on, and whether a tiny simulation works.

Checks (each prints ok/FAIL with numbers):

1. float32 reductions and vmapped mat-vecs compiled by XLA agree with NumPy in float64
   (JAX 0.10.2 miscompiles them on CPU, jax-ml/jax#39103);
2. our neighbour-list pair energy of a 108-particle LJ liquid equals the all-pairs sum;
3. 400 NVE steps of that liquid stay finite and conserve the total energy (drift < 1e-3 ε per
   particle), and the compiled throughput is reported;
4. every entry of the persistent compilation cache reads; truncated ones (left by a process
   killed while writing them) are deleted and reported (jax_setup.repair_cache).

Exit code 0 when every check passes, 1 otherwise (an installation problem, not bad input).
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from . import potentials
from .jax_setup import CACHE_ENV, cache_dir, repair_cache
from .sampler import sampler_config
from .simulate import Sampler
from .store import versions
from .system import build_system


def _print_table(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def _check_reductions():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.0, 1.0, size=(8, 100_000)).astype(np.float32)
    x = rng.uniform(0.0, 1.0, size=(100_000,)).astype(np.float32)

    def matvec_sum(a, x):   # the pattern of jax-ml/jax#39103: vmapped reductions, then a sum
        rows = jax.vmap(lambda row: jnp.sum(row * x))(a)
        return rows, jnp.sum(rows)

    rows, total = jax.jit(matvec_sum)(jnp.asarray(a), jnp.asarray(x))
    want = a.astype(np.float64) @ x.astype(np.float64)
    err = max(float(np.max(np.abs(np.asarray(rows, np.float64) - want) / want)),
              abs(float(total) - want.sum()) / want.sum())
    return err < 1e-5, f"max relative error {err:.1e} (limit 1e-5)"


def _lj_liquid():
    sys_cfg = OmegaConf.create({"units": "lj", "n_particles": 108, "density": 0.7, "kT": 1.0, "mass": 1.0,
                                "lattice": "fcc"})
    system = build_system(sys_cfg)
    pot = potentials.build(OmegaConf.create({"kind": "lj", "sigma": 1.0, "epsilon": 1.0}),
                           OmegaConf.create({"kind": "none"}), 2.5)
    return system, pot


def _check_energy_and_nve():
    system, pot = _lj_liquid()
    scfg = sampler_config(OmegaConf.create({"kind": "nve", "dt": 0.002, "equilibration_steps": 0,
                                            "first_equilibration_steps": 0, "production_steps": 400, "every": 20}))
    sampler = Sampler(pot, system, scfg)
    params = pot.init(jax.random.PRNGKey(0))
    state, nbrs = sampler.init(jax.random.PRNGKey(1), params)
    # 1. neighbour-list energy vs all pairs
    R = np.asarray(state.position, np.float64)
    d = R[:, None, :] - R[None, :, :]
    d -= system.box_size * np.round(d / system.box_size)
    r = np.sqrt((d ** 2).sum(-1))[np.triu_indices(len(R), 1)]
    r = r[r < 2.5]
    u_ref = float(np.sum(4 * (r ** -12 - r ** -6) - 4 * (2.5 ** -12 - 2.5 ** -6)))
    u_nb = float(sampler.energy(state.position, nbrs, params))
    e_ok = abs(u_nb - u_ref) < 1e-4 * max(1.0, abs(u_ref))
    # 2. NVE: finite, energy conserved
    t0 = time.perf_counter()
    res = sampler.sample(params, state, nbrs, first=True)
    jax.block_until_ready(res.state.position)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res2 = sampler.sample(params, res.state, res.neighbor)
    jax.block_until_ready(res2.state.position)
    rate = 400 / (time.perf_counter() - t0)
    u = np.asarray(res.trajectory.energies, np.float64)
    # kT is Σp²/m/(N·d) (sampler.kinetic_temperature), so the kinetic energy is N·d·kT/2
    kin = 0.5 * system.n_particles * np.shape(state.position)[-1] * np.asarray(res.trajectory.kT, np.float64)
    total = (u + kin) / system.n_particles
    drift = float(np.max(np.abs(total - total[0])))
    nve_ok = bool(res.ok and res2.ok and drift < 1e-3 and np.all(np.isfinite(total)))
    return (e_ok, f"{u_nb:.5f} vs all pairs {u_ref:.5f} ε"), \
        (nve_ok, f"finite={res.ok and res2.ok}, max |ΔE|/N {drift:.1e} ε (limit 1e-3); "
                 f"{rate:.0f} steps/s after a {t_first:.1f} s first call (compile)")


def _check_cache():
    name = "compilation cache entries"
    path = cache_dir()
    if path is None or not path.is_dir():
        return name, True, "no cache directory"
    n_ok, removed = repair_cache(path)
    detail = f"{n_ok} read in {path}"
    if removed:
        detail += (f"; deleted {len(removed)} truncated (a process killed while writing them; they are "
                   f"compiled again when needed): {', '.join(removed[:3])}{' …' if len(removed) > 3 else ''}")
    return name, True, detail


def doctor(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if any(a.startswith("precision=") for a in args):
        jax.config.update("jax_enable_x64", args[-1].split("=", 1)[1] == "double")
    v = versions()
    rows = [(k, str(val)) for k, val in v.items()]
    for extra in ("ase", "phonopy", "MDAnalysis", "openmm", "submitit", "hydra-submitit-launcher"):
        try:
            rows.append((extra, metadata.version(extra)))
        except metadata.PackageNotFoundError:
            rows.append((extra, "not installed (optional)"))
    rows.append(("lammps (lmp)", shutil.which("lmp") or "not found (optional, benchmarks only)"))
    _print_table("difftre doctor — versions", rows)
    devices = jax.devices()
    _print_table("devices and precision", [
        ("default backend", jax.default_backend()),
        ("devices", ", ".join(f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}" for d in devices)),
        ("precision", "double (float64)" if jax.config.jax_enable_x64 else "single (float32); precision=double switches"),
        ("CPU cores", str(os.cpu_count())),
        ("XLA_FLAGS", os.environ.get("XLA_FLAGS", "(unset)")),
        ("compilation cache", str(cache_dir() or f"off ({CACHE_ENV}=off)")),
        ("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "(unset)")),
        ("python", f"{platform.python_version()} {sys.executable}")])
    checks = []
    try:
        checks.append(("float32 reductions (jax-ml/jax#39103)", *_check_reductions()))
    except Exception as exc:  # noqa: BLE001 - doctor reports every failure, it does not stop
        checks.append(("float32 reductions (jax-ml/jax#39103)", False, repr(exc)))
    try:
        e, n = _check_energy_and_nve()
        checks.append(("LJ energy on the neighbour list", *e))
        checks.append(("tiny simulation (108 LJ particles, 400 NVE steps)", *n))
    except Exception as exc:  # noqa: BLE001
        checks.append(("tiny simulation", False, repr(exc)))
    checks.append(_check_cache())
    _print_table("checks", [(name, ("[green]ok[/] " if ok else "[red]FAIL[/] ") + detail) for name, ok, detail in checks])
    failed = [name for name, ok, _ in checks if not ok]
    if failed:
        print(f"difftre doctor: {len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("difftre doctor: all checks passed")
    return 0
