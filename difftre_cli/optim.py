"""Optax optimiser from the ``optimizer`` config group.

Keys: ``name`` (adam | sgd), ``lr``, ``b1``, ``b2``, ``schedule`` (constant | exponential),
``decay_to`` (final lr as a fraction of ``lr`` after ``trainer.updates``), ``clip_norm``.
"""
from __future__ import annotations

import optax

from .errors import UserError


def build(cfg, n_updates: int) -> optax.GradientTransformation:
    lr = float(cfg.get("lr", 1e-3))
    if not lr > 0:
        raise UserError(f"optimizer.lr must be > 0 (got {lr})", "set e.g. optimizer.lr=0.003")
    schedule_kind = cfg.get("schedule", "constant")
    if schedule_kind == "constant":
        schedule = optax.constant_schedule(lr)
    elif schedule_kind == "exponential":
        decay_to = float(cfg.get("decay_to", 0.01))
        if not 0 < decay_to <= 1:
            raise UserError(f"optimizer.decay_to must be in (0, 1] (got {decay_to})", "set e.g. optimizer.decay_to=0.01")
        schedule = optax.exponential_decay(lr, transition_steps=max(n_updates, 1), decay_rate=decay_to)
    else:
        raise UserError(f"optimizer.schedule: unknown {schedule_kind!r}", "use constant or exponential")
    name = cfg.get("name", "adam")
    if name == "adam":
        opt = optax.adam(schedule, b1=float(cfg.get("b1", 0.9)), b2=float(cfg.get("b2", 0.999)),
                         eps=float(cfg.get("eps", 1e-8)))
    elif name == "sgd":
        opt = optax.sgd(schedule, momentum=cfg.get("momentum"))
    else:
        raise UserError(f"optimizer.name: unknown optimiser {name!r}", "use adam or sgd")
    clip = cfg.get("clip_norm")
    if clip is not None:
        if not float(clip) > 0:
            raise UserError(f"optimizer.clip_norm must be > 0 (got {clip})", "set it to a positive number or null")
        opt = optax.chain(optax.clip_by_global_norm(float(clip)), opt)
    return opt
