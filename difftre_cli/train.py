"""The outer training loop, shared by every learning regime.

A regime (``learn/``) proposes one update at a time (:class:`learn.regime.Proposal`); this loop
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
  seed, repeats the lost updates bit-for-bit on CPU;
* a regime that has finished (``Proposal.done``: the 0 K fit converged) ends the loop as
  ``trainer.updates`` would, with a checkpoint that says so (resuming it does nothing).
* every metrics row goes to metrics.csv and to the ``logger`` group's dashboard (TensorBoard,
  MLflow: metric_log.py), which a resumed run continues from its checkpoint.

Which regime runs is ``trainer.kind``'s entry in the trainer registry (learn/registry.py):
the MD trainers get the components ``assemble`` builds, ``trainer=static`` its config alone.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import jax
from omegaconf import OmegaConf

from . import assemble, averaging, metric_log
from .errors import UserError
from .interleave import interleave_entries, is_interleaved
from .interrupt import GracefulStop
from .learn.interleaved import InterleavedRegime
from .learn.registry import trainer_kind
from .monitor import CostEstimate, TrainingMonitor
from .progress import TrainingProgress
from .segments import pack, unpack
from .stages import is_staged, stage_configs
from .states import is_multistate
from .store import RunStore, versions

log = logging.getLogger("difftre")


def rejections(rows: list[dict], n: int) -> str:
    """The events of the last ``n`` rejected updates, counted: "unstable simulation ×2, loss rose ×1"."""
    events = [r["event"] for r in rows if r.get("event", "ok") != "ok"][-n:]
    return ", ".join(f"{e.replace('_', ' ')} ×{events.count(e)}" for e in dict.fromkeys(events))


class Trainer:
    """The loop over one regime (learn/registry.py maps ``trainer.kind`` to it).

    A regime provides ``init(key) -> (params, opt_state)``, ``propose(params, opt_state,
    lr_scale) -> Proposal``, ``checkpoint() -> (trees, attrs)``, ``templates(attrs)``,
    ``restore(trees, attrs)`` and ``rejected()``; optionally ``final(params, opt_state)`` (a
    metrics row of the final parameters when the loop stops at ``trainer.updates``),
    ``close()`` (called whenever the loop ends), ``summary(rows, params)`` (rows of the
    summary table), ``result(params)`` (entries of the returned dict), ``trajectory_names()``
    and ``failure_hint`` (the fix named when failures stop the run)."""

    def __init__(self, cfg, run_dir: str | Path, quiet: bool | None = None, metrics_log=None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        # where the rows go besides metrics.csv (logger group); first: a missing package fails now
        self.metrics_log = metrics_log if metrics_log is not None else metric_log.create(cfg, self.run_dir)
        self.store = RunStore(self.run_dir)
        kind = trainer_kind(cfg.trainer.kind)
        self.c, self.samplers = None, {}
        if not kind.md:   # trains without MD components (trainer=static): the regime builds its own
            self.regime = kind.regime(cfg, self.store, None)
        elif is_interleaved(cfg):   # several trainers' updates alternate (interleave.py)
            entries = interleave_entries(cfg)
            regimes = []
            for e in entries:
                c = assemble.build(e.cfg)
                regimes.append(trainer_kind(e.name).regime(e.cfg, self.store, c))
                if e.name == cfg.trainer.kind or self.c is None:
                    self.c = c
                if trainer_kind(e.name).samples:
                    self.samplers[""] = c.sampler
            self.regime = InterleavedRegime(entries, regimes)
        elif is_multistate(cfg):   # several state points, shared parameters
            if kind.multistate is None:
                raise UserError(f"states (several state points) are not supported by trainer={cfg.trainer.kind}",
                                "train one state point per run (states=null)")
            states = assemble.build_states(cfg)
            self.c = states[0][1]
            for name, c in states:
                c.sampler.label = name
                self.samplers[name] = c.sampler
            self.regime = kind.multistate(cfg, self.store, states)
        else:
            self.c = assemble.build(cfg)
            self.samplers = {"": self.c.sampler}
            self.regime = kind.regime(cfg, self.store, self.c)
        self.quiet = quiet
        tc = cfg.trainer
        self.n_updates = int(tc.updates)
        self.checkpoint_every = int(tc.get("checkpoint_every", 10))
        self.checkpoint_seconds = float(tc.get("checkpoint_seconds", 600))
        self.max_failures = int(tc.get("max_failures", 5))
        self.lr_reduction = float(tc.get("lr_reduction", 0.5))
        self.average = averaging.build(tc)   # the model is the average of the iterates (averaging.py)
        self._versions = versions()

    # ----------------------------------------------------------------------------------
    def _checkpoint(self, update, params, opt_state, last_good, lr_scale, failures, rows, segments=None,
                    done: str | None = None):
        """The loop's state after ``update`` updates; ``segments`` [(tree, info)]: the
        trajectories in progress during the next update (monitor.py, segments.py); ``done``:
        why the regime finished (a resume then has nothing to do)."""
        trees, attrs = self.regime.checkpoint()
        if segments:
            trees["segment"], attrs["segment"] = pack(segments)
        if done:
            attrs["done"] = done
        if self.average is not None:   # "params" is the model; the iterate continues a resumed run
            trees.update({"iterate_params": params, **self.average.trees(params)})
            attrs.update(self.average.attrs())
        self.store.write_checkpoint(
            update=update,
            trees={"params": self.model(params), "opt_state": opt_state, "last_good_params": last_good[0],
                   "last_good_opt_state": last_good[1], **trees},
            attrs={"lr_scale": lr_scale, "failures": failures, **attrs},
            metrics=rows, n_trajectories=int(attrs.get("n_trajectories", 0)),
            config_yaml=OmegaConf.to_yaml(self.cfg), versions=self._versions,
            trajectory_names=self.regime.trajectory_names())
        self._t_checkpoint = time.perf_counter()

    def _resume(self, params, opt_state):
        try:
            attrs = self.store.checkpoint_attrs()
            templates = {"params": params, "opt_state": opt_state, "last_good_params": params,
                         "last_good_opt_state": opt_state, **self.regime.templates(attrs)}
            if "average_count" in attrs:
                templates.update({"iterate_params": params, "average_total": params})
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
        with self.metrics_log:   # the dashboard's run ends as finished, killed or failed
            if stop is not None:            # the caller already turned SIGTERM/SIGINT into requests
                return self._run(resume, stop)
            with GracefulStop() as stop:   # from here on SIGTERM/SIGINT only request a stop
                return self._run(resume, stop)

    def _run(self, resume: bool, stop: GracefulStop) -> dict:
        self.store.prepare()
        if self.samplers:
            log.info("initialising the parameters and the simulation (neighbour lists, graph capacities); the "
                     "trajectory's progress follows once its chunk program is compiled")
        params, opt_state = self.regime.init(jax.random.PRNGKey(int(self.cfg.seed)))
        start, lr_scale, failures, rows = 0, 1.0, 0, []
        last_good = (params, opt_state)
        if resume and self.store.has_checkpoint():
            start, trees, attrs, rows = self._resume(params, opt_state)
            params, opt_state = trees.get("iterate_params", trees["params"]), trees["opt_state"]
            if self.average is not None and "average_total" in trees:
                self.average.restore(trees, attrs)
            last_good = (trees.get("last_good_params", params), trees.get("last_good_opt_state", opt_state))
            lr_scale, failures = float(attrs["lr_scale"]), int(attrs["failures"])
            if failures >= self.max_failures:   # the run had stopped on failures: the user changed something
                failures = 0
            log.info("resumed from %s at update %d", self.store.checkpoint_path, start)
            if attrs.get("done") or start >= self.n_updates:
                why = (f"the run had finished ({attrs['done']})" if attrs.get("done") else
                       f"the run already has {start} of trainer.updates={self.n_updates} updates")
                log.info("nothing to do: %s", why)
                self.store.rewrite_metrics_csv(rows)
                return self._result(rows, params, attrs.get("done"))
            rows = rows[:start]   # (a regime's final row, see final(), comes back when the run ends again)
        elif resume:
            log.info("no complete checkpoint in %s yet: starting from update 0", self.run_dir)
        self.store.rewrite_metrics_csv(rows)
        self.metrics_log.open(start)   # only the rows from here on: a resumed run logs none twice
        state = {"update": start, "params": params, "opt_state": opt_state, "last_good": last_good,
                 "lr_scale": lr_scale, "failures": failures, "rows": rows}
        t_run = self._t_checkpoint = time.perf_counter()
        try:
            done = self._loop(state, stop)
        finally:
            self.regime.close()
        extra = self.regime.summary(rows, self.model(state["params"]))
        self.prog.summary(rows, {**extra, "run directory": str(self.run_dir),
                                 "total wall [s]": f"{time.perf_counter() - t_run:.1f}"})
        return self._result(rows, state["params"], done)

    def _result(self, rows, params, done) -> dict:
        model = self.model(params)
        return {"rows": rows, "params": model, "done": done, **self.regime.result(model)}

    def model(self, params):
        """The parameters the run leaves: the iterate, or its average (``trainer.average``)."""
        return params if self.average is None else self.average.value(params)

    def _loop(self, st: dict, stop: GracefulStop) -> str | None:
        """Updates until ``trainer.updates``, a stop signal, too many failures or the regime's
        ``done``; ``st`` is the loop's state (updated in place). Returns ``done``."""
        rows = st["rows"]
        prog = self.prog = TrainingProgress(self.n_updates, st["update"], quiet=self.quiet)
        n_reused = sum(1 for r in rows if r.get("reused"))

        def checkpoint(segments=None, done=None):
            self._checkpoint(st["update"], st["params"], st["opt_state"], st["last_good"], st["lr_scale"],
                             st["failures"], rows, segments=segments, done=done)
        monitor = TrainingMonitor(
            prog, stop, CostEstimate(self.cfg, self.n_updates, st["update"], len(self.samplers)),
            checkpoint=checkpoint, last_checkpoint=lambda: self._t_checkpoint,
            checkpoint_seconds=self.checkpoint_seconds, run_dir=self.run_dir, update=lambda: st["update"])
        for sampler in self.samplers.values():
            sampler.monitor = monitor
        try:
            while st["update"] < self.n_updates:
                if stop.requested:   # arrived before the first update (compilation, first sampling)
                    checkpoint()
                    prog.close()
                    stop.finish(self.run_dir, st["update"])
                prop = self.regime.propose(st["params"], st["opt_state"], st["lr_scale"])
                self._decide(st, prop)
                row = {"update": st["update"], **prop.fields, "lr_scale": st["lr_scale"], "event": prop.event or "ok"}
                self._add_row(rows, row)
                n_reused += int(row.get("reused", 0))
                prog.update(row, n_reused)
                st["update"] += 1
                if st["failures"] >= self.max_failures:
                    checkpoint()
                    hint = self.regime.failure_hint
                    raise UserError(f"{st['failures']} consecutive updates rejected ({rejections(rows, st['failures'])}); "
                                    f"stopped with the last good checkpoint in {self.store.checkpoint_path}",
                                    f"{hint}, then resume={self.run_dir}")
                done = None if prop.event else prop.done
                final = self.regime.final(st["params"], st["opt_state"]) \
                    if done is None and st["update"] == self.n_updates else None
                if final is not None:
                    self._add_row(rows, {"update": st["update"], **final, "lr_scale": st["lr_scale"], "event": "ok"})
                due = (done or st["update"] % self.checkpoint_every == 0 or st["update"] == self.n_updates
                       or time.perf_counter() - self._t_checkpoint > self.checkpoint_seconds)
                if due or stop.requested:
                    checkpoint(done=done)
                if done:
                    return done
                if stop.requested and st["update"] < self.n_updates:
                    prog.close()
                    stop.finish(self.run_dir, st["update"])
        finally:
            prog.close()
            for sampler in self.samplers.values():
                sampler.monitor = None
        return None

    def _decide(self, st: dict, prop) -> None:
        """Accept the proposal, or roll back to the last good parameters and lower the step."""
        if prop.event:
            st["failures"] += 1
            st["lr_scale"] *= self.lr_reduction
            st["params"], st["opt_state"] = st["last_good"]
            if self.average is not None:   # the rolled-back step leaves the average too
                self.average.undo()
            self.regime.rejected()
            log.warning("update %d rejected (%s): parameters rolled back, learning-rate scale now %.3g "
                        "(%d consecutive failures)", st["update"], prop.event, st["lr_scale"], st["failures"])
        else:
            if prop.fresh_sample:   # a stable new simulation ends a run of failures
                st["failures"] = 0
            st["last_good"] = (st["params"], st["opt_state"])
            st["params"], st["opt_state"] = prop.params, prop.opt_state
            if self.average is not None:
                self.average.add(prop.params)

    def _add_row(self, rows: list, row: dict) -> None:
        rows.append(row)
        self.store.append_metrics_csv(row)
        self.metrics_log.log(row)


