"""``trainer=static``: fit a classical potential to zero-temperature properties (no MD).

Inner loop (differentiable end to end, one jit-compiled function of the learnable parameters):
relax the crystal (FIRE + implicit derivative), then the relaxed-ion elastic tensor and/or the
force constants (:mod:`difftre_cli.observables.elastic`). Outer loop: a weighted sum of
Frobenius distances to the targets, minimised by Optax (Adam, SGD, L-BFGS) or SciPy (BFGS, CG
with JAX gradients; Nelder–Mead without). The optimisation variables are the learnable
parameters divided by their start values, x = θ/θ₀, so that one step size suits ε ≈ 2 eV and
λ ≈ 21 alike; every reported value is θ in metal units.

Each iteration writes a metrics row (loss, per-target loss, gradient norm, parameters, C11,
C12, C44 in GPa, Voigt); checkpoints hold the learnable parameters as the ``params`` pytree of
the usual HDF5 run store. ``resume=PATH`` continues from the last checkpointed parameters with a
fresh optimiser state (BFGS curvature and Adam moments are rebuilt; a fit takes seconds).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from ..errors import UserError
from ..store import RunStore, versions

log = logging.getLogger("difftre")

OPTAX_OPTIMIZERS = ("adam", "sgd", "lbfgs")
SCIPY_OPTIMIZERS = {"bfgs": "BFGS", "cg": "CG", "nelder-mead": "Nelder-Mead"}
OPTIMIZERS = OPTAX_OPTIMIZERS + tuple(SCIPY_OPTIMIZERS)
TARGET_KINDS = ("elastic", "force_constants")


class StaticFit:
    """Registry entry for ``trainer.kind=static`` (see :func:`run_static`); the MD assembly
    (``assemble.build``) is not used by this trainer."""

    def __init__(self, *args, **kwargs):
        raise UserError("trainer.kind=static has no MD learner", "run it through `difftre train` (run_static)")


# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StaticTarget:
    name: str
    kind: str                   # elastic | force_constants
    gamma: float                # weight in the loss
    power: float                # loss term = gamma * ||Δ||_F ** power
    notation: str               # elastic: mandel | voigt (6×6 form whose Frobenius distance is taken)
    value: np.ndarray | None    # elastic: 6×6 Voigt in GPa; force constants: (N,3,N,3) eV/Å² (None: from_params)
    from_params: dict | None    # force constants of the same potential with these parameters
    source: str


def _num(v, key, example, positive=True, allow_zero=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise UserError(f"{key} must be a number, got {v!r}", f"set {key}={example}")
    if positive and (v < 0 or (v == 0 and not allow_zero)):
        raise UserError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {v!r}", f"set {key}={example}")
    return float(v)


def build_targets(cfg_targets, potential, n_atoms: int) -> dict[str, StaticTarget]:
    from .. import units
    from ..observables.elastic import cubic_voigt
    if not cfg_targets:
        raise UserError("no targets: trainer=static needs at least one", "select targets=si_dft_elastic")
    out = {}
    for name, t in cfg_targets.items():
        key = f"targets.{name}"
        kind = t.get("kind")
        if kind not in TARGET_KINDS:
            raise UserError(f"{key}.kind: unknown static target kind {kind!r}",
                            f"use one of {list(TARGET_KINDS)} (MD targets need trainer=difftre)")
        gamma = _num(t.get("gamma", 1.0), f"{key}.gamma", "1.0", allow_zero=True)
        power = _num(t.get("power", 1.0), f"{key}.power", "1")
        notation = t.get("notation", "mandel")
        if notation not in ("mandel", "voigt"):
            raise UserError(f"{key}.notation must be mandel or voigt, got {notation!r}", f"set {key}.notation=mandel")
        value, from_params = None, None
        if kind == "elastic":
            f = units.modulus_factor(t.get("unit", "GPa")) * units.GPA_PER_EV_A3   # → GPa
            if t.get("cubic") is not None:
                c = dict(t.cubic)
                missing = {"C11", "C12", "C44"} - set(c)
                if missing:
                    raise UserError(f"{key}.cubic lacks {sorted(missing)}", f"give {key}.cubic={{C11: ..., C12: ..., C44: ...}}")
                value = cubic_voigt(*(_num(c[k], f"{key}.cubic.{k}", "150", positive=False) * f for k in ("C11", "C12", "C44")))
            elif t.get("matrix") is not None:
                value = np.asarray(OmegaConf.to_container(t.matrix), float) * f
                if value.shape != (6, 6) or not np.allclose(value, value.T):
                    raise UserError(f"{key}.matrix must be a symmetric 6×6 Voigt matrix", "give 6 rows of 6 numbers")
            else:
                raise UserError(f"{key}: an elastic target needs cubic: {{C11, C12, C44}} or matrix: (6×6, Voigt)",
                                f"set {key}.cubic")
        else:
            if t.get("from_params") is not None:
                from_params = {k: _num(v, f"{key}.from_params.{k}", "2.0", positive=False) for k, v in t.from_params.items()}
                bad = [k for k in from_params if k not in potential.values]
                if bad:
                    raise UserError(f"{key}.from_params: {potential.kind} has no parameter(s) {bad}",
                                    f"use names from {', '.join(potential.values)}")
            elif t.get("file") is not None:
                path = Path(str(t.file)).expanduser()
                if not path.is_file():
                    raise UserError(f"{key}.file: {path} does not exist", "give a .npy file of shape (N, 3, N, 3)")
                unit = t.get("unit", "eV/angstrom^2")
                if unit not in ("eV/angstrom^2", "eV/A^2"):
                    raise UserError(f"{key}.unit: force constants must be in eV/angstrom^2, got {unit!r}",
                                    f"convert the file and set {key}.unit=eV/angstrom^2")
                value = np.load(path)
                if value.shape != (n_atoms, 3, n_atoms, 3):
                    raise UserError(f"{key}.file has shape {value.shape}, expected {(n_atoms, 3, n_atoms, 3)}",
                                    "compute it on the same supercell (system.replicate)")
            else:
                raise UserError(f"{key}: a force_constants target needs from_params: {{...}} or file: PATH.npy",
                                f"set {key}.from_params")
        out[name] = StaticTarget(name, kind, gamma, power, notation, value, from_params, str(t.get("source", "")))
    return out


def _optimizer_name(cfg) -> str:
    name = OmegaConf.select(cfg, "optimizer.kind")
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer.kind: unknown optimiser {name!r} for trainer=static",
                        f"use one of {list(OPTIMIZERS)} (optimizer=bfgs, optimizer=adam, ...)")
    return name


def validate_static(cfg) -> None:
    """Config checks for ``trainer.kind=static`` (jax-free; called by ``config.validate``)."""
    from ..crystal import build_crystal, check_minimum_image
    from ..potentials.classical import build_classical
    sel = lambda k: OmegaConf.select(cfg, k, default=None)  # noqa: E731
    for g in ("system", "classical", "targets", "optimizer", "trainer"):
        if sel(g) is None:
            raise UserError(f"config group {g!r} is missing for trainer=static", f"select one, e.g. {g}=<option>")
    if sel("precision") != "double":
        raise UserError("trainer=static needs precision=double (second derivatives of the energy lose "
                        "digits in float32)", "set precision=double")
    if sel("system.units") != "metal":
        raise UserError(f"system.units must be metal for trainer=static, got {sel('system.units')!r}",
                        "use system=si_diamond (Å, eV, GPa)")
    _num(sel("seed"), "seed", "0", allow_zero=True)
    crystal = build_crystal(cfg.system)
    pot = build_classical(sel("classical"))
    check_minimum_image(crystal.frac, crystal.cell, float(pot.cutoff()))
    build_targets(sel("targets"), pot, crystal.n_atoms)
    name = _optimizer_name(cfg)
    if name in ("adam", "sgd", "lbfgs"):
        _num(sel("optimizer.lr"), "optimizer.lr", "0.02")
    for key, ex, integer in (("trainer.updates", "100", True), ("trainer.checkpoint_every", "10", True),
                             ("trainer.patience", "5", True), ("trainer.relax.max_steps", "2000", True),
                             ("trainer.relax.force_tol", "1e-6", False), ("trainer.gtol", "1e-6", False),
                             ("trainer.ftol", "1e-10", False)):
        v = sel(key)
        if v is None:
            continue
        _num(v, key, ex, allow_zero=key in ("trainer.gtol", "trainer.ftol"))
        if integer and not float(v).is_integer():
            raise UserError(f"{key} must be an integer, got {v!r}", f"set {key}={ex}")
    if name == "adam" and sel("optimizer.schedule") not in (None, "constant", "exponential"):
        raise UserError(f"optimizer.schedule: unknown {sel('optimizer.schedule')!r}", "use constant or exponential")
    land = sel("evaluate.landscape.params")
    if land is not None:
        land = list(land)
        if len(land) != 2 or any(p not in pot.learnable for p in land):
            raise UserError(f"evaluate.landscape.params must name two learnable parameters, got {land}",
                            f"choose two of {list(pot.learnable)}")


# ------------------------------------------------------------------------------------------
@dataclass
class StaticProblem:
    """Everything the static fit needs, with jit-compiled property and loss functions.

    ``props(learn)`` → dict with C_voigt (GPa, relaxed-ion), C_mandel, stress (GPa, Voigt),
    energy per atom (eV), residual force (eV/Å), and H (eV/Å², (N,3,N,3)) when a target needs it.
    """

    potential: object
    crystal: object
    relax_opts: object
    targets: dict
    need_fc: bool
    need_elastic: bool
    x_names: tuple
    theta0: np.ndarray
    _fns: dict = field(default_factory=dict)

    def learn_of(self, x):
        return {k: x[i] * self.theta0[i] for i, k in enumerate(self.x_names)}

    def params_of(self, x) -> dict:
        return {k: float(x[i] * self.theta0[i]) for i, k in enumerate(self.x_names)}


def use_neighbor_list(potential, crystal) -> bool:
    """A fixed neighbour list for supercells (more than the 8-atom conventional cell) of a
    potential whose list kernel allows it (SW with a fixed cutoff)."""
    return potential.neighbor_list_ok() and crystal.n_atoms > 8


def _property_fn(potential, crystal, relax_opts, need_fc: bool, need_elastic: bool = True):
    """A pure function learn-dict → properties (see :class:`StaticProblem`); the elastic tensor
    only when ``need_elastic``, the force constants only when ``need_fc``."""
    import jax.numpy as jnp

    from .. import units
    from ..observables import elastic
    from ..potentials.classical import fixed_neighbor_list
    frac0 = jnp.asarray(crystal.frac)
    cell0 = jnp.asarray(crystal.cell)
    # supercells: a neighbour list fixed at the reference structure (N·K² triplets instead of N³);
    # the conventional cell keeps JAX MD's all-pairs kernels
    nbrs = fixed_neighbor_list(potential, frac0, cell0) if use_neighbor_list(potential, crystal) else None

    def energy_of_box(learn, frac, box):
        return elastic.periodic_energy(lambda d: potential.energy_fn(d, learn, nbrs), cell0)(frac, box=box)

    def props(learn):
        frac, box, residual = elastic.relax(energy_of_box, frac0, cell0, relax_opts, learn)
        e_fn = elastic.periodic_energy(lambda d: potential.energy_fn(d, learn, nbrs), box)
        out = {"stress": elastic.stress_voigt(e_fn, frac, box) * units.GPA_PER_EV_A3,
               "energy_per_atom": e_fn(frac) / frac.shape[0], "residual_force": residual, "box": box, "frac": frac}
        if need_elastic:
            C = elastic.relaxed_voigt(e_fn, frac, box, with_force_constants=need_fc)
            if need_fc:
                C, out["H"] = C
            Cv = C * units.GPA_PER_EV_A3
            out.update({"C_voigt": Cv, "C_mandel": elastic.voigt_to_mandel(Cv)})
        elif need_fc:
            out["H"] = elastic.force_constants(e_fn, frac, box)
        return out
    return props


def build_problem(cfg) -> StaticProblem:
    from ..crystal import build_crystal
    from ..observables.elastic import RelaxOptions
    from ..potentials.classical import build_classical
    crystal = build_crystal(cfg.system)
    pot = build_classical(cfg.get("classical"))
    targets = build_targets(cfg.targets, pot, crystal.n_atoms)
    r = cfg.trainer.get("relax", {}) or {}
    relax_opts = RelaxOptions(cell=bool(r.get("cell", False)), max_steps=int(r.get("max_steps", 2000)),
                              force_tol=float(r.get("force_tol", 1e-6)))
    need_fc = any(t.kind == "force_constants" for t in targets.values())
    theta0 = np.array([pot.values[k] for k in pot.learnable], float)
    need_elastic = any(t.kind == "elastic" for t in targets.values())
    prob = StaticProblem(pot, crystal, relax_opts, targets, need_fc, need_elastic, pot.learnable, theta0)
    _compile(prob)
    return prob


def _compile(prob: StaticProblem) -> None:
    import jax
    import jax.numpy as jnp

    from ..potentials.classical import ClassicalPotential
    props = _property_fn(prob.potential, prob.crystal, prob.relax_opts, prob.need_fc, prob.need_elastic)
    # force-constant targets given as parameters: the same pipeline with those parameters
    tvals = {}
    for name, t in prob.targets.items():
        if t.kind == "force_constants":
            if t.from_params is not None:
                vals = dict(prob.potential.values)
                vals.update(t.from_params)
                ref = ClassicalPotential(prob.potential.kind, vals, ())
                f = _property_fn(ref, prob.crystal, prob.relax_opts, True, False)
                tvals[name] = jax.jit(f)({})["H"]
            else:
                tvals[name] = jnp.asarray(t.value)
        else:
            tvals[name] = jnp.asarray(t.value)

    def loss_and_props(x):
        p = props(prob.learn_of(x))
        terms = {}
        for name, t in prob.targets.items():
            if t.kind == "elastic":
                diff = p["C_voigt"] - tvals[name]
                if t.notation == "mandel":
                    from ..observables.elastic import voigt_to_mandel
                    diff = voigt_to_mandel(diff)
            else:
                diff = p["H"] - tvals[name]
            terms[name] = jnp.sqrt(jnp.sum(diff ** 2)) ** t.power
        loss = sum(prob.targets[n].gamma * v for n, v in terms.items())
        return loss, (terms, p)

    def value_and_grad(x):
        # forward mode: one tangent per learnable parameter (a handful) through relaxation,
        # Hessian and solve; compiles faster than reverse mode through the same graph.
        def f(z):
            loss, aux = loss_and_props(z)
            return loss, (loss, aux)
        g, (loss, aux) = jax.jacfwd(f, has_aux=True)(x)
        return (loss, aux), g

    # the loss as a function that reverse mode (Optax's line search calls jax.value_and_grad)
    # differentiates with the forward-mode gradient above
    @jax.custom_vjp
    def loss_value(x):
        return loss_and_props(x)[0]

    def loss_value_fwd(x):
        (loss, _), g = value_and_grad(x)
        return loss, g

    loss_value.defvjp(loss_value_fwd, lambda g, ct: (ct * g,))

    prob._fns["loss_value"] = loss_value
    prob._fns["props"] = jax.jit(lambda learn: props(learn))
    prob._fns["loss"] = jax.jit(loss_and_props)
    prob._fns["value_and_grad"] = jax.jit(value_and_grad)
    prob._fns["targets"] = tvals


# ------------------------------------------------------------------------------------------
def _row(prob: StaticProblem, it: int, x, loss, terms, p, gnorm, n_fev: int, t0: float, event="ok") -> dict:
    row = {"update": it, "loss": float(loss)}
    for name in prob.targets:
        row[f"loss_{name}"] = float(terms[name])
    row["grad_norm"] = float(gnorm)
    for k, v in prob.params_of(np.asarray(x)).items():
        row[f"param_{k}"] = v
    C = np.asarray(p["C_voigt"]) if "C_voigt" in p else np.full((6, 6), np.nan)
    row.update({"C11": float(C[0, 0]), "C12": float(C[0, 1]), "C44": float(C[3, 3]), "n_fev": int(n_fev),
                "time": time.perf_counter() - t0, "event": event})
    return row


class _StopRequested(Exception):
    """Raised from the iteration callback when a stop signal arrived (leaves SciPy's loop)."""


class _Evaluator:
    """Loss (and gradient) of x = θ/θ₀ with a small cache, for SciPy's fun/jac/callback."""

    def __init__(self, prob: StaticProblem, with_grad: bool):
        self.prob, self.with_grad, self.cache, self.n_fev = prob, with_grad, {}, 0

    def __call__(self, x):
        import jax.numpy as jnp
        key = np.asarray(x, float).tobytes()
        if key not in self.cache:
            self.n_fev += 1
            xj = jnp.asarray(x, jnp.float64)
            if self.with_grad:
                (loss, (terms, p)), g = self.prob._fns["value_and_grad"](xj)
            else:
                (loss, (terms, p)), g = self.prob._fns["loss"](xj), None
            if len(self.cache) > 64:
                self.cache.clear()
            self.cache[key] = (float(loss), None if g is None else np.asarray(g, float), terms, p)
        return self.cache[key]


def _checkpoint(store, prob, cfg, x, it, rows, attrs):
    import jax.numpy as jnp

    params = {k: jnp.asarray(v) for k, v in prob.params_of(np.asarray(x)).items()}
    store.write_checkpoint(update=it, trees={"params": params}, attrs={"kind": "static", **attrs}, metrics=rows,
                           n_trajectories=0, config_yaml=OmegaConf.to_yaml(cfg), versions=versions())


def load_params(store, prob: StaticProblem):
    """Fitted parameters (config names → float), checkpoint attrs and metrics rows of a static run."""
    import jax.numpy as jnp
    template = {k: jnp.asarray(v) for k, v in prob.potential.initial().items()}
    update, trees, attrs, rows = store.read_checkpoint({"params": template})
    return {k: float(v) for k, v in trees["params"].items()}, update, attrs, rows


def _resume(store, prob: StaticProblem, name: str, max_it: int):
    """(x, iteration, metrics rows, the result if the checkpointed fit had finished, else None)."""
    if not store.has_checkpoint():
        raise UserError(f"resume: no checkpoint {store.checkpoint_path}", "point resume= at a run directory that holds difftre.h5")
    params, start, attrs, rows = load_params(store, prob)
    x = np.array([params[k] for k in prob.x_names]) / prob.theta0
    rows = rows[: start + 1]
    log.info("resumed static fit at iteration %d (fresh %s state)", start, name)
    finished = None
    if attrs.get("converged", False) or start >= max_it:
        log.info("the checkpointed fit has already finished: nothing to do")
        store.rewrite_metrics_csv(rows)
        finished = {"rows": rows, "params": params, "iterations": start, "converged": bool(attrs.get("converged")),
                    "optimizer": name, "message": "already finished", "wall_s": 0.0}
    return x, start, rows, finished


def run_static(cfg, run_dir, resume: bool = False, quiet: bool | None = None, stop=None) -> dict:
    """The outer loop of ``trainer=static``; returns rows, fitted parameters and a summary."""
    validate_static(cfg)
    t_start = time.perf_counter()
    store = RunStore(run_dir)
    prob = build_problem(cfg)
    name = _optimizer_name(cfg)
    tc = cfg.trainer
    max_it = int(tc.get("updates", 100))
    every = int(tc.get("checkpoint_every", 10))

    x = np.ones(len(prob.x_names))
    start, rows = 0, []
    if resume:
        x, start, rows, finished = _resume(store, prob, name, max_it)
        if finished is not None:
            return finished
    store.rewrite_metrics_csv(rows)

    ev = _Evaluator(prob, with_grad=name != "nelder-mead")
    t_compile = time.perf_counter()
    loss, g, terms, p = ev(x)
    compile_s = time.perf_counter() - t_compile
    t0 = time.perf_counter() - (rows[-1]["time"] if rows else 0.0)
    if not rows:
        rows.append(_row(prob, 0, x, loss, terms, p, np.nan if g is None else np.linalg.norm(g), ev.n_fev, t0, "start"))
        store.append_metrics_csv(rows[-1])
    state = {"it": start, "x": x, "converged": False, "message": ""}

    def record(xk):
        loss, g, terms, p = ev(xk)
        state["it"] += 1
        state["x"] = np.array(xk, float)
        rows.append(_row(prob, state["it"], xk, loss, terms, p, np.nan if g is None else np.linalg.norm(g), ev.n_fev, t0))
        store.append_metrics_csv(rows[-1])
        if not quiet:
            log.info("iteration %d  loss %.6g  %s", state["it"], loss,
                     "  ".join(f"{k}={v:.6g}" for k, v in prob.params_of(np.asarray(xk)).items()))
        if state["it"] % every == 0:
            _checkpoint(store, prob, cfg, xk, state["it"], rows, {"optimizer": name, "converged": False})
        if stop.requested:          # SIGTERM / SIGINT: leave the optimiser, checkpoint, stop
            raise _StopRequested
        return loss, g

    if not np.isfinite(loss):
        raise UserError(f"the loss is not finite at the start parameters {prob.params_of(x)}",
                        "check classical.params and the structure (system.lattice_constant)")
    import contextlib

    from ..interrupt import GracefulStop
    # the CLI already turned SIGTERM/SIGINT into stop requests (even during compilation): reuse them
    guard = contextlib.nullcontext(stop) if stop is not None else GracefulStop()
    stop = guard.enter_result if stop is not None else guard
    try:
        with guard:
            remaining = max_it - start
            if name in SCIPY_OPTIMIZERS:
                _minimize_scipy(name, ev, record, x, remaining, tc, state)
            else:
                _minimize_optax(name, prob, ev, record, x, remaining, cfg, state)
    except _StopRequested:
        _checkpoint(store, prob, cfg, state["x"], state["it"], rows,
                    {"optimizer": name, "converged": False, "message": "stopped by a signal"})
        stop.finish(run_dir, state["it"])
    wall = time.perf_counter() - t_start
    _checkpoint(store, prob, cfg, state["x"], state["it"], rows,
                {"optimizer": name, "converged": state["converged"], "message": state["message"],
                 "n_fev": ev.n_fev, "wall_s": wall, "compile_s": compile_s})
    params = prob.params_of(state["x"])
    out = {"rows": rows, "params": params, "iterations": state["it"], "converged": state["converged"],
           "message": state["message"], "optimizer": name, "wall_s": wall, "compile_s": compile_s, "n_fev": ev.n_fev}
    if not quiet:
        _summary(out, rows[-1], run_dir)
    return out


def _minimize_scipy(name, ev, record, x, remaining: int, tc, state: dict) -> None:
    """SciPy's minimiser ``name`` from ``x``; ``record`` is called per iteration (and stops it)."""
    from scipy.optimize import minimize   # SciPy: only the SciPy optimisers need it

    def callback(intermediate_result):
        record(intermediate_result.x)
    opts = {"maxiter": remaining}
    if name == "nelder-mead":
        opts.update({"xatol": float(tc.get("xatol", 1e-8)), "fatol": float(tc.get("ftol", 1e-10))})
        res = minimize(lambda z: ev(z)[0], x, method="Nelder-Mead", callback=callback, options=opts)
    else:
        opts["gtol"] = float(tc.get("gtol", 1e-4))
        res = minimize(lambda z: ev(z)[0], x, jac=lambda z: ev(z)[1], method=SCIPY_OPTIMIZERS[name],
                       callback=callback, options=opts)
    state["converged"] = bool(res.success)
    state["message"] = str(res.message)
    if not np.array_equal(np.asarray(res.x, float), state["x"]):   # final point not reported by the callback
        record(res.x)


def _minimize_optax(name, prob, ev, record, x, remaining: int, cfg, state: dict) -> None:
    """Optax's L-BFGS (one compiled update, line search included) or a first-order optimiser
    (optimizer group) from ``x``, until the gradient norm is below ``trainer.gtol``, the loss is
    flat for ``trainer.patience`` iterations, or ``remaining`` iterations are done."""
    import jax
    import jax.numpy as jnp
    import optax

    from .. import optim
    tc = cfg.trainer
    gtol, ftol, patience = float(tc.get("gtol", 1e-4)), float(tc.get("ftol", 1e-10)), int(tc.get("patience", 5))
    if name == "lbfgs":
        opt = optax.lbfgs(learning_rate=float(cfg.optimizer.get("lr", 1.0)),
                          memory_size=int(cfg.optimizer.get("memory_size", 10)))
        lbfgs_update = jax.jit(lambda g, s, z, v: opt.update(g, s, z, value=v, grad=g,
                                                             value_fn=prob._fns["loss_value"]))
    else:
        opt = optim.build(cfg.optimizer, int(tc.get("updates", 100)))
    xj = jnp.asarray(x)
    opt_state = opt.init(xj)
    prev, flat = float(ev(x)[0]), 0
    for _ in range(remaining):
        lval, gval, _, _ = ev(np.asarray(xj))
        if np.linalg.norm(gval) < gtol:
            state["converged"], state["message"] = True, f"gradient norm below trainer.gtol={gtol}"
            return
        if name == "lbfgs":
            updates, opt_state = lbfgs_update(jnp.asarray(gval), opt_state, xj, jnp.asarray(lval))
        else:
            updates, opt_state = opt.update(jnp.asarray(gval), opt_state, xj)
        xj = optax.apply_updates(xj, updates)
        new, _ = record(np.asarray(xj))
        if not np.isfinite(new):
            raise UserError(f"the loss became non-finite at iteration {state['it']}",
                            "lower optimizer.lr or use optimizer=bfgs")
        flat = flat + 1 if abs(prev - new) < ftol * max(1.0, abs(new)) else 0
        prev = new
        if flat >= patience:
            state["converged"], state["message"] = True, f"loss changed by < trainer.ftol for {patience} iterations"
            return
    state["message"] = f"reached trainer.updates={int(tc.get('updates', 100))} iterations"


def _summary(out, last, run_dir) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"difftre static fit — {run_dir}")
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_row("optimiser", out["optimizer"])
    t.add_row("iterations (loss evaluations)", f"{out['iterations']} ({out['n_fev']})")
    t.add_row("converged", f"{out['converged']} — {out['message']}")
    for k, v in out["params"].items():
        t.add_row(f"fitted {k}", f"{v:.8g}")
    t.add_row("C11 / C12 / C44 [GPa, Voigt]", f"{last['C11']:.4f} / {last['C12']:.4f} / {last['C44']:.4f}")
    t.add_row("final loss", f"{last['loss']:.6g}")
    t.add_row("wall time, s (compile)", f"{out['wall_s']:.1f} ({out['compile_s']:.1f})")
    Console().print(t)
