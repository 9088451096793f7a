"""DiffTRe on several state points with shared parameters (``states:``, see states.py).

The loss is the sum of the state points' losses, L(θ) = Σ_s L_s(θ), so its gradient is the
sum of their gradients. Per update:

1. every state point whose trajectory is spent (N_eff < ratio · S at the current parameters,
   or none yet) samples a new one from its own last state — each state point keeps its own
   simulation, reference trajectories and reuse decision, so a state point that reweights
   well is not resampled because another one needs it;
2. each state point's gradient on its own stored trajectory (one compiled call per state
   point; one program for state points that differ only in composition and targets,
   shared_programs.py);
3. one optimiser step with the summed gradient (one compiled call).

``trainer.state_parallel`` says how step 1 runs when several state points resample:

* ``sequential`` (default): one compiled sampler call per state point, one after another on
  the default device. State points may differ in anything a state point can override.
* ``devices``: state points with the same particle number (and therefore the same segment
  shapes; temperature, density, composition may differ) are sampled together, each chunk of
  their segments ONE ``jit(shard_map)`` call over the JAX devices, one state point per
  device, or several per device one after another (parallel.py; progress, signals and
  mid-trajectory checkpoints between chunks, as with ``sequential``). The trajectories,
  features, gradients (step 2) and N_eff of such a state point then stay on its device; the
  per-state gradients are dispatched to their devices together (so they can overlap) and
  summed on the default device. A state point whose particle number no other one shares is
  sampled on its own (a warning names it and the fix). trainer=difftre only. On CPU, fake
  devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=K`` set before JAX starts.

Both modes compute the same numbers bit-for-bit on CPU (each state point's segment is the same
program, dispatched with ``lax.switch``; its list keeps its own capacity and overflow handling;
results are kept in the same order with the same stop-at-failure rules), so a run may be resumed
in either mode.

*Pipelining*: a trajectory is featurised in a background thread while the next state point
samples (same numbers; IBI likewise); the first update's programs compile meanwhile
(update_ahead.py).

Not ``vmap``: JAX MD's conditional neighbour-list rebuild becomes an every-step rebuild under
``vmap`` (3–5× slower, measured on 2 CPU cores).

Metrics: ``loss`` is the total; ``loss_<state>_<target>`` per state point and target;
``n_eff`` is the smallest N_eff over the state points and ``n_eff_<state>`` each one;
``reused`` is 1 when no state point resampled. ``max_loss_ratio`` judges the summed loss after
any state point resampled (regime.loss_rose).
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from .. import parallel
from ..compile_ahead import CompileAhead
from ..errors import UserError
from . import gauss_newton, shared_programs, update_ahead
from .boltzmann import initial_params
from .difftre import apply_update, natural_step
from .difftre_regime import DiffTReRegime
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

#: trainer.state_parallel: how the sampling segments of several state points run
STATE_PARALLEL = ("sequential", "devices")


class StateStore:
    """The run store seen by one state point: its trajectories carry the state's name."""

    def __init__(self, store, state: str):
        self.store, self.state = store, state

    def write_trajectory(self, index, traj, box_size, dt, unit_system, **topology):
        return self.store.write_trajectory(index, traj, box_size, dt, unit_system, state=self.state, **topology)

    def read_trajectory(self, index):
        return self.store.read_trajectory(index, state=self.state)


