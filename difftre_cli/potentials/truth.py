"""Known true potentials (``ground_truth`` config) for evaluation: u(r) of one species pair or u(x)
of a one-body system; the mixture's per-pair truths (mixture.py) are built from this one."""
from __future__ import annotations

from ..checks import mapping, number
from . import external, priors


def ground_truth(cfg, cutoff_default: float):
    """Known true pair potential (u(r), cutoff) from a config like {kind: lj, epsilon:, sigma:, cutoff:};
    for a one-body kind (e.g. double_well) (u(x), None); or None."""
    if cfg is None:
        return None
    mapping(cfg, "ground_truth", "ground_truth: {kind: lj, epsilon: 1.0, sigma: 1.0, cutoff: 2.5}")
    if cfg.get("kind") in (None, "none"):
        return None
    if cfg.get("kind") in external.PRIORS:   # a known one-body potential u(x): (u, None)
        return external.build_prior(cfg), None
    kwargs = dict(cfg)
    kwargs.pop("cutoff", None)
    cutoff = number(cfg, "cutoff", prefix="ground_truth", lo=0.0, lo_open=True, required=False,
                    default=float(cutoff_default), example="2.5")
    return priors.build(kwargs, cutoff, prefix="ground_truth"), cutoff
