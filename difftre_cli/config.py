"""Validation of a composed config before anything is compiled or written.

Every check raises :class:`UserError` naming the dotted key and the fix. Files named in the
config (structure, targets) are opened and checked here too, so that a bad run fails in seconds.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from . import (
    metric_log,
    molecule_setup,
    observables,
    onebody,
    optim,
    potentials,
    reference,
    targets,
)
from .checks import choice, mapping, number
from .compare import check_compare_with
from .config_files import CONFIG_DIR
from .errors import UserError
from .interleave import interleave_entries, is_interleaved
from .learn import registry, step_rule
from .learn.boltzmann import check_init_from
from .learn.difftre import PRECONDITIONERS
from .potentials import external, manybody, mixture
from .sampler import sampler_config
from .stages import is_staged, stage_configs
from .states import is_multistate, state_configs
from .stress_strain import settings as stress_strain_settings
from .system import build_system, min_image_distance

GROUPS = ("system", "prior", "model", "simulator", "observables", "targets", "optimizer", "trainer")
#: top-level keys besides the groups (configs/train.yaml)
TOP_LEVEL = ("name", "seed", "precision", "resume", "ground_truth", "states", "reduced_overrides", "evaluate",
             "classical", "reference", "topology", "logger", "hydra", "stages", "interleave")   # classical: the potential of trainer=static presets
#: trainer keys the training loop (train.py) reads whatever the kind; a kind's own keys are those
#: of its YAML, configs/trainer/KIND.yaml (the YAML is the schema: adding a key is adding it there).
#: A key of another kind is ignored (a preset's trainer settings survive ``trainer=OTHER``).
LOOP_KEYS = ("kind", "updates", "checkpoint_every", "checkpoint_seconds", "max_failures", "lr_reduction", "init_from",
             "average")


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None)


def trainer_kind(cfg: DictConfig):
    """The trainer registry's entry of ``cfg``'s ``trainer.kind`` (UserError if unknown)."""
    if not isinstance(_get(cfg, "trainer"), DictConfig):
        raise UserError("config group 'trainer' is missing", "select one, e.g. trainer=difftre")
    return registry.trainer_kind(_get(cfg, "trainer.kind"))


#: the trainer registry's evaluator -> its evaluate defaults, configs/evaluate/NAME.yaml
EVALUATE_DEFAULTS = {"md": "default", "static": "static"}
#: evaluate keys read with a default of the code's when absent (they have none in the YAML)
EVALUATE_OPTIONAL = ("potential_r_min", "potential_error_range", "delta_range")


def evaluate_defaults_name(cfg: DictConfig) -> str | None:
    """The evaluate defaults (configs/evaluate/NAME.yaml) that ``difftre evaluate`` composes
    under a trained run's config, so that keys introduced after it was trained exist and can be
    overridden: the trainer registry's evaluator of the run's kind. None if the run has no
    evaluate section or an unknown trainer (validate() reports that)."""
    if cfg.get("evaluate") is None or not isinstance(_get(cfg, "trainer"), DictConfig):
        return None
    try:
        return EVALUATE_DEFAULTS.get(trainer_kind(cfg).evaluator)
    except UserError:
        return None


def validate(cfg: DictConfig) -> None:
    """Raise UserError for the first problem found in ``cfg`` (each state point's config in
    turn when ``states`` lists several, see states.py; each stage's when ``stages`` does, see
    stages.py). The logger group's keys are checked too; its package is imported only by
    ``difftre train`` (metric_log.check_installed) and the trainer."""
    metric_log.check(cfg)
    if is_staged(cfg):
        for _, sub in stage_configs(cfg):
            validate(sub)
        return
    if is_interleaved(cfg):
        _validate_one(_without(cfg, "interleave"))   # the run's own trainer: the loop's settings
        for e in interleave_entries(cfg):
            validate(e.cfg)
        return
    if is_multistate(cfg):
        kind, name = trainer_kind(cfg), _get(cfg, "trainer.kind")
        if kind.multistate is None:
            raise UserError(f"states (several state points) are not supported by trainer={name}",
                            "fit one structure per run (states=null)")
        mode = _get(cfg, "trainer.state_parallel")
        able = [k for k, v in registry.TRAINERS.items() if mode in v.state_parallel]
        if mode not in kind.state_parallel and able:
            able = " / ".join(able)
            raise UserError(f"trainer.state_parallel={mode} is implemented for trainer={able} only, not "
                            f"trainer={name}", "set trainer.state_parallel=sequential")
        if _get(cfg, "trainer.max_reuse") is not None:
            raise UserError("trainer.max_reuse is not supported with several state points (states) yet",
                            "set trainer.max_reuse=null (each state point resamples when its N_eff drops)")
        _validate_one(_without(cfg, "states"))   # the base config: the state point of `difftre evaluate states=null`
        for _, sub in state_configs(cfg):
            _validate_one(sub)
        return
    _validate_one(cfg)


def _without(cfg: DictConfig, key: str) -> DictConfig:
    """A copy of ``cfg`` with top-level ``key`` null."""
    base = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(base):
        base[key] = None
    return base


def _unknown_keys(cfg: DictConfig) -> None:
    """Keys that nothing reads (typically appended with ``+key=…`` or misspelt in a preset)."""
    unknown = sorted(str(k) for k in cfg if k not in GROUPS and k not in TOP_LEVEL)
    if unknown:
        raise UserError(f"unknown top-level key(s) {', '.join(unknown)}",
                        f"remove them; the top-level keys are {', '.join(TOP_LEVEL[:-1])} and the groups "
                        f"{', '.join(GROUPS)}")
    ev = _get(cfg, "evaluate")
    if isinstance(ev, DictConfig):   # the keys of every configs/evaluate/*.yaml (one evaluator's are ignored by another)
        known = set(EVALUATE_OPTIONAL)
        for schema in sorted((CONFIG_DIR / "evaluate").glob("*.yaml")):
            known |= {str(k) for k in OmegaConf.load(schema)}
        unknown = sorted(str(k) for k in ev if k not in known)
        if unknown:
            raise UserError(f"evaluate: unknown key(s) {', '.join(unknown)} (no evaluation reads them)",
                            f"remove them; the evaluate keys are {', '.join(sorted(known))}")
    kind = _get(cfg, "trainer.kind")
    if not isinstance(_get(cfg, "trainer"), DictConfig):
        return   # checked below
    own = set(LOOP_KEYS)
    known = set(LOOP_KEYS)
    for schema in sorted((CONFIG_DIR / "trainer").glob("*.yaml")):
        keys = {str(k) for k in OmegaConf.load(schema)}
        known |= keys
        if schema.stem == kind:
            own |= keys
    unknown = sorted(str(k) for k in cfg.trainer if k not in known)
    if unknown:
        raise UserError(f"trainer: unknown key(s) {', '.join(unknown)} (no trainer reads them)",
                        f"remove them; the keys of trainer={kind} are {', '.join(sorted(own))}")


def _validate_one(cfg: DictConfig) -> None:
    """Raise UserError for the first problem found in a single-state ``cfg``.

    Order: top-level keys, the system (no JAX import needed), then each group's own checks
    (its builder's), then cross-group checks (cutoff and observable ranges against the box,
    overlapping start positions).
    """
    _unknown_keys(cfg)
    kind = trainer_kind(cfg)
    if kind.validate is not None:   # a trainer with checks of its own (trainer=static: 0 K fits, no MD)
        kind.validate(cfg)
        _validate_loop(cfg.trainer)
        return

    for g in GROUPS:
        if _get(cfg, g) is None:
            raise UserError(f"config group {g!r} is missing", f"select one, e.g. {g}=<option>")
        mapping(_get(cfg, g), g, f"{g}=<option> (difftre --help lists the groups)")
    if _get(cfg, "precision") not in ("single", "double"):
        raise UserError(f"precision must be single or double, got {_get(cfg, 'precision')!r}", "set precision=single")
    number(cfg, "seed", prefix="", integer=True, lo=0, hi=2 ** 32 - 1, example="0")

    # system first: it reads the structure file and needs no JAX (fails in a second). One-body
    # systems (system.kind=ideal_gas_1d, particles on a line, no box) are checked in onebody.py.
    one_body = onebody.is_one_body_system(cfg.system)
    molecule = None if one_body or not molecule_setup.is_molecule(cfg) else molecule_setup.build(cfg, fit=False)
    system = None if one_body else molecule.system if molecule else build_system(cfg.system)

    updates = _validate_trainer(cfg.trainer, own_keys=kind.keys)
    _validate_evaluate(cfg)

    if _validate_one_body(cfg):
        return

    # Build the cheap, jax-free parts group by group; this opens and checks every file.
    cutoff = number(cfg.model, "cutoff", prefix="model", lo=0.0, lo_open=True, required=False, default=2.5,
                    example="2.5")
    if molecule is None:   # a molecule's potential was built with its topology
        potentials.build(cfg.prior, cfg.model, cutoff, system.species_names)
    sampler_config(cfg.simulator)
    obs = observables.build(cfg.observables)
    for name, o in obs.items():   # reach within half the box; structure_factor: a wave vector in every bin
        if system.box_size is not None:
            o.check_box(system.box_size)
        elif not o.open_space:
            raise UserError(f"observables.{name} ({type(o).__name__}) needs a periodic box, and this molecule is in "
                            "open space (system.periodic=false)",
                            "use internal-coordinate observables (bonds, angles, dihedrals, phi_psi) or a box")
    targets.build(cfg.targets, obs, system.units)
    optim.build(cfg.optimizer, updates)
    _check_newton_optimizer(cfg)
    if len(system.species_names) > 1:
        mixture.ground_truth(_get(cfg, "ground_truth"), cutoff, system.species_names)
    else:
        potentials.ground_truth(_get(cfg, "ground_truth"), cutoff)
    for name, o in obs.items():   # partial RDFs name species of the system
        for sp in o.pair or ():
            if sp not in system.species_names:
                raise UserError(f"observables.{name}.pair: no species {sp!r} in the system "
                                f"(system.species: {list(system.species_names)})",
                                "name species as in system.species")

    _cross_checks(cfg, system, cutoff)
    # reference data of a finer simulation (reference=none: null): readable, mapped onto this system
    if kind.reference and not reference.is_set(_get(cfg, "reference")):
        raise UserError(f"trainer={cfg.trainer.kind} learns from a reference trajectory, and reference is none",
                        "select one and point it at your file: reference=lammps_dump reference.file=PATH "
                        "(or reference=water_trr, or an H5MD / extended-XYZ file)")
    reference.check(_get(cfg, "reference"), system.units, box=system.box_size, n_particles=system.n_particles,
                    require_forces=kind.reference == "forces")


def _validate_loop(tc) -> int:
    """The keys the training loop (train.py) reads, whatever the trainer; its updates."""
    T = "trainer"
    updates = number(tc, "updates", prefix=T, integer=True, lo=1, example="300")
    number(tc, "checkpoint_every", prefix=T, integer=True, lo=1, required=False, example="10")
    number(tc, "checkpoint_seconds", prefix=T, lo=0.0, lo_open=True, required=False, example="600")
    number(tc, "max_failures", prefix=T, integer=True, lo=1, required=False, example="5")
    number(tc, "lr_reduction", prefix=T, lo=0.0, lo_open=True, hi=1.0, required=False, example="0.5")
    number(tc, "average", prefix=T, lo=0.0, hi=1.0, hi_open=True, required=False, example="0.9")
    check_init_from(tc.get("init_from"))
    return updates


def _validate_trainer(tc, own_keys=None) -> int:
    """The MD trainers' keys (no builder of its own here: the learner reads them), or a kind's
    own key checks (``own_keys``, the registry's ``keys``); its updates."""
    T = "trainer"
    updates = _validate_loop(tc)
    if own_keys is not None:
        own_keys(tc, updates)
        return updates
    number(tc, "reweight_ratio", prefix=T, lo=0.0, hi=1.0, required=False, example="0.9")
    number(tc, "max_reuse", prefix=T, integer=True, lo=0, required=False, example="5")
    number(tc, "max_loss_ratio", prefix=T, lo=1.0, lo_open=True, required=False, example="2")
    choice(tc, "precondition", PRECONDITIONERS, prefix=T, default="none", what="preconditioner")
    number(tc, "damping", prefix=T, lo=0.0, required=False, example="0.001")
    number(tc, "shrinkage", prefix=T, lo=0.0, hi=1.0, required=False, example="0.8")
    if tc.get("precondition") == "gauss_newton" and tc.get("kind") == "relative_entropy":
        raise UserError("trainer.precondition=gauss_newton needs a sum-of-squares loss; relative entropy's is not one",
                        "use trainer.precondition=fisher or none")
    # several state points (states): sequential | devices (learn/multistate.py); no effect on one state point
    choice(tc, "state_parallel", ("sequential", "devices"), prefix=T, default="sequential", what="mode")
    number(tc, "fisher_damping", prefix=T, lo=0.0, required=False, example="0.001")
    # ibi and direct_ad take no reweighted steps and ignore it (as they ignore precondition: a
    # preset derived from lj keeps lj's trainer keys); relative entropy would, but has no line search
    if step_rule.build(tc, 0.9).searches and tc.get("kind") == "relative_entropy":
        raise UserError("trainer.step_rule=line_search is implemented for trainer=difftre, not trainer=relative_entropy",
                        "set trainer.step_rule=fixed")
    return updates


def _validate_evaluate(cfg: DictConfig) -> None:
    """The evaluate section (step counts, ranges, stress–strain against the model)."""
    ev = _get(cfg, "evaluate")
    if ev is not None:
        mapping(ev, "evaluate", "evaluate=default")
        number(ev, "equilibration_steps", prefix="evaluate", integer=True, lo=0, required=False, example="5000")
        steps = number(ev, "production_steps", prefix="evaluate", integer=True, lo=1, required=False,
                       default=20000, example="20000")
        every = number(ev, "every", prefix="evaluate", integer=True, lo=1, required=False, default=20, example="20")
        if steps < every:
            raise UserError(f"evaluate.production_steps={steps} is smaller than evaluate.every={every}: "
                            "no snapshot would be kept", "raise evaluate.production_steps or lower evaluate.every")
        number(ev, "potential_r_min", prefix="evaluate", lo=0.0, lo_open=True, required=False, example="0.8")
        number(ev, "chunk_steps", prefix="evaluate", integer=True, lo=1, required=False, example="2000")
        rng = ev.get("potential_error_range")
        if rng is not None:
            ok = (not isinstance(rng, (str, bytes)) and hasattr(rng, "__len__") and len(rng) == 2
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng)
                  and 0 < rng[0] < rng[1])
            if not ok:
                raise UserError(f"evaluate.potential_error_range must be two numbers 0 < a < b, got {rng!r}",
                                "set evaluate.potential_error_range=[0.95,2.5]")
        check_compare_with(ev.get("compare_with"))
        if stress_strain_settings(ev) is not None and _get(cfg, "model") is not None \
                and cfg.model.get("kind") not in manybody.GRAPH_MODELS:
            raise UserError("evaluate.stress_strain strains a crystal under a many-body potential; "
                            f"model.kind={cfg.model.get('kind')!r} is not one",
                            "use model=three_body or model=dimenet, or set evaluate.stress_strain=null")


