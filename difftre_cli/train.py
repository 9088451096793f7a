"""The outer training loop: sample → reweight → loss/gradient → update, with checkpoints.

Per update:
1. if there is no reference trajectory, or N_eff < ratio · N at the current parameters,
   sample a new one from the last state (one jit call) and featurize it (one jit call);
2. one jit call computes weights, observables, loss, gradient and the optax step;
3. a metrics row is written; every ``checkpoint_every`` updates (and at the end) the whole
   state is checkpointed atomically.

Unstable simulations (non-finite energies or positions, or a non-finite loss/gradient) reject
the update: parameters roll back to the last good ones and the learning rate is scaled by
``trainer.lr_reduction``; after ``trainer.max_failures`` consecutive failures the run stops
with a :class:`UserError` (exit 2), its last good checkpoint intact.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path

import jax

import numpy as np
from omegaconf import OmegaConf

from . import __version__, assemble, neighbors
from .errors import UserError
from .progress import TrainingProgress
from .store import RunStore

log = logging.getLogger("difftre")


def versions() -> dict:
    import flax
    import jax_md
    import optax
    return {"difftre": __version__, "jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax, "lib") else "",
            "jax_md": getattr(jax_md, "__version__", "0.2.29"), "flax": flax.__version__, "optax": optax.__version__,
            "python": platform.python_version(), "device": str(jax.devices()[0]),
            "x64": bool(jax.config.jax_enable_x64)}


class Trainer:
    def __init__(self, cfg, run_dir: str | Path, quiet: bool | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.store = RunStore(self.run_dir)
        self.c = assemble.build(cfg)
        self.quiet = quiet
        tc = cfg.trainer
        self.n_updates = int(tc.updates)
        self.ratio = float(tc.get("reweight_ratio", 0.9))
        self.checkpoint_every = int(tc.get("checkpoint_every", 10))
        self.max_failures = int(tc.get("max_failures", 5))
        self.lr_reduction = float(tc.get("lr_reduction", 0.5))
        self.n_snapshots = self.c.sampler.cfg.n_snapshots
        self._last_good = None  # (params, opt_state) before the last accepted update

    # ----------------------------------------------------------------------------------
    def _initial(self):
        key = jax.random.PRNGKey(int(self.cfg.seed))
        k_param, k_sim = jax.random.split(key)
        params = self.c.potential.init(k_param)
        opt_state = self.c.optimizer.init(params)
        state, nbrs = self.c.sampler.init(k_sim, params)
        return params, opt_state, state, nbrs

    def _checkpoint(self, update, params, opt_state, state, nbrs, lr_scale, failures, n_traj, rows):
        self.store.write_checkpoint(
            update=update,
            trees={"params": params, "opt_state": opt_state, "sim_state": state, "neighbor": nbrs},
            attrs={"lr_scale": lr_scale, "failures": failures, "n_trajectories": n_traj,
                   "neighbor_capacities": json.dumps(neighbors.capacities(nbrs)), **self.c.learner.capacity_attrs()},
            metrics=rows, n_trajectories=n_traj, config_yaml=OmegaConf.to_yaml(self.cfg), versions=versions())

    def _resume(self, params, opt_state, state, nbrs):
        saved = self.store_attrs()
        nbrs = neighbors.placeholder(nbrs.idx.shape[0], json.loads(saved["neighbor_capacities"]),
                                     nbrs.reference_position.dtype)
        templates = {"params": params, "opt_state": opt_state, "sim_state": state, "neighbor": nbrs}
        update, trees, attrs, rows = self.store.read_checkpoint(templates)
        self.c.learner.set_capacity(attrs)
        return update, trees["params"], trees["opt_state"], trees["sim_state"], trees["neighbor"], attrs, rows

    def store_attrs(self):
        import h5py
        with h5py.File(self.store.checkpoint_path, "r") as f:
            return dict(f["checkpoint"].attrs)

    # ----------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict:
        c = self.c
        params, opt_state, state, nbrs = self._initial()
        start, lr_scale, failures, n_traj, rows = 0, 1.0, 0, 0, []
        feats = None
        if resume:
            if not self.store.has_checkpoint():
                raise UserError(f"resume: no checkpoint {self.store.checkpoint_path}",
                                "point resume= at a run directory that holds difftre.h5")
            start, params, opt_state, state, nbrs, attrs, rows = self._resume(params, opt_state, state, nbrs)
            lr_scale, failures, n_traj = float(attrs["lr_scale"]), int(attrs["failures"]), int(attrs["n_trajectories"])
            rows = rows[:start]
            self.store.rewrite_metrics_csv(rows)
            if n_traj > 0:
                feats = c.learner.featurize(self.store.read_trajectory(n_traj - 1))
            log.info("resumed from %s at update %d", self.store.checkpoint_path, start)
        else:
            self.store.rewrite_metrics_csv([])

        self._last_good = (params, opt_state)
        next_n_eff = None
        prog = TrainingProgress(self.n_updates, start, quiet=self.quiet)
        n_reused = sum(1 for r in rows if r["reused"])
        t_run = time.perf_counter()
        try:
            update = start
            while update < self.n_updates:
                event = ""
                sample_time = 0.0
                reused = True
                threshold = self.ratio * self.n_snapshots
                aux, n_eff, update_time = None, float("nan"), 0.0
                if feats is None or (next_n_eff is not None and next_n_eff < threshold):
                    ok, sample_time, sampled = self._resample(params, state, nbrs, n_traj)
                    reused = False
                    if ok:
                        state, nbrs, feats, n_traj = sampled
                    elif feats is None:  # nothing to fall back on: the start itself is unstable
                        raise UserError("the simulation with the current parameters is unstable (non-finite "
                                        "energies or exploding temperature)",
                                        "lower simulator.dt, check the prior and the initial structure")
                    else:
                        event = "unstable_simulation"
                if not event:
                    t0 = time.perf_counter()
                    new_params, new_opt, aux = jax.block_until_ready(c.learner.step(params, opt_state, feats, lr_scale))
                    n_eff = float(aux.n_eff)
                    update_time = time.perf_counter() - t0
                    if reused and n_eff < threshold:  # only when next_n_eff was unknown (resume, rollback)
                        ok, sample_time, sampled = self._resample(params, state, nbrs, n_traj)
                        reused = False
                        if ok:
                            state, nbrs, feats, n_traj = sampled
                            t0 = time.perf_counter()
                            new_params, new_opt, aux = jax.block_until_ready(
                                c.learner.step(params, opt_state, feats, lr_scale))
                            update_time += time.perf_counter() - t0
                            n_eff = float(aux.n_eff)
                        else:
                            event = "unstable_simulation"
                if event == "" and not bool(aux.finite):
                    event = "non_finite_loss"
                if event:
                    failures += 1
                    lr_scale *= self.lr_reduction
                    params, opt_state = self._last_good
                    next_n_eff = None
                    log.warning("update %d rejected (%s): parameters rolled back, learning-rate scale now %.3g "
                                "(%d consecutive failures)", update, event, lr_scale, failures)
                    if failures >= self.max_failures:
                        self._checkpoint(update, params, opt_state, state, nbrs, lr_scale, failures, n_traj, rows)
                        raise UserError(f"{failures} consecutive unstable updates; stopped with the last good "
                                        f"checkpoint in {self.store.checkpoint_path}",
                                        "lower optimizer.lr or simulator.dt, then resume=" + str(self.run_dir))
                else:
                    if not reused:  # a stable new simulation ends a run of failures
                        failures = 0
                    self._last_good = (params, opt_state)
                    params, opt_state = new_params, new_opt
                    next_n_eff = float(aux.n_eff_next)
                nan = float("nan")
                row = {"update": update, "loss": nan if event else float(aux.loss)}
                for name in c.targets:
                    row[f"loss_{name}"] = nan if event else float(aux.losses[name])
                row.update({"n_eff": n_eff, "reused": int(reused), "sample_time": sample_time,
                            "update_time": update_time, "grad_norm": nan if aux is None else float(aux.grad_norm),
                            "lr_scale": lr_scale,
                            "n_trajectories": n_traj, "event": event or "ok"})
                rows.append(row)
                self.store.append_metrics_csv(row)
                n_reused += int(reused)
                prog.update(row, n_reused)
                update += 1
                if update % self.checkpoint_every == 0 or update == self.n_updates:
                    self._checkpoint(update, params, opt_state, state, nbrs, lr_scale, failures, n_traj, rows)
        finally:
            prog.close()
        prog.summary(rows, {"run directory": str(self.run_dir), "total wall [s]": f"{time.perf_counter() - t_run:.1f}"})
        return {"rows": rows, "params": params}


    def _resample(self, params, state, nbrs, n_traj):
        c = self.c
        t0 = time.perf_counter()
        res = c.sampler.sample(params, state, nbrs, first=(n_traj == 0))
        if not res.ok:
            return False, time.perf_counter() - t0, None
        traj = jax.tree_util.tree_map(np.asarray, res.trajectory)
        self.store.write_trajectory(n_traj, traj, c.system.box_size, c.sampler.cfg.dt, c.system.units)
        feats = c.learner.featurize(res.trajectory)
        jax.block_until_ready(feats.r)
        return True, time.perf_counter() - t0, (res.state, res.neighbor, feats, n_traj + 1)


def train(cfg, run_dir, resume: bool = False, quiet: bool | None = None) -> dict:
    if cfg.trainer.kind == "static":  # 0 K property fit of a classical potential: no MD
        from .learn.static import run_static
        return run_static(cfg, run_dir, resume=resume, quiet=quiet)
    trainer = Trainer(cfg, run_dir, quiet=quiet)
    out = trainer.run(resume=resume)
    return out



