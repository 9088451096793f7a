"""``trainer=static``: the problem of fitting a classical potential to zero-temperature
properties (no MD) — targets, config checks and the compiled loss.

Inner loop (differentiable end to end, one jit-compiled function of the learnable parameters):
relax the crystal (FIRE + implicit derivative), then the relaxed-ion elastic tensor and/or the
force constants (:mod:`difftre_cli.observables.elastic`). The loss is a weighted sum of
Frobenius distances to the targets. The optimisation variables are the learnable parameters
divided by their start values, x = θ/θ₀, so that one step size suits ε ≈ 2 eV and λ ≈ 21 alike;
every reported value is θ in metal units.

The outer loop is the shared training loop (``train.Trainer``) driving
:class:`learn.static_regime.StaticRegime`, one optimiser iteration per update.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from .. import units
from ..crystal import build_crystal, check_minimum_image
from ..errors import UserError
from ..observables import elastic
from ..observables.elastic import RelaxOptions, cubic_voigt
from ..potentials.classical import (
    ClassicalPotential,
    build_classical,
    fixed_neighbor_list,
)

OPTAX_OPTIMIZERS = ("adam", "sgd", "lbfgs")
SCIPY_OPTIMIZERS = {"bfgs": "BFGS", "cg": "CG", "nelder-mead": "Nelder-Mead"}
OPTIMIZERS = OPTAX_OPTIMIZERS + tuple(SCIPY_OPTIMIZERS)
TARGET_KINDS = ("elastic", "force_constants")


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


def optimizer_name(cfg) -> str:
    name = OmegaConf.select(cfg, "optimizer.kind")
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer.kind: unknown optimiser {name!r} for trainer=static",
                        f"use one of {list(OPTIMIZERS)} (optimizer=bfgs, optimizer=adam, ...)")
    return name


def validate_static(cfg) -> None:
    """Config checks for ``trainer.kind=static`` (jax-free; called by ``config.validate``)."""
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
    name = optimizer_name(cfg)
    if name in OPTAX_OPTIMIZERS:
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
class StaticProblem:
    """Everything the static fit needs, with jit-compiled property and loss functions of x = θ/θ₀.

    ``props(learn)`` → dict with C_voigt (GPa, relaxed-ion), C_mandel, stress (GPa, Voigt),
    energy per atom (eV), residual force (eV/Å), and H (eV/Å², (N,3,N,3)) when a target needs it.
    ``loss_and_props(x)`` → (loss, (per-target terms, props)); ``value_and_grad(x)`` → that and
    d loss/dx (forward mode); ``loss_value(x)``: the loss alone, reverse-differentiable with the
    forward-mode gradient (for Optax's line search). Built by :func:`build_problem`.
    """

    def __init__(self, potential, crystal, relax_opts, targets: dict):
        self.potential, self.crystal, self.relax_opts, self.targets = potential, crystal, relax_opts, targets
        self.need_fc = any(t.kind == "force_constants" for t in targets.values())
        self.need_elastic = any(t.kind == "elastic" for t in targets.values())
        self.x_names = tuple(potential.learnable)
        self.theta0 = np.array([potential.values[k] for k in self.x_names], float)
        props = _property_fn(potential, crystal, relax_opts, self.need_fc, self.need_elastic)
        self.target_values = self._target_values()
        self.props = jax.jit(props)
        self.loss_and_props = jax.jit(lambda x: self._loss_and_props(props, x))
        self.value_and_grad = jax.jit(lambda x: _value_and_grad(lambda z: self._loss_and_props(props, z), x))
        self.loss_value = _reverse_differentiable(lambda z: self._loss_and_props(props, z)[0],
                                                  lambda z: _value_and_grad(lambda y: self._loss_and_props(props, y), z))

    def learn_of(self, x):
        return {k: x[i] * self.theta0[i] for i, k in enumerate(self.x_names)}

    def params_of(self, x) -> dict:
        return {k: float(x[i] * self.theta0[i]) for i, k in enumerate(self.x_names)}

    def x_of(self, params: dict) -> np.ndarray:
        """x = θ/θ₀ of the learnable parameters ``params`` (config names → values)."""
        return np.array([float(params[k]) for k in self.x_names]) / self.theta0

    def _target_values(self) -> dict:
        """Target tensors; force-constant targets given as parameters: the same pipeline with those."""
        tvals = {}
        for name, t in self.targets.items():
            if t.kind == "force_constants" and t.from_params is not None:
                vals = dict(self.potential.values)
                vals.update(t.from_params)
                ref = ClassicalPotential(self.potential.kind, vals, ())
                f = _property_fn(ref, self.crystal, self.relax_opts, True, False)
                tvals[name] = jax.jit(f)({})["H"]
            else:
                tvals[name] = jnp.asarray(t.value)
        return tvals

    def _loss_and_props(self, props, x):
        p = props(self.learn_of(x))
        terms = {}
        for name, t in self.targets.items():
            if t.kind == "elastic":
                diff = p["C_voigt"] - self.target_values[name]
                if t.notation == "mandel":
                    diff = elastic.voigt_to_mandel(diff)
            else:
                diff = p["H"] - self.target_values[name]
            terms[name] = jnp.sqrt(jnp.sum(diff ** 2)) ** t.power
        loss = sum(self.targets[n].gamma * v for n, v in terms.items())
        return loss, (terms, p)


def _value_and_grad(loss_and_props, x):
    """((loss, aux), d loss/dx) in forward mode: one tangent per learnable parameter (a handful)
    through relaxation, Hessian and solve; compiles faster than reverse mode through the same graph."""
    def f(z):
        loss, aux = loss_and_props(z)
        return loss, (loss, aux)
    g, (loss, aux) = jax.jacfwd(f, has_aux=True)(x)
    return (loss, aux), g


def _reverse_differentiable(loss, value_and_grad):
    """The loss as a function that reverse mode (Optax's line search calls jax.value_and_grad)
    differentiates with the forward-mode gradient."""
    @jax.custom_vjp
    def loss_value(x):
        return loss(x)

    def loss_value_fwd(x):
        (value, _), g = value_and_grad(x)
        return value, g

    loss_value.defvjp(loss_value_fwd, lambda g, ct: (ct * g,))
    return loss_value


def use_neighbor_list(potential, crystal) -> bool:
    """A fixed neighbour list for supercells (more than the 8-atom conventional cell) of a
    potential whose list kernel allows it (SW with a fixed cutoff)."""
    return potential.neighbor_list_ok() and crystal.n_atoms > 8


def _property_fn(potential, crystal, relax_opts, need_fc: bool, need_elastic: bool = True):
    """A pure function learn-dict → properties (see :class:`StaticProblem`); the elastic tensor
    only when ``need_elastic``, the force constants only when ``need_fc``."""
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
    crystal = build_crystal(cfg.system)
    pot = build_classical(cfg.get("classical"))
    targets = build_targets(cfg.targets, pot, crystal.n_atoms)
    r = cfg.trainer.get("relax", {}) or {}
    relax_opts = RelaxOptions(cell=bool(r.get("cell", False)), max_steps=int(r.get("max_steps", 2000)),
                              force_tol=float(r.get("force_tol", 1e-6)))
    return StaticProblem(pot, crystal, relax_opts, targets)


def load_params(store, prob: StaticProblem):
    """Fitted parameters (config names → float), iterations, checkpoint attrs and metrics rows of
    a static run."""
    template = {k: jnp.asarray(v) for k, v in prob.potential.initial().items()}
    update, trees, attrs, rows = store.read_checkpoint({"params": template})
    return {k: float(v) for k, v in trees["params"].items()}, int(attrs.get("iterations", update)), attrs, rows
