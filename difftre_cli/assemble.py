"""Build every part of a run from a validated config: system, potential, observables,
targets, sampler, optimiser and learner. Used by ``train`` and ``evaluate`` alike."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import observables as observables_mod
from . import optim, potentials, targets as targets_mod
from .learn import TRAINERS
from .onebody import OneBodySampler, build_line_system, is_one_body_system
from .simulate import Sampler, sampler_config
from .system import System, build_system


@dataclass
class Components:
    system: System
    potential: Any
    observables: dict
    targets: dict
    sampler: Sampler
    optimizer: Any
    learner: Any
    ctx: observables_mod.Context
    ground_truth: Any


def build(cfg) -> Components:
    one_body = is_one_body_system(cfg.system)   # independent particles on a line (double well)
    system = build_line_system(cfg.system) if one_body else build_system(cfg.system)
    cutoff = float(cfg.model.get("cutoff", cfg.system.get("cutoff", 2.5)))
    potential = potentials.build(cfg.prior, cfg.model, cutoff)
    obs = observables_mod.build(cfg.observables)
    tgts = targets_mod.build(cfg.targets, obs, system.units)
    sampler = (OneBodySampler if one_body else Sampler)(potential, system, sampler_config(cfg.simulator))
    optimizer = optim.build(cfg.optimizer, int(cfg.trainer.updates))
    # one-body systems: every (snapshot, particle) is a state of one particle of its own (learn/difftre.py)
    ctx = observables_mod.Context(1 if one_body else system.n_particles, system.volume, system.kT)
    learner = TRAINERS[cfg.trainer.kind](potential, obs, tgts, ctx, optimizer, system.box_size, 1.0 / system.kT,
                                         precondition=cfg.trainer.get("precondition", "none"),
                                         fisher_damping=float(cfg.trainer.get("fisher_damping", 1e-3)))
    truth = potentials.ground_truth(cfg.get("ground_truth"), cutoff)
    return Components(system, potential, obs, tgts, sampler, optimizer, learner, ctx, truth)
