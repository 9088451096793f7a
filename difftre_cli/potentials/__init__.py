"""Potential energy = prior + learnable model (Δ-learning): :func:`build` makes the potential the
``prior`` and ``model`` config groups describe.

Every potential implements the protocol of :mod:`.protocol` (what the samplers and the
observable engine may ask of it). Which potential a config gets:

- a one-body prior or model (``harmonic_1d``, ``spline_1d``, …): :mod:`.external`, u(x) per particle;
- ``prior.kind=stillinger_weber``: the many-body SW prior under a graph model (:mod:`.sw_prior`);
- ``model.kind=dimenet`` or ``three_body``: a pair prior under a graph model, DimeNet++ or the
  Stillinger–Weber-form three-body model (:mod:`.manybody`, its registry ``GRAPH_MODELS``);
- several species: one prior and one pair model per species pair (:mod:`.mixture`);
- otherwise :class:`.pairwise.PairPotential`: a pair prior (:mod:`.priors`) plus a learnable pair
  model (:mod:`.pair`, whose registry ``pair.MODELS`` names the pair-model kinds; a new pair
  model is one module and one YAML, see pair.py).

:data:`MODEL_KINDS` and :data:`PRIOR_KINDS` are every ``kind`` of the two groups; an unknown one
is a UserError that lists them.

Known true potentials for evaluation: :func:`.truth.ground_truth`.
"""
from __future__ import annotations

from ..checks import choice, mapping
from ..errors import UserError
from . import external, manybody, mixture, pair, priors, sw_prior
from .pairwise import ListKernels, PairPotential, distances_on_list
from .truth import ground_truth

__all__ = ["build", "ground_truth", "MODEL_KINDS", "PRIOR_KINDS", "ListKernels", "PairPotential",
           "distances_on_list"]

#: every ``model.kind``: the pair models' registry, none, the graph models, the one-body models
MODEL_KINDS = (*pair.MODELS, "none", *manybody.GRAPH_MODELS, *(k for k in external.MODELS if k != "none"))
#: every ``prior.kind``: the pair priors, the many-body SW prior, the one-body priors
PRIOR_KINDS = (*priors.PRIORS, "stillinger_weber", *(k for k in external.PRIORS if k != "none_1d"))


def build(prior_cfg, model_cfg, cutoff: float, species_names=("X",)):
    """The potential of the ``prior`` and ``model`` config mappings (see the module docstring)."""
    mapping(prior_cfg, "prior", "prior=repulsive (or prior.kind=...)")
    mapping(model_cfg, "model", "model=spline (or model.kind=...)")
    if prior_cfg.get("bonded") is not None:
        raise UserError("prior.bonded (bonded terms) needs a molecule's topology, and topology is none",
                        "select a topology (topology=alanine_dipeptide, or topology.file=PATH) or remove prior.bonded")
    if external.is_external(prior_cfg, model_cfg):   # one-body potential in an external field (1-D)
        return external.build(prior_cfg, model_cfg)
    choice(prior_cfg, "kind", PRIOR_KINDS, prefix="prior", default="none", what="prior")
    if model_cfg.get("kind") is not None:   # no kind: no learnable model
        choice(model_cfg, "kind", MODEL_KINDS, prefix="model", what="model")
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not cutoff > 0:
        raise UserError(f"model.cutoff must be a number > 0, got {cutoff!r}", "set model.cutoff=2.5")
    if prior_cfg.get("kind") == "stillinger_weber":   # many-body prior (three-body terms) under a graph model
        return sw_prior.build(prior_cfg, model_cfg, cutoff)
    if model_cfg.get("kind") in manybody.GRAPH_MODELS:   # many-body graph model on top of a pair prior
        return manybody.build(priors.build(prior_cfg, cutoff), model_cfg, cutoff)
    if len(species_names) > 1:   # one prior and one model per species pair
        return mixture.build(prior_cfg, model_cfg, cutoff, species_names)
    if prior_cfg.get("pairs") is not None:
        raise UserError("prior.pairs is set but the system has one species", "remove prior.pairs or set system.species")
    return PairPotential(prior=priors.build(prior_cfg, cutoff), model=pair.build(model_cfg, cutoff),
                         cutoff=float(cutoff))
