"""Pair potentials of several particle types: one prior and one learnable model per type pair.

For species a ≤ b (in the order of ``system.species``) the pair (a, b) is named ``"a-b"``
(e.g. ``A-A``, ``A-B``, ``B-B``); u_ab(r) = u_prior,ab(r) + u_θ,ab(r) and u_ba = u_ab. The
learnable parameters are a mapping pair name → that pair's model parameters, so a checkpoint
names what each array is.

Config: the ``prior`` and ``ground_truth`` mappings take their usual keys as defaults for every
pair plus an optional ``pairs`` mapping of per-pair overrides, e.g.
``prior: {kind: repulsive, sigma: 1.0, pairs: {A-A: {sigma: 0.9}, B-B: {sigma: 1.1}}}``.
The model config (spline, table, mlp) is the same for every pair.

On a neighbour list, the pair type of each (i, slot) entry is a small integer code; the energy
features of a snapshot are (distances, codes), both independent of θ.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np

from ..checks import mapping
from ..errors import UserError
from . import pair, priors
from .pairwise import ListKernels, distances_on_list
from .protocol import PairTerm
from .truth import ground_truth as single


def pair_names(species_names) -> list[tuple[str, int, int]]:
    """[(name, a, b)] for a ≤ b in species order, e.g. [("A-A", 0, 0), ("A-B", 0, 1), ("B-B", 1, 1)]."""
    n = len(species_names)
    return [(f"{species_names[a]}-{species_names[b]}", a, b) for a in range(n) for b in range(a, n)]


def pair_code_table(n_species: int) -> np.ndarray:
    """(S, S) symmetric table: species pair → index of the pair in :func:`pair_names` order."""
    table = np.zeros((n_species, n_species), np.int32)
    k = 0
    for a in range(n_species):
        for b in range(a, n_species):
            table[a, b] = table[b, a] = k
            k += 1
    return table


def codes_on_list(species, idx, table):
    """Pair-type code (N, M) of every dense-list entry (padding gets code 0; it is masked by distance)."""
    species = jnp.asarray(species)
    n = species.shape[0]
    return jnp.asarray(table)[species[:, None], species[jnp.minimum(idx, n - 1)]]


def per_pair_configs(cfg, pairs: list[tuple[str, int, int]], key: str) -> dict:
    """{pair name: mapping} from a prior/ground-truth mapping with optional ``pairs`` overrides."""
    base = {k: v for k, v in cfg.items() if k != "pairs"}
    over = cfg.get("pairs") or {}
    mapping(over, f"{key}.pairs", f"{key}.pairs={{A-A: {{sigma: 0.9}}}}")
    known = {name for name, _, _ in pairs}
    aliases = {f"{n.split('-')[1]}-{n.split('-')[0]}": n for n in known}
    for name in over:
        if name not in known and name not in aliases:
            raise UserError(f"{key}.pairs.{name}: no such species pair (pairs: {sorted(known)})",
                            f"name pairs after system.species, e.g. {sorted(known)[0]}")
    out = {}
    for name, _, _ in pairs:
        merged = dict(base)
        for alias in (name, *[a for a, n in aliases.items() if n == name]):
            if alias in over:
                mapping(over[alias], f"{key}.pairs.{alias}", f"{key}.pairs.{alias}={{sigma: 1.0}}")
                merged.update(dict(over[alias]))
        out[name] = merged
    return out


@dataclass(frozen=True)
class MixturePairPotential(ListKernels):
    """u(r) = u_prior,ab(r) + u_θ,ab(r) for r < cutoff, per species pair (a, b).

    ``species`` (N,) is bound per state point by :meth:`bind` (the composition may differ
    between state points that share the parameters)."""

    species_names: tuple
    priors: tuple            # per pair, elementwise u(r)
    model: object | None     # the same model class for every pair; parameters per pair
    cutoff: float
    species: np.ndarray | None = None

    @property
    def pairs(self) -> list[tuple[str, int, int]]:
        return pair_names(self.species_names)

    @property
    def table(self) -> np.ndarray:
        return pair_code_table(len(self.species_names))

    def init(self, key):
        if self.model is None:
            return {}
        keys = jax.random.split(key, len(self.pairs))
        return {"model": {name: self.model.init(k) for (name, _, _), k in zip(self.pairs, keys)}}

    def bind(self, system) -> "MixturePairPotential":
        if tuple(system.species_names) != tuple(self.species_names):
            raise UserError(f"system.species {list(system.species_names)} differs from the potential's species "
                            f"{list(self.species_names)}", "give every state point the same species names")
        model = self.model.at_kT(system.kT) if self.temperature_dependent else self.model
        return replace(self, species=np.asarray(system.species, np.int32), model=model)

    @property
    def linear_in_params(self) -> bool:
        return self.model is not None and self.model.linear

    @property
    def temperature_dependent(self) -> bool:
        return self.model is not None and self.model.temperature_dependent

    def pair_terms(self) -> tuple[PairTerm, ...]:
        names = self.species_names
        return tuple(PairTerm(name, (names[a], names[b]), self.priors[k],
                              lambda params, r, name=name: self.pair_by_name(params, name, r))
                     for k, (name, a, b) in enumerate(self.pairs))

    # -- pair functions ----------------------------------------------------------------
    def pair_by_name(self, params, name: str, r):
        """u_ab(r) of the pair called ``name`` (e.g. "A-B"), elementwise."""
        k = [n for n, _, _ in self.pairs].index(name)
        u = self.priors[k](r)
        if self.model is not None:
            u = u + self.model(params["model"][name], r)
        return u

    def pair_typed(self, params, r, code):
        """u(r) with the pair type of each entry given by ``code`` (same shape as r)."""
        u = jnp.zeros_like(r)
        for k, (name, _, _) in enumerate(self.pairs):
            u = jnp.where(code == k, self.pair_by_name(params, name, r), u)
        return u

    # -- the observable engine's side of the protocol (protocol.py) -----------------------
    def features_on_list(self, R, idx, box_size):
        """θ-independent energy features of one state: (distances (N, M), pair codes (N, M))."""
        return distances_on_list(R, idx, box_size), codes_on_list(self._species(), idx, self.table)

    def energy_from_features(self, params, feats, scale=1.0):
        r, code = feats
        mask = r < self.cutoff
        r_safe = jnp.where(mask, r, 0.5 * self.cutoff) * scale
        return 0.5 * jnp.sum(jnp.where(mask, self.pair_typed(params, r_safe, code), 0.0))

    def _species(self):
        if self.species is None:
            raise RuntimeError("MixturePairPotential used before bind(system)")
        return self.species

    def _on_list(self, box_size: float, kernel):
        table = self.table

        def fn(R, neighbor, params, **unused):
            species = self._species()
            return kernel(lambda p, r, j: self.pair_typed(p, r, codes_on_list(species, j, table)),
                          params, R, neighbor.idx, box_size, self.cutoff)
        return fn


def build(prior_cfg, model_cfg, cutoff: float, species_names) -> MixturePairPotential:
    pairs = pair_names(species_names)
    cfgs = per_pair_configs(prior_cfg, pairs, "prior")
    prior_fns = tuple(priors.build(cfgs[name], cutoff, prefix=f"prior.pairs.{name}") for name, _, _ in pairs)
    return MixturePairPotential(species_names=tuple(species_names), priors=prior_fns,
                                model=pair.build(model_cfg, cutoff), cutoff=float(cutoff))


def ground_truth(cfg, cutoff_default: float, species_names) -> dict | None:
    """{pair name: (u(r), cutoff)} of a known true mixture potential, or None."""
    if cfg is None or cfg.get("kind") in (None, "none"):
        return None
    pairs = pair_names(species_names)
    cfgs = per_pair_configs(cfg, pairs, "ground_truth")
    return {name: single(cfgs[name], cutoff_default) for name, _, _ in pairs}
