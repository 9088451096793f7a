"""Optax optimiser from the ``optimizer`` config group.

Keys: ``kind`` (adam | sgd), ``lr``, ``b1``, ``b2``, ``schedule`` (constant | exponential),
``decay_to`` (final lr as a fraction of ``lr`` after ``trainer.updates``), ``clip_norm``.
"""
from __future__ import annotations

import optax

from .checks import choice, number


def build(cfg, n_updates: int) -> optax.GradientTransformation:

    P = "optimizer"
    name = choice(cfg, "kind", ("adam", "sgd"), prefix=P, default="adam", what="optimiser")
    lr = number(cfg, "lr", prefix=P, lo=0.0, lo_open=True, required=False, default=1e-3, example="0.003")
    schedule_kind = choice(cfg, "schedule", ("constant", "exponential"), prefix=P, default="constant",
                           what="schedule")
    if schedule_kind == "constant":
        schedule = optax.constant_schedule(lr)
    else:
        decay_to = number(cfg, "decay_to", prefix=P, lo=0.0, lo_open=True, hi=1.0, required=False, default=0.01,
                          example="0.1")
        schedule = optax.exponential_decay(lr, transition_steps=max(n_updates, 1), decay_rate=decay_to)
    if name == "adam":
        b1 = number(cfg, "b1", prefix=P, lo=0.0, hi=1.0, hi_open=True, required=False, default=0.9, example="0.9")
        b2 = number(cfg, "b2", prefix=P, lo=0.0, hi=1.0, hi_open=True, required=False, default=0.999,
                    example="0.999")
        eps = number(cfg, "eps", prefix=P, lo=0.0, lo_open=True, required=False, default=1e-8, example="1e-8")
        opt = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    else:
        momentum = number(cfg, "momentum", prefix=P, lo=0.0, hi=1.0, hi_open=True, required=False, example="0.9")
        opt = optax.sgd(schedule, momentum=momentum)
    clip = number(cfg, "clip_norm", prefix=P, lo=0.0, lo_open=True, required=False, example="1.0")
    if clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(clip), opt)
    return opt
