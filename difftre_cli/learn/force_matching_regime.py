"""The force-matching regime for the outer loop (train.py): one update is one epoch.

An epoch draws a permutation of the training frames (seeded by the run's seed and the epoch
number: a resumed run repeats it), takes one optimiser step per mini-batch of
``trainer.batch_size`` frames (:class:`force_matching.ForceMatching`), then computes the loss of
the validation frames. The monitored loss (validation, or training when no frame is held out)
drives early stopping: after ``trainer.patience`` epochs without an improvement by more than
``trainer.min_delta`` (relative), the regime ends the run with the best parameters seen.

Frames come from the ``reference`` group (reference/): loaded once, or — with
``reference.batch_frames`` set — read from disk batch by batch every epoch.
"""
from __future__ import annotations

import json
import logging
import math
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from .. import optim, reference
from ..checks import choice, number
from ..errors import UserError
from .boltzmann import initial_params
from .force_matching import Batch
from .regime import Proposal, Regime

log = logging.getLogger("difftre")

PRECONDITIONERS = ("none", "gauss_newton")


def validate_keys(tc, updates: int) -> None:
    """trainer=force_matching's own keys (config.py runs the MD checks besides)."""
    T = "trainer"
    number(tc, "batch_size", prefix=T, integer=True, lo=1, example="8")
    number(tc, "patience", prefix=T, integer=True, lo=1, required=False, example="20")
    number(tc, "min_delta", prefix=T, lo=0.0, required=False, example="0.001")
    number(tc, "energy_weight", prefix=T, lo=0.0, required=False, example="0.0")
    number(tc, "virial_weight", prefix=T, lo=0.0, required=False, example="1.0")
    choice(tc, "precondition", PRECONDITIONERS, prefix=T, default="none", what="preconditioner")
    number(tc, "precondition_frames", prefix=T, integer=True, lo=1, required=False, example="64")
    number(tc, "precondition_every", prefix=T, integer=True, lo=0, required=False, example="1")
    number(tc, "damping", prefix=T, lo=0.0, required=False, example="0.001")
    devices = tc.get("devices", "all")
    if devices != "all":
        number(tc, "devices", prefix=T, integer=True, lo=1, example="2")


