"""The one sampler interface: a trajectory in bounded chunks of one compiled program.

A trajectory (a *segment*) is ``n_eq`` equilibration steps followed by ``n_snapshots`` intervals
of ``every`` steps, the state at the end of each interval kept as a snapshot with its reference
energy U_ref and kinetic temperature. It runs as a sequence of calls of one compiled chunk
program (:meth:`ChunkedSampler._chunk_impl`): each call advances the segment by a number of
equilibration steps and snapshot intervals that are *arguments* (dynamic loop bounds), so one
compilation serves every chunk size, the first equilibration, later trajectories and
``evaluate``. Chunks are sized from the measured step time to about ``simulator.chunk_seconds``
of wall time, so progress is reported, signals are served and checkpoints are written between
them. The chunking does not change the numbers: the per-step computation and the carried state
are the same whatever the chunk boundaries (bit-identical on CPU, tests/test_chunks.py). The one
exception is a capacity re-allocation: the grown list is built at the overflowing chunk's
starting positions, so where that chunk began shows in the (equally valid) continuation.

Cases of the interface (subclasses provide one MD step and one observation):
particles in a periodic box with neighbour lists and graph capacities (``simulate.Sampler``,
strained crystals through the potential, ``potentials/manybody.py``), crystals in a general
(sheared, strained) periodic box in fractional coordinates whose potential keeps only the pairs
inside its cutoff, at a capacity of its own (``solid_md.SolidMD``), and independent particles in
a 1-D external field (``onebody.OneBodySampler``). ``parallel.StateGroup`` runs
the chunk programs of several samplers together, one call per chunk over JAX devices, with the
per-chunk pieces of this module (progress, pacing, overflow rule, stability check, result,
segment checkpoints), so both loops follow the same rules.

One overflow rule (overflow.py: ``overflow_decision``, ``recompute_on_overflow``): after each chunk
the neighbour list's overflow flag and the potential's own capacity flag are checked; on
overflow the capacity grows (``grown_extra``) and the chunk is recomputed from its starting
state, at most ``simulator.max_retries`` times, after which the segment counts as unstable. The
same two functions serve the group's per-member chunks (:meth:`ChunkedSampler.overflow_rule`),
direct AD's differentiable segment and the observable engine's featurisation.

One kinetic-temperature convention: kT = Σ p²/m / (N·d), JAX MD's ``quantity.temperature``
(the degrees of freedom its thermostats use; Langevin dynamics conserves no momentum).

A *monitor* (``sampler.monitor``: the training loop's progress, signals, checkpoints) is called
after every chunk (:class:`Monitor`) with the progress and a callable giving the segments in
progress as checkpoint parts (:meth:`ChunkedSampler.segment_checkpoint`). It may checkpoint them
and stop the run by raising; a later process restores each (:meth:`ChunkedSampler.restore_segment`)
and the next ``sample`` from the same starting state continues it. Segment bookkeeping
(counters, chunk plan, pacing, checkpoint format): segments.py.
"""
from __future__ import annotations

import functools
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax_md import quantity

from . import neighbors
from .checks import choice, number
from .compile_ahead import CompileAhead
from .errors import UserError
from .overflow import overflow_decision, recompute_on_overflow
from .segments import ChunkPacer, Segment, SegmentProgress

log = logging.getLogger("difftre")

# JAX MD's kinetic energy asks for a float64 sum (util.high_precision_sum); in float32 runs JAX
# truncates it and warns at every trace. The result is the float32 sum we use.
warnings.filterwarnings("ignore", message="Explicitly requested dtype float64 requested in",
                        category=UserWarning)


class Trajectory(NamedTuple):
    """Kept snapshots of one reference trajectory.

    positions: (S, N, d) in the system's length unit (general boxes: fractional); energies: the
    per-snapshot records of ``_observe``, U_ref in its energy unit, (S,) (one-body systems:
    (S, N) per particle; ``solid_md.SolidMD``: a dict of arrays, U_ref under "energy" and its
    observer's outputs); kT: (S,) kinetic temperature (energy unit); step: (S,) MD step index.
    """

    positions: Any
    energies: Any
    kT: Any
    step: Any


class SampleResult(NamedTuple):
    trajectory: Trajectory
    state: Any
    neighbor: Any
    ok: bool          # False if unstable (see ``reason``)
    retries: int      # capacity re-allocations needed
    reason: str = ""  # why not ok: non-finite energies/positions, hot, overflow that would not stop


