"""trainer.state_parallel=devices: the sampling segments of state points with the same shapes run
together, each chunk one jit(shard_map) call over JAX devices (difftre_cli/parallel.py,
learn/multistate.py).

The CLI runs force two CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=2, which
must be set before JAX starts, hence subprocesses) and check that a devices run equals the
sequential run (trained in this process, one device) bit-for-bit (metrics and every
checkpointed array), that it resumes bit-for-bit from an update boundary and from a SIGTERM
inside the batched first trajectories (both state points' segments checkpointed and
continued), and that a state point of another particle
number falls back to sequential sampling with a log line. A subprocess (two fake devices, three
state points: two slots per device, one idle) checks the chunked group sampling against
Sampler.sample bit-for-bit (one step per chunk, traced once) and a group stopped between
chunks, checkpointed, restored in fresh samplers and continued. The in-process tests (one
device: the batched program's per-device sequential map) check the neighbour-list overflow
path against Sampler.sample (two state points of different densities, i.e. boxes, sharing one
device), the grouping and the config errors.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest
from conftest import train_in_process
from hydra import compose, initialize_config_dir

from difftre_cli import assemble
from difftre_cli.config import validate
from difftre_cli.errors import UserError
from difftre_cli.parallel import StateGroup, group_state_points, signature

ROOT = Path(__file__).resolve().parent.parent
# Three state points of the tiny LJ fluid: T10 and T12 (N = 108) are batched over the 2 devices,
# one per device (a slot idles when only one of them resamples, which happens with Adam's lr);
# N32 has another particle number and is sampled on its own (32 at density 0.2: a box as wide as
# the others', more than twice the cutoff; a small system, as nothing is checked on its numbers
# beyond the bit-for-bit equalities).
STATES = "states={T10: {system: {kT: 1.0}}, T12: {system: {kT: 1.2}}, N32: {system: {n_particles: 32, density: 0.2}}}"
RUN = ["config=tiny", STATES, "seed=1", "optimizer.schedule=constant", "trainer.checkpoint_every=1"]
TIMING = {"sample_time", "update_time"}


def _cmd(args):
    exe = shutil.which("difftre")
    return ([exe] if exe else [sys.executable, "-m", "difftre_cli.cli"]) + ["train", *args]


def _env(cache: Path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    # Only for speed: the runs share compiled programs through JAX's persistent cache (a loaded
    # executable is the one a fresh compilation gives, so results do not depend on it).
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def _start(args, tmp: Path, run: Path):
    return subprocess.Popen(_cmd([*args, f"hydra.run.dir={run}"]), cwd=tmp, env=_env(tmp / "jax-cache"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc) -> str:
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]
    return out


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _checkpoint(run: Path) -> dict:
    out = {}
    with h5py.File(run / "difftre.h5", "r") as f:
        ck = f["checkpoint"]
        assert ck.attrs["complete"]
        out["attrs"] = {k: (v.item() if hasattr(v, "item") else v) for k, v in ck.attrs.items()}
        for group in ck:
            g = ck[group]
            out[group] = [g[f"leaf_{i:05d}"][()] for i in range(int(g.attrs["n_leaves"]))]
    return out


def _assert_same_run(ref: Path, run: Path, n_rows: int):
    rows_ref, rows = _rows(ref), _rows(run)
    assert len(rows_ref) == len(rows) == n_rows
    assert list(rows_ref[0]) == list(rows[0])
    for a, b in zip(rows_ref, rows):
        for col in a:
            if col not in TIMING:
                assert a[col] == b[col], (a["update"], col, a[col], b[col])
    ck_ref, ck = _checkpoint(ref), _checkpoint(run)
    assert ck_ref.keys() == ck.keys() and ck_ref["attrs"] == ck["attrs"]
    for group in ck_ref:
        if group != "attrs":
            assert len(ck_ref[group]) == len(ck[group]) > 0
            for x, y in zip(ck_ref[group], ck[group]):
                assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), group
    for traj in sorted((ref / "trajectories").glob("*.h5md")):
        with h5py.File(traj, "r") as fa, h5py.File(run / "trajectories" / traj.name, "r") as fb:
            pa = fa["particles/all/position/value"][()]
            assert pa.tobytes() == fb["particles/all/position/value"][()].tobytes(), traj.name


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory):
    """Starts the first CLI run, the uninterrupted devices run (2 updates), in the background
    so that it overlaps with the in-process tests, which request this fixture first; it
    compiles every program of a devices run, which the later CLI runs load from the persistent
    cache. Every CLI process of the module is killed if the module ends before it was awaited."""
    tmp = tmp_path_factory.mktemp("state_parallel")
    procs = [_start([*RUN, "trainer.state_parallel=devices", "trainer.updates=2"], tmp, tmp / "devices")]
    yield tmp, procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _sigterm_at_first_progress(proc) -> tuple[int, str]:
    """SIGTERM as soon as the batched first trajectories report their first chunk."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "T10+T12 trajectory: step" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, _ = proc.communicate(timeout=400)
    return proc.returncode, "".join(lines) + out


