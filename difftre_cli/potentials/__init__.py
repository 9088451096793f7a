"""Potential energy = prior + learnable model (Δ-learning): :func:`build` makes the potential the
``prior`` and ``model`` config groups describe.

Every potential implements the protocol of :mod:`.protocol` (what the samplers and the
observable engine may ask of it). Which potential a config gets:

- a one-body prior or model (``harmonic_1d``, ``spline_1d``, …): :mod:`.external`, u(x) per particle;
- ``prior.kind=stillinger_weber``: the many-body SW prior under DimeNet++ (:mod:`.sw_prior`);
- ``model.kind=dimenet``: a pair prior under DimeNet++ (:mod:`.manybody`);
- several species: one prior and one pair model per species pair (:mod:`.mixture`);
- otherwise :class:`.pairwise.PairPotential`: a pair prior (:mod:`.priors`) plus a learnable pair
  model (:mod:`.pair`, whose registry names the pair-model kinds).

Known true potentials for evaluation: :func:`.truth.ground_truth`.
"""
from __future__ import annotations

from ..checks import mapping
from ..errors import UserError
from . import external, manybody, mixture, pair, priors, sw_prior
from .pairwise import ListKernels, PairPotential, distances_on_list
from .truth import ground_truth

__all__ = ["build", "ground_truth", "ListKernels", "PairPotential", "distances_on_list"]


def build(prior_cfg, model_cfg, cutoff: float, species_names=("X",)):
    mapping(prior_cfg, "prior", "prior=repulsive (or prior.kind=...)")
    mapping(model_cfg, "model", "model=spline (or model.kind=...)")
    if external.is_external(prior_cfg, model_cfg):   # one-body potential in an external field (1-D)
        return external.build(prior_cfg, model_cfg)
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not cutoff > 0:
        raise UserError(f"model.cutoff must be a number > 0, got {cutoff!r}", "set model.cutoff=2.5")
    if prior_cfg.get("kind") == "stillinger_weber":   # many-body prior (three-body terms) under DimeNet++
        return sw_prior.build(prior_cfg, model_cfg, cutoff)
    if model_cfg.get("kind") == "dimenet":   # many-body graph network on top of a pair prior
        return manybody.build(priors.build(prior_cfg, cutoff), model_cfg, cutoff)
    if len(species_names) > 1:   # one prior and one model per species pair
        return mixture.build(prior_cfg, model_cfg, cutoff, species_names)
    if prior_cfg.get("pairs") is not None:
        raise UserError("prior.pairs is set but the system has one species", "remove prior.pairs or set system.species")
    return PairPotential(prior=priors.build(prior_cfg, cutoff), model=pair.build(model_cfg, cutoff),
                         cutoff=float(cutoff))