class Monitor(Protocol):
    """Called after every chunk of a sampler or of a ``parallel.StateGroup`` (``source``;
    ``source.label`` and ``source.cfg`` describe it); ``progress`` is the segment's (a group's:
    its member furthest from the end); ``segments()`` gives every segment of the call as
    checkpoint parts (segments.py). It may checkpoint them and stop the run by raising."""

    def chunk_done(self, source, segments: Callable[[], list[tuple[Segment, dict]]], progress: SegmentProgress,
                   steps_per_s: float) -> None: ...


def kinetic_temperature(state) -> Any:
    """kT = Σ p²/m / (N·d) (JAX MD's convention; the module docstring says why)."""
    return quantity.temperature(momentum=state.momentum, mass=state.mass)


@dataclass(frozen=True)
class SamplerConfig:
    integrator: str = "langevin"      # langevin | nose_hoover | nve (config key simulator.kind)
    dt: float = 0.005
    gamma: float = 1.0                # Langevin friction (1/time)
    chain_length: int = 3             # Nosé–Hoover chain length
    tau_steps: float = 100.0          # Nosé–Hoover coupling time in units of dt
    equilibration_steps: int = 1000   # before each later trajectory
    first_equilibration_steps: int = 5000
    production_steps: int = 1000
    every: int = 10                   # keep one snapshot every `every` steps
    skin: float = 0.3
    capacity_multiplier: float = 1.25
    max_retries: int = 5
    max_kT_factor: float = 10.0       # kinetic kT above this × set kT counts as an exploding simulation
    chunk_seconds: float = 5.0        # wall time of one compiled chunk (progress, signals, checkpoints)

    @property
    def n_snapshots(self) -> int:
        return self.production_steps // self.every


def sampler_config(cfg) -> SamplerConfig:
    """:class:`SamplerConfig` from the ``simulator`` config group, every key range-checked."""
    keys = ["kind"] + [k for k in SamplerConfig.__dataclass_fields__ if k != "integrator"]   # kind: the integrator
    unknown = sorted(k for k in cfg if k not in keys)
    if unknown:
        raise UserError(f"simulator: unknown key(s) {unknown}", f"valid keys: {sorted(keys)}")
    P, d = "simulator", SamplerConfig()
    kw = {"integrator": choice(cfg, "kind", ("langevin", "nose_hoover", "nve"), prefix=P,
                               default=d.integrator, what="integrator")}

    def num(key, example, **bounds):
        kw[key] = number(cfg, key, prefix=P, required=False, default=getattr(d, key), example=example, **bounds)

    num("dt", "0.005", lo=0.0, lo_open=True)
    num("gamma", "1.0", lo=0.0, lo_open=True)
    num("chain_length", "3", integer=True, lo=1)
    num("tau_steps", "100", lo=0.0, lo_open=True)
    num("equilibration_steps", "1000", integer=True, lo=0)
    num("first_equilibration_steps", "5000", integer=True, lo=0)
    num("production_steps", "1000", integer=True, lo=1)
    num("every", "10", integer=True, lo=1)
    num("skin", "0.3", lo=0.0)
    # A list allocated with fewer slots than the measured occupancy silently drops neighbours.
    num("capacity_multiplier", "1.25", lo=1.0)
    num("max_retries", "5", integer=True, lo=0)
    num("max_kT_factor", "10", lo=1.0, lo_open=True)
    num("chunk_seconds", "5", lo=0.0, lo_open=True)
    sc = SamplerConfig(**kw)
    if sc.production_steps < sc.every:
        raise UserError(f"simulator.production_steps={sc.production_steps} is smaller than simulator.every="
                        f"{sc.every}: no snapshot would be kept",
                        "raise simulator.production_steps or lower simulator.every")
    return sc


