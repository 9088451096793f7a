"""The ``mlp`` pair model (a pair model in its own module: see pair.py): a multilayer perceptron on
Gaussian radial-basis features of r, times a cosine envelope whose value and slope vanish at the
cutoff (:class:`.base.ScalarMLP`)."""
from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from ..checks import int_list, number
from .base import PairModel, ScalarMLP


@dataclass(frozen=True)
class MLPPair(PairModel):
    """Multilayer perceptron on Gaussian radial-basis features of r, times a cosine envelope."""

    cutoff: float
    hidden: tuple = (32, 32)
    n_basis: int = 32

    @classmethod
    def from_config(cls, cfg, cutoff: float, prefix: str) -> "MLPPair":
        hidden = int_list(cfg, "hidden", prefix=prefix) if cfg.get("hidden") is not None else (32, 32)
        n_basis = number(cfg, "n_basis", prefix=prefix, integer=True, lo=1, required=False, default=32, example="32")
        return cls(cutoff=cutoff, hidden=hidden, n_basis=n_basis)

    @property
    def module(self) -> ScalarMLP:
        return ScalarMLP(tuple(int(h) for h in self.hidden), int(self.n_basis), float(self.cutoff))

    def init(self, key):
        return self.module.init(key, jnp.ones((1,)))

    def __call__(self, params, r):
        flat = r.reshape(-1)
        return self.module.apply(params, flat).reshape(r.shape)


KINDS = {"mlp": MLPPair}
