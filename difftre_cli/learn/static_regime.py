"""``trainer=static`` in the shared training loop (``train.Trainer``): one optimiser iteration
per update of the loop, so the 0 K fit has the loop's checkpoints, signals, rollback,
``metrics.csv`` and resume.

Metrics row ``u`` is the state at the parameters after ``u`` iterations (row 0: the start):
loss, per-target loss, gradient norm, parameters, C11, C12, C44 (GPa, Voigt), loss
evaluations and time. The update that finds the fit finished (converged, or SciPy returned)
proposes no step and tells the loop so (``Proposal.done``); at ``trainer.updates`` iterations
the loop asks for the row of the final parameters (:meth:`StaticRegime.final`).

Optimisers: Optax L-BFGS (one compiled update, zoom line search included), Adam and SGD are
stepwise, and their whole state (with x, the previous loss and the flat-loss count) is the
loop's ``opt_state``: rollback and resume continue them exactly. SciPy's BFGS, CG and
Nelder–Mead run in a worker thread, one iteration per update (scipy_steps.py); their internal
state cannot be checkpointed, so after a resume or a rollback SciPy starts afresh from the
loop's parameters (logged). Convergence: SciPy's own tests; Optax: the gradient norm below
``trainer.gtol``, or the loss flat (changes < ``trainer.ftol``·max(1, loss)) for
``trainer.patience`` iterations.
"""
from __future__ import annotations

import logging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import optimize

from .. import optim
from ..errors import UserError
from .regime import Proposal, Regime
from .scipy_steps import SteppedMinimize
from .static import OPTAX_OPTIMIZERS, SCIPY_OPTIMIZERS, build_problem, optimizer_name

log = logging.getLogger("difftre")


class Evaluator:
    """Loss (and gradient) of x = θ/θ₀ with a small cache, for SciPy's fun/jac/callback, the
    Optax steps and the metrics rows; ``n_fev`` counts the evaluations that were computed."""

    def __init__(self, prob, with_grad: bool):
        self.prob, self.with_grad, self.cache, self.n_fev = prob, with_grad, {}, 0

    def __call__(self, x):
        key = np.asarray(x, float).tobytes()
        if key not in self.cache:
            self.n_fev += 1
            xj = jnp.asarray(x, jnp.float64)
            if self.with_grad:
                (loss, (terms, p)), g = self.prob.value_and_grad(xj)
            else:
                (loss, (terms, p)), g = self.prob.loss_and_props(xj), None
            if len(self.cache) > 64:
                self.cache.clear()
            self.cache[key] = (float(loss), None if g is None else np.asarray(g, float), terms, p)
        return self.cache[key]


