"""Sampling segments of several state points in one compiled call, spread over JAX devices.

A :class:`StateGroup` holds the samplers (simulate.py) of state points whose simulations have
the same shapes: the same particle number, integrator-state layout and kept-snapshot count
(``group_state_points`` finds them). ``StateGroup.sample`` runs the segments of any subset of
them as ONE ``jax.jit(jax.shard_map(...))`` call over a 1-D device mesh (axis ``state``):

* every state point has a fixed *slot*; slot ``s`` lives on device ``s // per_device``,
  state point ``k`` of the group on device ``k mod D`` (D = min(group size, devices)), so
  each device holds ``per_device = ceil(group size / D)`` slots; unused slots are idle;
* inside each shard a sequential ``lax.map`` walks the device's slots and a ``lax.switch``
  on the slot's state index runs that state point's own, unmodified chunk program
  (sampler.py, over the whole segment in one call, with its own box, temperature, species and
  neighbour-list capacities) — or nothing, for an idle slot. No ``vmap``: it would turn the
  neighbour list's conditional rebuild into a rebuild on every step (3-5x slower);
* neighbour lists travel between the host and the shards padded to the group's largest
  capacity (padding value N, JAX MD's dense format) and are cut back to the state point's
  own capacity inside its branch, so each state point computes exactly what its sequential
  ``Sampler.sample`` computes (tested bit-for-bit on CPU);
* overflow: after each call every sampled state point's list is checked; those that
  overflowed are re-allocated with more room (the sampler interface's rule,
  ``sampler.grown_extra``: 8, 16, 32 … extra slots, from the segment's starting positions) and only they
  are recomputed, in one more batched call, up to ``simulator.max_retries`` times.

The compiled program depends on every state point's list capacities (static shapes), so it is
compiled once per run and again only after a re-allocation, as in the sequential sampler.
Outputs stay on the device that computed them (a state point's trajectory, features and
gradient then live on its device; learn/multistate.py).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .neighbors import NeighborList
from .sampler import SampleResult, SegmentProgress, grown_extra
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

    out = jax.eval_shape(lambda p, s, nb, n: _segment(sampler, p, s, nb, n), params, state, nbrs,
                         jnp.asarray(0, jnp.int32))
    return (cfg.n_snapshots, cfg.every, cfg.max_retries, shapes(params), shapes(state), shapes(nbrs), shapes(out))


def _segment(sampler, params, state, nbrs, n_eq):
    """A whole segment (equilibration + every snapshot) as one call of the sampler's chunk
    program: (state, nbrs, capacity overflow, (positions, energies, kT), kT at the end)."""
    cfg = sampler.cfg
    i32 = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    return sampler._chunk_impl(params, state, nbrs, sampler._buffers(params, state, nbrs, cfg.n_snapshots), n_eq,
                               i32(cfg.n_snapshots), i32(0), i32(cfg.every))


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
        cfg = self.samplers[0].cfg
        self.n_snapshots, self.every, self.max_retries = cfg.n_snapshots, cfg.every, cfg.max_retries
        self._programs: dict = {}
        self.trace_count = 0

    def device(self, k: int):
        """The device that samples state point ``k`` of the group (and holds its results)."""
        return self.devices[self.slot[k] // self.per_device]

    # -- the compiled program ------------------------------------------------------------
    def _program(self, caps: tuple):
        """One jit(shard_map) call for the given per-state list capacities (static)."""
        if caps in self._programs:
            return self._programs[caps]
        m_max = max(c[0] for c in caps)

        def branch(k):
            sampler = self.samplers[k]

            def run(params, state, nbrs, n_eq):
                new_state, new_nbrs, *rest = _segment(sampler, params, state, _own(nbrs, caps[k]), n_eq)
                return (new_state, _transport(new_nbrs, m_max), *rest)
            return run

        branches = [branch(k) for k in range(len(self.samplers))]

        def body(params, index, n_eq, state, nbrs):
            self.trace_count += 1

            def one(x):
                i, n, st, nb = x
                shapes = jax.eval_shape(branches[0], params, st, nb, n)

                def idle(params, st, nb, n):
                    return jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
                return lax.switch(i, [*branches, idle], params, st, nb, n)
            return lax.map(one, (index, n_eq, state, nbrs))

        prog = jax.jit(jax.shard_map(body, mesh=self.mesh, in_specs=(P(), P(AXIS), P(AXIS), P(AXIS), P(AXIS)),
                                     out_specs=P(AXIS), check_vma=False))
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
        """Segments of ``jobs`` {k: (state, nbrs, n_eq)} in one call; ``lists``: every state
        point's current list (their capacities fix the program). Returns {k: outputs}."""
        caps = tuple(_caps(nb) for nb in lists)
        m_max = max(c[0] for c in caps)
        prog = self._program(caps)
        inputs = {self.slot[k]: (st, _transport(nb, m_max), jnp.asarray(n_eq, jnp.int32))
                  for k, (st, nb, n_eq) in jobs.items()}
        idle = jax.tree_util.tree_map(jnp.zeros_like, next(iter(inputs.values())))
        per_slot = [inputs.get(s, idle) for s in range(self.n_slots)]
        index = np.full(self.n_slots, len(self.samplers), np.int32)   # the idle branch
        for k in jobs:
            index[self.slot[k]] = k
        st, nb, n_eq = self._stack(per_slot)
        out = prog(jax.device_put(params, self.replicated), jax.device_put(index, self.sharded), n_eq, st, nb)
        by_slot = self._unstack(out, [self.slot[k] for k in jobs])
        res = {}
        for k in jobs:
            new_state, new_nbrs, *rest = by_slot[self.slot[k]]
            res[k] = (new_state, _own(new_nbrs, _caps(lists[k])), *rest)
        return res

    # -- sampling ------------------------------------------------------------------------
    def sample(self, params, states: Sequence, nbrs: Sequence, firsts: Sequence[bool],
               which: Sequence[int]) -> dict[int, SampleResult]:
        """Segments (equilibration + production) of the group's state points ``which`` from
        ``states``/``nbrs`` (every state point's current ones), with the first-trajectory
        equilibration where ``firsts[k]``: {k: SampleResult}, each as ``Sampler.sample`` gives it."""
        lists = list(nbrs)
        n_eq = {k: (self.samplers[k].cfg.first_equilibration_steps if firsts[k] else
                    self.samplers[k].cfg.equilibration_steps) for k in which}
        pending, done = list(which), {}
        for attempt in range(self.max_retries + 1):
            outs = self._run(params, {k: (states[k], lists[k], n_eq[k]) for k in pending}, lists)
            retry = []
            for k in pending:
                sampler = self.samplers[k]
                new_state, new_nbrs, full, buffers, kT_end = outs[k]
                assert not bool(full), "graph capacities are not grown in a batched call (see signature)"
                overflowed = bool(new_nbrs.did_buffer_overflow)
                if not overflowed or attempt == self.max_retries:
                    done[k] = sampler.finish_whole(states[k], lists[k], new_state, new_nbrs, buffers, kT_end,
                                                   SegmentProgress(n_eq[k], self.n_snapshots, self.every, retries=attempt),
                                                   overflowed)
                    continue
                # the re-allocation rule of the sampler interface (sampler.py), state point by state point
                extra = grown_extra(attempt)
                log.info("neighbour list overflowed (capacity %d); re-allocating with %d extra slots and "
                         "recomputing the segment", int(lists[k].idx.shape[1]), extra)
                lists[k] = sampler.neighbor_fn.allocate(states[k].position, extra_capacity=extra)
                retry.append(k)
            pending = retry
            if not pending:
                break
        return {k: done[k] for k in which}
