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
"""
from __future__ import annotations

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