class MultiStateDiffTReRegime(Regime):
    def __init__(self, states: list, store, ratio: float, init_from: str | None = None,
                 state_parallel: str = "sequential", max_loss_ratio: float | None = None, share: list | None = None):
        self._setup(states, store, init_from, lambda c, st: DiffTReRegime(c, st, ratio, init_from))
        leads = set(range(len(self.subs)))   # the state points whose programs compile (ahead)
        for ks in share or []:   # shared_programs.py
            if all(shared_programs.shareable(self.cs[k].learner) for k in ks):
                shared_programs.share([self.cs[k].learner for k in ks])
                leads -= set(ks[1:])
        self._ahead = {k: CompileAhead() for k in leads}   # the first update's programs (update_ahead.py)
        self.max_loss_ratio = max_loss_ratio   # a fresh summed loss above this × loss_before rejects
        self._apply = jax.jit(lambda p, o, g, loss, s, f: apply_update(self.optimizer, p, o, g, loss, s,
                                                                       rescale=lambda u: _times(f, u)))
        self._direction = jax.jit(lambda p, o, g, s: _times(s, self.optimizer.update(g, o, p)[0]))
        damping = self.cs[0].learner.fisher_damping
        self._natural = jax.jit(lambda f, g: natural_step(f, g, damping))
        gn_damping = self.cs[0].learner.damping
        self._gauss_newton = jax.jit(lambda jtj, m, g: gauss_newton.solve_primal(jtj, g, m, gn_damping))
        self._shrunk = self.cs[0].learner.shrinkage > 0   # the gradient of the shrunk J's model (gauss_newton.py)
        if state_parallel not in STATE_PARALLEL:
            raise UserError(f"trainer.state_parallel: unknown mode {state_parallel!r}",
                            f"use one of {', '.join(STATE_PARALLEL)}")
        self.state_parallel = state_parallel
        self.floor = self.rule.first_floor   # the step rule's floor on the summed loss (step_rule.next_floor)

    def _setup(self, states: list, store, init_from, make_sub):
        """One single-state regime ``make_sub(components, store)`` per state point."""
        self.names, self.cs = [name for name, _ in states], [c for _, c in states]
        self.store = store
        self.init_from = init_from
        self.subs = [make_sub(c, StateStore(store, name)) for name, c in states]
        self.optimizer = self.cs[0].optimizer
        # trainer.state_parallel=devices is difftre's (its __init__ sets it after this); the
        # regimes built on this one (direct_ad, ibi) sample their state points one by one
        self.state_parallel = "sequential"
        self.groups = []   # devices: [(StateGroup, [state indices])], batched groups only
        self.home = {}     # devices: state index -> the device that holds its data
        self._default = jax.devices()[0]
        self.floor = self.last_loss = None   # the step rule's progress (difftre only, step_rule.next_floor)
        self.max_loss_ratio = self.loss_before = None   # difftre only (regime.loss_rose)
        self._ahead = {}   # difftre only: the first update's programs compiling (update_ahead.py)

    # -- state ---------------------------------------------------------------------------
    def init(self, key):
        k_param, k_sim = jax.random.split(key)
        params = initial_params(self.cs[0], k_param, self.init_from)
        opt_state = self.optimizer.init(params)
        self._init_simulations(k_sim, params)
        if self.state_parallel == "devices":
            self._make_groups(params)
        return params, opt_state

    def _init_simulations(self, key, params) -> None:
        """Every state point's initial state. Sampled one by one (``sequential``), each state
        point's chunk program compiles in a background thread meanwhile (compile_ahead.py),
        overlapping the initial states and compilations of the state points after it; batched
        groups (``devices``) run a program of their own (parallel.py) and compile nothing ahead."""
        ahead = self.state_parallel != "devices"
        for sub, k in zip(self.subs, jax.random.split(key, len(self.subs))):
            sub.state, sub.nbrs = sub.c.sampler.init(k, params, ahead=sub.c.sampler.cfg.n_snapshots if ahead else 0)

    def _make_groups(self, params):
        """Batch the state points whose segments have equal shapes (parallel.py); the others
        are sampled one after another, as with state_parallel=sequential (logged)."""
        self.groups, self.home = parallel.batch_groups(
            [sub.c.sampler for sub in self.subs], [(sub.state, sub.nbrs) for sub in self.subs], params, self.names,
            [c.system.n_particles for c in self.cs])

    #: checkpointed trees of each state point's regime; in the checkpoint: tree → {state: value}
    TREE_KEYS = ("sim_state", "neighbor")

    def checkpoint(self):
        trees, attrs = {k: {} for k in self.TREE_KEYS}, {}
        for name, sub in zip(self.names, self.subs):
            t, attrs[name] = sub.checkpoint()
            for k in self.TREE_KEYS:
                trees[k][name] = t[k]
        extra = {**({} if self.floor is None else floor_attrs(self.floor, self.last_loss)),
                 **loss_before_attrs(self.loss_before)}
        return trees, {"n_trajectories": sum(s.n_traj for s in self.subs), "states": json.dumps(attrs), **extra}

    def templates(self, attrs):
        per = json.loads(attrs["states"])
        out = {k: {} for k in self.TREE_KEYS}
        for name, sub in zip(self.names, self.subs):
            t = sub.templates(per[name])
            for k in self.TREE_KEYS:
                out[k][name] = t[k]
        return out

    def restore(self, trees, attrs):
        per = json.loads(attrs["states"])
        for name, sub in zip(self.names, self.subs):
            sub.restore({k: trees[k][name] for k in self.TREE_KEYS}, per[name])
        if self.floor is not None:
            self.floor, self.last_loss = floor_from_attrs(attrs, self.rule)
        self.loss_before = loss_before_from_attrs(attrs)

    def rejected(self):
        for sub in self.subs:
            sub.rejected()
        self.last_loss = None
        self.loss_before = None   # the next update starts where that loss was measured: no step to judge

    def trajectory_names(self) -> list[str]:
        return [self.store.trajectory_name(i, name) for name, sub in zip(self.names, self.subs)
                for i in range(sub.n_traj)]

    # -- one update ----------------------------------------------------------------------
    def _resample(self, params, ks: list[int], stop_at_failure: bool = False) -> tuple[dict, float]:
        """Resample the state points ``ks`` (in order): {k: stable} and the wall time. With
        ``stop_at_failure`` the state points after the first unstable one are left as they
        were (not in the result). state_parallel=devices samples each batched group's members
        together first (one call per chunk), then keeps (stores, featurizes) the segments in the
        same order."""
        t0 = time.perf_counter()
        batched = {}
        for group, members in self.groups:
            which = [j for j, k in enumerate(members) if k in ks]
            if which:
                subs = [self.subs[k] for k in members]
                res = group.sample(params, [s.state for s in subs], [s.nbrs for s in subs],
                                   [s.n_traj == 0 for s in subs], which)
                batched.update({members[j]: r for j, r in res.items()})
        oks = {}
        with ThreadPoolExecutor(1, thread_name_prefix="difftre-featurize") as pool:   # (module doc: pipelining)
            for k in ks:
                sub = self.subs[k]
                oks[k] = sub.accept_sample(batched[k], pool) if k in batched else sub._resample(params, pool)[0]
                if not oks[k] and sub.feats is None:   # nothing to fall back on: the start itself is unstable
                    raise UserError(f"state point {self.names[k]}: the simulation with the current parameters is "
                                    "unstable", "lower simulator.dt, check the prior and the initial structure")
                if stop_at_failure and not oks[k]:
                    break
        for k in oks:
            self.subs[k].finish_sample()
        return oks, time.perf_counter() - t0

    def _on(self, k, tree):
        """``tree`` on state point k's device (devices mode; unchanged for sequential)."""
        return jax.device_put(tree, self.home[k]) if k in self.home else tree

    def _on_default(self, k, tree):
        """State point k's result ``tree`` on the default device, where the update runs (devices
        mode; unchanged for sequential). Only results that live elsewhere are moved: a
        ``device_put`` commits its result, and JAX compiles every program again for committed
        inputs (tests/test_compile_ahead.py: one executable of each program)."""
        return jax.device_put(tree, self._default) if k in self.home else tree

    def _grads(self, params, ks: list[int]) -> dict:
        """Loss, per-target losses, predictions, N_eff and gradient of each state point in
        ``ks``, each on its own trajectory; dispatched asynchronously (in devices mode each on
        its state point's device, so they run concurrently) and returned on the default device."""
        outs = {}
        update_ahead.wait(self)
        for k in ks:
            sub = self.subs[k]
            if k in self.home:
                sub.feats = self._on(k, sub.feats)
            outs[k] = sub.c.learner.grad(self._on(k, params), sub.feats)
        outs = jax.block_until_ready(outs)
        return {k: self._on_default(k, o) for k, o in outs.items()}

    def propose(self, params, opt_state, lr_scale: float) -> Proposal:
        nan = float("nan")
        sample_time = update_time = 0.0
        reused_all, fresh, event = True, False, ""
        for sub in self.subs:
            sub.before_sample = None
        # 1. resample the state points whose trajectory is spent
        spent = []
        for k, sub in enumerate(self.subs):
            thr = sub.ratio * (sub.n_snapshots if sub.feats is None else int(sub.feats.u_ref.shape[0]))
            if sub.feats is None or (sub.next_n_eff is not None and sub.next_n_eff < thr):
                spent.append(k)
        if spent:
            update_ahead.request(self, spent, params, opt_state)   # first trajectories: compile meanwhile
            oks, sample_time = self._resample(params, spent)
            reused_all = False
            fresh = any(oks.values())
            if not all(oks.values()):
                event = "unstable_simulation"
        outs = [None] * len(self.subs)
        if not event:
            # 2. per-state gradients (dispatched asynchronously, then awaited together)
            t0 = time.perf_counter()
            outs = [o for _, o in sorted(self._grads(params, list(range(len(self.subs)))).items())]
            update_time += time.perf_counter() - t0
            # a reused trajectory whose N_eff was unknown (resume, rollback) and is now too low: resample
            stale = [k for k, sub in enumerate(self.subs)
                     if sub.next_n_eff is None and float(outs[k][3]) < sub.ratio * int(sub.feats.u_ref.shape[0])
                     and sub.n_traj > 0]
            if stale:
                oks, dt = self._resample(params, stale, stop_at_failure=True)
                sample_time += dt
                reused_all = False
                if not all(oks.get(k, False) for k in stale):
                    event = "unstable_simulation"
                else:
                    fresh = True
                    t0 = time.perf_counter()
                    for k, o in self._grads(params, stale).items():
                        outs[k] = o
                    update_time += time.perf_counter() - t0
        factor, worn, floor = 1.0, [], self.floor
        if not event:
            t0 = time.perf_counter()
            total_grad = jax.tree_util.tree_map(lambda *g: sum(g), *[o[4] for o in outs])
            loss = sum(jnp.asarray(o[0]) for o in outs)
            lr = jnp.asarray(lr_scale, jnp.float32)
            if self.cs[0].learner.precondition == "fisher":   # Σ_k F_k: the joint ensemble of the state points
                total_grad = self._natural(self._summed("fisher", params), total_grad)
            elif self.cs[0].learner.precondition == "gauss_newton":   # Σ_k J_kᵀJ_k, Σ_k m_k, Σ_k J_kᵀr_k (gauss_newton.py)
                jtj, m, jtr = self._summed("gauss_newton", params)
                if self._shrunk:
                    total_grad = gauss_newton.gradient(jtr, total_grad)
                total_grad = self._gauss_newton(jtj, m, total_grad)
            if self.rule.searches:   # 3a. the step rule on every state point's snapshots together
                factor, worn = self._line_search(params, opt_state, total_grad, lr)
            new_params, new_opt, gnorm, finite = jax.block_until_ready(
                self._apply(params, opt_state, total_grad, loss, lr, jnp.asarray(factor, jnp.float32)))
            event = self._judge(bool(finite), fresh, float(loss), new_params, worn)
            update_time += time.perf_counter() - t0
        if event:
            self.rejected()
            new_params, new_opt = params, opt_state
        shown = event in ("", LOSS_ROSE)   # a refuted step's fresh losses are logged: they are why
        fields = {"loss": float(sum(float(o[0]) for o in outs)) if shown else nan}
        for k, (name, sub) in enumerate(zip(self.names, self.subs)):
            for target in sub.c.targets:
                fields[f"loss_{name}_{target}"] = float(outs[k][1][target]) if shown else nan
        n_effs = [nan if event else float(o[3]) for o in outs]
        fields["n_eff"] = min(n_effs) if not event else nan
        for name, v in zip(self.names, n_effs):
            fields[f"n_eff_{name}"] = v
        fields.update({"reused": int(reused_all), "sample_time": sample_time, "update_time": update_time,
                       "grad_norm": nan if event else float(gnorm),
                       "n_trajectories": sum(s.n_traj for s in self.subs)})
        if self.rule.searches:
            fields["step_scale"] = nan if event else float(factor)
            if self.rule.adapt:
                fields["step_floor"] = floor
        return Proposal(new_params, new_opt, fields, event, fresh)

    def _judge(self, finite: bool, fresh: bool, loss: float, new_params, worn: list) -> str:
        """The update's event ("" if kept): a non-finite step, or the summed fresh ``loss`` refuting
        the last step (regime.loss_rose: rolled back, the floor sinks as after any rise, each
        resampled state point continues from before its trajectory); a kept step goes on to
        :meth:`_after_step`."""
        if not finite:
            return "non_finite_loss"
        if fresh and loss_rose(self.max_loss_ratio, self.loss_before, loss):
            if self.rule.searches:
                self.floor = self.rule.next_floor(self.floor, self.last_loss, loss)
            for sub in self.subs:
                sub.undo_sample()
            return LOSS_ROSE
        self._after_step(new_params, loss, worn)
        self.loss_before = loss
        return ""

    def _after_step(self, new_params, loss: float, worn: list) -> None:
        """After a kept step: the reuse decision of each state point for the next update, and
        the step rule's floor, judged by this update's fresh summed ``loss`` (step_rule.py)."""
        if self.rule.searches:
            self.floor, self.last_loss = self.rule.next_floor(self.floor, self.last_loss, loss), loss
        n_effs = [sub.c.learner.n_eff(self._on(k, new_params), sub.feats) for k, sub in enumerate(self.subs)]
        for k, (sub, n) in enumerate(zip(self.subs, n_effs)):
            sub.next_n_eff = float(n)
            if self.rule.searches:   # each state point's trajectory served its step (step_rule.py)
                sub.next_n_eff = -1.0
                # batched sampling (devices) keeps the preset's spacing: one shape per group
                sub.length = 1 if k in self.home else self.rule.next_length(sub.length, bool(worn))

    def _summed(self, method: str, params):
        """The learner's ``method(params, feats)`` on every state point (dispatched together),
        summed on the default device."""
        outs = {k: getattr(sub.c.learner, method)(self._on(k, params), sub.feats) for k, sub in enumerate(self.subs)}
        outs = [self._on_default(k, o) for k, o in jax.block_until_ready(outs).items()]
        return jax.tree_util.tree_map(lambda *xs: sum(xs), *outs)

    @property
    def rule(self):
        """The step rule (learn/step_rule.py); the state points share ``trainer``'s."""
        return self.cs[0].learner.step_rule

    def _line_search(self, params, opt_state, grad, lr):
        """(factor, state points whose snapshots stopped the step): the step rule with the loss
        summed over the state points and N_eff ≥ ratio · S required at each."""
        updates = self._direction(params, opt_state, grad, lr)
        trials = {k: sub.c.learner.trials(self._on(k, params), self._on(k, updates), sub.feats)
                  for k, sub in enumerate(self.subs)}
        trials = {k: self._on_default(k, t) for k, t in jax.block_until_ready(trials).items()}
        losses = sum(t[0] for t in trials.values())
        enough = {k: t[1] >= self.rule.ratio * int(self.subs[k].feats.u_ref.shape[0]) for k, t in trials.items()}
        factor, exhausted = self.rule.choose(losses, jnp.all(jnp.stack(list(enough.values())), axis=0), self.floor)
        factor = float(factor)
        if not bool(exhausted):
            return factor, []
        at = int(np.argmin(np.abs(np.asarray(self.rule.scales) - factor)))   # (factor: float32)
        nxt = min(at + 1, len(self.rule.scales) - 1)
        return factor, [k for k, e in enough.items() if not bool(e[nxt])] or list(enough)


def _times(s, tree):
    return jax.tree_util.tree_map(lambda u: (s * u).astype(u.dtype), tree)