def _stopped_continued_resumed(tmp: Path, procs: list) -> dict:
    """One devices run interrupted twice, the two ways a run stops: by SIGTERM inside its first
    (batched) trajectories (1 update; one step per chunk: hundreds of chunk boundaries left in
    the trajectory when the signal lands), continued to the end of that update (other chunk
    sizes), then resumed from that update boundary to 2 updates; one process after the other."""
    logs = {}
    procs.append(_start([*RUN, "trainer.state_parallel=devices", "trainer.updates=1", "simulator.chunk_seconds=1e-9"],
                        tmp, tmp / "stopped"))
    logs["stopped_rc"], logs["stopped"] = _sigterm_at_first_progress(procs[-1])
    logs["stopped_checkpoint"] = _checkpoint(tmp / "stopped") if logs["stopped_rc"] == 143 else None
    for name, overrides in (("continued", ["simulator.chunk_seconds=5"]), ("resumed", ["trainer.updates=2"])):
        procs.append(subprocess.Popen(_cmd([f"resume={tmp / 'stopped'}", *overrides]), cwd=tmp,
                                      env=_env(tmp / "jax-cache"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
        logs[name] = _finish(procs[-1])
    return logs


@pytest.fixture(scope="module")
def runs(first_runs):
    """devices (2 updates, uninterrupted); sequential (2 updates, in this process: one device,
    bit-identical to a sequential CLI run with two forced devices); and the stopped, continued
    and resumed devices run ("stopped" directory; logs "stopped", "continued", "resumed"), whose
    processes run one after the other in a thread while this process trains the sequential
    run. Two updates suffice: the second one already resamples only part of the state points
    (the batched call runs a subset); each update fewer saves a trajectory of every state point
    in each run. Four CLI processes (each starts JAX MD: ~12 s of CPU) instead of six: the
    update boundary is resumed in the continued run's directory rather than in a run of its
    own, and the sequential run is this process's."""
    tmp, procs = first_runs
    logs = {"devices": _finish(procs[0])}
    # the later CLI runs find every program compiled by the first one (persistent cache)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        chain = pool.submit(_stopped_continued_resumed, tmp, procs)
        try:
            logs["sequential"] = _train_logged([*RUN, "trainer.updates=2"], tmp / "sequential")
        finally:
            logs.update(chain.result(timeout=1200))
    return tmp, logs


def _train_logged(args, run: Path) -> str:
    """``train_in_process`` (conftest) with the difftre log lines at INFO and above, as text."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("difftre")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        train_in_process(args, run)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return "\n".join(records)


# -- in process (one device); the first CLI runs start before and run alongside -------------
def _compose(overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(config_name="train", overrides=overrides)


@pytest.mark.usefixtures("first_runs")
def test_grouping_and_overflow_in_one_state_point_recomputed_as_sequentially():
    """State points group by particle number (not by temperature or density). A too-small list
    in one state point of a batched call: that state point is re-allocated (capacity grows) and
    recomputed, the other one is not; every array equals Sampler.sample's bit-for-bit, and the
    program is compiled once per set of list capacities."""
    cfg = _compose(["config=tiny", "states={T10: {system: {kT: 1.0}}, D60: {system: {density: 0.6, kT: 1.2}}, "
                    "N32: {system: {n_particles: 32, density: 0.2}}}",
                    # short: the overflow happens in the first step, the rest is bit-for-bit equality
                    "simulator.first_equilibration_steps=40", "simulator.production_steps=40"])
    states = assemble.build_states(cfg)
    params = states[0][1].potential.init(jax.random.PRNGKey(0))
    samplers = [c.sampler for _, c in states]
    init = [s.init(k, params) for s, k in zip(samplers, jax.random.split(jax.random.PRNGKey(2), 3))]
    assert group_state_points([signature(s, params, *i) for s, i in zip(samplers, init)]) == [[0, 1], [2]]
    assert group_state_points([None, None]) == [[0], [1]]
    samplers, sim, nbrs = samplers[:2], [st for st, _ in init[:2]], [nb for _, nb in init[:2]]
    small = 12
    nbrs[0] = dataclasses.replace(nbrs[0], idx=nbrs[0].idx[:, :small], max_occupancy=small)
    group = StateGroup(samplers)
    batched = group.sample(params, sim, nbrs, [True, True], [0, 1])
    sequential = [s.sample(params, st, nb, first=True) for s, st, nb in zip(samplers, sim, nbrs)]
    assert [r.retries for r in sequential] == [1, 0]
    for a, b in zip([batched[0], batched[1]], sequential):
        assert a.ok and b.ok and a.retries == b.retries and a.reason == b.reason
        assert a.neighbor.max_occupancy == b.neighbor.max_occupancy
        for x, y in zip(jax.tree_util.tree_leaves((a.trajectory, a.state, a.neighbor)),
                        jax.tree_util.tree_leaves((b.trajectory, b.state, b.neighbor))):
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    assert batched[0].neighbor.max_occupancy > small
    assert group.trace_count == 2    # initial capacities, then after the re-allocation


# -- chunked group sampling on two fake devices (a subprocess: XLA_FLAGS before JAX starts) ------
GROUP_STATES = "states={T10: {system: {kT: 1.0}}, D60: {system: {density: 0.6, kT: 1.2}}, T12: {system: {kT: 1.2}}}"
GROUP_LENGTHS = ["simulator.first_equilibration_steps=57", "simulator.equilibration_steps=23",
                 "simulator.production_steps=60", "simulator.every=5"]


class _Stopper:
    """A monitor that counts the chunks and, after ``stop_after`` of them, keeps the segments
    in progress as the training loop's checkpoint would and stops the run."""

    def __init__(self, stop_after=None):
        self.chunks, self.stop_after, self.saved = 0, stop_after, None

    def chunk_done(self, source, segments, prog, rate):
        self.chunks += 1
        if self.chunks == self.stop_after:
            self.saved = segments()
            raise KeyboardInterrupt


def _group_samplers(chunk_seconds: float):
    cfg = _compose(["config=tiny", GROUP_STATES, *GROUP_LENGTHS, f"simulator.chunk_seconds={chunk_seconds}"])
    states = assemble.build_states(cfg)
    for name, c in states:
        c.sampler.label = name
    return [c.sampler for _, c in states], states[0][1].potential.init(jax.random.PRNGKey(0))


def _same_results(a, b):
    assert a.ok and b.ok and a.retries == b.retries
    for x, y in zip(jax.tree_util.tree_leaves((a.trajectory, a.state, a.neighbor)),
                    jax.tree_util.tree_leaves((b.trajectory, b.state, b.neighbor))):
        assert np.asarray(x).dtype == np.asarray(y).dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes()


def _group_chunks_main(tmp: Path):
    """Runs in the subprocess of test_chunked_group_sampling_on_two_devices."""
    from difftre_cli.segments import pack, unpack
    from difftre_cli.store import load_pytree, save_pytree
    assert len(jax.devices()) == 2
    samplers, params = _group_samplers(1e-9)   # one step or snapshot interval per chunk
    init = [s.init(k, params) for s, k in zip(samplers, jax.random.split(jax.random.PRNGKey(2), 3))]
    sim, nbrs = [st for st, _ in init], [nb for _, nb in init]
    firsts = [True, False, True]   # first and later equilibration lengths in one group
    group = StateGroup(samplers)
    assert group.n_slots == 4 and group.per_device == 2
    counter = _Stopper()
    for s in samplers:
        s.monitor = counter
    batched = group.sample(params, sim, nbrs, firsts, [0, 1, 2])
    assert counter.chunks > 50 and group.trace_count == 1, (counter.chunks, group.trace_count)
    later = group.sample(params, [batched[k].state for k in range(3)], [batched[k].neighbor for k in range(3)],
                         [False] * 3, [0, 2])   # a subset (idle slots), another equilibration length
    assert group.trace_count == 1
    for s in samplers:
        s.monitor = None
    for k, first in enumerate(firsts):
        _same_results(batched[k], samplers[k].sample(params, sim[k], nbrs[k], first=first))
    for k in (0, 2):
        _same_results(later[k], samplers[k].sample(params, batched[k].state, batched[k].neighbor))
    # stopped after 40 chunks (D60's shorter segment done, the others still equilibrating),
    # checkpointed, restored in fresh samplers that run other chunks: the same results
    stopper = _Stopper(stop_after=40)
    for s in samplers:
        s.monitor = stopper
    with pytest.raises(KeyboardInterrupt):
        StateGroup(samplers).sample(params, sim, nbrs, firsts, [0, 1, 2])
    trees, attr = pack(stopper.saved)
    infos = unpack(attr)
    assert [d["label"] for d in infos] == ["T10", "D60", "T12"]
    assert infos[1]["recorded"] == infos[1]["n_snapshots"] and 0 < infos[0]["eq_done"] < infos[0]["n_eq"]
    with h5py.File(tmp / "segments.h5", "w") as f:
        save_pytree(f.create_group("segment"), trees)
    fresh, _ = _group_samplers(10.0)
    with h5py.File(tmp / "segments.h5", "r") as f:
        loaded = load_pytree(f["segment"], {d["label"]: s.segment_template(d, params) for s, d in zip(fresh, infos)})
    for s, d in zip(fresh, infos):
        s.restore_segment(loaded[d["label"]], d)
    resumed = StateGroup(fresh).sample(params, sim, nbrs, firsts, [0, 1, 2])
    for k in range(3):
        _same_results(resumed[k], batched[k])
    print("group chunks: ok")


@pytest.mark.slow   # suite time (issue: default suite <= 15 min on 2 cores): the devices run's bit-for-bit tests stay default
def test_chunked_group_sampling_on_two_devices(tmp_path):
    """Three state points (N = 108; two densities, two equilibration lengths) on two fake CPU
    devices, one step or snapshot interval per chunk: every result equals Sampler.sample's
    bit-for-bit, the group program is traced once; stopped between chunks, checkpointed and
    restored, the group continues to the same results."""
    env = _env(tmp_path / "jax-cache")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    out = subprocess.run([sys.executable, __file__, "group-chunks", str(tmp_path)], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert out.returncode == 0 and "group chunks: ok" in out.stdout, out.stdout[-6000:]


@pytest.mark.parametrize("overrides, message", [
    (["trainer=ibi", "model=table", "+trainer.state_parallel=devices"],
     "trainer.state_parallel=devices is implemented for trainer=difftre only"),
    (["trainer.state_parallel=gpu"], "trainer.state_parallel: unknown mode 'gpu'"),
])
def test_state_parallel_config_errors(overrides, message):
    cfg = _compose(["config=tiny", "states={a: {}, b: {system: {kT: 1.5}}}", *overrides])
    with pytest.raises(UserError, match=message):
        validate(cfg)


# -- the CLI runs (two forced CPU devices) ---------------------------------------------------
def test_devices_run_equals_sequential_run_bit_for_bit(runs):
    tmp, logs = runs
    log = (tmp / "devices" / "train.log").read_text()
    assert "state points T10, T12 sampled in one compiled call over 2 device(s) (cpu:0, cpu:1)" in log
    assert "initialising the parameters and the simulation" in logs["sequential"]   # its log, captured ...
    assert "sampled in one compiled call" not in logs["sequential"]   # ... and it did not batch
    rows = _rows(tmp / "devices")
    assert all(r["event"] == "ok" for r in rows)
    # some update resampled only part of the state points (the batched call ran a subset)
    new = np.diff([0] + [int(r["n_trajectories"]) for r in rows])
    assert any(0 < n < 3 for n in new), new
    _assert_same_run(tmp / "sequential", tmp / "devices", 2)


def test_devices_run_resumes_bit_for_bit(runs):
    """Resumed from the checkpoint at an update boundary (after update 1 of the stopped and
    continued devices run) to 2 updates: equals the uninterrupted devices run."""
    tmp, logs = runs
    assert "resumed from" in logs["resumed"]
    assert "continuing the checkpointed trajectory" not in logs["resumed"]   # a boundary, no segment
    _assert_same_run(tmp / "devices", tmp / "stopped", 2)


def test_devices_run_stopped_inside_batched_trajectories_resumes_bit_for_bit(runs):
    """SIGTERM between two chunks of the batched first trajectories of T10 and T12: exit 143,
    both segments in the checkpoint; the continued run (other chunk sizes) continues both, and
    with its resumed second update equals the uninterrupted devices run."""
    tmp, logs = runs
    assert logs["stopped_rc"] == 143, logs["stopped"][-4000:]
    assert "Traceback" not in logs["stopped"]
    attrs = logs["stopped_checkpoint"]["attrs"]
    infos = json.loads(attrs["segment"])
    assert attrs["update"] == 0 and [d["label"] for d in infos] == ["T10", "T12"]
    assert all(0 < d["eq_done"] < d["n_eq"] for d in infos), infos   # both stopped mid-equilibration
    for name in ("T10", "T12"):
        assert f"continuing the checkpointed trajectory of {name} at step" in logs["continued"]
    _assert_same_run(tmp / "devices", tmp / "stopped", 2)


def test_other_particle_number_falls_back_to_sequential_with_a_log_line(runs):
    tmp, logs = runs
    line = next(ln for ln in (tmp / "devices" / "train.log").read_text().splitlines() if "N32" in ln)
    assert "WARNING" in line and "state point N32 is sampled on its own" in line
    assert "N = 32" in line and "system.n_particles" in line   # cause and fix
    # …and the run is still the sequential one (test above), N32's trajectories included
    assert len(list((tmp / "devices" / "trajectories").glob("N32_ref_*.h5md"))) >= 1


if __name__ == "__main__" and sys.argv[1:2] == ["group-chunks"]:
    _group_chunks_main(Path(sys.argv[2]))
