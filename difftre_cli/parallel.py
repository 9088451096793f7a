"""Sampling segments of several state points together, chunk by chunk, spread over JAX devices.

A :class:`StateGroup` holds the samplers (simulate.py) of state points whose simulations have
the same shapes: the same particle number, integrator-state layout and kept-snapshot count
(``group_state_points`` finds them). ``StateGroup.sample`` runs the segments of any subset of
them together, in chunks like ``ChunkedSampler.run`` (sampler.py): each chunk is ONE call of
one ``jax.jit(jax.shard_map(...))`` program over a 1-D device mesh (axis ``state``):

* every state point has a fixed *slot*; slot ``s`` lives on device ``s // per_device``,
  state point ``k`` of the group on device ``k mod D`` (D = min(group size, devices)), so
  each device holds ``per_device = ceil(group size / D)`` slots; unused slots are idle;
* inside each shard a sequential ``lax.map`` walks the device's slots and a ``lax.switch``
  on the slot's state index runs that state point's own, unmodified chunk program
  (``ChunkedSampler._chunk_impl``, with its own box, temperature, species and neighbour-list
  capacities) with the slot's own traced counts (equilibration steps, snapshot intervals,
  first row, stride) and snapshot buffers — or nothing, for an idle slot (a state point not
  sampled, or whose segment is done). No ``vmap``: it would turn the neighbour list's
  conditional rebuild into a rebuild on every step (3-5x slower);
* neighbour lists travel between the host and the shards padded to the group's largest
  capacity (padding value N, JAX MD's dense format) and are cut back to the state point's
  own capacity inside its branch, so each state point computes exactly what its sequential
  ``Sampler.sample`` computes (tested bit-for-bit on CPU).

The host loop (:meth:`StateGroup.sample`) is the sampler's, for all members at once, with the
sampler interface's per-chunk pieces: the members share the snapshot count and stride
(``signature``), their equilibration may differ (a first trajectory next to later ones); each
chunk gives every unfinished member the same step budget (``segments.ChunkPacer``: about
the smallest of the members' ``simulator.chunk_seconds`` at the group's measured MD steps per
second of one state point's trajectory). After each chunk, per member: the overflow rule
(``ChunkedSampler.overflow_rule``: the members that overflowed are re-allocated with more room
and only they recompute the chunk, in one more call), the stability check, and the counters;
then the monitor (the members' ``sampler.monitor``) is called once for the group: ``source``
is the group (``label``: the members' labels joined by "+"), the progress that of the member
furthest from the end, and ``segments()`` gives the segment of every member still stable
(finished ones included), so a stop at a chunk boundary checkpoints them all and a resumed run
continues each one where it stopped (``restore_segment`` on each member's sampler; the next
``sample`` of the group takes them up). An unstable member is left out: it is sampled afresh
after a resume (and fails the same way).

The compiled program depends on every state point's list capacities (static shapes), not on
the counts, so it is compiled once per run and again only after a re-allocation, as in the
sequential sampler. Outputs stay on the device that computed them (a state point's trajectory,
features and gradient then live on its device; learn/multistate.py).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .neighbors import NeighborList
from .sampler import SampleResult
from .segments import ChunkPacer, Segment
from .simulate import Sampler

log = logging.getLogger("difftre")

AXIS = "state"


def _is_list(x) -> bool:
    return isinstance(x, NeighborList)


def _caps(nb: NeighborList) -> tuple[int, int, int]:
    return int(nb.max_occupancy), int(nb.cell_capacity), int(nb.candidate_capacity)


def _transport(nb: NeighborList, m_max: int) -> NeighborList:
    """``nb`` padded to ``m_max`` neighbour slots, with the group's common static fields."""
    n, m = nb.idx.shape
    idx = nb.idx if m == m_max else jnp.pad(nb.idx, ((0, 0), (0, m_max - m)), constant_values=n)
    return dataclasses.replace(nb, idx=idx, max_occupancy=m_max, cell_capacity=0, candidate_capacity=0)


def _own(nb: NeighborList, caps: tuple[int, int, int]) -> NeighborList:
    """The inverse of :func:`_transport`: the list at a state point's own capacities."""
    return dataclasses.replace(nb, idx=nb.idx[:, :caps[0]], max_occupancy=caps[0], cell_capacity=caps[1],
                               candidate_capacity=caps[2])


