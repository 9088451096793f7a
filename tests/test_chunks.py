"""The sampler interface runs a trajectory in bounded chunks of one compiled program: the
chunking never changes the numbers (bit-identical on CPU), compiles once, reports after every
chunk, and a segment stopped at a chunk boundary, checkpointed and restored continues exactly
where it stopped. A real `difftre train` stopped by SIGTERM inside a long first trajectory
exits 143 within seconds with that trajectory checkpointed, and its resumed run is identical to
an uninterrupted one."""
from __future__ import annotations

import dataclasses
import json
import logging
import signal
import subprocess
import time

import h5py
import jax
import numpy as np
import pytest
from conftest import cli_env, difftre_train_cmd, train_in_process
from omegaconf import OmegaConf

from difftre_cli import potentials
from difftre_cli.onebody import OneBodySampler, build_line_system
from difftre_cli.potentials import external
from difftre_cli.sampler import SamplerConfig
from difftre_cli.segments import SegmentProgress, pack, unpack
from difftre_cli.simulate import Sampler
from difftre_cli.store import load_pytree, save_pytree
from difftre_cli.system import build_system

CFG = SamplerConfig(integrator="langevin", dt=0.005, first_equilibration_steps=57, production_steps=60, every=5)


def _box_sampler(cfg=CFG, n=108):
    system = build_system(OmegaConf.create({"units": "lj", "n_particles": n, "density": 0.7, "kT": 1.0}))
    pot = potentials.build(OmegaConf.create({"kind": "lj", "epsilon": 1.0, "sigma": 1.0}),
                           OmegaConf.create({"kind": "none"}), 2.5)
    return Sampler(pot, system, cfg), {}


def _line_sampler(cfg=CFG):
    system = build_line_system(OmegaConf.create({"kind": "ideal_gas_1d", "n_particles": 50, "kT": 1.0}))
    pot = external.build(OmegaConf.create({"kind": "harmonic_1d", "lam": 75.0, "x0": 0.5}),
                         OmegaConf.create({"kind": "none"}))
    return OneBodySampler(pot, system, cfg), pot.init(jax.random.PRNGKey(0))


class Recorder:
    """A monitor that records every chunk and can stop the run after ``stop_after`` chunks,
    keeping the segment checkpoint as the training loop would."""

    def __init__(self, stop_after=None):
        self.chunks, self.stop_after, self.saved = [], stop_after, None

    def chunk_done(self, sampler, segments, prog, rate):
        self.chunks.append((prog.eq_done, prog.recorded))
        if self.stop_after is not None and len(self.chunks) == self.stop_after:
            [self.saved] = segments()
            raise KeyboardInterrupt


