"""The trainer registry: one table from ``trainer.kind`` to everything the program needs for it.

Each :class:`TrainerKind` names

* ``regime`` / ``multistate``: the learning regime that ``train.Trainer`` (the one outer loop:
  metrics, checkpoints, rollback, signals, resume) drives, for one state point and for several
  (``states``; None: not supported, a config error);
* ``learner``: what ``assemble.build`` makes of the MD components (system, potential,
  observables, sampler) for this kind; None for a kind that trains without MD (``static``): the
  loop then assembles nothing and hands the regime the config alone;
* ``validate``: the kind's own config checks, run by ``config.validate`` instead of its MD
  checks (None: the MD checks);
* ``evaluator``: the key of ``evaluate.EVALUATORS``, the section set that ``difftre evaluate``
  runs ("md": a production run with the final parameters, stress–strain, the potential;
  "static": the 0 K properties, landscape, phonons) and, through ``config.EVALUATE_DEFAULTS``,
  the evaluate defaults composed under a trained run's config (configs/evaluate/);
* ``state_parallel``: the ``trainer.state_parallel`` modes it implements;
* ``keys``: the kind's own trainer keys, checked by ``config.validate`` besides the MD checks;
* ``reference``: what it needs of the ``reference`` group (reference/): "forces" (a trajectory
  with forces), "positions", or None (not used);
* ``samples``: whether it runs simulations of its own (interleave.py lets at most one such
  trainer into an interleave).

Adding a trainer: a :class:`regime.Regime` subclass in ``learn/`` (its abstract methods: init,
propose → :class:`regime.Proposal`, checkpoint, templates, restore, rejected; the hooks with
defaults: final, close, summary, result, trajectory_names, failure_hint), its keys in
configs/trainer/KIND.yaml, and one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import reference
from ..errors import UserError
from ..states import data_groups, state_configs
from .boltzmann import check_init_from
from .difftre import DiffTRe
from .difftre_regime import DiffTReRegime
from .direct_ad import DirectADRegime
from .force_matching import ForceMatching
from .force_matching_regime import ForceMatchingRegime
from .force_matching_regime import validate_keys as force_matching_keys
from .ibi import IBIRegime
from .multistate import MultiStateDiffTReRegime
from .multistate_baselines import MultiStateDirectADRegime, MultiStateIBIRegime
from .relative_entropy import RelativeEntropy
from .static import validate_static
from .static_regime import StaticRegime


@dataclass(frozen=True)
class TrainerKind:
    regime: Callable                   # (cfg, store, components) -> regime of one state point
    multistate: Callable | None        # (cfg, store, [(name, components)]) -> regime; None: one state point only
    learner: type | None               # assemble.build's learner; None: no MD components
    validate: Callable | None = None   # (cfg) -> None, raising UserError; None: config.py's MD checks
    evaluator: str = "md"              # evaluate.EVALUATORS key
    state_parallel: tuple = ("sequential",)
    keys: Callable | None = None       # (trainer cfg, updates) -> None, raising UserError
    reference: str | None = None       # "forces" | "positions" | None
    samples: bool = True               # runs simulations of its own (False: force matching, the 0 K fit)

    @property
    def md(self) -> bool:
        """Whether the kind trains on MD components (assemble.build, samplers, production evaluation)."""
        return self.learner is not None


def _init_from(tc):
    init_from = tc.get("init_from")
    check_init_from(init_from)
    return init_from


def _max_reuse(tc):
    v = tc.get("max_reuse")
    return None if v is None else int(v)


def _max_loss_ratio(tc):
    v = tc.get("max_loss_ratio")
    return None if v is None else float(v)


def _difftre(cfg, store, c):
    return DiffTReRegime(c, store, float(cfg.trainer.get("reweight_ratio", 0.9)), _init_from(cfg.trainer),
                         _max_reuse(cfg.trainer), _max_loss_ratio(cfg.trainer))


def _difftre_states(cfg, store, states):
    return MultiStateDiffTReRegime(states, store, float(cfg.trainer.get("reweight_ratio", 0.9)),
                                   _init_from(cfg.trainer),
                                   state_parallel=cfg.trainer.get("state_parallel", "sequential"),
                                   max_loss_ratio=_max_loss_ratio(cfg.trainer),
                                   share=data_groups(state_configs(cfg)))


def _on_trainer_cfg(cls):
    """``(cfg, store, components) -> cls(components, store, cfg.trainer)`` after checking
    ``trainer.init_from`` (direct AD and IBI, one state point or several)."""
    def make(cfg, store, c):
        _init_from(cfg.trainer)
        return cls(c, store, cfg.trainer)
    return make


def _relative_entropy(cfg, store, c):
    """DiffTRe's regime (trajectory reuse while N_eff allows) on the relative-entropy learner,
    given the mapped reference frames (the training set of the ``reference`` group; streamed
    when ``reference.batch_frames`` is set)."""
    ref = reference.open_reference(cfg.reference, c.system.units, box=c.system.box_size,
                                   n_particles=c.system.n_particles)
    size = ref.settings.batch_frames
    if size is None:
        c.learner.set_reference(ref.load("train").positions)
    else:   # streamed: read and featurized batch by batch at every step
        c.learner.set_reference(stream=lambda: (m.positions for m in ref.batches("train", size)), batch=size)
    return DiffTReRegime(c, store, float(cfg.trainer.get("reweight_ratio", 0.9)), _init_from(cfg.trainer),
                         _max_reuse(cfg.trainer))


def _force_matching(cfg, store, c):
    return ForceMatchingRegime(c, store, cfg)


def _static(cfg, store, c):
    return StaticRegime(cfg, store)


TRAINERS: dict[str, TrainerKind] = {
    "difftre": TrainerKind(_difftre, _difftre_states, DiffTRe, state_parallel=("sequential", "devices")),
    "direct_ad": TrainerKind(_on_trainer_cfg(DirectADRegime), _on_trainer_cfg(MultiStateDirectADRegime), DiffTRe),
    "ibi": TrainerKind(_on_trainer_cfg(IBIRegime), _on_trainer_cfg(MultiStateIBIRegime), DiffTRe),
    "force_matching": TrainerKind(_force_matching, None, ForceMatching, keys=force_matching_keys,
                                  reference="forces", samples=False),
    "relative_entropy": TrainerKind(_relative_entropy, None, RelativeEntropy, reference="positions"),
    "static": TrainerKind(_static, None, None, validate=validate_static, evaluator="static", samples=False),
}


def trainer_kind(kind) -> TrainerKind:
    """The registry entry of ``trainer.kind`` (UserError naming the known kinds otherwise)."""
    if not isinstance(kind, str) or kind not in TRAINERS:
        raise UserError(f"trainer.kind: unknown trainer {kind!r}",
                        f"use one of {', '.join(TRAINERS)} (trainer=NAME)")
    return TRAINERS[kind]