def signature(sampler, params, state, nbrs):
    """What must agree for two state points to share a compiled program: the sampler kind and
    settings, and the shapes and dtypes of a segment's inputs and outputs (neighbour lists
    counted by particle number only; their capacities may differ). None: not batchable."""
    if type(sampler) is not Sampler or nbrs is None:
        return None
    if sampler.potential.has_graph_capacity:   # a graph network grows its own capacities
        return None                                        # between segments: sampled on its own
    cfg = sampler.cfg

    def shapes(tree):
        leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_is_list)
        return str(treedef), tuple(("nbrs", x.idx.shape[0], x.reference_position.shape, str(x.idx.dtype))
                                   if _is_list(x) else (tuple(x.shape), str(x.dtype)) for x in leaves)

    i32 = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    out = jax.eval_shape(lambda p, s, nb, b: sampler._chunk_impl(p, s, nb, b, i32(0), i32(1), i32(0), i32(1)),
                         params, state, nbrs, sampler._buffers(params, state, nbrs, cfg.n_snapshots))
    return (cfg.n_snapshots, cfg.every, cfg.max_retries, shapes(params), shapes(state), shapes(nbrs), shapes(out))


def group_state_points(signatures: Sequence) -> list[list[int]]:
    """Indices of state points with equal (non-None) signatures, in order of first appearance;
    a state point that matches no other one forms a group of its own."""
    groups: dict = {}
    out = []
    for k, sig in enumerate(signatures):
        if sig is not None and sig in groups:
            groups[sig].append(k)
            continue
        out.append([k])
        if sig is not None:
            groups[sig] = out[-1]
    return out


def batch_groups(samplers: Sequence, states: Sequence, params, names: Sequence[str], n_particles: Sequence[int]):
    """([(StateGroup, [state indices])], {state index: its device}) for the state points whose
    segments have equal shapes (``states``: each one's (simulation state, neighbour list)); a
    state point that matches no other one is left out (sampled on its own) with a warning that
    names it and the fix."""
    sigs = [signature(sampler, params, state, nbrs) for sampler, (state, nbrs) in zip(samplers, states)]
    n_dev = len(jax.local_devices())
    batched, home = [], {}
    for members in group_state_points(sigs):
        label = ", ".join(names[k] for k in members)
        if len(members) == 1:
            k = members[0]
            why = ("its sampler cannot be batched" if sigs[k] is None else
                   f"no other state point has N = {n_particles[k]} particles and the same simulation state shapes")
            log.warning("trainer.state_parallel=devices: state point %s is sampled on its own (%s); "
                        "give state points the same system.n_particles to batch them", label, why)
            continue
        group = StateGroup([samplers[k] for k in members])
        batched.append((group, members))
        for j, k in enumerate(members):
            home[k] = group.device(j)
        log.info("trainer.state_parallel=devices: state points %s sampled in one compiled call over %d "
                 "device(s) (%s)", label, group.n_devices, ", ".join(str(d) for d in group.devices))
        if n_dev == 1:
            log.warning("trainer.state_parallel=devices: only one JAX device, so the state points %s run one "
                        "after another inside that call; on CPU set XLA_FLAGS="
                        "--xla_force_host_platform_device_count=%d before starting difftre", label, len(members))
    return batched, home


