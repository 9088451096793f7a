#!/usr/bin/env python
"""MD throughput of the difftre engine vs plain JAX MD vs LAMMPS (one rank and one rank per core),
for Lennard-Jones and for the project's spline pair model; with ``--profile``, where the time of
one MD step goes (neighbour list, force kernel, integrator, snapshot recording).

State point: ρ = 0.7, kT = 1, dt = 0.005, rc = 2.5, float32, NVT (difftre and JAX MD: Langevin,
or difftre with ``--integrator nose_hoover``; LAMMPS: fix nvt), skin 0.3. For each N the system
starts on a simple-cubic lattice (N = n³; fcc when N = 4n³ and not a cube), is equilibrated
briefly, then K steps are timed after compilation (best of --repeats).

Models (``--models``):

- ``lj``: LJ truncated and shifted at rc (difftre: the ``lj`` prior and no model; LAMMPS
  ``pair_style lj/cut``);
- ``spline``: the pair model of the reference DiffTRe setup (``config=lj_liquid``: the repulsive
  prior of configs/prior/repulsive.yaml + the cubic spline of configs/model/spline.yaml with
  lj_liquid's knots), its knot values fitted so that prior + spline is LJ's u(r) (least squares
  on [0.9, rc], within 0.01 ε; the same fluid as ``lj``); LAMMPS runs the same total u(r) exported by
  ``difftre_cli.export`` (``pair_style table linear 5000``, the same cutoff and state point);
- ``spline0`` (profile only by default): the same model at θ = 0 (knots zero, the prior alone),
  the state in which the reference setup of update_cost.py samples its first trajectories.

At each N the models run on neighbour lists of one width (the widest of their own allocations on
their equilibrated fluids), so a ratio compares the models, not the maximum occupancy each
allocation happened to meet (89 vs 95 slots for the same fluid: 7 % of the step).

LAMMPS runs on 1 rank and, with Open MPI, on K ranks (K = the cores this process may use,
``len(os.sched_getaffinity(0))``, the cores XLA's CPU threads use), ``OMP_NUM_THREADS=1``.

The profile (``--profile``, after the throughput table) times each piece as its own compiled
program in the same process: a neighbour-list rebuild, the list's did-anyone-move check, the force
call, the energy call (what a snapshot records), one MD step on a fixed list (force + integrator),
and the sampler's chunk program (``--profile-steps`` steps) without recording and with a snapshot
(positions, U_ref, kT) every ``--every`` steps. All programs of a size are compiled first, then
run in --repeats interleaved rounds, each piece's best kept (a burst of load on a shared machine
hits them alike). At N = 1000 it also runs the reference DiffTRe setup as training builds it
(update_cost.py's setup "reference": assemble, a first trajectory from the lattice, ``sample``).
It then splits the step into list, force, integrator and the rest, and the gap between LJ and
the reference setup into the model, the fluid at θ = 0, the recording, the list width (the
training sampler's list is sized on the lattice start) and the host loop.

    python scripts/bench/md_throughput.py                                  # LJ + spline, N = 1000, 8000
    python scripts/bench/md_throughput.py --sizes 1000 8000 --steps 1000 200 --json out.json
    python scripts/bench/md_throughput.py --profile --profile-steps 1000   # + the step profile
    python scripts/bench/md_throughput.py --integrator nose_hoover          # LAMMPS's thermostat (no RNG)
    python scripts/bench/md_throughput.py --sizes 1000 --steps 300 --repeats 1 --profile  # quick look

Goals (issue 18): difftre ≥ LAMMPS with as many ranks as difftre has cores at N = 1000 and 8000,
and the spline model's step within 1.3× of LJ's. The exit status keeps the older floor:
1 if difftre (LJ) is below 1/3 of LAMMPS's one-rank steps/s at some size.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

warnings.filterwarnings("ignore", message="Explicitly requested dtype")

ROOT = Path(__file__).resolve().parents[2]
RHO, KT, DT, RC = 0.7, 1.0, 0.005, 2.5
GOAL = 1.0 / 3.0            # exit-status floor: difftre / LAMMPS one rank
GOAL_CORES = 1.0            # issue 18: difftre / LAMMPS with as many ranks as cores
GOAL_SPLINE = 1.3           # issue 18: spline step cost / LJ step cost
TABLE_POINTS = 5000
FIT_FROM = 0.9           # the spline is fitted to LJ on [FIT_FROM, rc] (u_LJ(0.9) = 6.6 ε)


def cores() -> int:
    """The cores this process (and XLA's CPU threads) may run on."""
    return len(os.sched_getaffinity(0))


def lattice(n_particles: int, density: float = RHO):
    """Lattice positions in [0, L) and kind: sc if N = n³, else fcc (N = 4n³)."""
    box = (n_particles / density) ** (1.0 / 3.0)
    n = round(n_particles ** (1.0 / 3.0))
    if n ** 3 == n_particles:
        kind, basis = "sc", np.zeros((1, 3))
    else:
        n = round((n_particles / 4) ** (1.0 / 3.0))
        if 4 * n ** 3 != n_particles:
            raise SystemExit(f"N={n_particles} is neither n³ nor 4n³")
        kind = "fcc"
        basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    g = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = (g[:, None, :] + basis[None] + 0.25).reshape(-1, 3) * (box / n)
    return sites.astype(np.float32), box, kind, n


def _timed(fn, repeats):
    """Best wall and CPU time over ``repeats`` calls (fn must block)."""
    best_wall = best_cpu = math.inf
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best_wall, best_cpu


# ---------------------------------------------------------------------------- models
def reference_model_configs() -> tuple[dict, dict]:
    """(prior, model) config mappings of the reference DiffTRe setup: configs/prior/repulsive.yaml
    and configs/model/spline.yaml with the model overrides of configs/config/lj_liquid.yaml."""
    from omegaconf import OmegaConf
    prior = OmegaConf.to_container(OmegaConf.load(ROOT / "configs/prior/repulsive.yaml"))
    model = OmegaConf.load(ROOT / "configs/model/spline.yaml")
    model = OmegaConf.to_container(OmegaConf.merge(model, OmegaConf.load(ROOT / "configs/config/lj_liquid.yaml").model))
    if float(model["cutoff"]) != RC:
        raise SystemExit(f"configs/model/spline.yaml: cutoff {model['cutoff']} != {RC}")
    return prior, model


def pair_model(model: str):
    """(potential, params, note) of a model name (module docstring)."""
    import jax
    import jax.numpy as jnp

    from difftre_cli import potentials
    from difftre_cli.potentials import priors

    if model == "lj":
        pot = potentials.build({"kind": "lj", "epsilon": 1.0, "sigma": 1.0}, {"kind": "none"}, RC)
        return pot, pot.init(jax.random.PRNGKey(0)), "LJ (prior lj, no model)"
    if model not in ("spline", "spline0"):
        raise SystemExit(f"unknown model {model!r}")
    prior_cfg, model_cfg = reference_model_configs()
    pot = potentials.build(prior_cfg, model_cfg, RC)
    params = pot.init(jax.random.PRNGKey(0))
    spline = pot.model
    note = (f"prior {prior_cfg['kind']} (n = {prior_cfg['exponent']}) + spline ({spline.n_knots} knots on "
            f"[{spline.r_min:g}, {spline.cutoff:g}])")
    if model == "spline0":
        return pot, params, note + ", θ = 0"
    lj = priors.lennard_jones(cutoff=RC)
    params = {"model": {"knot_values": fit_knots(pot, lj, FIT_FROM)}}
    r = jnp.linspace(FIT_FROM, RC, 2000)
    dev = float(jnp.max(jnp.abs(pot.pair(params, r) - lj(r))))
    return pot, params, note + f", knots fitted to LJ: max |u - u_LJ| on [{FIT_FROM:g}, {RC:g}] = {dev:.4f} ε"


def fit_knots(pot, target, r_lo: float, points: int = 4000):
    """Knot values of ``pot``'s spline for which prior + spline is the least-squares fit to
    ``target(r)`` on ``points`` points of [r_lo, cutoff] (the spline is linear in its knots)."""
    import jax
    import jax.numpy as jnp

    r = jnp.linspace(r_lo, pot.cutoff, points)
    basis = jax.vmap(lambda y: pot.model({"knot_values": y}, r))(jnp.eye(pot.model.n_knots - 1))
    y, *_ = np.linalg.lstsq(np.asarray(basis, np.float64).T, np.asarray(target(r) - pot.prior(r), np.float64),
                            rcond=None)
    return jnp.asarray(y, jnp.float32)


# --------------------------------------------------------------------------- difftre
def equilibrated(n_particles, equil, skin, multiplier, model="lj", steps=1000, integrator="langevin"):
    """A sampler of ``model`` and an equilibrated (state, list) whose list does not overflow in
    ``steps`` steps (compiled for them): SimpleNamespace(md, params, state, nbrs, note, system, check:
    the checking run's result, rebuilds: its list builds)."""
    import jax

    from difftre_cli import sampler, simulate, units
    from difftre_cli.system import System

    pos, box, _, _ = lattice(n_particles)
    system = System(n_particles=n_particles, box_size=box, kT=KT, mass=1.0, positions=pos,
                    units=units.get("lj"), species=np.zeros(n_particles, np.int32))
    pot, params, note = pair_model(model)
    cfg = sampler.SamplerConfig(integrator=integrator, dt=DT, gamma=1.0, skin=skin,
                                capacity_multiplier=multiplier)
    md = simulate.Sampler(pot, system, cfg)
    state, nbrs = md.init(jax.random.PRNGKey(1), params)
    # equilibrate (re-allocating as the lattice melts), then size the list on the fluid
    # (n - 1 steps + one snapshot: the one program bench_difftre times)
    for _ in range(3):
        res = md.run(params, state, nbrs, equil - 1, 1, 1)
        state = res.state
        nbrs = md.neighbor_fn.allocate(state.position)
    for extra in (0, 8, 16, 32, 64):
        nbrs = md.neighbor_fn.allocate(state.position, extra_capacity=extra)
        res = md.run(params, state, nbrs, steps - 1, 1, 1)
        if res.retries == 0:
            break
    return SimpleNamespace(md=md, params=params, state=state, nbrs=nbrs, note=note, system=system, check=res,
                           rebuilds=int(res.neighbor.num_builds) - int(nbrs.num_builds))


def same_width(setups) -> None:
    """Give the lists of ``setups`` (:func:`equilibrated`, one per model at one N) the width of the
    widest, re-allocated at each one's own state: the models are then compared at the same list
    width, not at whatever maximum occupancy each allocation happened to meet."""
    width = max(s.nbrs.max_occupancy for s in setups)
    for s in setups:
        if s.nbrs.max_occupancy < width:
            s.nbrs = s.md.neighbor_fn.allocate(s.state.position, extra_capacity=width - s.nbrs.max_occupancy)


def bench_setup(s, steps, repeats):
    """Steps/s of an :func:`equilibrated` setup through the sampler interface as training uses it
    (``md.run``: n steps in chunks of ~chunk_seconds each, no snapshots kept), best of ``repeats``."""
    import jax
    md, params, state, nbrs, out = s.md, s.params, s.state, s.nbrs, s.check

    def run(n):
        res = md.run(params, state, nbrs, n - 1, 1, 1)
        jax.block_until_ready(res.state.position)
        return res

    run(steps)   # compiled for this list's shape
    wall, cpu = _timed(lambda: run(steps), repeats)
    return dict(steps_per_s=steps / wall, steps_per_cpu_s=steps / cpu, rebuilds=s.rebuilds,
                max_neighbors=int(nbrs.max_occupancy), candidate_capacity=int(nbrs.candidate_capacity),
                overflow=out.retries > 0, model=s.note)


def bench_difftre(n_particles, steps, repeats, equil, skin, multiplier, *, model="lj", integrator="langevin"):
    """Steps/s of ``model``'s sampler at ``n_particles`` (:func:`bench_setup`)."""
    return bench_setup(equilibrated(n_particles, equil, skin, multiplier, model, steps, integrator), steps, repeats)


# ---------------------------------------------------------------------- plain JAX MD
def bench_jax_md(n_particles, steps, repeats, equil):
    import jax
    from jax_md import energy, partition, simulate, space

    pos, box, _, _ = lattice(n_particles)
    R = jax.numpy.asarray(pos)
    disp, shift = space.periodic(box)
    nfn, efn = energy.lennard_jones_neighbor_list(disp, box, r_cutoff=RC, dr_threshold=0.3,
                                                  format=partition.Sparse)
    init, apply = simulate.nvt_langevin(efn, shift, DT, KT, gamma=1.0)
    nbrs = nfn.allocate(R)
    st = init(jax.random.PRNGKey(0), R, neighbor=nbrs)

    def make(n):
        @jax.jit
        def sim(st, nb):
            def body(i, c):
                s, b = c
                b = b.update(s.position)
                return apply(s, neighbor=b), b
            return jax.lax.fori_loop(0, n, body, (st, nb))
        return sim

    eq, sim = make(equil), make(steps)
    for _ in range(3):
        st, nbrs = eq(st, nbrs)
        jax.block_until_ready(st)
        nbrs = nfn.allocate(st.position)
    out = sim(st, nbrs)
    jax.block_until_ready(out)
    if bool(out[1].did_buffer_overflow):
        nbrs = nfn.allocate(st.position, extra_capacity=32)
        out = sim(st, nbrs)
    wall, cpu = _timed(lambda: jax.block_until_ready(sim(st, nbrs)), repeats)
    return dict(steps_per_s=steps / wall, steps_per_cpu_s=steps / cpu,
                overflow=bool(out[1].did_buffer_overflow))


# --------------------------------------------------------------------------- LAMMPS
LAMMPS_INPUT = """units lj
atom_style atomic
lattice {kind} {rho}
region box block 0 {n} 0 {n} 0 {n}
create_box 1 box
create_atoms 1 box
mass 1 1.0
velocity all create {kT} 12345 loop geom
{pair}
neighbor 0.3 bin
neigh_modify every 1 delay 0 check yes
fix 1 all nvt temp {kT} {kT} 0.5
timestep {dt}
thermo {steps}
run {equil}
run {steps}
"""
LAMMPS_LJ = f"pair_style lj/cut {RC}\npair_coeff 1 1 1.0 1.0 {RC}"


def export_table(model: str, out: Path) -> str:
    """Write ``model``'s total pair potential (prior + spline) with difftre's LAMMPS exporter into
    ``out`` (difftre.table, in.difftre_pair); returns the exporter's input lines (pair_style,
    pair_coeff) with the table's path made absolute."""
    from difftre_cli.export import ExportOptions, export_potential, lammps

    s = model_system(model)
    opts = ExportOptions(format="lammps", out=out, points=TABLE_POINTS, interpolation="linear")
    export_potential(SimpleNamespace(potential=s.potential, system=s.system), s.params, opts, out,
                     f"md_throughput.py: {s.note}")
    snippet = (out / lammps.INPUT_FILE).read_text()
    return snippet.replace(f" {lammps.TABLE_FILE} ", f" {out / lammps.TABLE_FILE} ")


def model_system(model: str):
    """The potential, parameters and a (lattice) system of ``model``, enough to tabulate it."""
    from difftre_cli import units
    from difftre_cli.system import System

    pot, params, note = pair_model(model)
    pos, box, _, _ = lattice(1000)
    system = System(n_particles=1000, box_size=box, kT=KT, mass=1.0, positions=pos,
                    units=units.get("lj"), species=np.zeros(1000, np.int32))
    return SimpleNamespace(potential=pot, params=params, note=note, system=system)


def bench_lammps(n_particles, steps, repeats, equil, lmp, *, ranks=1, pair=LAMMPS_LJ):
    """Steps/s of LAMMPS (best of ``repeats`` runs' loop times) on ``ranks`` MPI ranks (Open MPI's
    mpirun when > 1), one OpenMP thread each; ``pair``: the pair_style lines."""
    _, _, kind, n = lattice(n_particles)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    best = math.inf
    cmd = [lmp] if ranks == 1 else [shutil.which("mpirun") or "mpirun", "--allow-run-as-root", "-np", str(ranks), lmp]
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in.bench"
        inp.write_text(LAMMPS_INPUT.format(kind=kind, rho=RHO, n=n, kT=KT, pair=pair, dt=DT,
                                           steps=steps, equil=equil))
        for _ in range(repeats):
            res = subprocess.run(cmd + ["-in", str(inp), "-log", "none", "-nocite"], cwd=tmp,
                                 env=env, capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                raise RuntimeError(f"lmp failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
            loops = re.findall(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms",
                               res.stdout)
            t, procs, nsteps, atoms = loops[-1]
            assert int(nsteps) == steps and int(atoms) == n_particles and int(procs) == ranks
            best = min(best, float(t))
    return dict(steps_per_s=steps / best, ranks=ranks)


# ---------------------------------------------------------------------------- profile
def _loop_timer(body, carry, n, *args):
    """A timer (a call runs the program once and returns ms per iteration) of ``n`` iterations of
    ``body(i, carry, *args) -> carry`` in one compiled loop, compiled and warmed up. The arrays come
    in as arguments, not as constants XLA could fold, and each iteration's input depends on the
    last one's result or on i, so nothing is hoisted out of the loop."""
    import jax
    loop = jax.jit(lambda c, a: jax.lax.fori_loop(0, n, lambda i, c: body(i, c, *a), c))
    jax.block_until_ready(loop(carry, args))

    def timer():
        t = time.perf_counter()
        jax.block_until_ready(loop(carry, args))
        return 1e3 * (time.perf_counter() - t) / n
    return timer


def _chunk_timer(md, params, state, nbrs, every, n_eq, n_rec, n_snapshots):
    """(timer, neighbour-list builds, overflow) of the sampler's compiled chunk program from ``state``:
    ``n_eq`` steps, then ``n_rec`` snapshots ``every`` steps apart, with buffers for ``n_snapshots``
    (one program with recording on and off); the timer returns ms per MD step."""
    import jax
    import jax.numpy as jnp
    i32 = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
    bufs = md._buffers(params, state, nbrs, n_snapshots)
    steps = n_eq + n_rec * every

    def call():
        out = md._chunk(params, state, nbrs, bufs, i32(n_eq), i32(n_rec), i32(0), i32(every))
        jax.block_until_ready(out)
        return out

    def timer():
        t = time.perf_counter()
        call()
        return 1e3 * (time.perf_counter() - t) / steps
    out = call()
    return timer, int(out[1].num_builds - nbrs.num_builds), bool(out[1].did_buffer_overflow | out[2])


def profile_timers(s, model, steps, every):
    """(row, timers) of one :func:`equilibrated` setup ``s`` of ``model``: the row's fixed facts (list
    width, builds, …) and one timer per measured piece (module docstring), all compiled."""
    import jax.numpy as jnp

    n_snap = max(1, steps // every)
    steps = n_snap * every
    md, p, nb, R = s.md, s.params, s.nbrs, s.state.position
    n_particles = R.shape[0]
    nfn = md.neighbor_fn

    def at(i, R):   # positions of iteration i: a uniform shift far below any skin
        return R + jnp.asarray(i, R.dtype) * 1e-7

    calls = 100
    row = dict(model=model, N=n_particles, steps=steps, every=every, snapshots=n_snap, note=s.note,
               max_neighbors=int(nb.max_occupancy))
    timers = {"rebuild_ms": _loop_timer(lambda i, b, R: nfn.rebuild(at(i, R), b), nb, calls, R),
              "check_ms": _loop_timer(lambda i, b, R: nfn.update(at(i, R), b), nb, calls, R),
              # force and energy chained as in MD (the next call's positions depend on this one's result)
              "force_ms": _loop_timer(lambda i, x, nb, p: x + 1e-9 * md.force(x, nb, p), R, calls, nb, p),
              "energy_ms": _loop_timer(lambda i, x, nb, p: x + 1e-12 * md.energy(x, nb, p), R, calls, nb, p),
              "step_fixed_list_ms": _loop_timer(lambda i, st, nb, p: md._step(st, neighbor=nb, params=p), s.state,
                                                calls, nb, p)}
    timers["step_ms"], row["rebuilds"], over0 = _chunk_timer(md, p, s.state, nb, every, steps, 0, n_snap)
    timers["step_recording_ms"], row["rebuilds_recording"], over1 = _chunk_timer(md, p, s.state, nb, every, 0,
                                                                                 n_snap, n_snap)
    row["overflow"] = over0 or over1
    return row, timers


#: update_cost.py's setup "reference" (plain DiffTRe on the LJ liquid, 100 snapshots of 1000 steps)
REFERENCE_OVERRIDES = ["config=lj_liquid", "system.n_particles=1000", "system.density=0.7", "system.kT=1.0",
                       "simulator.production_steps=1000", "simulator.every=10", "trainer.precondition=none"]


def reference_timers():
    """(row, timers) of the reference DiffTRe setup's sampler as training builds and runs it
    (assemble, a first trajectory from the lattice, then ``sample``: 100 equilibration steps + 100
    snapshots x 10): its list width (allocated on the lattice start), its chunk program with
    recording (1000 steps, as the profile's) and ``sample`` itself (host loop included), ms per step."""
    import jax
    sys.path.insert(0, str(Path(__file__).parent))
    from update_cost import compose

    from difftre_cli import assemble

    c = assemble.build(compose(REFERENCE_OVERRIDES))
    md, cfg = c.sampler, c.sampler.cfg
    params = c.potential.init(jax.random.PRNGKey(0))
    first = md.sample(params, *md.init(jax.random.PRNGKey(1), params), first=True)
    state, nbrs = first.state, first.neighbor
    n_snap = cfg.production_steps // cfg.every
    chunk, builds, overflow = _chunk_timer(md, params, state, nbrs, cfg.every, 0, n_snap, n_snap)
    n_steps = cfg.equilibration_steps + cfg.production_steps

    def sample():
        t = time.perf_counter()
        jax.block_until_ready(md.sample(params, state, nbrs).trajectory.positions)
        return 1e3 * (time.perf_counter() - t) / n_steps
    sample()
    row = dict(max_neighbors=int(nbrs.max_occupancy), sample_steps=n_steps, rebuilds=builds, overflow=overflow)
    return row, {"chunk_recording_ms": chunk, "sample_ms": sample}


def profile_size(n_particles, models, args):
    """The profile rows of ``models`` at ``n_particles`` (and the reference setup's at N = 1000): every
    program compiled first, then ``args.repeats`` rounds in which each timer runs once, keeping each
    one's best, so a burst of load on a shared machine hits all pieces alike."""
    steps = max(1, args.profile_steps // args.every) * args.every
    setups = {}
    for model in models:
        print(f"profile {model} N={n_particles}: equilibrating ...", file=sys.stderr, flush=True)
        setups[model] = equilibrated(n_particles, args.equil, args.skin, args.capacity_multiplier, model, steps,
                                      args.integrator)
    same_width(setups.values())
    built = []
    for model, s in setups.items():
        print(f"profile {model} N={n_particles}: compiling ...", file=sys.stderr, flush=True)
        built.append(profile_timers(s, model, steps, args.every))
    if n_particles == 1000:
        print("profile: the reference setup as training runs it ...", file=sys.stderr, flush=True)
        built.append(reference_timers())
    for row, timers in built:
        row.update({k: math.inf for k in timers})
    for _ in range(args.repeats):
        for row, timers in built:
            for k, timer in timers.items():
                row[k] = min(row[k], timer())
    rows = [with_shares(row) for row, _ in built[:len(models)]]
    return rows, (built[-1][0] if n_particles == 1000 else None)


def with_shares(row: dict) -> dict:
    """The row with the step split into list, force, integrator and the rest (ms per step)."""
    list_ms = row["check_ms"] + row["rebuild_ms"] * row["rebuilds"] / row["steps"]
    row.update(list_per_step_ms=list_ms, integrator_ms=row["step_fixed_list_ms"] - row["force_ms"],
               rest_ms=row["step_ms"] - list_ms - row["step_fixed_list_ms"],
               recording_per_step_ms=row["step_recording_ms"] - row["step_ms"])
    row["recording_per_snapshot_ms"] = row["recording_per_step_ms"] * row["every"]
    return row


def print_profile(rows, reference=None):
    """The profile tables: raw timings, the split of a step, and the LJ -> reference-setup gap."""
    print("\nprofile: ms per call (list, force, energy) or per MD step; each its own compiled program, best of repeats")
    print("(M: list width; step|list: force + integrator on a fixed list; step: the chunk program, recording off;"
          " step+rec: a snapshot every --every steps)")
    print(f"{'model':>8} {'N':>6} {'M':>4} {'rebuild':>8} {'check':>7} {'builds/100':>10} {'force':>7} {'energy':>7} "
          f"{'step|list':>9} {'step':>7} {'step+rec':>8} {'steps/s':>8} {'+rec':>8}")
    for r in rows:
        print(f"{r['model']:>8} {r['N']:>6} {r['max_neighbors']:>4} {r['rebuild_ms']:>8.3f} {r['check_ms']:>7.3f} "
              f"{100 * r['rebuilds'] / r['steps']:>10.1f} {r['force_ms']:>7.3f} {r['energy_ms']:>7.3f} "
              f"{r['step_fixed_list_ms']:>9.3f} {r['step_ms']:>7.3f} {r['step_recording_ms']:>8.3f} "
              f"{1e3 / r['step_ms']:>8.0f} {1e3 / r['step_recording_ms']:>8.0f}"
              + ("  OVERFLOW" if r["overflow"] else ""))
    print("\nsplit of one step without recording [ms per step (% of the step)], and the recording's cost")
    print(f"{'model':>8} {'N':>6} {'list':>14} {'force':>14} {'integrator':>14} {'rest':>14} "
          f"{'rec/step':>14} {'rec/snapshot':>12} {'energy':>7}")
    for r in rows:
        pct = lambda k: f"{r[k]:.3f} ({100 * r[k] / r['step_ms']:3.0f}%)"  # noqa: E731
        print(f"{r['model']:>8} {r['N']:>6} {pct('list_per_step_ms'):>14} {pct('force_ms'):>14} "
              f"{pct('integrator_ms'):>14} {pct('rest_ms'):>14} {pct('recording_per_step_ms'):>14} "
              f"{r['recording_per_snapshot_ms']:>12.3f} {r['energy_ms']:>7.3f}")
    print_gap(rows, reference)


def gap_split(rows, reference=None) -> list[dict]:
    """Per N with lj, spline and spline0 profiled: the step-time gap [ms] between LJ without
    recording and the reference DiffTRe setup, split into the model (LJ -> spline, the same fluid),
    the fluid at θ = 0 (the prior alone), the recording, and at N = 1000 with ``reference``
    (:func:`reference_timers`) the list width (allocated on the lattice start, not the fluid) and
    the host loop of ``sample``."""
    by = {(r["model"], r["N"]): r for r in rows}
    out = []
    for n in sorted({r["N"] for r in rows}):
        if not all((m, n) in by for m in ("lj", "spline", "spline0")):
            continue
        lj, sp, s0 = by["lj", n], by["spline", n], by["spline0", n]
        chain = [("lj", lj["step_ms"]), ("model", sp["step_ms"]), ("theta0", s0["step_ms"]),
                 ("recording", s0["step_recording_ms"])]
        if reference is not None and n == 1000:
            chain += [("list_width", reference["chunk_recording_ms"]), ("host_loop", reference["sample_ms"])]
        g = {f"{name}_ms": t - chain[i][1] for i, (name, t) in enumerate(chain[1:])}
        out.append(dict(N=n, lj_steps_per_s=1e3 / chain[0][1], end_steps_per_s=1e3 / chain[-1][1], end=chain[-1][0],
                        gap_ms=chain[-1][1] - chain[0][1], **g))
    return out


def print_gap(rows, reference=None):
    gaps = gap_split(rows, reference)
    if not gaps:
        return
    if reference is not None:
        print(f"\nreference setup as training runs it (N = 1000): list width {reference['max_neighbors']} "
              f"(allocated on the lattice start), its chunk with recording "
              f"{reference['chunk_recording_ms']:.3f} ms/step, sample() {reference['sample_ms']:.3f} ms/step = "
              f"{1e3 / reference['sample_ms']:.0f} steps/s "
              f"({reference['sample_steps']} steps, host loop included)")
    print("\nLJ (no recording) -> the reference setup: where the gap in ms per step comes from (% of the gap)")
    names = [("model_ms", "model"), ("theta0_ms", "θ=0 fluid"), ("recording_ms", "recording"),
             ("list_width_ms", "list width"), ("host_loop_ms", "host loop")]
    print(f"{'N':>6} {'LJ steps/s':>10} {'end steps/s':>11} {'gap':>7} " + " ".join(f"{h:>15}" for _, h in names))
    for g in gaps:
        cells = [f"{g[k]:.3f} ({100 * g[k] / g['gap_ms']:3.0f}%)" if k in g else "-" for k, _ in names]
        print(f"{g['N']:>6} {g['lj_steps_per_s']:>10.0f} {g['end_steps_per_s']:>11.0f} {g['gap_ms']:>7.3f} "
              + " ".join(f"{c:>15}" for c in cells))


# ----------------------------------------------------------------------------- main
def throughput_rows(n, k, args, lmp, pairs) -> list[dict]:
    """The throughput table's rows at N = ``n`` (``k`` timed steps), one per model at a common list
    width (:func:`same_width`): difftre, plain JAX MD (LJ only), LAMMPS on 1 and K ranks."""
    setups = {}
    for model in args.models:
        print(f"{model} N={n}: equilibrating ...", file=sys.stderr, flush=True)
        setups[model] = equilibrated(n, args.equil, args.skin, args.capacity_multiplier, model, k, args.integrator)
    same_width(setups.values())
    rows = []
    for model, s in setups.items():
        row = {"model": model, "N": n, "steps": k}
        say = lambda what: print(f"{model} N={n}: {what} ...", file=sys.stderr, flush=True)  # noqa: E731
        say("difftre")
        row["difftre"] = bench_setup(s, k, args.repeats)
        if model == "lj" and not args.no_jax_md:
            say("plain JAX MD")
            row["jax_md"] = bench_jax_md(n, k, args.repeats, args.equil)
        for ranks in sorted({1, cores()}) if lmp else ():
            say(f"LAMMPS on {ranks} rank(s)")
            row[f"lammps_{ranks}"] = bench_lammps(n, max(k, 1000), args.repeats, args.equil, lmp,
                                                  ranks=ranks, pair=pairs[model])
        row["lammps"] = row.get("lammps_1", {})
        rows.append(row)
    return rows


def print_throughput(rows, args) -> bool:
    """The throughput table with its ratios and the goals' verdicts; True if the exit floor holds."""
    K = cores()
    get = lambda r, eng: r.get(eng, {}).get("steps_per_s", float("nan"))  # noqa: E731
    lj = {r["N"]: get(r, "difftre") for r in rows if r["model"] == "lj"}
    print(f"{'model':>8} {'N':>6} {'difftre':>10} {'jax-md':>10} {'LAMMPS':>10} {f'LAMMPS×{K}':>10} "
          f"{'dt/LAMMPS':>10} {f'dt/L×{K}':>10} {'dt/jax-md':>10} {'cost/LJ':>8} {'rebuilds':>9} {'M':>4}")
    floor = goal_cores = goal_spline = True
    for r in rows:
        d, p, l1, lk = get(r, "difftre"), get(r, "jax_md"), get(r, "lammps_1"), get(r, f"lammps_{K}")
        r.update(ratio_lammps=d / l1, ratio_lammps_cores=d / lk, ratio_jax_md=d / p,
                 cost_vs_lj=lj.get(r["N"], float("nan")) / d)
        if r["model"] == "lj" and not math.isnan(l1):
            floor &= r["ratio_lammps"] >= GOAL
        if not math.isnan(lk):
            goal_cores &= r["ratio_lammps_cores"] >= GOAL_CORES
        if r["model"] == "spline":
            goal_spline &= r["cost_vs_lj"] <= GOAL_SPLINE
        print(f"{r['model']:>8} {r['N']:>6} {d:>10.1f} {p:>10.1f} {l1:>10.1f} {lk:>10.1f} {r['ratio_lammps']:>10.2f} "
              f"{r['ratio_lammps_cores']:>10.2f} {r['ratio_jax_md']:>10.2f} {r['cost_vs_lj']:>8.2f} "
              f"{r['difftre']['rebuilds']:>5}/{r['steps']} {r['difftre']['max_neighbors']:>4}")
    has_lammps = any("lammps_1" in r for r in rows)
    if has_lammps:
        print(f"{'PASS' if goal_cores else 'FAIL'}: difftre >= LAMMPS on {K} ranks (its {K} cores) "
              "at every size and model")
    if any(r["model"] == "spline" for r in rows) and lj:
        print(f"{'PASS' if goal_spline else 'FAIL'}: spline step <= {GOAL_SPLINE} x LJ's")
    verdict = ("PASS" if floor else "FAIL") if has_lammps else "N/A (no LAMMPS)"
    print(f"{verdict}: difftre (LJ) >= 1/3 of LAMMPS one-rank steps/s at every size (steps/s = wall clock, "
          f"best of {args.repeats}; the exit status)")
    return floor or not has_lammps


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000])
    ap.add_argument("--steps", type=int, nargs="+", default=[1000, 200],
                    help="timed steps per size (one value, or one per size)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per engine; best is kept")
    ap.add_argument("--equil", type=int, default=200, help="equilibration steps")
    ap.add_argument("--skin", type=float, default=0.3, help="difftre neighbour-list skin")
    ap.add_argument("--capacity-multiplier", type=float, default=1.25)
    ap.add_argument("--models", nargs="+", default=["lj", "spline"], choices=["lj", "spline", "spline0"],
                    help="pair models of the throughput table")
    ap.add_argument("--integrator", choices=["langevin", "nose_hoover"], default="langevin",
                    help="difftre's thermostat (LAMMPS runs fix nvt, a Nosé-Hoover chain, either way)")
    ap.add_argument("--no-lammps", action="store_true")
    ap.add_argument("--no-jax-md", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also profile one step (module docstring)")
    ap.add_argument("--profile-models", nargs="+", default=["lj", "spline", "spline0"],
                    choices=["lj", "spline", "spline0"])
    ap.add_argument("--profile-steps", type=int, default=1000,
                    help="steps of the profiled chunks at every size (1000: 100 snapshots at --every 10)")
    ap.add_argument("--every", type=int, default=10, help="profile: steps between recorded snapshots")
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    steps = args.steps if len(args.steps) == len(args.sizes) else [args.steps[0]] * len(args.sizes)
    load = os.getloadavg()
    lmp = None if args.no_lammps else shutil.which("lmp")
    import jax
    rows, prof, ref = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        pairs = {m: LAMMPS_LJ if m == "lj" else export_table(m, Path(tmp) / m) for m in args.models} if lmp else {}
        for n, k in zip(args.sizes, steps):
            rows += throughput_rows(n, k, args, lmp, pairs)
    if args.profile:
        for n in args.sizes:
            rows_n, ref_n = profile_size(n, args.profile_models, args)
            prof += rows_n
            ref = ref_n or ref
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, load average at the start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          + (" (shared machine: numbers indicative only)" if load[0] > 1.5 else "")
          + f"; jax {jax.__version__}, {cores()} core(s), difftre {args.integrator}, skin={args.skin}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    for m in dict.fromkeys([r["model"] for r in rows] + [r["model"] for r in prof]):
        print(f"  {m}: {pair_model(m)[2]}")
    ok = print_throughput(rows, args)
    if prof:
        print_profile(prof, ref)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "profile": prof, "reference": ref,
                                         "gap": gap_split(prof, ref), "load": load,
                                         "skin": args.skin, "integrator": args.integrator, "jax": jax.__version__,
                                         "cores": cores()},
                                        indent=2, default=float))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