def _check_newton_optimizer(cfg: DictConfig) -> None:
    """The Gauss–Newton step (trainer.precondition=gauss_newton of difftre and force_matching)
    has a length of its own: a learning rate of 1 takes the whole step and the step rule scales
    it. Adam divides each coordinate by its running RMS, so it keeps only the step's signs and
    moves every parameter by about lr per update whatever the residuals say (config=lj_mixture
    ran so until 2026-12-07: scripts/bench/README.md)."""
    if (_get(cfg, "trainer.kind") in ("difftre", "force_matching") and _get(cfg, "trainer.precondition") == "gauss_newton"
            and _get(cfg, "optimizer.kind") == "adam"):
        raise UserError("trainer.precondition=gauss_newton with optimizer=adam: Adam rescales every coordinate of "
                        "the Gauss-Newton step to about lr, so the step is no longer the Newton step",
                        "use optimizer=sgd optimizer.lr=1.0 optimizer.schedule=constant (lr 1: the whole step)")


def _cross_checks(cfg: DictConfig, system, cutoff: float) -> None:
    """Checks across groups: cutoff against the box (observables check their reach themselves,
    ``check_box``), overlapping atoms. Open space (a molecule) has no box to check against."""
    if system.box_size is None:
        return
    half = 0.5 * system.box_size
    if cutoff >= half:
        raise UserError(f"model.cutoff={cutoff:g} is not below half the box ({half:.4g})",
                        "use more particles (system.n_particles) or a smaller cutoff")
    if _get(cfg, "system.structure") is not None:
        d, i, j = min_image_distance(system.positions, system.box_size)
        if d < 0.1 * cutoff:
            raise UserError(f"system.structure: atoms {i} and {j} of {_get(cfg, 'system.structure')} are "
                            f"{d:.4g} {system.units.length} apart, closer than 0.1 × model.cutoff "
                            f"({0.1 * cutoff:.4g}): overlapping particles make the first MD step explode",
                            "remove duplicate atoms or relax the structure (e.g. a short energy minimisation)")