class StateGroup:
    """Samplers of state points with equal :func:`signature`, sampled together (see module doc)."""

    def __init__(self, samplers: Sequence[Sampler], devices: Sequence | None = None):
        self.samplers = list(samplers)
        devices = list(jax.local_devices() if devices is None else devices)
        n = len(self.samplers)
        self.n_devices = min(n, len(devices))
        self.devices = devices[:self.n_devices]
        self.per_device = -(-n // self.n_devices)
        self.n_slots = self.per_device * self.n_devices
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.sharded = NamedSharding(self.mesh, P(AXIS))
        self.replicated = NamedSharding(self.mesh, P())
        self.slot = [(k % self.n_devices) * self.per_device + k // self.n_devices for k in range(n)]
        self.cfg = self.samplers[0].cfg   # the monitor's view (equal snapshot count and stride)
        self.label = ""                   # the members sampled in the current call, for the monitor
        self.pacer = ChunkPacer(min(s.cfg.chunk_seconds for s in self.samplers))
        self._programs: dict = {}
        self.trace_count = 0

    def device(self, k: int):
        """The device that samples state point ``k`` of the group (and holds its results)."""
        return self.devices[self.slot[k] // self.per_device]

    # -- the compiled program ------------------------------------------------------------
    def _program(self, caps: tuple):
        """One jit(shard_map) chunk call for the given per-state list capacities (static)."""
        if caps in self._programs:
            return self._programs[caps]
        m_max = max(c[0] for c in caps)

        def branch(k):
            sampler = self.samplers[k]

            def run(params, counts, state, nbrs, buffers):
                st, nb, *rest = sampler._chunk_impl(params, state, _own(nbrs, caps[k]), buffers, *counts)
                return (st, _transport(nb, m_max), *rest)
            return run

        branches = [branch(k) for k in range(len(self.samplers))]

        def body(params, index, counts, state, nbrs, buffers):
            self.trace_count += 1

            def one(x):
                i, c, st, nb, bufs = x
                counts = tuple(c[j] for j in range(4))   # n_eq, n_rec, start, every
                kT = jax.eval_shape(branches[0], params, counts, st, nb, bufs)[4]

                def idle(params, counts, st, nb, bufs):
                    return st, nb, jnp.asarray(False), bufs, jnp.zeros(kT.shape, kT.dtype)
                return lax.switch(i, [*branches, idle], params, counts, st, nb, bufs)
            return lax.map(one, (index, counts, state, nbrs, buffers))

        spec = P(AXIS)
        prog = jax.jit(jax.shard_map(body, mesh=self.mesh, in_specs=(P(), spec, spec, spec, spec, spec),
                                     out_specs=spec, check_vma=False))
        self._programs[caps] = prog
        return prog

    def _stack(self, per_slot: list):
        """Slot-indexed pytrees (same structure) → one pytree of arrays sharded over the mesh,
        each device's block stacked on that device."""
        flat = [jax.tree_util.tree_flatten(t) for t in per_slot]
        treedef = flat[0][1]
        leaves = []
        for i in range(len(flat[0][0])):
            blocks = [jnp.stack([jax.device_put(flat[s][0][i], dev)
                                 for s in range(d * self.per_device, (d + 1) * self.per_device)])
                      for d, dev in enumerate(self.devices)]
            leaves.append(jax.make_array_from_single_device_arrays(
                (self.n_slots, *blocks[0].shape[1:]), self.sharded, blocks))
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def _unstack(self, tree, slots: list[int]) -> dict:
        """slot → its pytree, each leaf on the device that computed it."""
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        per_leaf = []
        for x in leaves:
            blocks = {sh.index[0].start or 0: sh.data for sh in x.addressable_shards}
            per_leaf.append(blocks)
        out = {}
        for s in slots:
            start = (s // self.per_device) * self.per_device
            out[s] = jax.tree_util.tree_unflatten(treedef, [b[start][s - start] for b in per_leaf])
        return out

    def _run(self, params, jobs: dict, lists: list) -> dict:
        """One chunk of the members ``jobs`` {k: (counts, segment)} in one call (``params``
        replicated over the mesh); ``lists``: every member's current list (their capacities
        fix the program; a job's segment carries its own). Returns {k: chunk outputs}."""
        caps = tuple(_caps(nb) for nb in lists)
        m_max = max(c[0] for c in caps)
        prog = self._program(caps)
        inputs = {self.slot[k]: (np.asarray(counts, np.int32), seg.state, _transport(seg.nbrs, m_max),
                                 (seg.positions, seg.energies, seg.kT)) for k, (counts, seg) in jobs.items()}
        idle = jax.tree_util.tree_map(jnp.zeros_like, next(iter(inputs.values())))
        per_slot = [inputs.get(s, idle) for s in range(self.n_slots)]
        index = np.full(self.n_slots, len(self.samplers), np.int32)   # the idle branch
        for k in jobs:
            index[self.slot[k]] = k
        out = prog(params, jax.device_put(index, self.sharded), *self._stack(per_slot))
        by_slot = self._unstack(out, [self.slot[k] for k in jobs])
        res = {}
        for k in jobs:
            st, nb, *rest = by_slot[self.slot[k]]
            res[k] = (st, _own(nb, _caps(lists[k])), *rest)
        return res

    # -- sampling ------------------------------------------------------------------------
    def sample(self, params, states: Sequence, nbrs: Sequence, firsts: Sequence[bool],
               which: Sequence[int]) -> dict[int, SampleResult]:
        """Segments (equilibration + production) of the group's state points ``which`` from
        ``states``/``nbrs`` (every state point's current ones), with the first-trajectory
        equilibration where ``firsts[k]``, in chunks (module doc): {k: SampleResult}, each
        as ``Sampler.sample`` gives it. Continues restored segments of the same lengths."""
        if not which:
            return {}
        segs, progs = {}, {}
        for k in which:
            cfg = self.samplers[k].cfg
            n_eq = cfg.first_equilibration_steps if firsts[k] else cfg.equilibration_steps
            segs[k], progs[k] = self.samplers[k].start_segment(params, states[k], nbrs[k], n_eq, cfg.n_snapshots,
                                                               cfg.every)
        lists = [segs[k].nbrs if k in segs else nb for k, nb in enumerate(nbrs)]
        self.label = "+".join(self.samplers[k].label for k in which)
        monitor = self.samplers[which[0]].monitor
        if self.trace_count == 0:
            log.info("compiling the batched MD chunk program of %s (once per run)", self.label)
        rep = jax.device_put(params, self.replicated)
        results: dict[int, SampleResult] = {}
        while any(not progs[k].done for k in which if k not in results):
            running = [k for k in which if k not in results and not progs[k].done]
            for k, (seg, failed) in self._chunk(rep, segs, progs, running, lists).items():
                segs[k] = seg
                if failed:
                    results[k] = self.samplers[k].result(states[k], nbrs[k], seg, progs[k], False, failed)
            live = [k for k in which if k not in results]
            if monitor is not None and live:
                furthest = max((progs[k] for k in live), key=lambda p: p.steps_total - p.steps_done)
                parts = lambda: [self.samplers[k].segment_checkpoint(segs[k], progs[k]) for k in live]  # noqa: E731
                monitor.chunk_done(self, parts, furthest, self.pacer.rate or float("nan"))
        for k in which:
            if k not in results:
                results[k] = self.samplers[k].result(states[k], nbrs[k], segs[k], progs[k], True, "")
        return {k: results[k] for k in which}

    def _chunk(self, params, segs: dict, progs: dict, members: list[int], lists: list) -> dict:
        """One chunk of the unfinished ``members`` with the same step budget, under the
        overflow rule per member (only those that overflowed are re-allocated and recompute
        it), then each one's stability check and counters. Returns {k: (segment after the
        chunk, or the one before it on failure; why it failed or "")}; updates ``lists``."""
        budget = self.pacer.budget(progs[members[0]].every)
        plans = {k: progs[k].plan(budget) for k in members}
        t0, traces = time.perf_counter(), self.trace_count
        starts, out, attempt = {k: segs[k] for k in members}, {}, 0
        while starts:   # the first call runs every member, each later one those that overflowed
            res = self._run(params, {k: ((*plans[k], progs[k].recorded, progs[k].every), seg)
                                     for k, seg in starts.items()}, lists)
            for k, seg in list(starts.items()):
                sampler = self.samplers[k]
                st, nb, full, buffers, kT_end = res[k]
                ok, grown = sampler.overflow_rule(seg, seg.nbrs, nb, full, attempt, progs[k])
                if grown is not None:
                    starts[k] = seg._replace(nbrs=grown)
                    lists[k] = grown
                    continue
                del starts[k]
                out[k] = (Segment(st, nb, *buffers), kT_end, "") if ok else (segs[k], None, sampler.overflow_reason())
            attempt += 1
        self.pacer.measured(max(n_e + n_r * progs[k].every for k, (n_e, n_r) in plans.items()),
                            time.perf_counter() - t0, self.trace_count != traces)
        ends = {}
        for k, (seg, kT_end, failed) in out.items():
            ends[k] = (seg, failed or self.samplers[k].chunk_end(seg, progs[k], *plans[k], kT_end))
            lists[k] = seg.nbrs
        return ends
