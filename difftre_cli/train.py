"""The outer training loop, shared by every learning regime.

A regime (``learn/``) proposes one update at a time (:class:`learn.difftre.Proposal`); this loop
accepts or rejects it, keeps the metrics, checkpoints, and stops gracefully on signals:

* accepted: the proposal's parameters become current and the previous ones are kept as the
  last good ones;
* rejected (unstable simulation, non-finite loss or gradient): parameters roll back to the
  last good ones, the learning rate is scaled by ``trainer.lr_reduction`` and the event is
  written to the metrics and the log; after ``trainer.max_failures`` consecutive failures the
  run stops with a :class:`UserError` (exit 2), its last good checkpoint intact;
* every ``trainer.checkpoint_every`` updates, every ``trainer.checkpoint_seconds`` of wall
  time, at the end and on SIGTERM/SIGINT/SIGUSR2 the whole state is checkpointed atomically
  (``store.RunStore``). A killed run resumes from its last checkpoint and, with the same
  seed, repeats the lost updates bit-for-bit on CPU.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
from omegaconf import OmegaConf

from . import assemble
from .errors import UserError
from .interrupt import GracefulStop
from .learn.difftre import DiffTReRegime
from .monitor import CostEstimate, TrainingMonitor
from .progress import TrainingProgress
from .segments import pack, unpack
from .store import RunStore, versions

log = logging.getLogger("difftre")


def make_regime(c, store, cfg):
    kind = cfg.trainer.kind
    from .learn.boltzmann import INIT_FROM
    if cfg.trainer.get("init_from") not in (None, *INIT_FROM):
        raise UserError(f"trainer.init_from: unknown {cfg.trainer.init_from!r}", f"use one of {list(INIT_FROM)}")
    if kind == "difftre":
        return DiffTReRegime(c, store, float(cfg.trainer.get("reweight_ratio", 0.9)), cfg.trainer.get("init_from"))
    if kind == "direct_ad":
        from .learn.direct_ad import DirectADRegime
        return DirectADRegime(c, store, cfg.trainer)
    if kind == "ibi":
        from .learn.ibi import IBIRegime
        return IBIRegime(c, store, cfg.trainer)
    raise UserError(f"trainer.kind: unknown trainer {kind!r}", "use trainer=difftre, direct_ad or ibi")


class Trainer:
    def __init__(self, cfg, run_dir: str | Path, quiet: bool | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.store = RunStore(self.run_dir)
        from .states import is_multistate
        if is_multistate(cfg):   # several state points, shared parameters
            from .learn import multistate
            states = assemble.build_states(cfg)
            self.c = states[0][1]
            self.samplers = {}
            for name, c in states:
                c.sampler.label = name
                self.samplers[name] = c.sampler
            if cfg.trainer.kind == "direct_ad":
                self.regime = multistate.MultiStateDirectADRegime(states, self.store, cfg.trainer)
            elif cfg.trainer.kind == "ibi":
                self.regime = multistate.MultiStateIBIRegime(states, self.store, cfg.trainer)
            else:
                self.regime = multistate.MultiStateDiffTReRegime(
                    states, self.store, float(cfg.trainer.get("reweight_ratio", 0.9)), cfg.trainer.get("init_from"),
                    state_parallel=cfg.trainer.get("state_parallel", "sequential"))
        else:
            self.c = assemble.build(cfg)
            self.samplers = {"": self.c.sampler}
            self.regime = make_regime(self.c, self.store, cfg)
        self.quiet = quiet
        tc = cfg.trainer
        self.n_updates = int(tc.updates)
        self.checkpoint_every = int(tc.get("checkpoint_every", 10))
        self.checkpoint_seconds = float(tc.get("checkpoint_seconds", 600))
        self.max_failures = int(tc.get("max_failures", 5))
        self.lr_reduction = float(tc.get("lr_reduction", 0.5))
        self._versions = versions()

    # ----------------------------------------------------------------------------------
    def _checkpoint(self, update, params, opt_state, last_good, lr_scale, failures, rows, segments=None):
        """The loop's state after ``update`` updates; ``segments`` [(tree, info)]: the
        trajectories in progress during the next update (monitor.py, segments.py)."""
        trees, attrs = self.regime.checkpoint()
        if segments:
            trees["segment"], attrs["segment"] = pack(segments)
        self.store.write_checkpoint(
            update=update,
            trees={"params": params, "opt_state": opt_state, "last_good_params": last_good[0],
                   "last_good_opt_state": last_good[1], **trees},
            attrs={"lr_scale": lr_scale, "failures": failures, **attrs},
            metrics=rows, n_trajectories=int(attrs.get("n_trajectories", 0)),
            config_yaml=OmegaConf.to_yaml(self.cfg), versions=self._versions,
            trajectory_names=getattr(self.regime, "trajectory_names", lambda: None)())
        self._t_checkpoint = time.perf_counter()

    def _resume(self, params, opt_state):
        try:
            attrs = self.store.checkpoint_attrs()
            templates = {"params": params, "opt_state": opt_state, "last_good_params": params,
                         "last_good_opt_state": opt_state, **self.regime.templates(attrs)}
            # stopped inside trajectories: their samplers continue them (sampler.py, segments.py)
            infos = unpack(attrs["segment"]) if attrs.get("segment") else []
            if infos:
                templates["segment"] = {d["label"]: self.samplers[d["label"]].segment_template(d, params)
                                        for d in infos}
            update, trees, attrs, rows = self.store.read_checkpoint(templates)
            for d in infos:
                self.samplers[d["label"]].restore_segment(trees["segment"][d["label"]], d)
            trees.pop("segment", None)
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"cannot resume from {self.store.checkpoint_path}: {exc}",
                            "resume with the run's own config (only trainer.updates and similar loop settings may "
                            "change), or start a new run") from None
        self.regime.restore(trees, attrs)
        return update, trees, attrs, rows

    # ----------------------------------------------------------------------------------
    def run(self, resume: bool = False, stop: GracefulStop | None = None) -> dict:
        if stop is not None:            # the caller already turned SIGTERM/SIGINT into requests
            return self._run(resume, stop)
        with GracefulStop() as stop:   # from here on SIGTERM/SIGINT only request a stop
            return self._run(resume, stop)

    def _run(self, resume: bool, stop: GracefulStop) -> dict:
        self.store.prepare()
        log.info("initialising the parameters and the simulation (neighbour lists, graph capacities); the "
                 "trajectory's progress follows once its chunk program is compiled")
        params, opt_state = self.regime.init(jax.random.PRNGKey(int(self.cfg.seed)))
        start, lr_scale, failures, rows = 0, 1.0, 0, []
        last_good = (params, opt_state)
        if resume and self.store.has_checkpoint():
            start, trees, attrs, rows = self._resume(params, opt_state)
            params, opt_state = trees["params"], trees["opt_state"]
            last_good = (trees.get("last_good_params", params), trees.get("last_good_opt_state", opt_state))
            lr_scale, failures = float(attrs["lr_scale"]), int(attrs["failures"])
            if failures >= self.max_failures:   # the run had stopped on failures: the user changed something
                failures = 0
            rows = rows[:start]
            log.info("resumed from %s at update %d", self.store.checkpoint_path, start)
        elif resume:
            log.info("no complete checkpoint in %s yet: starting from update 0", self.run_dir)
        self.store.rewrite_metrics_csv(rows)
        if start >= self.n_updates:
            log.info("nothing to do: the run already has %d of trainer.updates=%d updates", start, self.n_updates)
            return {"rows": rows, "params": params}

        prog = TrainingProgress(self.n_updates, start, quiet=self.quiet)
        n_reused = sum(1 for r in rows if r.get("reused"))
        t_run = self._t_checkpoint = time.perf_counter()
        update = start
        loop = {}
        monitor = TrainingMonitor(
            prog, stop, CostEstimate(self.cfg, self.n_updates, start, len(self.samplers)),
            checkpoint=lambda segments: self._checkpoint(*loop["state"], segments=segments),
            last_checkpoint=lambda: self._t_checkpoint, checkpoint_seconds=self.checkpoint_seconds,
            run_dir=self.run_dir, update=lambda: loop["state"][0])
        for sampler in self.samplers.values():
            sampler.monitor = monitor
        try:
            while update < self.n_updates:
                loop["state"] = (update, params, opt_state, last_good, lr_scale, failures, rows)
                if stop.requested:   # arrived before the first update (compilation, first sampling)
                    self._checkpoint(update, params, opt_state, last_good, lr_scale, failures, rows)
                    prog.close()
                    stop.finish(self.run_dir, update)
                prop = self.regime.propose(params, opt_state, lr_scale)
                if prop.event:
                    failures += 1
                    lr_scale *= self.lr_reduction
                    params, opt_state = last_good
                    self.regime.rejected()
                    log.warning("update %d rejected (%s): parameters rolled back, learning-rate scale now %.3g "
                                "(%d consecutive failures)", update, prop.event, lr_scale, failures)
                else:
                    if prop.fresh_sample:   # a stable new simulation ends a run of failures
                        failures = 0
                    last_good = (params, opt_state)
                    params, opt_state = prop.params, prop.opt_state
                row = {"update": update, **prop.fields, "lr_scale": lr_scale, "event": prop.event or "ok"}
                rows.append(row)
                self.store.append_metrics_csv(row)
                n_reused += int(row.get("reused", 0))
                prog.update(row, n_reused)
                update += 1
                if failures >= self.max_failures:
                    self._checkpoint(update, params, opt_state, last_good, lr_scale, failures, rows)
                    raise UserError(f"{failures} consecutive unstable updates; stopped with the last good "
                                    f"checkpoint in {self.store.checkpoint_path}",
                                    "lower optimizer.lr or simulator.dt, then resume=" + str(self.run_dir))
                due = (update % self.checkpoint_every == 0 or update == self.n_updates
                       or time.perf_counter() - self._t_checkpoint > self.checkpoint_seconds)
                if due or stop.requested:
                    self._checkpoint(update, params, opt_state, last_good, lr_scale, failures, rows)
                if stop.requested and update < self.n_updates:
                    prog.close()
                    stop.finish(self.run_dir, update)
        finally:
            prog.close()
            for sampler in self.samplers.values():
                sampler.monitor = None
        prog.summary(rows, {"run directory": str(self.run_dir), "total wall [s]": f"{time.perf_counter() - t_run:.1f}"})
        return {"rows": rows, "params": params}


def train(cfg, run_dir, resume: bool = False, quiet: bool | None = None, stop: GracefulStop | None = None) -> dict:
    if cfg.trainer.kind == "static":  # 0 K property fit of a classical potential: no MD
        from .learn.static import run_static
        return run_static(cfg, run_dir, resume=resume, quiet=quiet, stop=stop)
    return Trainer(cfg, run_dir, quiet=quiet).run(resume=resume, stop=stop)
