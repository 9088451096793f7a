"""Direct differentiation through the simulation ("differentiable simulation", e.g.
Schoenholz & Cubuk, NeurIPS 2020 (JAX MD); Wang et al., J. Chem. Phys. 158, 044113, 2023 on
its gradient blow-up; Thaler & Zavadlav 2021 compare it with DiffTRe).

Each update continues the simulation from its last state for T = ``trainer.steps`` steps of
the configured JAX MD integrator, takes every ``trainer.every``-th state as a snapshot,
averages the observables over those snapshots and differentiates the loss
Σ_k γ_k MSE(⟨O_k⟩, target_k) with respect to θ by backpropagation through all T integrator
steps (the Langevin noise is fixed by the PRNG key in the state, so it is a deterministic
function of θ). Simulation, loss, gradient and the optax step are one jit-compiled call,
traced once per run.

* T must stay below the dynamics' chaos horizon: with the noise fixed, the sensitivity of
  the state to θ grows like e^(λt), so beyond a few collision times the backpropagated
  gradient is dominated by that growth, not by the ensemble's response. Measured on
  config=lj_direct_ad (dt = 0.005, γ = 1) against DiffTRe's gradient of the same loss:
  cosine per segment 0.9 at T = 50 and 100, 0.55 at 200, ≈ 0 at 400 (norm 18x) and 1000
  (norm 10^5x) (scripts/bench/direct_ad_gradient.py); hence ``trainer.steps: 50``.
* ``trainer.checkpoint: true`` wraps every MD step in ``jax.checkpoint`` (rematerialisation):
  the backward pass recomputes each step instead of storing its intermediates, so memory
  holds only the T states (measured faster and ~8x lighter than no remat on 2 CPU cores).
* Neighbour lists (one at the potential's cutoff, one at the observables' reach, both with
  the simulator's skin) are updated inside the unrolled segment; their overflow flags are
  checked after the call and, on overflow, the lists are re-allocated with more room and the
  whole update recomputed from the same state (as ``Sampler.sample`` does).
* Non-finite loss or gradient → event ``non_finite_loss``; non-finite positions or a kinetic
  temperature above ``simulator.max_kT_factor`` × kT, or a list that keeps overflowing →
  ``unstable_simulation``; either way the state does not advance and the outer loop rolls
  back. The simulation state continues only from accepted updates.
* The first update equilibrates from the initial structure with the sampler
  (``simulator.first_equilibration_steps`` plus one production segment, stored as trajectory
  0). Metrics: ``sample_time`` is that equilibration (0 afterwards), ``update_time`` the fused
  simulate + backpropagate + step call; ``n_eff`` NaN, ``reused`` 0, ``grad_norm`` ‖∇L‖ before
  clipping (``optimizer.clip_norm`` clips it).
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import neighbors
from ..errors import UserError
from ..overflow import grown_extra, recompute_on_overflow
from .boltzmann import initial_params
from .difftre import apply_update
from .regime import Proposal, Regime

log = logging.getLogger("difftre")


class DirectADAux(NamedTuple):
    loss: Any
    losses: dict
    predictions: dict
    grad_norm: Any
    finite: Any       # loss, gradient and new parameters finite
    stable: Any       # positions finite and kinetic kT below the limit
    overflow: Any     # a neighbour list overflowed in the segment


class DirectAD:
    """The unrolled loss and the fused update ``step`` (simulate T steps, backpropagate, optax)."""

    def __init__(self, c, steps: int, every: int, remat: bool = True):
        self.c = c
        self.steps, self.every, self.remat = int(steps), int(every), bool(remat)
        if self.every <= 0 or self.steps < self.every:
            raise UserError(f"trainer.steps must be >= trainer.every > 0 (got steps={steps}, every={every})",
                            "set e.g. trainer.steps=50 trainer.every=10")
        self.n_snapshots = self.steps // self.every
        sampler = c.sampler
        self.box = float(c.system.box_size)
        self.energy_nbr_fn = sampler.neighbor_fn
        self.md_step = sampler._step          # the configured JAX MD integrator's apply function
        reach = max([0.0] + [o.reach for o in c.observables.values()])
        if reach > 0.5 * self.box:   # (a skin beyond half the box is harmless: minimum-image distances)
            raise UserError(f"observable range {reach:.3g} exceeds half the box ({0.5 * self.box:.3g})",
                            "use more particles (system.n_particles) or a smaller r_max")
        born = [k for k, o in c.observables.items() if o.needs or o.combine is not None]
        if born:
            raise UserError(f"observables {born} (Born terms, functions of averages) are only supported by "
                            "trainer=difftre", "use trainer=difftre, or drop them for trainer=direct_ad")
        self.needs_r = any(not o.depends_on_params for o in c.observables.values())
        self.needs_energy = any(o.depends_on_params for o in c.observables.values())
        self.obs_nbr_fn = neighbors.make_neighbor_fn(self.box, max(reach, 1e-6), sampler.cfg.skin,
                                                     sampler.cfg.capacity_multiplier)
        self.max_kT = sampler.cfg.max_kT_factor * float(c.system.kT)
        self.trace_count = 0
        self._step = jax.jit(self._step_impl)
        self._grad = jax.jit(self._grad_impl)

    # ----------------------------------------------------------------------------------
    def allocate_obs_list(self, R, extra: int = 0):
        return self.obs_nbr_fn.allocate(R, extra_capacity=extra)

    def snapshot_values(self, params, R, nb_e, nb_o) -> dict:
        q = {}
        if self.needs_r:   # distances (and species-pair codes of mixtures) on the observables' list
            q.update(self.c.engine.list_quantities(R, nb_o.idx))
        if self.needs_energy:
            feats = self.c.potential.features_on_list(R, nb_e.idx, self.box)
            q["energy"], q["virial"] = jax.value_and_grad(
                lambda s: self.c.potential.energy_from_features(params, feats, s))(jnp.ones((), R.dtype))
        return {name: o.snapshot(self.c.ctx, q) for name, o in self.c.observables.items()}

    def segment(self, params, state, nb_e, nb_o):
        """Run T steps from ``state``; per-snapshot observables (n_snapshots, ...), the final
        state and lists, and the instantaneous kinetic kT of each snapshot."""
        def one(p, carry):
            st, ne = carry
            ne = self.energy_nbr_fn.update(st.position, ne)
            return self.md_step(st, neighbor=ne, params=p), ne

        one_step = jax.checkpoint(one) if self.remat else one

        def block(carry, _):
            st, ne, no = carry
            st, ne = lax.scan(lambda cr, _: (one_step(params, cr), None), (st, ne), None, length=self.every)[0]
            ne = self.energy_nbr_fn.update(st.position, ne)
            no = self.obs_nbr_fn.update(st.position, no)
            vals = self.snapshot_values(params, st.position, ne, no)
            kinetic = 0.5 * jnp.sum(st.momentum ** 2 / st.mass)
            kT_inst = 2.0 * kinetic / (3 * (st.position.shape[0] - 1))
            return (st, ne, no), (vals, kT_inst, jnp.all(jnp.isfinite(st.position)))

        (state, nb_e, nb_o), (vals, kT, finite_pos) = lax.scan(block, (state, nb_e, nb_o), None,
                                                               length=self.n_snapshots)
        return vals, state, nb_e, nb_o, kT, jnp.all(finite_pos)

    def loss(self, params, state, nb_e, nb_o):
        """Σ_k γ_k MSE(⟨O_k⟩_segment, target_k), differentiable through the integrator."""
        vals, state, nb_e, nb_o, kT, finite_pos = self.segment(params, state, nb_e, nb_o)
        preds = {k: jnp.mean(v, axis=0) for k, v in vals.items()}
        losses = {name: t.loss(preds[t.observable], jnp, preds[t.observable].dtype)
                  for name, t in self.c.targets.items()}
        stable = finite_pos & jnp.all(kT < self.max_kT)
        overflow = nb_e.did_buffer_overflow | nb_o.did_buffer_overflow
        return sum(losses.values()), (losses, preds, state, nb_e, nb_o, stable, overflow)

    def _step_impl(self, params, opt_state, state, nb_e, nb_o, lr_scale):
        self.trace_count += 1
        (loss, (losses, preds, new_state, nb_e, nb_o, stable, overflow)), grads = jax.value_and_grad(
            self.loss, has_aux=True)(params, state, nb_e, nb_o)
        new_params, new_opt, gnorm, finite = apply_update(self.c.optimizer, params, opt_state, grads, loss,
                                                          lr_scale, ok=stable)
        return new_params, new_opt, new_state, nb_e, nb_o, DirectADAux(loss, losses, preds, gnorm, finite, stable,
                                                                         overflow)

    def _grad_impl(self, params, state, nb_e, nb_o):
        """The unrolled loss and its gradient without the optimiser step (what a multi-state
        regime sums over state points)."""
        (loss, aux), grads = jax.value_and_grad(self.loss, has_aux=True)(params, state, nb_e, nb_o)
        return loss, aux, grads

    def grad(self, params, state, nb_e, nb_o):
        return self._grad(params, state, nb_e, nb_o)

    def step(self, params, opt_state, state, nb_e, nb_o, lr_scale=1.0):
        dtype = state.position.dtype
        return self._step(params, opt_state, state, nb_e, nb_o, jnp.asarray(lr_scale, dtype))


# ======================================================================================
class DirectADRegime(Regime):
    """Backpropagation through the simulation for the outer loop (see the module docstring)."""

    def __init__(self, components, store, tcfg):
        self.c = components
        self.store = store
        self.ad = DirectAD(components, int(tcfg.get("steps", 200)), int(tcfg.get("every", 10)),
                           bool(tcfg.get("checkpoint", True)))
        self.init_from = tcfg.get("init_from", None)
        self.state = self.nbrs = self.obs_nbrs = None
        self.equilibrated = False
        self.n_traj = 0

    def init(self, key):
        k_param, k_sim = jax.random.split(key)
        params = initial_params(self.c, k_param, self.init_from)
        opt_state = self.c.optimizer.init(params)
        self.state, self.nbrs = self.c.sampler.init(k_sim, params, ahead=self.c.sampler.cfg.n_snapshots)
        self.obs_nbrs = self.ad.allocate_obs_list(self.state.position)
        return params, opt_state

    def checkpoint(self):
        attrs = {"n_trajectories": self.n_traj, "equilibrated": int(self.equilibrated),
                 "neighbor_capacities": json.dumps(neighbors.capacities(self.nbrs)),
                 "obs_neighbor_capacities": json.dumps(neighbors.capacities(self.obs_nbrs))}
        return {"sim_state": self.state, "neighbor": self.nbrs, "obs_neighbor": self.obs_nbrs}, attrs

    def templates(self, attrs):
        n = self.nbrs.idx.shape[0]
        dtype = self.nbrs.reference_position.dtype
        return {"sim_state": self.state,
                "neighbor": neighbors.placeholder(n, json.loads(attrs["neighbor_capacities"]), dtype),
                "obs_neighbor": neighbors.placeholder(n, json.loads(attrs["obs_neighbor_capacities"]), dtype)}

    def restore(self, trees, attrs):
        self.state, self.nbrs, self.obs_nbrs = trees["sim_state"], trees["neighbor"], trees["obs_neighbor"]
        self.n_traj = int(attrs["n_trajectories"])
        self.equilibrated = bool(int(attrs["equilibrated"]))

    def rejected(self):
        pass

    def _equilibrate(self, params) -> float:
        c = self.c
        t0 = time.perf_counter()
        res = c.sampler.sample(params, self.state, self.nbrs, first=True)
        if not res.ok:
            raise UserError(f"the simulation with the initial parameters is unstable ({res.reason})",
                            "lower simulator.dt, check the prior and the initial structure")
        traj = jax.tree_util.tree_map(np.asarray, res.trajectory)
        self.store.write_trajectory(self.n_traj, traj, c.system.box_size, c.sampler.cfg.dt, c.system.units,
                                    species=c.system.species, species_names=c.system.species_names)
        self.state, self.nbrs, self.n_traj = res.state, res.neighbor, self.n_traj + 1
        self.obs_nbrs = self.ad.allocate_obs_list(self.state.position)
        self.equilibrated = True
        return time.perf_counter() - t0

    def run_segment(self, call, overflowed):
        """``call(nb_e, nb_o)`` (an unrolled segment from the current state); on neighbour-list
        overflow (``overflowed(out)``) re-allocate both lists with more room and recompute, at
        most ``simulator.max_retries`` times. Returns (out, the lists used)."""
        lists = [self.nbrs, self.obs_nbrs]

        def grow(attempt, list_full, capacity_full):
            extra = grown_extra(attempt)   # the sampler interface's growth rule
            log.info("neighbour list overflowed in the unrolled segment; re-allocating (+%d slots) and recomputing",
                     extra)
            lists[:] = [self.c.sampler.neighbor_fn.allocate(self.state.position, extra_capacity=extra),
                        self.ad.allocate_obs_list(self.state.position, extra)]

        out, _ = recompute_on_overflow(lambda: jax.block_until_ready(call(*lists)),
                                       lambda out: (bool(overflowed(out)), False), grow,
                                       self.c.sampler.cfg.max_retries)
        return out, lists[0], lists[1]

    def propose(self, params, opt_state, lr_scale: float) -> Proposal:
        c = self.c
        sample_time = 0.0 if self.equilibrated else self._equilibrate(params)
        t0 = time.perf_counter()
        out, nb_e, nb_o = self.run_segment(lambda e, o: self.ad.step(params, opt_state, self.state, e, o, lr_scale),
                                           lambda out: out[-1].overflow)
        update_time = time.perf_counter() - t0
        new_params, new_opt, new_state, new_e, new_o, aux = out
        event = ""
        if bool(aux.overflow) or not bool(aux.stable):
            event = "unstable_simulation"
            log.warning("unrolled simulation unstable (%s)", "neighbour list kept overflowing" if bool(aux.overflow)
                        else "non-finite positions or exploding temperature")
        elif not bool(aux.finite):
            event = "non_finite_loss"
        if not event:
            self.state, self.nbrs, self.obs_nbrs = new_state, new_e, new_o
        else:
            self.nbrs, self.obs_nbrs = nb_e, nb_o      # keep the (possibly grown) capacities
        nan = float("nan")
        fields = {"loss": nan if event else float(aux.loss)}
        for name in c.targets:
            fields[f"loss_{name}"] = nan if event else float(aux.losses[name])
        fields.update({"n_eff": nan, "reused": 0, "sample_time": sample_time, "update_time": update_time,
                       "grad_norm": float(aux.grad_norm), "n_trajectories": self.n_traj})
        return Proposal(new_params if not event else params, new_opt if not event else opt_state, fields, event,
                        not event)
