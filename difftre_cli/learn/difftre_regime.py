"""DiffTRe's update rule for the outer loop (train.py): reuse the stored trajectory while N_eff
stays above ``reweight_ratio · S`` (and, with ``max_reuse``, for at most that many updates after
it was sampled), resample otherwise; the step itself is the learner's (difftre.py).

The cap guards against what N_eff cannot see: parameters that change U only where the trajectory
has no snapshots leave every weight as it was (N_eff = S) however far they move; a
relative-entropy fit of a molecule whose model never visited a reference basin ran away that way
(README, Molecules). With ``max_loss_ratio``, a fresh trajectory whose loss rose above that
factor times the loss before the step refutes the step: the update is rejected and the loop
rolls it back (regime.loss_rose).
"""
from __future__ import annotations

import json
import logging
import time

import jax
import numpy as np

from .. import neighbors
from ..errors import UserError
from .boltzmann import initial_params
from .regime import (
    LOSS_ROSE,
    Proposal,
    Regime,
    loss_before_attrs,
    loss_before_from_attrs,
    loss_rose,
)
from .step_rule import floor_attrs, floor_from_attrs

log = logging.getLogger("difftre")


class DiffTReRegime(Regime):
    """DiffTRe's update for the outer loop: resample when N_eff falls below ``ratio · S``
    (or no trajectory exists yet), then one reweighted gradient step.

    It owns the simulation state (integrator state, neighbour list), the current reference
    trajectory's features and the reuse decision; the outer loop owns parameters, rollback,
    metrics and checkpoints. Trajectories go to the run store as they are sampled.
    """

    def __init__(self, components, store, ratio: float, init_from: str | None = None, max_reuse: int | None = None,
                 max_loss_ratio: float | None = None):
        self.c = components
        self.max_loss_ratio = max_loss_ratio   # a fresh loss above this × loss_before rejects (regime.loss_rose)
        self.loss_before = None         # the last accepted update's loss: at the parameters of the step it took
        self.before_sample = None       # (state, neighbour list) before this update's trajectory (undo_sample)
        self.max_reuse = max_reuse      # updates a trajectory serves at most (None: while N_eff allows)
        self.uses = 0                   # updates the current trajectory has served
        self.init_from = init_from      # initial model: zeros | boltzmann_inversion (learn/boltzmann.py)
        self.store = store
        self.ratio = float(ratio)
        self.n_snapshots = components.sampler.cfg.n_snapshots
        self.state = self.nbrs = self.feats = None
        self.n_traj = 0
        self.next_n_eff = None
        self.length = 1                 # spacing factor of the snapshots (step_rule.next_length)
        self.floor = components.learner.step_rule.first_floor   # the step rule's floor (step_rule.next_floor)
        self.last_loss = None           # the last update's fresh loss (judges the step after it)
        self.on_shapes = None           # called with the next features' shapes (the update compiles meanwhile)

    # -- state ---------------------------------------------------------------------------
    def init(self, key):
        k_param, k_sim = jax.random.split(key)
        params = initial_params(self.c, k_param, self.init_from)
        opt_state = self.c.optimizer.init(params)
        self.state, self.nbrs = self.c.sampler.init(k_sim, params, ahead=self.n_snapshots)
        return params, opt_state

    def checkpoint(self) -> tuple[dict, dict]:
        attrs = {"n_trajectories": self.n_traj, "trajectory_uses": self.uses, "length_factor": self.length,
                 "trajectory_spent": int(self.next_n_eff is not None and self.next_n_eff < 0),
                 **floor_attrs(self.floor, self.last_loss), **loss_before_attrs(self.loss_before)}
        if self.nbrs is not None:   # samplers of independent particles keep no neighbour list
            attrs["neighbor_capacities"] = json.dumps(neighbors.capacities(self.nbrs))
        attrs.update(self.c.engine.capacity_attrs())
        return {"sim_state": self.state, "neighbor": self.nbrs}, attrs

    def templates(self, attrs: dict) -> dict:
        """Pytrees shaped like the checkpointed ones (the neighbour list at its recorded capacities)."""
        nbrs = None if self.nbrs is None else neighbors.placeholder(
            self.nbrs.idx.shape[0], json.loads(attrs["neighbor_capacities"]), self.nbrs.reference_position.dtype)
        return {"sim_state": self.state, "neighbor": nbrs}

    def restore(self, trees: dict, attrs: dict) -> None:
        self.state, self.nbrs = trees["sim_state"], trees["neighbor"]
        self.c.engine.set_capacity(attrs)
        self.n_traj = int(attrs["n_trajectories"])
        self.uses = int(attrs.get("trajectory_uses", 0))
        self.length = int(attrs.get("length_factor", 1))
        self.floor, self.last_loss = floor_from_attrs(attrs, self.c.learner.step_rule)
        self.loss_before = loss_before_from_attrs(attrs)
        self.feats = self.c.engine.featurize(self.store.read_trajectory(self.n_traj - 1)) if self.n_traj else None
        # a line-search step uses its trajectory up (step_rule.py): one that served a step is not
        # reused (checkpoints before "trajectory_spent": judged from the rule and the uses)
        spent = attrs.get("trajectory_spent", int(self.c.learner.step_rule.searches and self.uses > 0))
        self.next_n_eff = -1.0 if int(spent) else None

    def rejected(self) -> None:
        self.next_n_eff = None
        self.last_loss = None
        self.loss_before = None   # the next update starts where that loss was measured: no step to judge

    # -- one update ----------------------------------------------------------------------
    def _resample(self, params, pool=None) -> tuple[bool, float]:
        t0 = time.perf_counter()
        sampler = self.c.sampler
        if self.n_traj == 0 or self.length == 1:
            res = sampler.sample(params, self.state, self.nbrs, first=(self.n_traj == 0))
        else:   # the step rule's longer trajectory: the same snapshots, further apart
            cfg = sampler.cfg
            res = sampler.run(params, self.state, self.nbrs, cfg.equilibration_steps, cfg.n_snapshots,
                              cfg.every * self.length)
        return self.accept_sample(res, pool), time.perf_counter() - t0

    def accept_sample(self, res, pool=None) -> bool:
        """Keep a finished segment (a :class:`sampler.SampleResult` from this state): store its
        trajectory, featurize it and continue the simulation from its end. False (nothing kept)
        if the segment was unstable. With ``pool`` (a ``concurrent.futures`` executor) the
        featurisation runs there, beside the next state point's sampling (learn/multistate.py),
        and :meth:`finish_sample` collects it."""
        c = self.c
        if not res.ok:
            log.warning("simulation unstable (%s)", res.reason)
            return False
        traj = jax.tree_util.tree_map(np.asarray, res.trajectory)
        self.store.write_trajectory(self.n_traj, traj, c.system.box_size, c.sampler.cfg.dt, c.system.units,
                                    species=c.system.species, species_names=c.system.species_names)
        on_shapes, self.on_shapes = self.on_shapes, None

        def features():
            return jax.block_until_ready(c.engine.featurize(res.trajectory, on_shapes))

        self.before_sample = (self.state, self.nbrs)
        self.state, self.nbrs, self.n_traj = res.state, res.neighbor, self.n_traj + 1
        self.uses = 0
        if pool is None:
            self.feats = features()
        else:
            self.pending_feats = pool.submit(features)
        return True

    pending_feats = None   # the features being computed in accept_sample's pool

    def finish_sample(self) -> None:
        """Collect the features that :meth:`accept_sample` computes in its pool (nothing if none)."""
        pending, self.pending_feats = self.pending_feats, None
        if pending is not None:
            self.feats = pending.result()

    def undo_sample(self) -> None:
        """Continue the simulation from where it stood before this update's trajectory (a step
        that trajectory refuted is rolled back, and the parameters' next trajectory should not
        start from a configuration of the refuted ones, e.g. a crystal near an instability).
        The trajectory stays stored and featurised: reweighted, it still serves the next update."""
        if self.before_sample is not None:
            self.state, self.nbrs = self.before_sample
            self.before_sample = None

    def propose(self, params, opt_state, lr_scale: float) -> Proposal:
        c = self.c
        # states per trajectory: the kept snapshots, or snapshots × particles for one-body potentials
        n_states = self.n_snapshots if self.feats is None else int(self.feats.u_ref.shape[0])
        threshold = self.ratio * n_states
        event, sample_time, update_time, reused, fresh = "", 0.0, 0.0, True, False
        aux, n_eff = None, float("nan")
        new_params, new_opt = params, opt_state
        self.before_sample = None
        worn = self.max_reuse is not None and self.uses > self.max_reuse
        if self.feats is None or worn or (self.next_n_eff is not None and self.next_n_eff < threshold):
            if self.feats is None:   # the first trajectory: its update compiles while it is featurised
                self.on_shapes = lambda shapes: c.learner.compile_step_ahead(params, opt_state, shapes, self.floor)
            ok, sample_time = self._resample(params)
            reused, fresh = False, ok
            if not ok:
                if self.feats is None:  # nothing to fall back on: the start itself is unstable
                    raise UserError("the simulation with the current parameters is unstable (non-finite energies, "
                                    "exploding temperature or a neighbour list that keeps overflowing)",
                                    "lower simulator.dt, check the prior and the initial structure")
                event = "unstable_simulation"
        if not event:
            t0 = time.perf_counter()
            new_params, new_opt, aux = jax.block_until_ready(c.learner.step(params, opt_state, self.feats, lr_scale,
                                                                            self.floor))
            update_time = time.perf_counter() - t0
            n_eff = float(aux.n_eff)
            if reused and n_eff < threshold:  # only when next_n_eff was unknown (resume, rollback)
                ok, dt = self._resample(params)
                sample_time += dt
                reused, fresh = False, ok
                if ok:
                    t0 = time.perf_counter()
                    new_params, new_opt, aux = jax.block_until_ready(
                        c.learner.step(params, opt_state, self.feats, lr_scale, self.floor))
                    update_time += time.perf_counter() - t0
                    n_eff = float(aux.n_eff)
                else:
                    event = "unstable_simulation"
        rule, used, floor = c.learner.step_rule, self.length, self.floor
        if not event and not bool(aux.finite):
            event = "non_finite_loss"
        if not event and fresh and loss_rose(self.max_loss_ratio, self.loss_before, float(aux.loss)):
            event = LOSS_ROSE   # the last step is refuted: the loop rolls it back; the floor sinks as after any rise
            self.floor = rule.next_floor(self.floor, self.last_loss, float(aux.loss))
            self.undo_sample()
        if not event:
            self.uses += 1
            self.loss_before = float(aux.loss)
        self.next_n_eff = None if event else float(aux.n_eff_next)
        if not event and rule.searches:   # every line-search step ends this trajectory's use (step_rule.py)
            self.length = rule.next_length(self.length, bool(aux.exhausted))
            self.next_n_eff = -1.0
            # the fresh loss judges the previous step: the floor of the next one (step_rule.next_floor)
            self.floor, self.last_loss = rule.next_floor(self.floor, self.last_loss, float(aux.loss)), float(aux.loss)
        nan = float("nan")
        shown = event in ("", LOSS_ROSE)   # a refuted step's fresh losses are logged: they are why
        fields = {"loss": float(aux.loss) if shown else nan}
        for name in c.targets:
            fields[f"loss_{name}"] = float(aux.losses[name]) if shown else nan
        fields.update({"n_eff": n_eff, "reused": int(reused), "sample_time": sample_time, "update_time": update_time,
                       "grad_norm": nan if aux is None else float(aux.grad_norm), "n_trajectories": self.n_traj})
        if rule.searches:
            fields["step_scale"] = nan if aux is None else float(aux.step_scale)
            fields["length_factor"] = used   # the spacing factor of this update's trajectory
            if rule.adapt:
                fields["step_floor"] = floor
        return Proposal(new_params, new_opt, fields, event, fresh)