def _same(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _signature(tree):
    return [(x.shape, x.dtype, bool(getattr(x, "weak_type", False))) for x in jax.tree_util.tree_leaves(tree)]


def _whole(sampler, params, state, nbrs):
    """The unchunked trajectory: one call of the chunk program over every step."""
    cfg = sampler.cfg
    bufs = sampler._buffers(params, state, nbrs, cfg.n_snapshots)
    i32 = lambda x: np.int32(x)  # noqa: E731
    return sampler._chunk(params, state, nbrs, bufs, i32(cfg.first_equilibration_steps), i32(cfg.n_snapshots),
                          i32(0), i32(cfg.every))


@pytest.mark.parametrize("make", [_box_sampler, _line_sampler], ids=["box", "line"])
def test_chunked_trajectory_is_bit_identical_to_one_call_and_compiles_once(make):
    sampler, params = make(dataclasses.replace(CFG, chunk_seconds=1e-9))   # one step or interval per chunk
    state, nbrs = sampler.init(jax.random.PRNGKey(3), params)
    rec = Recorder()
    sampler.monitor = rec
    res = sampler.sample(params, state, nbrs, first=True)
    assert res.ok and res.retries == 0
    assert len(rec.chunks) > 20                              # really chunked ...
    assert rec.chunks[-1] == (CFG.first_equilibration_steps, CFG.n_snapshots)
    assert sampler.trace_count == 1                          # ... by one compiled program
    st, nb, full, (P, U, K), _ = _whole(sampler, params, state, nbrs)
    assert not bool(full)
    _same((res.trajectory.positions, res.trajectory.energies, res.trajectory.kT, res.state), (P, U, K, st))
    np.testing.assert_array_equal(res.trajectory.step, CFG.first_equilibration_steps + 5 * np.arange(1, 13))
    # a later trajectory with another equilibration and stride reuses the same program (only the
    # snapshot count sizes its buffers)
    sampler.run(params, res.state, res.neighbor, 7, CFG.n_snapshots, 4)
    assert sampler.trace_count == 1


def test_segment_stopped_checkpointed_and_restored_continues_bit_for_bit(tmp_path):
    """Written as train.py writes it (segments.pack), and in the earlier one-segment format (the
    tree itself, the info as a JSON object); both read as train.py reads them."""
    sampler, params = _box_sampler(dataclasses.replace(CFG, chunk_seconds=1e-9))
    state, nbrs = sampler.init(jax.random.PRNGKey(4), params)
    ref = sampler.sample(params, state, nbrs, first=True)
    # one step or snapshot interval per chunk: stopped in the equilibration, then in the production
    for stop_after, in_production, old_format in ((3, False, True), (62, True, False)):
        sampler.monitor = Recorder(stop_after)
        with pytest.raises(KeyboardInterrupt):
            sampler.sample(params, state, nbrs, first=True)
        saved, info = sampler.monitor.saved
        assert (info["recorded"] > 0) == in_production
        tree, attr = (saved, json.dumps(info)) if old_format else pack([(saved, info)])
        with h5py.File(tmp_path / f"seg{stop_after}.h5", "w") as f:
            save_pytree(f.create_group("segment"), tree)
        fresh, _ = _box_sampler(dataclasses.replace(CFG, chunk_seconds=10.0))   # another process, other chunks
        [info] = unpack(attr)
        with h5py.File(tmp_path / f"seg{stop_after}.h5", "r") as f:
            loaded = load_pytree(f["segment"], {"": fresh.segment_template(info, params)})
        # the same program signature (shapes, dtypes, weak types: a weakly typed scalar of the
        # integrator state read back as a strong one would compile a second program on resume)
        assert _signature(loaded[""]) == _signature(saved)
        fresh.restore_segment(loaded[""], info)
        res = fresh.sample(params, state, nbrs, first=True)
        assert res.ok
        _same((res.trajectory, res.state), (ref.trajectory, ref.state))


def test_a_segment_of_other_lengths_is_not_continued():
    # a later equilibration of 23 steps (not the default 1000: one step per chunk, each chunk a
    # call of ~13 ms) against the first one's 57: continued, the first snapshot would be at 62
    sampler, params = _box_sampler(dataclasses.replace(CFG, chunk_seconds=1e-9, equilibration_steps=23))
    state, nbrs = sampler.init(jax.random.PRNGKey(5), params)
    sampler.monitor = Recorder(2)
    with pytest.raises(KeyboardInterrupt):
        sampler.sample(params, state, nbrs, first=True)
    tree, info = sampler.monitor.saved
    sampler.monitor = None
    sampler.restore_segment(tree, info)
    res = sampler.sample(params, state, nbrs, first=False)   # the later-trajectory lengths: started afresh
    assert res.ok and int(res.trajectory.step[0]) == 23 + CFG.every


def test_chunk_plan_covers_the_segment_in_order():
    prog = SegmentProgress(n_eq=23, n_snapshots=4, every=10)
    seen = []
    while not prog.done:
        n_e, n_r = prog.plan(15)
        assert n_e + n_r * 10 <= max(15, 10)
        seen.append((n_e, n_r))
        prog.eq_done += n_e
        prog.recorded += n_r
    assert seen == [(15, 0), (8, 0), (0, 1), (0, 1), (0, 1), (0, 1)]
    assert prog.steps_done == prog.steps_total == 63


# -- the CLI: SIGTERM inside a long trajectory ---------------------------------------------
_cmd, _env = difftre_train_cmd, cli_env


def _checkpoint(run):
    with h5py.File(run / "difftre.h5", "r") as f:
        ck = f["checkpoint"]
        attrs = {k: ck.attrs[k] for k in ck.attrs}
        leaves = {g: [ck[g][f"leaf_{i:05d}"][()] for i in range(int(ck[g].attrs["n_leaves"]))] for g in ck}
    return attrs, leaves


def _train_logged(args, run, resume: bool) -> str:
    """``train_in_process`` (conftest) with the difftre log lines at INFO and above, as text."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("difftre")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        train_in_process(args, run, resume=resume)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return "\n".join(records)


def _sigterm_inside_first_trajectory(tmp_path, eq_steps: int, after_s: float, chunk_seconds: float = 5.0):
    args = ["config=tiny", "seed=5", "trainer.updates=2", f"simulator.first_equilibration_steps={eq_steps}",
            "trainer.checkpoint_seconds=100000", f"simulator.chunk_seconds={chunk_seconds}"]
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd([*args, f"hydra.run.dir={run}"]), cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, t_start, t_progress = [], time.perf_counter(), None
    for line in proc.stdout:   # progress from the first chunk on (not a terminal: plain lines)
        lines.append(line)
        if line.startswith("trajectory: step"):
            t_progress = time.perf_counter()
            break
    assert t_progress is not None, "".join(lines)
    time.sleep(after_s)
    t_sig = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    t_exit = time.perf_counter() - t_sig
    out = "".join(lines) + out
    assert proc.returncode == 143, out[-3000:]
    assert t_exit < 20, t_exit
    assert "Traceback" not in out and "cost estimate on this cpu" in out, out[-6000:]
    attrs, _ = _checkpoint(run)
    assert attrs["update"] == 0 and "segment" in attrs, out[-3000:]   # stopped inside the first trajectory
    # resumed as `difftre train resume=RUN` resumes (train(..., resume=True) on the run's
    # config), in this process: no second process start-up (importing JAX MD: ~12 s of CPU)
    resumed = _train_logged(args, run, resume=True)
    assert "continuing the checkpointed trajectory at step" in resumed
    train_in_process(args, tmp_path / "ref")   # the uninterrupted run (no process start-up)
    (a_attrs, a), (_, b) = _checkpoint(run), _checkpoint(tmp_path / "ref")
    assert "segment" not in a_attrs and a.keys() == b.keys()
    for group in a:
        for x, y in zip(a[group], b[group]):
            np.testing.assert_array_equal(x, y, err_msg=group)
    return t_progress - t_start, t_exit


def test_sigterm_inside_a_long_trajectory_stops_in_seconds_and_resumes_bit_for_bit(tmp_path):
    # Chunks grow 8x from 10 steps up to 0.5 s of wall time here, so SIGTERM 0.5 s after the first
    # chunk stops the trajectory within ~1 s, at step ~21000 even at 30000 MD steps/s; 40000 steps
    # take ~2.7 s at 15000 steps/s (this machine, warm compilation cache), ~7 s at 6000 (under
    # load). With 30000 steps and 5-s chunks the chunk the signal landed in was the trajectory's
    # last one at 15000 steps/s.
    _sigterm_inside_first_trajectory(tmp_path, eq_steps=40000, after_s=0.5, chunk_seconds=0.5)


@pytest.mark.slow
def test_sigterm_inside_a_minute_long_trajectory(tmp_path):
    """The issue's short version: a first trajectory of over 60 s, SIGTERM 60 s into it."""
    _sigterm_inside_first_trajectory(tmp_path, eq_steps=120000, after_s=60.0)


def test_the_one_overflow_rule_grows_what_overflowed_and_gives_up_after_max_retries():
    """sampler.recompute_on_overflow is the loop every piece of work uses (MD chunks, direct AD's
    segment, the engine's features): recompute after each growth, at most max_retries growths."""
    from difftre_cli.overflow import overflow_decision, recompute_on_overflow
    assert overflow_decision(False, False, 0, 3) == "ok"
    assert overflow_decision(True, False, 2, 3) == "grow" and overflow_decision(False, True, 3, 3) == "give_up"
    room, grown = [1], []

    def grow(attempt, list_full, capacity_full):
        grown.append((attempt, list_full, capacity_full))
        room[0] *= 2

    out, ok = recompute_on_overflow(lambda: room[0], lambda need: (need < 4, need < 8), grow, max_retries=5)
    assert ok and out == 8 and grown == [(0, True, True), (1, True, True), (2, False, True)]
    room[0], grown[:] = 1, []
    out, ok = recompute_on_overflow(lambda: room[0], lambda need: (need < 100, False), grow, max_retries=2)
    assert not ok and out == 4 and [g[0] for g in grown] == [0, 1]
