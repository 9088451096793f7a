"""Config names that changed: read old ones from saved runs, refuse them on a new command line.

A run keeps the config it was trained with (``.hydra/config.yaml``, the copy inside
``difftre.h5``) and the overrides that ``resume=`` replays (``.hydra/overrides.yaml``). Those
written by an older version are translated when read (one log line per name), so ``resume=``
and ``difftre evaluate run=`` keep working; a new command line with an old name stops with a
UserError that names the new one.
"""
from __future__ import annotations

import logging

from omegaconf import DictConfig, open_dict

from .errors import UserError

log = logging.getLogger("difftre")

#: group -> (old dispatch key, new): every group now selects its implementation with ``kind``
RENAMED = {"simulator": ("integrator", "kind"), "optimizer": ("name", "kind")}
#: group -> {removed option: the list of one-per-file options that composes the same config}
SPLIT = {"observables": {"rdf_pressure": "[rdf,pressure]", "rdf_sk": "[rdf,sk]", "diamond": "[stress,stiffness]"},
         "targets": {"lj_liquid_rdf_pressure": "[lj_liquid_rdf,lj_liquid_pressure]", "lj_rdf_sk": "[lj_rdf,lj_sk]"}}


def _parts(override: str) -> tuple[str, str, str]:
    """``++key=value`` -> (``++``, ``key``, ``=value``); ``~key`` -> (``~``, ``key``, ``)."""
    body = override.lstrip("+~")
    key, eq, value = body.partition("=")
    return override[: len(override) - len(body)], key, eq + value


def _renamed(key: str) -> str | None:
    """The new name of a renamed key (also below ``states.NAME.``), else None."""
    for group, (old, new) in RENAMED.items():
        if key == f"{group}.{old}" or key.endswith(f".{group}.{old}"):
            return key[: -len(old)] + new
    return None


def translate_config(cfg: DictConfig, source: str) -> DictConfig:
    """Rename the old dispatch keys of a saved config in place (each state point's too)."""
    if not isinstance(cfg, DictConfig):
        return cfg
    nodes = [("", cfg)]
    states = cfg.get("states")
    if isinstance(states, DictConfig):
        nodes += [(f"states.{name}.", sub) for name, sub in states.items() if isinstance(sub, DictConfig)]
    for prefix, node in nodes:
        for group, (old, new) in RENAMED.items():
            sub = node.get(group)
            if isinstance(sub, DictConfig) and old in sub:
                with open_dict(sub):
                    value = sub.pop(old)
                    if new not in sub:
                        sub[new] = value
                log.warning("%s: %s%s.%s (renamed since this run was trained) read as %s%s.%s",
                            source, prefix, group, old, prefix, group, new)
    return cfg


def translate_overrides(overrides: list[str], source: str) -> list[str]:
    """Saved overrides with renamed keys and split group options replaced by today's."""
    out = []
    for text in overrides:
        prefix, key, value = _parts(text)
        new_key = _renamed(key)
        new_value = SPLIT.get(key, {}).get(value[1:]) if value else None
        if new_key or new_value:
            new = f"{prefix}{new_key or key}" + (f"={new_value}" if new_value else value)
            log.warning("%s: %s (an override of an older version) read as %s", source, text, new)
            text = new
        out.append(text)
    return out


def check_overrides(overrides: list[str]) -> None:
    """UserError for an old key or a split option on the command line of a new run."""
    for text in overrides:
        prefix, key, value = _parts(text)
        new_key = _renamed(key)
        if new_key:
            raise UserError(f"{key} was renamed to {new_key} (every config group selects its implementation "
                            "with kind)", f"use {prefix}{new_key}{value}")
        new_value = SPLIT.get(key, {}).get(value[1:]) if value else None
        if new_value:
            raise UserError(f"{key}={value[1:]} was split into one option per file",
                            f"use '{key}={new_value}' (quoted for the shell)")
