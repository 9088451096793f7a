"""Backpropagation through the simulation and iterative Boltzmann inversion on several state
points with shared parameters (``states:``): the multi-state loop of learn/multistate.py (its
state points, stores, checkpoints and resampling), with each trainer's own update."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp

from .boltzmann import initial_params
from .difftre import apply_update
from .direct_ad import DirectADRegime
from .ibi import IBIRegime, target_losses, trajectory_means
from .multistate import MultiStateDiffTReRegime
from .regime import Proposal


class MultiStateDirectADRegime(MultiStateDiffTReRegime):
    """Backpropagation through the simulation on several state points: each state point runs
    its own unrolled segment from its own last state (one compiled call per state point); the
    gradients are summed and one optimiser step is taken. The state points' simulations advance
    only when every segment was stable and the step finite."""

    def __init__(self, states: list, store, tcfg):
        self._setup(states, store, tcfg.get("init_from", None), lambda c, st: DirectADRegime(c, st, tcfg))
        self._apply = jax.jit(lambda p, o, g, loss, s, ok: apply_update(self.optimizer, p, o, g, loss, s, ok=ok))

    def init(self, key):
        params, opt_state = super().init(key)
        for sub in self.subs:
            sub.obs_nbrs = sub.ad.allocate_obs_list(sub.state.position)
        return params, opt_state

    TREE_KEYS = ("sim_state", "neighbor", "obs_neighbor")

    def propose(self, params, opt_state, lr_scale: float) -> Proposal:
        nan = float("nan")
        sample_time = sum(sub._equilibrate(params) for sub in self.subs if not sub.equilibrated)
        t0 = time.perf_counter()
        outs = []
        for sub in self.subs:
            out, nb_e, nb_o = sub.run_segment(lambda e, o, sub=sub: sub.ad.grad(params, sub.state, e, o),
                                              lambda out: out[1][6])
            outs.append((out, nb_e, nb_o))
        overflow = any(bool(o[0][1][6]) for o in outs)
        stable = all(bool(o[0][1][5]) for o in outs)
        total_grad = jax.tree_util.tree_map(lambda *g: sum(g), *[o[0][2] for o in outs])
        loss = sum(jnp.asarray(o[0][0]) for o in outs)
        new_params, new_opt, gnorm, finite = jax.block_until_ready(
            self._apply(params, opt_state, total_grad, loss, jnp.asarray(lr_scale, jnp.float32),
                        jnp.asarray(stable and not overflow)))
        update_time = time.perf_counter() - t0
        event = ""
        if overflow or not stable:
            event = "unstable_simulation"
        elif not bool(finite):
            event = "non_finite_loss"
        for sub, (out, nb_e, nb_o) in zip(self.subs, outs):
            if event:   # keep the (possibly grown) list capacities, not the states
                sub.nbrs, sub.obs_nbrs = nb_e, nb_o
            else:
                _, aux, _ = out
                sub.state, sub.nbrs, sub.obs_nbrs = aux[2], aux[3], aux[4]
        fields = {"loss": nan if event else float(loss)}
        for name, sub, (out, _, _) in zip(self.names, self.subs, outs):
            for target in sub.c.targets:
                fields[f"loss_{name}_{target}"] = nan if event else float(out[1][0][target])
        fields.update({"n_eff": nan, "reused": 0, "sample_time": sample_time, "update_time": update_time,
                       "grad_norm": float(gnorm), "n_trajectories": sum(s.n_traj for s in self.subs)})
        if event:
            return Proposal(params, opt_state, fields, event, False)
        return Proposal(new_params, new_opt, fields, event, True)


class MultiStateIBIRegime(MultiStateDiffTReRegime):
    """Multi-state iterative Boltzmann inversion (MS-IBI; Moore et al., J. Chem. Phys. 140,
    224104, 2014): every state point samples a fresh trajectory with the current tables; each
    table is corrected by the mean over the state points of their IBI corrections
    Δu_s = α k_B T_s ln(g_s / g_target,s) (mixtures: per species pair, from its partial RDF)."""

    def __init__(self, states: list, store, tcfg):
        self._setup(states, store, tcfg.get("init_from", None), lambda c, st: IBIRegime(c, st, tcfg))

    def init(self, key):
        k_param, k_sim = jax.random.split(key)
        params = initial_params(self.cs[0], k_param, self.init_from)
        self._init_simulations(k_sim, params)
        return params, ()

    def propose(self, params, opt_state, lr_scale: float) -> Proposal:
        nan = float("nan")
        t0 = time.perf_counter()
        with ThreadPoolExecutor(1, thread_name_prefix="difftre-featurize") as pool:   # (multistate.py: pipelining)
            pending = []
            for sub in self.subs:
                trajectory = sub.sample_trajectory(params)
                pending.append(None if trajectory is None else pool.submit(trajectory_means, sub.c, params, trajectory))
        means = [None if m is None else m.result() for m in pending]
        sample_time = time.perf_counter() - t0
        event, new_params, step_norm, update_time = "", params, nan, 0.0
        losses = [{t: nan for t in sub.c.targets} for sub in self.subs]
        if any(m is None for m in means):
            event = "unstable_simulation"
        else:
            t1 = time.perf_counter()
            losses = [target_losses(sub.c, m) for sub, m in zip(self.subs, means)]
            per_state = [sub.corrections(params, m, lr_scale) for sub, m in zip(self.subs, means)]
            mean_corr = {key: (sum(pc[key][0] for pc in per_state) / len(per_state), all(pc[key][1] for pc in per_state))
                         for key in per_state[0]}
            updated = jax.block_until_ready(self.subs[0].apply(params, mean_corr))
            update_time = time.perf_counter() - t1
            step_norm = float(sum(float(jnp.sum(du ** 2)) for du, _ in mean_corr.values()) ** 0.5)
            if updated is None or not all(jnp.isfinite(v) for ls in losses for v in ls.values()):
                event = "non_finite_loss"
            else:
                new_params = updated
        fields = {"loss": nan if event else float(sum(sum(ls.values()) for ls in losses))}
        for name, ls in zip(self.names, losses):
            for t, v in ls.items():
                fields[f"loss_{name}_{t}"] = nan if event else v
        fields.update({"n_eff": nan, "reused": 0, "sample_time": sample_time, "update_time": update_time,
                       "grad_norm": nan, "step_norm": step_norm, "n_trajectories": sum(s.n_traj for s in self.subs)})
        return Proposal(new_params, opt_state, fields, event, all(m is not None for m in means))
