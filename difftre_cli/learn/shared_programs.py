"""One compiled program for several state points: the DiffTRe learner's per-update programs
(gradient, Gauss–Newton matrix, Fisher matrix, line-search trials, N_eff) and the
featurisation of a trajectory, compiled once for every state point of a run that differs from
the others only in its composition and its target data.

Each state point has its own learner (learn/multistate.py) whose programs close over that state
point's constants: the species of every particle and the particles per species (the mixture's
pair codes, the partial RDFs' normalisation), the target values and weights. Compiled as they
are, state points that differ only in those compile the same program once each: 9.1 s of
compilation for config=lj_mixture's three compositions, 2.5 s shared (2 CPU cores,
scripts/bench/README.md). Here those constants are the programs' arguments, the *state data*:
the first state point's learner is the template, traced with the data of the state point that
calls, and every state point's learner calls the shared programs with its own data.

Which state points share (:func:`groups`): those whose configs (states.py) are the same apart
from the mole fractions of ``system.species`` and the data of their ``targets`` (file, values,
units, columns, smoothing): the same species names, target names, observables, γ and weighting,
the same temperature, density and particle number. A state point that differs in anything else
keeps programs of its own, as do potentials whose graph capacities are grown per state point
(graph networks) and one-body potentials.
"""
from __future__ import annotations

import copy
import json
from dataclasses import replace

import jax
import numpy as np
from omegaconf import OmegaConf

from ..jax_setup import FEATURIZE_COMPILER_OPTIONS

#: keys of a target whose values may differ between state points that share programs: they only
#: change the target's values (and weights), which are the programs' arguments
TARGET_DATA_KEYS = ("file", "x_unit", "columns", "smooth", "histogram", "value", "unit")

#: the learner's per-update programs a multi-state regime calls, by attribute name
PROGRAMS = {
    "grad": lambda learner, *a: learner._grad_impl(*a),
    "trials": lambda learner, *a: learner._trials_impl(*a),
    "fisher": lambda learner, *a: learner._fisher_impl(*a),
    "gauss_newton": lambda learner, *a: learner._gauss_newton_impl(*a),
    "n_eff": lambda learner, *a: learner.engine.n_eff(*a),
}


def signature(state_cfg) -> str:
    """What a state point's programs depend on besides its state data: its config without the
    mole fractions of ``system.species`` and without the targets' data keys."""
    c = OmegaConf.to_container(state_cfg, resolve=False)
    system = dict(c.get("system") or {})
    if isinstance(system.get("species"), dict):
        system["species"] = list(system["species"])   # the names, in order; the fractions are data
    targets = {name: {k: v for k, v in (t or {}).items() if k not in TARGET_DATA_KEYS}
               for name, t in (c.get("targets") or {}).items()}
    return json.dumps({**c, "system": system, "targets": targets}, sort_keys=True, default=str)


def groups(state_cfgs: list) -> list[list[int]]:
    """Indices of the state points (``[(name, config)]``, states.state_configs) that may share
    programs, groups of two or more, in order."""
    by = {}
    for k, (_, sub) in enumerate(state_cfgs):
        by.setdefault(signature(sub), []).append(k)
    return [ks for ks in by.values() if len(ks) > 1]


def shareable(learner) -> bool:
    """Whether this learner's programs can take its state data as arguments."""
    potential = learner.engine.potential
    return not (potential.one_body or potential.has_graph_capacity)


def state_data(learner) -> dict:
    """The learner's state data: the arrays by which its programs differ from those of a state
    point that shares them (module doc)."""
    ctx = learner.engine.ctx
    species = {} if ctx.species is None else {"species": np.asarray(ctx.species, np.int32),
                                              "counts": np.asarray(ctx.counts, np.int32)}
    return {"species": species,
            "targets": {name: {"value": t.value, "weight": t.weight} for name, t in learner.targets.items()}}


def with_state_data(learner, data):
    """A shallow copy of ``learner`` whose engine, potential and targets hold ``data`` (traced
    inside a shared program) instead of their own state data."""
    new = copy.copy(learner)
    new.targets = {name: replace(t, **data["targets"][name]) for name, t in learner.targets.items()}
    if data["species"]:
        engine = copy.copy(learner.engine)
        engine.ctx = replace(engine.ctx, species=data["species"]["species"], counts=data["species"]["counts"])
        if getattr(engine.potential, "species", None) is not None:
            engine.potential = replace(engine.potential, species=data["species"]["species"])
        new.engine = engine
    return new


class Bound:
    """A shared program bound to one state point's data, called like the state point's own
    program (``eval_shape`` and ``_cache_size`` as a ``jax.jit`` function's)."""

    def __init__(self, program, data):
        self.program, self.data = program, data

    def __call__(self, *args):
        return self.program(self.data, *args)

    def eval_shape(self, *args):
        return self.program.eval_shape(self.data, *args)

    def _cache_size(self):
        return self.program._cache_size()


def share(learners: list) -> None:
    """Let ``learners`` (state points of one group of :func:`groups`, all :func:`shareable`)
    call one compiled program per method — and per featurisation — with their own state data.
    The first one is the template: its ``trace_count`` counts the shared programs' traces. Their
    feature lists share one capacity with headroom (observables/engine.py: equal shapes, one
    compilation; the padding changes no feature)."""
    template = learners[0]

    def program(name, method, **options):
        def shared(data, *args):
            return method(with_state_data(template, data), *args)
        shared.__name__ = f"shared_{name}"   # (JAX's compilation logs)
        return jax.jit(shared, **options)

    programs = {name: program(name, method) for name, method in PROGRAMS.items()}
    featurize = program("featurize", lambda learner, *a: learner.engine._featurize_impl(*a),
                        compiler_options=FEATURIZE_COMPILER_OPTIONS)
    floor = {}   # the feature lists' capacities: the largest any state point of the group needed
    for learner in learners:
        learner.engine.capacity_floor = floor
        data = state_data(learner)
        for name, prog in programs.items():
            setattr(learner, name, Bound(prog, data))
        learner.engine._featurize = Bound(featurize, data)
