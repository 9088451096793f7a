"""Validation of a composed config before anything is compiled or written.

Every check raises :class:`UserError` naming the dotted key and the fix. Files named in the
config (targets) are opened and checked here too, so that a bad run fails in seconds.
"""
from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from .errors import UserError

GROUPS = ("system", "prior", "model", "simulator", "observables", "targets", "optimizer", "trainer")


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None)


def _number(cfg, key, *, integer=False, positive=True, allow_zero=False, required=True, example="1"):
    v = _get(cfg, key)
    if v is None:
        if required:
            raise UserError(f"{key} is missing", f"set {key}={example}")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        kind = "an integer" if integer else "a number"
        raise UserError(f"{key} must be {kind}, got {v!r}", f"set {key}={example}")
    if integer and not float(v).is_integer():
        raise UserError(f"{key} must be an integer, got {v!r}", f"set {key}={example}")
    if not math.isfinite(float(v)):
        raise UserError(f"{key} must be finite, got {v!r}", f"set {key}={example}")
    if positive and (v < 0 or (v == 0 and not allow_zero)):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"{key} must be {bound}, got {v!r}", f"set {key}={example}")
    return v


def validate(cfg: DictConfig) -> None:
    """Raise UserError for the first problem found in ``cfg``."""
    if _get(cfg, "trainer.kind") == "static":  # 0 K fits of classical potentials: own checks
        from .learn.static import validate_static
        return validate_static(cfg)
    for g in GROUPS:
        if _get(cfg, g) is None:
            raise UserError(f"config group {g!r} is missing", f"select one, e.g. {g}=<option>")
    if _get(cfg, "precision") not in ("single", "double"):
        raise UserError(f"precision must be single or double, got {_get(cfg, 'precision')!r}", "set precision=single")
    _number(cfg, "seed", integer=True, allow_zero=True, example="0")
    _number(cfg, "system.n_particles", integer=True, example="1000")
    n = int(_get(cfg, "system.n_particles"))
    if n < 2:
        raise UserError(f"system.n_particles must be at least 2, got {n}", "set system.n_particles=1000")
    if _get(cfg, "system.box_size") is not None:
        _number(cfg, "system.box_size", example="10.0")
    else:
        _number(cfg, "system.density", example="0.7")
    if _get(cfg, "system.kT") is None and _get(cfg, "system.temperature") is None:
        raise UserError("neither system.kT nor system.temperature is set", "set system.kT=1.0 (reduced) or system.temperature=300 (K)")
    if _get(cfg, "system.kT") is not None:
        _number(cfg, "system.kT", example="1.0")
    else:
        _number(cfg, "system.temperature", example="300")
    _number(cfg, "system.mass", example="1.0")
    for key, ex in [("simulator.dt", "0.005"), ("simulator.production_steps", "1000"), ("simulator.every", "10")]:
        _number(cfg, key, integer=key != "simulator.dt", example=ex)
    for key in ("simulator.equilibration_steps", "simulator.first_equilibration_steps"):
        _number(cfg, key, integer=True, allow_zero=True, example="1000")
    _number(cfg, "simulator.skin", allow_zero=True, example="0.3", required=False)
    if int(_get(cfg, "simulator.production_steps")) < int(_get(cfg, "simulator.every")):
        raise UserError("simulator.production_steps is smaller than simulator.every: no snapshot would be kept",
                        "raise simulator.production_steps or lower simulator.every")
    _number(cfg, "model.cutoff", example="2.5", required=False)
    _number(cfg, "optimizer.lr", example="0.003")
    _number(cfg, "trainer.updates", integer=True, example="300")
    ratio = _number(cfg, "trainer.reweight_ratio", allow_zero=True, example="0.9", required=False)
    if ratio is not None and ratio > 1:
        raise UserError(f"trainer.reweight_ratio must be in [0, 1], got {ratio}", "set trainer.reweight_ratio=0.9")
    _number(cfg, "trainer.checkpoint_every", integer=True, example="10", required=False)
    for key in ("evaluate.equilibration_steps",):
        _number(cfg, key, integer=True, allow_zero=True, example="5000", required=False)
    for key in ("evaluate.production_steps", "evaluate.every"):
        _number(cfg, key, integer=True, example="1000", required=False)
    from .learn import TRAINERS
    if _get(cfg, "trainer.kind") not in TRAINERS:
        raise UserError(f"trainer.kind: unknown trainer {_get(cfg, 'trainer.kind')!r}", f"use one of {sorted(TRAINERS)}")

    # Build the cheap, jax-free parts; this opens and checks every target file.
    from . import observables, optim, potentials, targets, units
    from .simulate import sampler_config
    from .system import build_system

    system = build_system(cfg.system)
    obs = observables.build(cfg.observables)
    targets.build(cfg.targets, obs, units.get(_get(cfg, "system.units") or "lj"))
    cutoff = float(_get(cfg, "model.cutoff") or 2.5)
    potentials.build(cfg.prior, cfg.model, cutoff)
    sampler_config(cfg.simulator)
    optim.build(cfg.optimizer, int(_get(cfg, "trainer.updates")))
    if cutoff >= 0.5 * system.box_size:
        raise UserError(f"model.cutoff={cutoff} is not below half the box ({0.5 * system.box_size:.3g})",
                        "use more particles (system.n_particles) or a smaller cutoff")