def encode_state(state):
    """An optimiser state as finite arrays: {"values": non-finite entries set to 0, "codes":
    int8, 1 +inf, 2 −inf, 3 NaN} (Optax's line search starts from an infinite value; the run
    store refuses to checkpoint non-finite numbers)."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    values, codes = [], []
    for leaf in leaves:
        a = np.asarray(leaf)
        c = np.zeros(a.shape, np.int8)
        if np.issubdtype(a.dtype, np.inexact):
            c = np.select([np.isposinf(a), np.isneginf(a), np.isnan(a)], [1, 2, 3], 0).astype(np.int8)
            a = np.where(c == 0, a, 0).astype(a.dtype)
        values.append(a)
        codes.append(c)
    return {"values": jax.tree_util.tree_unflatten(treedef, values),
            "codes": jax.tree_util.tree_unflatten(treedef, codes)}


def decode_state(encoded, like):
    """The inverse of :func:`encode_state`; dtypes and weak types of the pytree ``like``."""
    like_leaves, treedef = jax.tree_util.tree_flatten(like)
    out = []
    for lk, v, c in zip(like_leaves, jax.tree_util.tree_leaves(encoded["values"]),
                        jax.tree_util.tree_leaves(encoded["codes"])):
        a, c = np.asarray(v), np.asarray(c)
        if c.any():
            a = np.select([c == 1, c == 2, c == 3], [np.inf, -np.inf, np.nan], a).astype(a.dtype)
        out.append(jnp.full_like(lk, a) if getattr(lk, "weak_type", False) else jnp.asarray(a, dtype=lk.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


class StaticRegime(Regime):
    """The 0 K fit as a learning regime of ``train.Trainer`` (see the module docstring)."""

    def __init__(self, cfg, store):
        self.t_start = time.perf_counter()
        self.cfg, self.store = cfg, store
        self.name = optimizer_name(cfg)
        tc = cfg.trainer
        self.max_it = int(tc.get("updates", 100))
        self.gtol, self.ftol = float(tc.get("gtol", 1e-4)), float(tc.get("ftol", 1e-10))
        self.patience, self.xatol = int(tc.get("patience", 5)), float(tc.get("xatol", 1e-8))
        self.failure_hint = "lower optimizer.lr, or use optimizer=bfgs"
        self.prob = build_problem(cfg)
        self.ev = Evaluator(self.prob, with_grad=self.name != "nelder-mead")
        self.converged, self.message = False, ""
        self.it = self._good_it = 0       # iterations of the loop's parameters / of its last good ones
        self.n_fev0, self.t_offset, self.compile_s, self.t0 = 0, 0.0, float("nan"), None
        self._rows: dict[bytes, dict] = {}
        self._worker = None
        self._checked = False             # the loss at the first parameters of this process was finite
        if self.name in OPTAX_OPTIMIZERS:
            self._opt, self._update = self._optax()
        self._live = (None, None)         # (encoded Optax state, the same state as the optimiser made it)

    def _optax(self):
        oc = self.cfg.optimizer
        if self.name == "lbfgs":
            opt = optax.lbfgs(learning_rate=float(oc.get("lr", 1.0)), memory_size=int(oc.get("memory_size", 10)))
            return opt, jax.jit(lambda g, s, z, v: opt.update(g, s, z, value=v, grad=g,
                                                              value_fn=self.prob.loss_value))
        opt = optim.build(oc, self.max_it)
        return opt, lambda g, s, z, v: opt.update(g, s, z)

    # -- the loop's state ----------------------------------------------------------------
    def _params(self, x) -> dict:
        return {k: jnp.asarray(v) for k, v in self.prob.params_of(np.asarray(x)).items()}

    def init(self, key):
        log.info("static fit of %s with %s: the first iteration compiles the loss and its gradient "
                 "(relaxation, elastic tensor / force constants)", ", ".join(self.prob.x_names), self.name)
        x = np.ones(len(self.prob.x_names))
        opt_state = {"x": jnp.asarray(x), "it": jnp.asarray(0)}
        if self.name in OPTAX_OPTIMIZERS:
            state = self._opt.init(opt_state["x"])
            self._state0 = state
            opt_state.update({"state": encode_state(state), "prev": jnp.asarray(0.0), "flat": jnp.asarray(0)})
            self._live = (opt_state["state"], state)
        return self._params(x), opt_state

    @property
    def n_fev(self) -> int:
        return self.n_fev0 + self.ev.n_fev

    def checkpoint(self) -> tuple[dict, dict]:
        return {}, {"kind": "static", "optimizer": self.name, "converged": self.converged, "message": self.message,
                    "iterations": self.it, "n_fev": self.n_fev, "wall_s": time.perf_counter() - self.t_start,
                    "compile_s": self.compile_s, "fit_time_s": self._elapsed()}

    def templates(self, attrs: dict) -> dict:
        return {}

    def restore(self, trees: dict, attrs: dict) -> None:
        if "opt_state" not in trees:   # written by run_static, the static fit's own loop before the shared one
            raise UserError(f"{self.store.checkpoint_path} holds a static fit of an earlier difftre version "
                            "(no optimiser state); it cannot be resumed",
                            "start a new run (its fitted parameters as classical.params); difftre evaluate reads it")
        self.it = int(trees["opt_state"]["it"])
        self._good_it = int(trees["last_good_opt_state"]["it"]) if "last_good_opt_state" in trees else self.it
        self.converged, self.message = bool(attrs.get("converged", False)), str(attrs.get("message", ""))
        self.n_fev0, self.t_offset = int(attrs.get("n_fev", 0)), float(attrs.get("fit_time_s", 0.0))
        how = ("the Optax state restored exactly" if self.name in OPTAX_OPTIMIZERS else
               f"SciPy's {self.name} restarts from these parameters with a fresh state (it cannot be checkpointed)")
        log.info("static fit resumed at iteration %d: %s", self.it, how)

    def rejected(self) -> None:
        self.it = self._good_it
        self._close_worker()   # SciPy went on from parameters the loop has rolled back

    def close(self) -> None:
        self._close_worker()

    def _close_worker(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    # -- metrics rows --------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self.t_offset + (0.0 if self.t0 is None else time.perf_counter() - self.t0)

    def _row(self, x) -> dict:
        """The metrics columns of x (evaluated now if not cached; kept for its update)."""
        key = np.asarray(x, float).tobytes()
        if key in self._rows:
            return self._rows[key]
        first = self.t0 is None
        t = time.perf_counter()
        loss, g, terms, p = self.ev(x)
        if first:   # the first evaluation compiles the loss (and gradient)
            self.compile_s, self.t0 = time.perf_counter() - t, time.perf_counter()
        row = {"loss": float(loss)}
        for name in self.prob.targets:
            row[f"loss_{name}"] = float(terms[name])
        row["grad_norm"] = float(np.nan if g is None else np.linalg.norm(g))
        for k, v in self.prob.params_of(np.asarray(x)).items():
            row[f"param_{k}"] = v
        C = np.asarray(p["C_voigt"]) if "C_voigt" in p else np.full((6, 6), np.nan)
        row.update({"C11": float(C[0, 0]), "C12": float(C[0, 1]), "C44": float(C[3, 3]), "n_fev": self.n_fev,
                    "time": self._elapsed()})
        if len(self._rows) > 8:
            self._rows.clear()
        self._rows[key] = row
        return row

    # -- one update ----------------------------------------------------------------------
    def propose(self, params, opt_state, lr_scale: float) -> Proposal:
        x, it = np.asarray(opt_state["x"], float), int(opt_state["it"])
        row = self._row(x)
        log.info("iteration %d  loss %.6g  %s", it, row["loss"],
                 "  ".join(f"{k}={v:.6g}" for k, v in self.prob.params_of(x).items()))
        if not math.isfinite(row["loss"]):
            if not self._checked:
                where = "the start parameters" if it == 0 else f"the checkpointed parameters (iteration {it})"
                raise UserError(f"the loss is not finite at {where} {self.prob.params_of(x)}",
                                "check classical.params and the structure (system.lattice_constant)")
            return Proposal(params, opt_state, row, "non-finite loss", False)
        self._checked = True
        if self.name in SCIPY_OPTIMIZERS:
            return self._propose_scipy(params, opt_state, x, it, row)
        return self._propose_optax(params, opt_state, it, row, lr_scale)

    def _accepted(self, it_in: int, params, opt_state, row, done: str | None = None) -> Proposal:
        """A proposal the loop accepts, made from the parameters of iteration ``it_in``; ``done``:
        the fit has finished (the parameters stay)."""
        self._good_it, self.it = it_in, int(opt_state["it"])
        if done is not None:
            log.info("static fit finished after %d iterations: %s", it_in, done)
        return Proposal(params, opt_state, row, "", True, done)

    def _propose_scipy(self, params, opt_state, x, it, row) -> Proposal:
        w = self._worker
        if w is None or not w.at(x):   # the first update, or after a resume or a rollback
            self._close_worker()
            if it > 0:
                log.info("SciPy %s starts from the parameters of iteration %d with a fresh state", self.name, it)
            w = self._worker = SteppedMinimize(self._scipy(self.max_it - it), x)
        kind, value = w.advance()
        if kind == "done":
            self.converged, self.message = bool(value.success), str(value.message)
            if w.at(x):
                return self._accepted(it, params, opt_state, row, done=self.message)
            value = w.x   # SciPy's result is not its last iterate: one more update to get there
        self._row(value)  # its row now, as SciPy's callback saw it (loss evaluations so far)
        return self._accepted(it, self._params(value), {"x": jnp.asarray(value), "it": jnp.asarray(it + 1)}, row)

    def _scipy(self, maxiter: int):
        """``scipy.optimize.minimize(x0, callback)`` for this optimiser, at most ``maxiter`` iterations."""
        ev = self.ev

        def run(x0, callback):
            opts = {"maxiter": maxiter}
            if self.name == "nelder-mead":
                opts.update({"xatol": self.xatol, "fatol": self.ftol})
                return optimize.minimize(lambda z: ev(z)[0], x0, method="Nelder-Mead", callback=callback, options=opts)
            opts["gtol"] = self.gtol
            return optimize.minimize(lambda z: ev(z)[0], x0, jac=lambda z: ev(z)[1], method=SCIPY_OPTIMIZERS[self.name],
                                     callback=callback, options=opts)
        return run

    def _flat(self, opt_state, it: int, loss: float) -> int:
        """Iterations in a row whose loss changed by < trainer.ftol·max(1, loss), this one included."""
        if it == 0:
            return 0
        same = abs(float(opt_state["prev"]) - loss) < self.ftol * max(1.0, abs(loss))
        return int(opt_state["flat"]) + 1 if same else 0

    def _propose_optax(self, params, opt_state, it, row, lr_scale: float) -> Proposal:
        loss, g = row["loss"], self.ev(np.asarray(opt_state["x"], float))[1]
        flat = self._flat(opt_state, it, loss)
        if flat >= self.patience:
            self.converged, self.message = True, f"loss changed by < trainer.ftol for {self.patience} iterations"
            return self._accepted(it, params, opt_state, row, done=self.message)
        if np.linalg.norm(g) < self.gtol:
            self.converged, self.message = True, f"gradient norm below trainer.gtol={self.gtol}"
            return self._accepted(it, params, opt_state, row, done=self.message)
        enc, live = self._live
        state = live if opt_state["state"] is enc else decode_state(opt_state["state"], self._state0)
        xj = opt_state["x"]
        updates, state = self._update(jnp.asarray(g), state, xj, jnp.asarray(loss))
        if lr_scale != 1.0:   # after failures (the loop's rollback factor)
            updates = jax.tree_util.tree_map(lambda u: u * lr_scale, updates)
        x_new = optax.apply_updates(xj, updates)
        if not np.all(np.isfinite(np.asarray(x_new))):
            return Proposal(params, opt_state, row, "non-finite step", False)
        new = {"x": x_new, "it": jnp.asarray(it + 1), "state": encode_state(state), "prev": jnp.asarray(loss),
               "flat": jnp.asarray(flat)}
        self._live = (new["state"], state)
        return self._accepted(it, self._params(x_new), new, row)

    def final(self, params, opt_state) -> dict:
        """The row of the final parameters when the loop stops at trainer.updates updates; the
        optimiser's last convergence test at them (SciPy: its result)."""
        x, it = np.asarray(opt_state["x"], float), int(opt_state["it"])
        w = self._worker
        if w is not None and w.at(x) and it >= self.max_it:   # SciPy's maxiter: it returns now
            kind, value = w.advance()
            if kind == "done":
                self.converged, self.message = bool(value.success), str(value.message)
        row = self._row(x)
        if self.name in OPTAX_OPTIMIZERS and self._flat(opt_state, it, row["loss"]) >= self.patience:
            self.converged, self.message = True, f"loss changed by < trainer.ftol for {self.patience} iterations"
        if not self.message:
            self.message = f"reached trainer.updates={self.max_it} iterations"
        log.info("iteration %d  loss %.6g (final)", it, row["loss"])
        return row

    # -- the end -------------------------------------------------------------------------
    def result(self, params) -> dict:
        """Entries of ``train()``'s result: fitted parameters (floats) and how the fit ended."""
        return {"params": {k: float(v) for k, v in params.items()}, "iterations": self.it,
                "converged": self.converged, "message": self.message, "optimizer": self.name, "n_fev": self.n_fev,
                "wall_s": time.perf_counter() - self.t_start, "compile_s": self.compile_s}

    def summary(self, rows: list[dict], params) -> dict:
        """Rows of the loop's summary table."""
        last = rows[-1]
        out = {"optimiser": self.name, "iterations (loss evaluations)": f"{self.it} ({self.n_fev})",
               "converged": f"{self.converged} — {self.message}"}
        out.update({f"fitted {k}": f"{float(v):.8g}" for k, v in params.items()})
        out["C11 / C12 / C44 [GPa, Voigt]"] = f"{last['C11']:.4f} / {last['C12']:.4f} / {last['C44']:.4f}"
        out["final loss"] = f"{last['loss']:.6g}"
        out["wall time, s (compile)"] = f"{time.perf_counter() - self.t_start:.1f} ({self.compile_s:.1f})"
        return out
