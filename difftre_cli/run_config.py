"""The config of ``difftre evaluate``: a trained run's saved config, composed by Hydra.

Hydra's Compose API composes it (nothing is written: the run's ``.hydra/`` stays as training
left it) from this defaults list::

    defaults:
      - evaluate: default   # today's evaluate keys for the run's trainer kind (static: evaluate/static.yaml)
      - _self_              # RUN/.hydra/config.yaml, old key names translated first (legacy.py)

so keys introduced after the run was trained exist and can be overridden. The command-line
overrides then follow Hydra's override grammar, exactly as for ``difftre train``: ``key=value``
(lists, ``null``, quoting, interpolations), ``+key=value`` appends a key, ``++key=value`` sets
or appends, ``~key`` deletes one, ``evaluate=static`` picks another evaluate defaults file. The
result goes through ``config.validate`` like a training config: a key that nothing reads
(appended with ``+``) is an error there, a deleted one falls back to the code's default or is
reported as missing. Hydra's and OmegaConf's errors become UserErrors (config_errors.py).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import CONFIG_DIR, evaluate_defaults_name
from .config_errors import config_errors
from .errors import UserError
from .legacy import check_overrides, translate_config

#: the ConfigStore name of the run's saved config while it is composed
RUN_CONFIG = "difftre_evaluate_run"


def saved_config(run: Path) -> DictConfig:
    """RUN/.hydra/config.yaml as training saved it, with renamed keys read as today's (legacy.py)."""
    path = run / ".hydra" / "config.yaml"
    return translate_config(OmegaConf.load(path), str(path))


def compose_run(run: Path, overrides: list[str]) -> DictConfig:
    """The config ``difftre evaluate run=RUN OVERRIDES`` evaluates with (UserError for bad input)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra

    check_overrides(overrides)   # an old key or option name: say the new one
    saved = saved_config(run)
    defaults = evaluate_defaults_name(saved)
    node = {"defaults": ([{"evaluate": defaults}] if defaults else []) + ["_self_"],
            **OmegaConf.to_container(saved, resolve=False)}
    try:
        with config_errors(composing=True):
            ConfigStore.instance().store(name=RUN_CONFIG, node=node)
            GlobalHydra.instance().clear()
            try:
                with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
                    cfg = compose(config_name=RUN_CONFIG, overrides=list(overrides))
            finally:
                GlobalHydra.instance().clear()
    except UserError as exc:
        if "defaults list" in str(exc):   # group=OPTION / ~group: the run's groups were composed in training
            raise UserError(str(exc).split("\n")[0], "a trained run's config groups are fixed: override their keys "
                            "(e.g. model.cutoff=2.5, ~model.KEY), or train a new run with another option") from None
        raise
    return cfg
