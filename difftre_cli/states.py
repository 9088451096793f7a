"""Several state points trained together with shared parameters (``states:`` in the config).

A config with a top-level ``states`` mapping trains one set of parameters on several state
points at once (different temperatures, densities or compositions); the loss is the sum of
the state points' losses. Each entry names a state point and overrides parts of the base
config for it:

    states:
      xA25: {system: {species: {A: 0.25, B: 0.75}}, targets: {rdf_AA: {file: …}, …}}
      xA50: {system: {species: {A: 0.5,  B: 0.5}},  targets: {…}}

``system`` (merged key by key onto the base ``system``) and ``targets`` (replacing the base
``targets`` when given) may be overridden; everything else (prior, model, observables,
simulator, optimizer, trainer) is shared. Each state point gets its own simulation, reference
trajectories and reuse decision (see learn/multistate.py).

State points whose configs differ only in the mole fractions of ``system.species`` and the data
of their targets (:data:`TARGET_DATA_KEYS`: file, values, units, columns, smoothing) form a
*data group* (:func:`data_groups`): the same species names, target names, observables, γ and
weighting, temperature, density and particle number. Their programs differ only in arrays (the
species of each particle, the target values), so they share each compiled program with those
arrays as arguments (shared_jit.py): the samplers' (simulate.py) and DiffTRe's
(learn/shared_programs.py).
"""
from __future__ import annotations

import json

from omegaconf import DictConfig, OmegaConf

from .checks import mapping
from .errors import UserError

STATE_KEYS = ("system", "targets")


def is_multistate(cfg) -> bool:
    return OmegaConf.select(cfg, "states", default=None) is not None if isinstance(cfg, DictConfig) \
        else cfg.get("states") is not None


def state_configs(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """[(name, the full single-state config of that state point)], in config order."""

    states = cfg.get("states")
    mapping(states, "states", "states={xA25: {system: {species: {A: 0.25, B: 0.75}}}}")
    if len(states) == 0:
        raise UserError("states is empty", "list at least one state point, or set states=null")
    out = []
    for name, sub in states.items():
        key = f"states.{name}"
        if not str(name).isidentifier():
            raise UserError(f"{key}: a state point's name must be a plain name (letters, digits, _)",
                            "name state points like xA25, T150")
        sub = sub if sub is not None else {}
        mapping(sub, key, f"{key}={{system: {{kT: 1.0}}}}")
        unknown = sorted(k for k in sub if k not in STATE_KEYS)
        if unknown:
            raise UserError(f"{key}: unknown key(s) {unknown}; a state point may override {list(STATE_KEYS)}",
                            "put shared settings in the base config")
        base = OmegaConf.to_container(cfg, resolve=False)
        base.pop("states")
        base.pop("hydra", None)
        if sub.get("system") is not None:
            mapping(sub.system, f"{key}.system", f"{key}.system={{kT: 1.0}}")
            base["system"] = OmegaConf.to_container(OmegaConf.merge(cfg.system, sub.system), resolve=False)
        if sub.get("targets") is not None:
            mapping(sub.targets, f"{key}.targets", f"{key}.targets={{rdf: {{file: PATH, x_unit: sigma}}}}")
            base["targets"] = OmegaConf.to_container(sub.targets, resolve=False)
        out.append((str(name), OmegaConf.create(base)))
    return out


#: keys of a target whose values may differ within a data group: they only change the target's
#: values (and weights), which are the shared programs' arguments
TARGET_DATA_KEYS = ("file", "x_unit", "columns", "smooth", "histogram", "value", "unit")


def data_signature(state_cfg) -> str:
    """What a state point's programs depend on besides its data: its config without the mole
    fractions of ``system.species`` and without the targets' data keys."""
    c = OmegaConf.to_container(state_cfg, resolve=False)
    system = dict(c.get("system") or {})
    if isinstance(system.get("species"), dict):
        system["species"] = list(system["species"])   # the names, in order; the fractions are data
    targets = {name: {k: v for k, v in (t or {}).items() if k not in TARGET_DATA_KEYS}
               for name, t in (c.get("targets") or {}).items()}
    return json.dumps({**c, "system": system, "targets": targets}, sort_keys=True, default=str)


def data_groups(state_cfgs: list) -> list[list[int]]:
    """Indices of the state points (``[(name, config)]``, :func:`state_configs`) that form data
    groups (module doc), groups of two or more, in order."""
    by = {}
    for k, (_, sub) in enumerate(state_cfgs):
        by.setdefault(data_signature(sub), []).append(k)
    return [ks for ks in by.values() if len(ks) > 1]
