"""Build every part of a run from a validated config: system, potential, observables,
targets, sampler, optimiser, the observable engine and the DiffTRe learner on it. Used by
``train`` and ``evaluate`` alike."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import molecule_setup, optim, potentials
from . import observables as observables_mod
from . import targets as targets_mod
from .errors import UserError
from .learn import step_rule
from .learn.registry import trainer_kind
from .observables.engine import ObservableEngine
from .onebody import OneBodySampler, build_line_system, is_one_body_system
from .potentials import mixture
from .potentials.protocol import Potential
from .sampler import sampler_config
from .simulate import Sampler, share_programs
from .states import data_groups, state_configs
from .system import System, build_system


@dataclass
class Components:
    system: System
    potential: Potential
    observables: dict
    targets: dict
    sampler: Sampler
    optimizer: Any
    engine: ObservableEngine
    learner: Any           # the registry's learner on the engine (DiffTRe: loss and step on these targets)
    ctx: observables_mod.Context
    ground_truth: Any


def build(cfg) -> Components:
    learner_cls = trainer_kind(cfg.trainer.kind).learner
    if learner_cls is None:   # e.g. trainer=static: its regime builds what it needs from the config
        raise UserError(f"trainer.kind={cfg.trainer.kind} trains without MD components",
                        "run it through `difftre train` / `difftre evaluate`")
    one_body = is_one_body_system(cfg.system)   # independent particles on a line (double well)
    cutoff = float(cfg.model.get("cutoff", cfg.system.get("cutoff", 2.5)))
    topology = None
    if molecule_setup.is_molecule(cfg):   # a molecule: topology, bonded prior, exclusions (molecule_setup.py)
        mol = molecule_setup.build(cfg)
        system, potential, topology = mol.system, mol.potential, mol.topology
    else:
        system = build_line_system(cfg.system) if one_body else build_system(cfg.system)
        potential = potentials.build(cfg.prior, cfg.model, cutoff, system.species_names).bind(system)   # species, kT
    names = system.species_names
    obs = observables_mod.build(cfg.observables)
    tgts = targets_mod.build(cfg.targets, obs, system.units)
    sampler = (OneBodySampler if one_body else Sampler)(potential, system, sampler_config(cfg.simulator))
    optimizer = optim.build(cfg.optimizer, int(cfg.trainer.updates))
    # one-body systems: every (snapshot, particle) is a state of one particle of its own (learn/difftre_regime.py)
    ctx = (observables_mod.Context(1, system.volume, system.kT) if one_body else
           observables_mod.Context(system.n_particles, system.volume, system.kT, tuple(names), system.counts,
                                   system.species if len(names) > 1 else None, topology=topology))
    engine = ObservableEngine(potential, obs, ctx, system.box_size, 1.0 / system.kT)
    learner = learner_cls(engine, tgts, optimizer, precondition=cfg.trainer.get("precondition", "none"),
                          fisher_damping=float(cfg.trainer.get("fisher_damping", 1e-3)),
                          damping=float(cfg.trainer.get("damping", 1e-3)),
                          shrinkage=float(cfg.trainer.get("shrinkage", 0.0) or 0.0),
                          step_rule=step_rule.build(cfg.trainer, float(cfg.trainer.get("reweight_ratio", 0.9))))
    if len(names) > 1:
        truth = mixture.ground_truth(cfg.get("ground_truth"), cutoff, names)
    else:
        truth = potentials.ground_truth(cfg.get("ground_truth"), cutoff)
    return Components(system, potential, obs, tgts, sampler, optimizer, engine, learner, ctx, truth)


def build_states(cfg) -> list[tuple[str, Components]]:
    """[(state name, Components)] for a config with ``states`` (see states.py); the samplers of a
    data group share their compiled programs (simulate.share_programs)."""
    cfgs = state_configs(cfg)
    states = [(name, build(sub)) for name, sub in cfgs]
    for ks in data_groups(cfgs):
        share_programs([states[k][1].sampler for k in ks])
    return states