class ForceMatchingRegime(Regime):
    """Epochs of mini-batch force matching with validation and early stopping."""

    failure_hint = "lower optimizer.lr (or set optimizer.clip_norm)"

    def __init__(self, components, store, cfg):
        c = self.c = components
        tc = cfg.trainer
        self.store = store
        self.seed = int(cfg.seed)
        self.batch_size = int(tc.batch_size)   # at most the training frames (below)
        self.patience = None if tc.get("patience") is None else int(tc.patience)
        self.min_delta = float(tc.get("min_delta", 0.0) or 0.0)
        self.ref = reference.open_reference(cfg.reference, c.system.units, box=c.system.box_size,
                                            n_particles=c.system.n_particles, require_forces=True)
        self.energy_weight = float(tc.get("energy_weight", 0.0) or 0.0)
        self.virial_weight = float(tc.get("virial_weight", 0.0) or 0.0)
        self.init_from = tc.get("init_from")
        self.learner = c.learner
        self.n_train = len(self.ref.split["train"])
        self.batch_size = min(self.batch_size, self.n_train)
        self.n_batches = math.ceil(self.n_train / self.batch_size)
        devices = tc.get("devices", "all")
        n_dev = len(jax.devices()) if devices == "all" else int(devices)
        self.learner.configure(optim.build(cfg.optimizer, int(tc.updates) * self.n_batches),
                               self.energy_weight, n_dev, float(tc.get("damping", 1e-3)), self.virial_weight)
        self.precondition = tc.get("precondition", "none")
        frames = tc.get("precondition_frames")
        self.precondition_frames = self.n_train if frames is None else min(int(frames), self.n_train)
        self.precondition_every = int(tc.get("precondition_every", 0))
        self.precond = None   # the Gauss–Newton matrix in use (checkpointed)
        self.padded = self.learner.padded_size(self.batch_size)
        self.streaming = self.ref.settings.batch_frames is not None
        self.frames = {} if self.streaming else {w: self.ref.load(w) for w in ("train", "validation")
                                                 if len(self.ref.split[w])}
        if self.energy_weight > 0 and self._first_frames().energies is None:
            raise UserError(f"trainer.energy_weight={self.energy_weight} but {self.ref.settings.file.name} has no "
                            "energies", "set trainer.energy_weight=0 or give a reference file with energies")
        if self.virial_weight > 0 and self._first_frames().pressures is None:
            raise UserError(f"trainer.virial_weight={self.virial_weight} but {self.ref.settings.file.name} has no "
                            "pressures", "set trainer.virial_weight=0 or give a reference file with a pressure per "
                            "frame (extended XYZ `stress`, H5MD observables/pressure)")
        self.epoch, self.best, self.since_best, self.best_params = 0, math.inf, 0, None

    # -- frames --------------------------------------------------------------------------------
    def _first_frames(self):
        return self.frames["train"] if self.frames else self.ref.map(self.ref.split["train"][:1])

    def _batch(self, which: str, rows: np.ndarray) -> Batch:
        """Frames ``rows`` (positions in the set ``which``) as a padded :class:`Batch`."""
        if self.streaming:
            order = np.argsort(rows)
            m = self.ref.map(self.ref.split[which][rows[order]])
            keep = np.argsort(order)   # back to the drawn order
            pos, frc = m.positions[keep], m.forces[keep]
            eng = None if m.energies is None else m.energies[keep]
            prs = None if m.pressures is None else m.pressures[keep]
        else:
            m = self.frames[which]
            pos, frc, eng = m.positions[rows], m.forces[rows], None if m.energies is None else m.energies[rows]
            prs = None if m.pressures is None else m.pressures[rows]
        n, pad = len(rows), self.padded - len(rows)
        eng = np.zeros(n) if eng is None or self.energy_weight == 0 else eng
        prs = np.zeros(n) if prs is None or self.virial_weight == 0 else prs
        dtype = jnp.result_type(float)

        def padded(a):
            a = np.asarray(a)
            return jnp.asarray(np.concatenate([a, np.repeat(a[:1], pad, 0)]) if pad else a, dtype)
        return Batch(padded(pos), padded(frc), padded(eng), jnp.asarray(np.r_[np.ones(n), np.zeros(pad)], dtype),
                     padded(prs))

    # -- state ---------------------------------------------------------------------------------
    def init(self, key):
        params = initial_params(self.c, key, self.init_from)
        self.learner.prepare(self._first_frames().positions[0])
        self.best_params = params
        return params, self.learner.optimizer.init(params)

    def checkpoint(self) -> tuple[dict, dict]:
        attrs = {"epoch": self.epoch, "best_loss": self.best, "since_best": self.since_best,
                 "fm_capacities": json.dumps(self.learner.capacity_attrs())}
        trees = {"best_params": self.best_params}
        if self.precond is not None:
            trees["gauss_newton"] = self.precond
        return trees, attrs

    def templates(self, attrs: dict) -> dict:
        out = {"best_params": self.best_params}
        if self.precondition != "none" and attrs.get("epoch", 0):
            K = jax.flatten_util.ravel_pytree(self.best_params)[0].size
            out["gauss_newton"] = jnp.zeros((K, K), jnp.result_type(float))
        return out

    def restore(self, trees: dict, attrs: dict) -> None:
        self.best_params = trees["best_params"]
        self.precond = trees.get("gauss_newton")
        self.epoch, self.best, self.since_best = int(attrs["epoch"]), float(attrs["best_loss"]), int(attrs["since_best"])
        self.learner.set_capacity(json.loads(attrs["fm_capacities"]), self.c.system.n_particles,
                                  jnp.result_type(float))

    def rejected(self) -> None:
        pass

    # -- one epoch ------------------------------------------------------------------------------
    def propose(self, params, opt_state, lr_scale: float) -> Proposal:
        t0 = time.perf_counter()
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_train)
        self.epoch += 1
        acc, finite, gnorm = np.zeros(4), True, float("nan")
        precond = self._preconditioner(params, order)
        for b in range(self.n_batches):
            rows = order[b * self.batch_size:(b + 1) * self.batch_size]
            params, opt_state, out = self.learner.step(params, opt_state, self._batch("train", rows), lr_scale,
                                                       precond)
            acc += _totals(out.sums)
            finite &= bool(out.finite)
            gnorm = float(out.grad_norm)
        t_train = time.perf_counter() - t0
        val = self._validation(params) if finite else None
        force, energy, pressure, weight = acc
        fields = {"loss": (force + self.energy_weight * energy + self.virial_weight * pressure) / weight,
                  "force_rmse": math.sqrt(force / weight), "energy_rmse": math.sqrt(energy / weight),
                  "pressure_rmse": math.sqrt(pressure / weight) if self.virial_weight else float("nan"),
                  "loss_validation": float("nan"), "force_rmse_validation": float("nan"),
                  "epochs_since_best": self.since_best, "grad_norm": gnorm, "epoch_time": time.perf_counter() - t0,
                  "frames_per_s": self.n_train / t_train}
        if not finite:
            return Proposal(params, opt_state, fields, "non_finite_loss", False)
        if val is not None:
            fields.update(val)
        return self._early_stopping(params, opt_state, fields)

    def _preconditioner(self, params, order: np.ndarray):
        """None, or the damped Gauss–Newton matrix: from ``precondition_frames`` training frames
        (null: all; else the first ones in the epoch's order) at the current parameters,
        computed before the first epoch and then every ``precondition_every`` epochs (0: never
        again — exact for models linear in their parameters, spline and table, whose matrix
        does not depend on them)."""
        if self.precondition == "none":
            return None
        epoch = self.epoch - 1
        due = self.precond is None or (self.precondition_every and epoch % self.precondition_every == 0)
        if not due:
            return self.precond
        rows = np.sort(order[:self.precondition_frames])
        size = self.batch_size
        G = None
        for start in range(0, len(rows), size):
            part = self.learner.gauss_newton(params, self._batch("train", rows[start:start + size]))
            G = part if G is None else G + part
        self.precond = G / math.ceil(len(rows) / size)
        return self.precond

    def _validation(self, params) -> dict | None:
        n = len(self.ref.split["validation"])
        if n == 0:
            return None
        acc = np.zeros(4)
        for start in range(0, n, self.batch_size):
            rows = np.arange(start, min(n, start + self.batch_size))
            acc += _totals(self.learner.sums(params, self._batch("validation", rows)))
        force, energy, pressure, weight = acc
        return {"loss_validation": (force + self.energy_weight * energy + self.virial_weight * pressure) / weight,
                "force_rmse_validation": math.sqrt(force / weight)}

    def _early_stopping(self, params, opt_state, fields: dict) -> Proposal:
        monitored = fields["loss_validation"] if np.isfinite(fields["loss_validation"]) else fields["loss"]
        if monitored < self.best - self.min_delta * abs(self.best) or not np.isfinite(self.best):
            self.best, self.since_best, self.best_params = monitored, 0, params
        else:
            self.since_best += 1
        fields["epochs_since_best"] = self.since_best
        if self.patience is not None and self.since_best >= self.patience:
            done = (f"early stopping: no improvement of the {'validation' if self.ref.split['validation'].size else 'training'} "
                    f"loss for {self.since_best} epochs (best {self.best:.4g}, its parameters kept)")
            log.info(done)
            return Proposal(self.best_params, opt_state, fields, "", True, done=done)
        return Proposal(params, opt_state, fields, "", True)

    def summary(self, rows: list[dict], params) -> dict:
        good = [r for r in rows if r.get("event") == "ok" and "force_rmse" in r]
        if not good:
            return {}
        last = good[-1]
        out = {"force RMSE (train) [energy/length]": f"{last['force_rmse']:.4g}"}
        if np.isfinite(last.get("loss_validation", float("nan"))):
            out["force RMSE (validation)"] = f"{last['force_rmse_validation']:.4g}"
        out["frames per second"] = f"{np.median([r['frames_per_s'] for r in good]):.1f}"
        return out


def _totals(sums) -> np.ndarray:
    """(Σ|ΔF|²/3N, Σ(ΔU/N)², Σ(ΔP)², Σw) of a batch's :class:`force_matching.Sums`, on the host."""
    s = jax.device_get(sums)
    return np.array([float(s.force_sq), float(s.energy_sq), float(s.pressure_sq), float(s.weight)])
