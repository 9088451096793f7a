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
calls, and every state point's learner calls the shared programs with its own data
(shared_jit.py; the samplers share their chunk programs the same way, simulate.py).

Which state points share: states.data_groups (the same configs apart from the mole fractions of
``system.species`` and the data of their ``targets``). Potentials whose graph capacities are
grown per state point (graph networks) and one-body potentials keep programs of their own.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import jax
import numpy as np

from ..jax_setup import FEATURIZE_COMPILER_OPTIONS
from ..shared_jit import Bound

#: the learner's per-update programs a multi-state regime calls, by attribute name
PROGRAMS = {
    "grad": lambda learner, *a: learner._grad_impl(*a),
    "trials": lambda learner, *a: learner._trials_impl(*a),
    "fisher": lambda learner, *a: learner._fisher_impl(*a),
    "gauss_newton": lambda learner, *a: learner._gauss_newton_impl(*a),
    "n_eff": lambda learner, *a: learner.engine.n_eff(*a),
}


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


def share(learners: list) -> None:
    """Let ``learners`` (state points of one group of states.data_groups, all :func:`shareable`)
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
