"""Interleaved training: the updates of several trainers alternate on one set of parameters
(``interleave:`` in the config; chemtrain's ``InterleaveTrainers``), e.g. force matching on
reference forces and DiffTRe on experimental targets:

    interleave:
      - {trainer: force_matching, steps: 1, weight: 0.5, batch_size: 270}
      - {trainer: difftre, steps: 4, targets: [rdf, pressure]}

Each entry is composed like a stage (stages.entry_config: the run's config with that trainer and
the groups it replaces). ``steps``: its consecutive updates per cycle (default 1); ``weight``: a
factor on its step length (the learning-rate scale it gets, default 1). The cycle repeats until
the run's ``trainer.updates`` (the run's ``trainer`` group also gives checkpointing and
failure handling); every entry keeps its own optimiser state and its own learner, and each
starts where the previous step left the parameters. learn/interleaved.py is the regime
(and its schedule, ``entry_at``).

At most one entry samples trajectories (DiffTRe, relative entropy, direct AD, IBI: the registry's
``samples``); the others are force matching, which samples nothing. Early stopping does not apply inside (an entry's
``patience`` is ignored): the run's budget is its ``trainer.updates``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from .checks import number
from .errors import UserError
from .learn.registry import trainer_kind
from .stages import entry_config

#: entry keys of the interleaving itself (not the trainer's)
OWN_KEYS = ("steps", "weight")
EXAMPLE = "interleave=[{trainer: force_matching, steps: 1}, {trainer: difftre, steps: 4}]"


class Entry(NamedTuple):
    name: str          # the trainer
    cfg: DictConfig    # the full config of its updates
    steps: int         # consecutive updates per cycle
    weight: float      # factor on its learning-rate scale


def is_interleaved(cfg) -> bool:
    return isinstance(cfg, DictConfig) and OmegaConf.select(cfg, "interleave", default=None) is not None


def interleave_entries(cfg: DictConfig) -> list[Entry]:
    """The entries of ``interleave``, each with its full config; entry k's ``trainer.updates``
    is its share of the run's updates (its optimiser schedules count those)."""
    items = cfg.get("interleave")
    if not isinstance(items, ListConfig) or len(items) < 2:
        raise UserError("interleave must list at least two trainers", f"e.g. {EXAMPLE}")
    for other, why in (("stages", "stages run trainers one after another"), ("states", "several state points")):
        if cfg.get(other) is not None:
            raise UserError(f"interleave and {other} ({why}) cannot be combined",
                            f"set {other}=null, or train without interleave")
    n_updates = int(cfg.trainer.updates)
    out = []
    for k, item in enumerate(items):
        key = f"interleave[{k}]"
        name, sub = entry_config(cfg, item, key, EXAMPLE, skip=OWN_KEYS)
        steps = number(item, "steps", prefix=key, integer=True, lo=1, required=False, default=1, example="1")
        weight = number(item, "weight", prefix=key, lo=0.0, lo_open=True, required=False, default=1.0,
                        example="0.5")
        sub.trainer.init_from = cfg.trainer.get("init_from", "zeros")   # one starting point for all
        if not trainer_kind(name).samples:   # force matching: no early stopping inside
            sub.trainer.patience = None
        out.append(Entry(name, sub, int(steps), float(weight)))
    sampling = [e.name for e in out if trainer_kind(e.name).samples]
    if len(sampling) > 1:
        raise UserError(f"interleave: {len(sampling)} entries sample trajectories ({', '.join(sampling)}); at most "
                        "one may", "interleave one of them with force_matching")
    cycle = sum(e.steps for e in out)
    for e in out:   # its own updates in the run (its optimiser's schedule length)
        e.cfg.trainer.updates = max(1, math.ceil(n_updates * e.steps / cycle))
    return out