def _validate_one_body(cfg) -> bool:
    """Checks of the parts that differ for one-body systems; True if ``cfg`` is one (then the
    periodic-box checks do not apply), False otherwise. Raises UserError on a mismatch."""
    one_body_potential = external.is_external(cfg.prior, cfg.model)
    if not onebody.is_one_body_system(cfg.system):
        if one_body_potential:
            raise UserError(f"prior.kind={cfg.prior.get('kind')!r} / model.kind={cfg.model.get('kind')!r} is a "
                            f"one-body potential but system.kind is not {onebody.KIND}",
                            f"use system=double_well (system.kind={onebody.KIND}) or a pair prior/model")
        return False
    if not one_body_potential:
        raise UserError(f"system.kind={onebody.KIND} needs a one-body potential (got prior.kind={cfg.prior.get('kind')!r}, "
                        f"model.kind={cfg.model.get('kind')!r})",
                        "use prior=harmonic_1d (or double_well) and model=spline_1d (or mlp_1d)")
    system = onebody.build_line_system(cfg.system)
    obs = observables.build(cfg.observables)
    bad = sorted(n for n, o in obs.items() if type(o).__name__ not in ("Density", "PotentialEnergy"))
    if bad:
        raise UserError(f"observables {bad} are not defined for system.kind={onebody.KIND}",
                        "use observables=density (density profile; energy is allowed too)")
    targets.build(cfg.targets, obs, system.units)
    external.build(cfg.prior, cfg.model)
    onebody.check_integrator(sampler_config(cfg.simulator))
    optim.build(cfg.optimizer, int(cfg.trainer.updates))
    return True