def train(cfg, run_dir, resume: bool = False, quiet: bool | None = None, stop: GracefulStop | None = None) -> dict:
    """Train with the regime of ``trainer.kind`` (or the stages of ``stages``, see stages.py);
    returns rows, params, done (why the regime finished, or None) and the regime's own
    ``result`` entries (staged: the last stage's, with every stage's rows)."""
    if is_staged(cfg):
        return train_stages(cfg, run_dir, resume=resume, quiet=quiet, stop=stop)
    return Trainer(cfg, run_dir, quiet=quiet).run(resume=resume, stop=stop)


def train_stages(cfg, run_dir, resume: bool = False, quiet: bool | None = None,
                 stop: GracefulStop | None = None) -> dict:
    """The stages of ``cfg`` one after another, each a run of its own in RUN/stageK_TRAINER/
    starting from the previous stage's parameters, its config in RUN/stageK_TRAINER/.hydra/ (for
    ``difftre evaluate``). A stage with a checkpoint is resumed (a finished one has nothing to
    do); RUN/metrics.csv gets every stage's rows with ``stage``."""
    run_dir = Path(run_dir)
    rows, result = [], None
    with GracefulStop() if stop is None else contextlib.nullcontext(stop) as stop:
        for name, sub in stage_configs(cfg, run_dir):
            sub_dir = run_dir / name
            log.info("stage %s in %s", name, sub_dir)
            saved = sub_dir / ".hydra" / "config.yaml"   # what `difftre evaluate run=RUN/stageK_…` composes
            if not saved.is_file():
                saved.parent.mkdir(parents=True, exist_ok=True)
                saved.write_text(OmegaConf.to_yaml(sub))
            sink = metric_log.create(cfg, run_dir, stage=name)   # the run's MLflow run, the stage's event files
            result = Trainer(sub, sub_dir, quiet=quiet, metrics_log=sink).run(
                resume=RunStore(sub_dir).has_checkpoint(), stop=stop)
            rows += [{"stage": name, **r} for r in result["rows"]]
            RunStore(run_dir).rewrite_metrics_csv(rows)
    return {**result, "rows": rows}
