"""Boltzmann inversion: the initial model of any trainer from the target RDF.

Boltzmann inversion, u(r) = −k_B T ln g_target(r) (exact for a dilute gas, the usual
first guess otherwise), initialises the model before any trainer (``trainer.init_from:
boltzmann_inversion``): the model parameters are the least-squares fit of
prior + model ≈ −k_B T ln g_target on the target's grid within the model's range where
g_target > g_min (a small second-difference penalty continues the model linearly into the
unresolved core). Spline and table models are linear in their parameters, so the fit is one
deterministic linear solve.
"""
from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..errors import UserError
from ..observables.rdf import RDF
from ..potentials.pair import SplinePair, TablePair
from ..store import CHECKPOINT_FILE, RunStore

log = logging.getLogger("difftre")

INIT_FROM = ("zeros", "boltzmann_inversion")
#: ``trainer.init_from=run:PATH``: the parameters of another run's last checkpoint
RUN_PREFIX = "run:"


def check_init_from(init_from) -> None:
    """``trainer.init_from``: None, one of :data:`INIT_FROM`, or ``run:PATH`` of a run directory
    with a checkpoint (UserError otherwise). Cheap: no JAX, no model."""
    if init_from is None or init_from in INIT_FROM:
        return
    if isinstance(init_from, str) and init_from.startswith(RUN_PREFIX):
        path = Path(init_from[len(RUN_PREFIX):]).expanduser()
        if not (path / CHECKPOINT_FILE).is_file():
            raise UserError(f"trainer.init_from={init_from}: no checkpoint {path / CHECKPOINT_FILE}",
                            "give the directory of a run that has written a checkpoint (trainer.init_from=run:PATH)")
        return
    raise UserError(f"trainer.init_from: unknown {init_from!r}",
                    f"use one of {list(INIT_FROM)} or run:PATH (another run's parameters)")


def params_of_run(path, template):
    """The parameters of the last checkpoint of the run in ``path``, shaped like ``template``."""
    try:
        _, trees, _, _ = RunStore(Path(path).expanduser()).read_checkpoint({"params": template})
        return trees["params"]
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"trainer.init_from=run:{path}: its parameters do not fit this model ({exc})",
                        "start from a run with the same model and prior groups (and keys)") from None


def rdf_target(c, pair: tuple | None = None):
    """(target, observable) of the first target on an RDF observable — for ``pair`` (a, b), on
    the partial RDF of that species pair (either order) — or a UserError."""
    for t in c.targets.values():
        obs = c.observables[t.observable]
        if isinstance(obs, RDF) and (pair is None or obs.pair in (tuple(pair), tuple(pair)[::-1])):
            return t, obs
    if pair is not None:
        a, b = pair
        raise UserError(f"this trainer needs a target on the partial RDF of the pair {a}-{b} (an observable of "
                        f"kind rdf with pair: [{a}, {b}])", "use observables=rdf_partial with one target per pair")
    raise UserError("this trainer needs an RDF target (targets.<name> on an observable of kind rdf)",
                    "select e.g. observables=rdf targets=lj_rdf")


def _core_filled(values, valid):
    """``values`` with every entry before the first ``valid`` one replaced by that entry."""
    first = jnp.argmax(valid)
    return jnp.where(jnp.arange(values.shape[0]) < first, values[first], values)


def boltzmann_inversion(c, params, g_min: float = 1e-3, smoothness: float = 1e-4):
    """Model parameters with prior + model ≈ −k_B T ln g_target: least squares on the target's
    grid points in [model r_min, cutoff) where g_target > ``g_min``, plus ``smoothness`` × the
    squared second differences of the knot values (which continues the model linearly into
    the unresolved core)."""
    model = c.potential.model
    if not isinstance(model, (SplinePair, TablePair)):
        raise UserError("trainer.init_from=boltzmann_inversion needs a model linear in its parameters",
                        "use model=spline or model=table (or trainer.init_from=zeros)")
    pot = c.potential
    terms = pot.pair_terms()
    if terms[0].key is not None:   # mixture: each pair's model from its own partial RDF
        fitted = {}
        for t in terms:
            target, obs = rdf_target(c, t.species)
            fitted[t.key] = _fit(model, t.prior, pot.cutoff, target, obs, float(c.system.kT),
                                 params["model"][t.key], g_min, smoothness)
        return {**params, "model": fitted}
    target, obs = rdf_target(c)
    return {**params, "model": _fit(model, terms[0].prior, pot.cutoff, target, obs, float(c.system.kT),
                                    params["model"], g_min, smoothness)}


def _fit(model, prior, cutoff, target, obs, kT, model_params, g_min, smoothness):
    """Least-squares parameters of ``model`` with prior + model ≈ −kT ln g_target (see above)."""
    r = np.asarray(obs.grid, np.float64)
    g = np.asarray(target.value, np.float64)
    valid = g > g_min
    if not valid.any():
        raise UserError(f"targets.{target.name}: the target RDF never exceeds {g_min}",
                        "check the target file")
    sel = valid & (r >= model.r_min) & (r < cutoff)
    residual = -kT * np.log(g[sel]) - np.asarray(prior(jnp.asarray(r[sel])), np.float64)
    flat, unravel = ravel_pytree(model_params)
    rs = jnp.asarray(r[sel], flat.dtype)
    jac = np.asarray(jax.jacfwd(lambda th: model(unravel(th), rs))(flat), np.float64)
    offset = np.asarray(model(unravel(jnp.zeros_like(flat)), rs), np.float64)
    # Knots in the unresolved core (g_target <= g_min) have no data: a small penalty on the
    # second differences of the knot values continues the model linearly there.
    d2 = np.diff(np.eye(flat.size), 2, axis=0)
    a = np.concatenate([jac, np.sqrt(smoothness) * d2])
    b = np.concatenate([residual - offset, np.zeros(d2.shape[0])])
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    log.info("Boltzmann inversion: model fitted to -kT ln g_target (%s) on %d grid points", target.name,
             int(sel.sum()))
    return unravel(jnp.asarray(sol, flat.dtype))


def initial_params(c, key, init_from: str | None = None):
    """The run's initial parameters: the model's own initialisation (``zeros``), a Boltzmann
    inversion of the RDF target, or another run's (``run:PATH``: warm start, fine-tuning)."""
    params = c.potential.init(key)
    init_from = init_from or "zeros"
    check_init_from(init_from)
    if init_from.startswith(RUN_PREFIX):
        return params_of_run(init_from[len(RUN_PREFIX):], params)
    if init_from == "boltzmann_inversion":
        params = boltzmann_inversion(c, params)
    return params
