"""Force matching (multiscale coarse-graining, MS-CG; Noid et al., J. Chem. Phys. 128, 244114,
2008): fit the model's forces to the mapped forces of a finer simulation.

Loss of a mini-batch of mapped reference frames f (weights w_f: 1, or 0 for padding):

    L(θ) = Σ_f w_f Σ_i |F_θ,i(R_f) − F_ref,i,f|² / (3N Σ_f w_f)
           + energy_weight · Σ_f w_f ((U_θ(R_f) − U_ref,f) / N)² / Σ_f w_f
           + virial_weight · Σ_f w_f (P_θ(R_f) − P_ref,f)² / Σ_f w_f

(energy/length)² plus (energy per bead)² plus pressure², the forces F_θ = −∂U_θ/∂R of the
potential the samplers use, on a fresh neighbour list per frame (chemtrain's force, energy and
virial losses, Fuchs et al. 2025, Eqs. 16–18, with the virial W per volume: ΔP = −ΔW/(3V)).
The energy term needs energies in the reference file and is meaningful only where the mapped
energy is the CG energy (single-atom maps of every atom; set energy_weight=0 otherwise). The
virial term needs a pressure per frame (extended XYZ ``stress``, H5MD observables/pressure);
P_θ = N k_BT/V − W_θ/(3V) with W_θ = ∂U_θ(sR)/∂s at s = 1 and the system's k_BT, so the
reference's kinetic fluctuations only add zero-mean noise. Its natural use is a CG model whose
mapped pressure is the fine-grained one (molecular virial), which force matching alone gets
wrong.

:class:`ForceMatching` is the learner: one jit call per mini-batch (loss, gradient, optax step),
compiled once per run; on several devices the frames of a batch are split between them
(``shard_map``) and the per-device sums of the loss and its gradient are added (``psum``) before
the one replicated optimiser step, so the result equals one device's up to summation order.
The epoch loop, validation and early stopping are learn/epochs.py's.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from .. import neighbors
from ..errors import UserError
from ..overflow import grown_extra, recompute_on_overflow
from .difftre import apply_update

#: re-allocations of the per-frame lists (or graph capacities) before a batch counts as unstable
BATCH_RETRIES = 5
#: the mesh axis the frames of a batch are split along
AXIS = "frames"
#: the most parameters the Gauss–Newton preconditioner handles (it stores and solves a K × K matrix)
GAUSS_NEWTON_MAX_PARAMS = 2000


class Batch(NamedTuple):
    """Mapped reference frames of one mini-batch, padded to the compiled batch size."""

    positions: Any   # (B, N, 3) run units
    forces: Any      # (B, N, 3) mapped forces
    energies: Any    # (B,) reference energies (zeros when the energy term is off)
    weight: Any      # (B,) 1 for a frame, 0 for padding
    pressures: Any   # (B,) reference pressures (zeros when the virial term is off)


class Sums(NamedTuple):
    """Sums over the frames of a batch (the loss is their ratio)."""

    force_sq: Any     # Σ_f w_f Σ_i |ΔF|² / (3N)
    energy_sq: Any    # Σ_f w_f (ΔU / N)²
    weight: Any       # Σ_f w_f
    list_full: Any    # a frame's neighbour list overflowed
    graph_full: Any   # a frame's graph capacity overflowed
    pressure_sq: Any = 0.0   # Σ_f w_f (ΔP)² (0 when the virial term is off)

    def loss(self, energy_weight: float, virial_weight: float = 0.0):
        return ((self.force_sq + energy_weight * self.energy_sq + virial_weight * self.pressure_sq)
                / jnp.maximum(self.weight, 1e-30))


class StepOut(NamedTuple):
    sums: Sums        # of the batch at the parameters before the step
    grad_norm: Any
    finite: Any


class ForceMatching:
    """The force-matching learner of a box potential (see the module docstring). Built by
    ``assemble.build`` on the observable engine (the potential and the box); the regime sets
    the optimiser (its schedule counts mini-batch steps) with :meth:`configure`."""

    def __init__(self, engine, targets, optimizer: optax.GradientTransformation, **unused):
        if engine.one_body:
            raise UserError("trainer=force_matching needs particles in a periodic box (a pair or many-body "
                            "potential)", "use a box system (e.g. system=lj) with a pair or many-body model")
        self.potential = engine.potential
        self.box = engine.box
        self.optimizer = optimizer
        self.energy_weight = self.virial_weight = 0.0
        self.ctx = engine.ctx   # N, V, k_BT of the ideal-gas term of P_θ
        self.damping = 1e-3
        self.devices = jax.devices()[:1]
        self.nbr_fn = neighbors.make_neighbor_fn(self.box, self.potential.list_cutoff, 0.0, 1.3)
        self.template = None   # a neighbour list whose capacities every frame's fresh list uses
        self.trace_count = {"step": 0, "sums": 0}
        self._compile()

    # -- settings --------------------------------------------------------------------------
    def configure(self, optimizer, energy_weight: float = 0.0, n_devices: int = 1, damping: float = 1e-3,
                  virial_weight: float = 0.0) -> None:
        """The optimiser, the energy and virial terms' weights, the number of devices a batch is
        split over and the Gauss–Newton damping (a fraction of the matrix's mean diagonal)."""
        available = jax.devices()
        if n_devices > len(available):
            raise UserError(f"trainer.devices={n_devices} but JAX sees {len(available)} device(s)",
                            f"set trainer.devices to at most {len(available)} (or all)")
        self.optimizer, self.energy_weight, self.devices = optimizer, float(energy_weight), available[:n_devices]
        self.damping, self.virial_weight = float(damping), float(virial_weight)
        self._compile()

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    def padded_size(self, batch_size: int) -> int:
        """The compiled batch size: ``batch_size`` split evenly over the devices, each device's
        share rounded up to whole gradient chunks (:meth:`_chunk`)."""
        per = math.ceil(batch_size / self.n_devices)
        c = self._chunk(per)
        return self.n_devices * c * math.ceil(per / c)

    def _chunk(self, per_device: int) -> int:
        """Frames whose gradient is taken at once: at most the potential's ``snapshot_batch``
        (all of a device's frames when it has none), as even as possible. The gradient of a
        device's frames is summed chunk by chunk, so memory holds one chunk's backward pass
        whatever the batch size (a full-batch step of 270 water frames: 1.7 instead of 10.6 GB)."""
        cap = self.potential.snapshot_batch or per_device
        return math.ceil(per_device / math.ceil(per_device / cap))

    def prepare(self, positions) -> None:
        """Lists (and graph capacities) sized on a reference frame, before the first batch."""
        R = jnp.asarray(positions)
        extra = int(0.2 * self.nbr_fn.measure(R)["max_occupancy"])   # 20 % more room than this frame needs
        self.template = self.nbr_fn.allocate(R, extra_capacity=extra)
        if self.potential.has_graph_capacity and self.potential.graph_format == "sparse" \
                and not self.potential.sparse:
            self._set_potential(self.potential.fit_capacity(R, self.template.idx))

    def capacity_attrs(self) -> dict:
        caps = {} if self.template is None else {"fm_list": neighbors.capacities(self.template)}
        if self.potential.has_graph_capacity and self.potential.sparse:
            caps["fm_graph"] = {"max_edges": int(self.potential.max_edges),
                                "max_degree": int(self.potential.max_degree)}
        return caps

    def set_capacity(self, caps: dict, n_particles: int, dtype) -> None:
        """Capacities recorded in a checkpoint (the same padding: bit-identical resume)."""
        if "fm_list" in caps:
            self.template = neighbors.placeholder(n_particles, caps["fm_list"], dtype)
        # (a checkpoint written before the graph had per-atom slots records max_triplets instead:
        # its capacities are measured again, as for a new run)
        if "fm_graph" in caps and "max_degree" in caps["fm_graph"] and self.potential.has_graph_capacity:
            g = caps["fm_graph"]
            self._set_potential(dataclasses.replace(self.potential, max_edges=g["max_edges"],
                                                    max_degree=g["max_degree"]))

    # -- the compiled programs ----------------------------------------------------------------
    def _set_potential(self, potential) -> None:
        self.potential = potential
        self._compile()

    def _compile(self) -> None:
        self._energy = self.potential.energy_fn(self.box)
        self._step = jax.jit(self._step_impl)
        self._sums = jax.jit(self._sums_impl)
        self._gauss_newton = jax.jit(self._gauss_newton_impl)

    def _frame(self, params, R, template):
        """(forces, energy, pressure, list overflow, graph overflow) of one frame on a fresh list;
        the pressure (N k_BT/V − W/(3V), W the virial) only when the virial term is on (else 0)."""
        nb = self.nbr_fn.rebuild(R, template)
        graph_full = (self.potential.capacity_overflow(R, nb.idx) if self.potential.has_graph_capacity
                      else jnp.asarray(False))
        u, g = jax.value_and_grad(self._energy)(R, nb, params)
        p = jnp.zeros((), u.dtype)
        if self.virial_weight:
            feats = self.potential.features_on_list(R, nb.idx, self.box)
            w = jax.grad(lambda s: self.potential.energy_from_features(params, feats, s))(jnp.ones((), u.dtype))
            c = self.ctx
            p = c.n_particles * c.kT / c.volume - w / (3.0 * c.volume)
        return -g, u, p, nb.did_buffer_overflow, graph_full

    def _local(self, params, batch: Batch, template):
        """(objective, Sums) of the frames on this device: the objective Σ w (|ΔF|²/3N + λ(ΔU/N)²)
        is the numerator of the loss (its gradient, divided by Σ w, is the loss's)."""
        one = lambda R: self._frame(params, R, template)  # noqa: E731
        per_snapshot = self.potential.snapshot_batch
        F, U, Pr, lf, gf = (jax.lax.map(one, batch.positions, batch_size=per_snapshot) if per_snapshot
                            else jax.vmap(one)(batch.positions))
        n = batch.positions.shape[1]
        w = batch.weight.astype(F.dtype)
        force_sq = jnp.sum(w * jnp.sum((F - batch.forces) ** 2, axis=(1, 2))) / (3 * n)
        energy_sq = jnp.sum(w * ((U - batch.energies) / n) ** 2)
        pressure_sq = jnp.sum(w * (Pr - batch.pressures) ** 2) if self.virial_weight else jnp.zeros((), F.dtype)
        objective = force_sq + self.energy_weight * energy_sq + self.virial_weight * pressure_sq
        return objective, Sums(force_sq, energy_sq, jnp.sum(w), jnp.any(lf), jnp.any(gf), pressure_sq)

    def _reduced(self, fn):
        """``fn(params, batch, template)`` on all devices: the batch split along its frames, the
        outputs summed (flags: any) over the devices. One device: ``fn`` itself."""
        if self.n_devices == 1:
            return fn
        mesh = jax.sharding.Mesh(np.array(self.devices), (AXIS,))

        def on_device(params, batch, template):
            out = fn(params, batch, template)
            return jax.tree_util.tree_map(
                lambda x: jax.lax.psum(x.astype(jnp.int32), AXIS) > 0 if x.dtype == jnp.bool_
                else jax.lax.psum(x, AXIS), out)
        return jax.shard_map(on_device, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=P())

    def _sums_impl(self, params, batch: Batch, template) -> Sums:
        self.trace_count["sums"] += 1
        return self._reduced(lambda p, b, t: self._local(p, b, t)[1])(params, batch, template)

    def _gauss_newton_impl(self, params, batch: Batch, template):
        """(Σ_f w_f J_fᵀ J_f, Σ_f w_f, overflow flags): J_f the Jacobian of frame f's residuals
        (model forces / √(3N), and √virial_weight · P_θ when the virial term is on) with respect
        to the flattened parameters: forward mode (one pass per parameter) when the parameters are
        fewer than the residuals (a spline for 1000 particles), reverse mode (one pass per
        residual) otherwise (a 10-bead molecule's 30 residuals against ~1000 parameters of a
        many-body model: 40x fewer passes)."""
        flat, unravel = ravel_pytree(params)
        n = batch.positions.shape[1]
        root_vw = self.virial_weight ** 0.5
        jacobian = jax.jacfwd if flat.size <= 3 * n + (1 if self.virial_weight else 0) else jax.jacrev

        def local(p, b, t):
            def one(R, w):
                def residuals(th):
                    f, _, pr, lf, gf = self._frame(unravel(th), R, t)
                    r = f.reshape(-1) / (3 * n) ** 0.5
                    return (jnp.concatenate([r, root_vw * pr[None]]) if self.virial_weight else r), (lf, gf)
                J, (lf, gf) = jacobian(residuals, has_aux=True)(flat)
                return w * (J.T @ J), lf, gf

            def add(carry, x):   # summed frame by frame: one K x K matrix in memory, not one per frame
                G, lf, gf = one(*x)
                return (carry[0] + G, carry[1] | lf, carry[2] | gf), None
            zero = (jnp.zeros((flat.size, flat.size), flat.dtype), jnp.asarray(False), jnp.asarray(False))
            (G, lf, gf), _ = jax.lax.scan(add, zero, (b.positions, b.weight.astype(flat.dtype)))
            return G, jnp.sum(b.weight), lf, gf
        return self._reduced(local)(flat, batch, template)

    def gauss_newton(self, params, batch: Batch):
        """The damped Gauss–Newton matrix of the loss on ``batch`` (a preconditioner for
        :meth:`step`): 2 JᵀJ / Σw of the force (and virial) residuals — the loss's Hessian when
        forces and pressure are linear in the parameters, so that a unit step is the Newton step
        — + damping · mean diagonal · I, K × K."""
        K = ravel_pytree(params)[0].size
        if K > GAUSS_NEWTON_MAX_PARAMS:
            raise UserError(f"trainer.precondition=gauss_newton stores a K x K matrix, and this model has K = {K} "
                            f"parameters (at most {GAUSS_NEWTON_MAX_PARAMS})",
                            "set trainer.precondition=none (Adam) for network models")
        out = self._fitting(lambda: self._gauss_newton(params, batch, self.template),
                            lambda o: Sums(0.0, 0.0, o[1], o[2], o[3]), batch)
        G = 2.0 * out[0] / jnp.maximum(out[1], 1e-30)
        return G + self.damping * jnp.mean(jnp.diag(G)) * jnp.eye(K, dtype=G.dtype)

    def _step_impl(self, params, opt_state, batch: Batch, template, lr_scale, precond):
        self.trace_count["step"] += 1

        def value_and_grad(p, b, t):   # summed over chunks of frames (bounded memory, see _chunk)
            local = b.positions.shape[0]
            c = self._chunk(local)
            c = c if local % c == 0 else math.gcd(local, c)   # (padded_size makes c divide local)
            chunks = jax.tree_util.tree_map(lambda x: x.reshape((local // c, c) + x.shape[1:]), b)

            def grad_of(bc):
                (_, sums), grads = jax.value_and_grad(self._local, has_aux=True)(p, bc, t)
                return sums, grads

            def one(acc, bc):
                return jax.tree_util.tree_map(lambda a, x: a | x if x.dtype == jnp.bool_ else a + x, acc,
                                              grad_of(bc)), None
            # the first chunk's result starts the sum (its type also carries shard_map's varying axis)
            first = grad_of(jax.tree_util.tree_map(lambda x: x[0], chunks))
            rest = jax.tree_util.tree_map(lambda x: x[1:], chunks)
            (sums, grads), _ = jax.lax.scan(one, first, rest) if local // c > 1 else (first, None)
            return sums, grads
        sums, grads = self._reduced(value_and_grad)(params, batch, template)
        scale = 1.0 / jnp.maximum(sums.weight, 1e-30)
        grads = jax.tree_util.tree_map(lambda g: g * scale, grads)
        if precond is not None:   # Gauss–Newton direction: P⁻¹ g
            g_flat, unravel = ravel_pytree(grads)
            grads = unravel(jnp.linalg.solve(precond, g_flat))
        fits = ~(sums.list_full | sums.graph_full)
        new_params, new_opt, gnorm, finite = apply_update(self.optimizer, params, opt_state, grads,
                                                          sums.loss(self.energy_weight, self.virial_weight), lr_scale,
                                                          ok=fits)
        return new_params, new_opt, StepOut(sums, gnorm, finite)

    # -- calls with the overflow rule ----------------------------------------------------------
    def step(self, params, opt_state, batch: Batch, lr_scale: float = 1.0, precond=None):
        """One optimiser step on ``batch`` (the gradient times ``precond``⁻¹ when given, see
        :meth:`gauss_newton`): (params, opt_state, StepOut)."""
        lr = jnp.asarray(lr_scale, jnp.float32)
        return self._fitting(lambda: self._step(params, opt_state, batch, self.template, lr, precond),
                             lambda out: out[2].sums, batch)

    def sums(self, params, batch: Batch) -> Sums:
        """The loss sums of ``batch`` at ``params`` (no step): validation."""
        return self._fitting(lambda: self._sums(params, batch, self.template), lambda out: out, batch)

    def _fitting(self, compute, sums_of, batch: Batch):
        """``compute()`` under the one overflow rule: lists or graph capacities that overflowed
        on a frame of the batch are grown and the batch computed again."""
        def grow(attempt, list_full, graph_full):
            if list_full:
                self.template = _larger(self.template, self.nbr_fn.allocate(jnp.asarray(batch.positions[0]),
                                                                           extra_capacity=grown_extra(attempt)),
                                        grown_extra(attempt))
            if graph_full:
                self._set_potential(self.potential.grow_capacity())
        out, ok = recompute_on_overflow(
            compute, lambda o: (bool(sums_of(o).list_full), bool(sums_of(o).graph_full)), grow, BATCH_RETRIES)
        if not ok:
            raise UserError("the neighbour lists of the reference frames keep overflowing",
                            "check that reference frames and system.box_size describe the same box and density")
        return out


def _larger(current, measured, extra: int):
    """A list template at least ``extra`` slots larger than ``current`` and as large as
    ``measured`` in every capacity (lists, cells, candidates)."""
    caps = neighbors.capacities(current)
    grown = {k: max(v, neighbors.capacities(measured)[k]) for k, v in caps.items()}
    grown["max_occupancy"] = max(grown["max_occupancy"], caps["max_occupancy"] + extra)
    return neighbors.placeholder(current.idx.shape[0], grown, current.reference_position.dtype)