class ChunkedSampler:
    """Base of every sampler: the chunk program, the host loop over chunks, the overflow rule,
    the stability check and the segment checkpoints. Subclasses set ``cfg``, ``system`` and
    implement ``init``, ``_advance`` and ``_observe`` (and, with capacities of their own,
    ``_prepare`` and ``_grow``), then call :meth:`_compile`."""

    monitor: Monitor | None = None
    label: str = ""            # the state point this sampler belongs to ("" for a single one)
    pending: tuple | None = None
    trace_count: int = 0       # traces of the chunk program (kept across re-compilations)

    # -- what a case provides (jit-traceable unless said otherwise) -----------------------
    def init(self, key, params, positions=None, ahead: int = 0):   # -> (state, nbrs)  (host)
        # ahead > 0: the first segment keeps that many snapshots; a case that can compiles its
        # chunk program meanwhile (:meth:`compile_chunk_ahead`)
        raise NotImplementedError

    def _advance(self, params, state, nbrs):        # one MD step -> (state, nbrs, capacity overflow)
        raise NotImplementedError

    def _observe(self, params, state, nbrs):        # at a snapshot -> (nbrs, capacity overflow, record)
        # record: U_ref, or a pytree of arrays (stacked along a leading snapshot axis)
        raise NotImplementedError

    def _prepare(self, positions, nbrs) -> None:    # host, before a segment (e.g. fit graph capacities)
        return None

    def _grow(self, state, nbrs, attempt: int, list_full: bool, graph_full: bool):   # host -> nbrs
        raise AssertionError("a sampler without capacities cannot overflow")

    # -- the compiled chunk -----------------------------------------------------------------
    def _compile(self) -> None:
        self._chunk = jax.jit(self._chunk_impl)

    def compile_chunk_ahead(self, params, state, nbrs, n_snapshots: int) -> None:
        """Compile the chunk program for a segment of ``n_snapshots`` from ``state`` (its
        shapes suffice: ``jax.ShapeDtypeStruct`` leaves) in a background thread
        (compile_ahead.py); the next chunk waits for it. A program shared with other samplers
        compiles ahead for its template's shapes only (simulate.share_programs)."""
        if not getattr(self._chunk, "leads", True):
            return
        i32 = jax.ShapeDtypeStruct((), jnp.int32)
        self._ahead.start(self._chunk, params, state, nbrs, self._buffers(params, state, nbrs, n_snapshots),
                          i32, i32, i32, i32)

    @functools.cached_property
    def _ahead(self) -> CompileAhead:   # this sampler's background compilation, made on first use
        return CompileAhead()

    def _chunk_impl(self, params, state, nbrs, buffers, n_eq, n_rec, start, every):
        """``n_eq`` steps, then ``n_rec`` intervals of ``every`` steps each ending in a snapshot
        written to row ``start + j`` of ``buffers``; all four counts are traced, not static."""
        self.trace_count += 1

        def step(i, carry):
            st, nb, full = carry
            st, nb, f = self._advance(params, st, nb)
            return st, nb, full | f

        carry = lax.fori_loop(0, n_eq, step, (state, nbrs, jnp.asarray(False)))

        def interval(j, carry):
            st, nb, full, (P, U, K) = carry
            st, nb, full = lax.fori_loop(0, every, step, (st, nb, full))
            nb, f, u = self._observe(params, st, nb)
            row = start + j
            U = jax.tree_util.tree_map(lambda b, v: b.at[row].set(v), U, u)
            return st, nb, full | f, (P.at[row].set(st.position), U, K.at[row].set(kinetic_temperature(st)))

        st, nb, full, buffers = lax.fori_loop(0, n_rec, interval, (*carry, buffers))
        return st, nb, full, buffers, kinetic_temperature(st)

    def _buffers(self, params, state, nbrs, n_snapshots: int):
        key = (state.position.shape, state.position.dtype)
        shapes = self.__dict__.setdefault("_energy_shapes", {})
        if key not in shapes:   # tracing the observation costs milliseconds: once per shape
            shapes[key] = jax.eval_shape(self._observe, params, state, nbrs)[2]
        records = jax.tree_util.tree_map(lambda u: jnp.zeros((n_snapshots, *u.shape), u.dtype), shapes[key])
        return (jnp.zeros((n_snapshots, *state.position.shape), state.position.dtype),
                records, jnp.zeros((n_snapshots,), state.position.dtype))

    # -- the host loop ---------------------------------------------------------------------
    def sample(self, params, state, nbrs, first: bool = False) -> SampleResult:
        """A reference trajectory with the config's lengths (first: the first equilibration)."""
        cfg = self.cfg
        return self.run(params, state, nbrs, cfg.first_equilibration_steps if first else cfg.equilibration_steps,
                        cfg.n_snapshots, cfg.every)

    def run(self, params, state, nbrs, n_eq: int, n_snapshots: int, every: int) -> SampleResult:
        """``n_eq`` equilibration steps then ``n_snapshots`` snapshots ``every`` steps apart,
        in chunks (module doc); continues a restored segment of the same lengths."""
        seg, prog = self.start_segment(params, state, nbrs, n_eq, n_snapshots, every)
        if self.trace_count == 0 and getattr(self._chunk, "leads", True):
            log.info("compiling the MD chunk program (once per run; a graph network takes a while)")
        self._ahead.wait()   # a chunk program compiling in the background (compile_chunk_ahead)
        pacer = self.pacer
        while not prog.done:
            n_e, n_r = prog.plan(pacer.budget(prog.every))
            t0, traces = time.perf_counter(), self.trace_count
            seg, kT_end, failed = self._run_chunk(params, seg, prog, n_e, n_r)
            if failed:
                return self.result(state, nbrs, seg, prog, False, failed)
            pacer.measured(n_e + n_r * prog.every, time.perf_counter() - t0, self.trace_count != traces)
            unstable = self.chunk_end(seg, prog, n_e, n_r, kT_end)
            if unstable:
                return self.result(state, nbrs, seg, prog, False, unstable)
            if self.monitor is not None:
                self.monitor.chunk_done(self, lambda seg=seg: [self.segment_checkpoint(seg, prog)], prog,
                                        pacer.rate or float("nan"))
        return self.result(state, nbrs, seg, prog, True, "")

    @functools.cached_property
    def pacer(self) -> ChunkPacer:   # this sampler's chunk sizes (segments.py), kept between segments
        return ChunkPacer(self.cfg.chunk_seconds)

    def start_segment(self, params, state, nbrs, n_eq: int, n_snapshots: int, every: int):
        """(segment, progress) of a segment of these lengths from ``state``: the restored
        segment in progress if it has them, else a fresh one."""
        self._prepare(state.position, nbrs)
        prog = SegmentProgress(int(n_eq), int(n_snapshots), int(every))
        seg = self._take_pending(prog)
        if seg is None:
            return Segment(state, nbrs, *self._buffers(params, state, nbrs, prog.n_snapshots)), prog
        return seg, self.pending_progress

    def _run_chunk(self, params, seg: Segment, prog: SegmentProgress, n_e: int, n_r: int):
        """One chunk under the overflow rule (:meth:`overflow_rule`). Returns (segment, kT at
        its end, failure reason or "")."""
        lists = [seg.nbrs]

        def compute():
            return self._chunk(params, seg.state, lists[0], (seg.positions, seg.energies, seg.kT),
                               jnp.asarray(n_e, jnp.int32), jnp.asarray(n_r, jnp.int32),
                               jnp.asarray(prog.recorded, jnp.int32), jnp.asarray(prog.every, jnp.int32))

        def grow(attempt, list_full, graph_full):
            prog.retries += 1
            lists[0] = self._grow(seg.state, lists[0], attempt, list_full, graph_full)

        (st, nb, full, buffers, kT_end), ok = recompute_on_overflow(
            compute, lambda out: (bool(out[1].did_buffer_overflow) if out[1] is not None else False, bool(out[2])),
            grow, self.cfg.max_retries)
        if ok:
            return Segment(st, nb, *buffers), kT_end, ""
        return seg, None, self.overflow_reason()

    def overflow_rule(self, seg: Segment, nbrs, out_nbrs, full, attempt: int, prog: SegmentProgress):
        """The one overflow rule, after the ``attempt``-th (0-based) computation of a chunk
        from ``seg`` with the list ``nbrs``, which gave the list ``out_nbrs`` and the capacity
        flag ``full``: (True, None) if nothing overflowed; (False, grown list) to recompute
        the chunk with (``prog.retries`` counted); (False, None) after ``max_retries``
        re-allocations (the segment then counts as unstable)."""
        list_full = out_nbrs is not None and bool(out_nbrs.did_buffer_overflow)
        graph_full = bool(full)
        decision = overflow_decision(list_full, graph_full, attempt, self.cfg.max_retries)
        if decision != "grow":
            return decision == "ok", None
        prog.retries += 1
        return False, self._grow(seg.state, nbrs, attempt, list_full, graph_full)

    def overflow_reason(self) -> str:
        # A list that keeps overflowing while its capacity grows means particles pile up: the
        # segment is not trustworthy, so it counts as an unstable simulation.
        return f"neighbour list or graph still overflowing after {self.cfg.max_retries} re-allocations"

    def chunk_end(self, seg: Segment, prog: SegmentProgress, n_e: int, n_r: int, kT_end) -> str:
        """Counts a chunk of ``n_e`` steps and ``n_r`` snapshots just run (``seg``: after it)
        into ``prog``; returns why it is unstable, or ""."""
        unstable = self._unstable(seg, prog, n_r, kT_end)
        prog.eq_done += n_e
        prog.recorded += n_r
        return unstable

    def _unstable(self, seg: Segment, prog: SegmentProgress, n_r: int, kT_end) -> str:
        """Why the chunk just run is unstable, or "": non-finite positions or energies, or a mean
        kinetic temperature (over the chunk's snapshots, or at its end) far above the
        thermostat's (energies can stay finite in float32 while particles fly apart)."""
        rows = slice(prog.recorded, prog.recorded + n_r)
        pos = np.asarray(seg.positions[rows]) if n_r else np.asarray(seg.state.position)
        u = [np.asarray(x[rows]) for x in jax.tree_util.tree_leaves(seg.energies)] if n_r else []
        if not (np.all(np.isfinite(pos)) and all(np.all(np.isfinite(x)) for x in u)):
            return "non-finite energies or positions"
        kT = float(np.mean(np.asarray(seg.kT[rows]))) if n_r else float(kT_end)
        if not kT < self.cfg.max_kT_factor * float(self.system.kT):
            return f"kinetic temperature above {self.cfg.max_kT_factor:g} x the thermostat's"
        return ""

    def result(self, state, nbrs, seg: Segment, prog: SegmentProgress, ok: bool, reason: str) -> SampleResult:
        """The result of a segment from ``state``/``nbrs`` (returned unchanged if not ok)."""
        steps = prog.n_eq + prog.every * (1 + np.arange(prog.n_snapshots))
        traj = Trajectory(seg.positions, seg.energies, seg.kT, steps)
        if not ok:
            return SampleResult(traj, state, nbrs, False, prog.retries, reason)
        return SampleResult(traj, seg.state, seg.nbrs, True, prog.retries, "")

    # -- segments in checkpoints (segments.py) ---------------------------------------------
    def segment_checkpoint(self, seg: Segment, prog: SegmentProgress) -> tuple[Segment, dict]:
        """The segment as a checkpoint part: its tree and its counters (JSON-able) to restore it with."""
        info = {"label": self.label, "n_eq": prog.n_eq, "n_snapshots": prog.n_snapshots, "every": prog.every,
                "eq_done": prog.eq_done, "recorded": prog.recorded, "retries": prog.retries}
        if seg.nbrs is not None:
            info["neighbor_capacities"] = neighbors.capacities(seg.nbrs)
        return seg, info

    def segment_template(self, info: dict, params) -> Segment:
        """A tree shaped like the checkpointed segment described by ``info``."""
        state, nbrs = self.init(jax.random.PRNGKey(0), params)
        if nbrs is not None:
            nbrs = neighbors.placeholder(nbrs.idx.shape[0], info["neighbor_capacities"], nbrs.reference_position.dtype)
        return Segment(state, nbrs, *self._buffers(params, state, nbrs, int(info["n_snapshots"])))

    def restore_segment(self, seg: Segment, info: dict) -> None:
        """The next ``run`` of the same lengths continues ``seg`` instead of starting afresh."""
        self.pending = seg
        self.pending_progress = SegmentProgress(*(int(info[k]) for k in (
            "n_eq", "n_snapshots", "every", "eq_done", "recorded", "retries")))

    def _take_pending(self, prog: SegmentProgress) -> Segment | None:
        seg, self.pending = self.pending, None
        if seg is None:
            return None
        p = self.pending_progress
        if (p.n_eq, p.n_snapshots, p.every) != (prog.n_eq, prog.n_snapshots, prog.every):
            log.warning("the checkpointed trajectory in progress (%d + %d x %d steps) does not match this one "
                        "(%d + %d x %d): starting it afresh", p.n_eq, p.n_snapshots, p.every,
                        prog.n_eq, prog.n_snapshots, prog.every)
            return None
        log.info("continuing the checkpointed trajectory%s at step %d of %d",
                 f" of {self.label}" if self.label else "", p.steps_done, p.steps_total)
        return seg
