"""Staged (fused) training: several trainers one after another in one run directory
(``stages:`` in the config), e.g. bottom-up force matching, then top-down DiffTRe:

    stages:
      - {trainer: force_matching, epochs: 100}
      - {trainer: difftre, updates: 100, targets: [rdf, adf, pressure]}

Each entry names a trainer (its settings: the run's ``trainer`` group if it is the same
trainer — a preset's tuned keys —, else configs/trainer/NAME.yaml's defaults) and may set that
trainer's keys (``epochs``, ``updates``, ``batch_size`` …) and replace groups for the stage:
``targets``/``observables`` (a list: those entries of the run's own group; a name: the group
option configs/GROUP/NAME.yaml; a mapping: the group itself), ``optimizer``/``simulator``/
``reference`` (a name or a mapping). Everything else — system, prior, model, seed — is the run's.

Stage k runs in RUN/stageK_TRAINER/ as a run of its own (checkpoints, metrics, resume); stage
k > 1 starts from stage k − 1's final parameters (``trainer.init_from=run:…``). RUN/metrics.csv
holds every stage's rows with a ``stage`` column. Resuming RUN skips the finished stages and
continues the one that was stopped (train.py).
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from .checks import mapping
from .config_files import CONFIG_DIR
from .errors import UserError

#: groups a stage may replace; a list under the first two selects entries of the run's group
LIST_GROUPS = ("targets", "observables")
NAMED_GROUPS = ("optimizer", "simulator", "reference")


def is_staged(cfg) -> bool:
    return isinstance(cfg, DictConfig) and OmegaConf.select(cfg, "stages", default=None) is not None


def stage_dir(run_dir, k: int, trainer: str) -> Path:
    return Path(run_dir) / f"stage{k}_{trainer}"


def stage_configs(cfg: DictConfig, run_dir=None) -> list[tuple[str, DictConfig]]:
    """[(stage directory name, the full config of that stage)], in order. With ``run_dir``,
    stage k > 1 starts from stage k − 1's run (``trainer.init_from=run:…``); without it (config
    validation) from the stage's own ``init_from``."""
    stages = cfg.get("stages")
    example = "stages=[{trainer: force_matching, epochs: 100}, {trainer: difftre, updates: 100}]"
    if not isinstance(stages, ListConfig) or len(stages) == 0:
        raise UserError("stages must be a non-empty list of stages", f"e.g. {example}")
    if cfg.get("states") is not None:
        raise UserError("stages and states (several state points) cannot be combined",
                        "train the state points in one stage-free run (stages=null)")
    if cfg.get("interleave") is not None:
        raise UserError("stages and interleave cannot be combined",
                        "interleave the trainers in a run of their own (stages=null), or run them as stages")
    out, previous = [], None
    for k, st in enumerate(stages, 1):
        name, sub = entry_config(cfg, st, f"stages[{k - 1}]", example)
        if previous is not None and run_dir is not None:
            sub.trainer.init_from = f"run:{stage_dir(run_dir, k - 1, previous)}"
        out.append((f"stage{k}_{name}", sub))
        previous = name
    return out


def entry_config(cfg: DictConfig, st, key: str, example: str, skip: tuple = ()) -> tuple[str, DictConfig]:
    """(trainer name, the full config) of one entry ``st`` of a list of trainers (``stages`` here,
    ``interleave`` in interleave.py): the run's config with the entry's trainer (the run's own
    ``trainer`` group when it is the same trainer, else its YAML) updated by the entry's keys and
    with the groups the entry replaces. ``skip``: entry keys that are not the trainer's."""
    mapping(st, key, example)
    known = {p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml")}
    name = st.get("trainer")
    if name not in known:
        raise UserError(f"{key}.trainer: unknown trainer {name!r}", f"use one of {', '.join(sorted(known))}")
    base = OmegaConf.to_container(cfg, resolve=False)
    for drop in ("stages", "interleave", "hydra", "resume"):
        base.pop(drop, None)
    # the run's own trainer settings when the entry uses the run's trainer (a preset's tuned
    # keys), else the trainer's defaults
    same = OmegaConf.select(cfg, "trainer.kind", default=None) == name
    trainer = OmegaConf.create(base["trainer"]) if same else OmegaConf.load(CONFIG_DIR / "trainer" / f"{name}.yaml")
    own = {k2: v for k2, v in st.items() if k2 != "trainer" and k2 not in LIST_GROUPS + NAMED_GROUPS + skip}
    trainer = OmegaConf.merge(trainer, own)
    for group in LIST_GROUPS + NAMED_GROUPS:
        if st.get(group) is not None:
            base[group] = _group(cfg, group, st.get(group), f"{key}.{group}")
    base["trainer"] = OmegaConf.to_container(trainer, resolve=True)
    return name, OmegaConf.create(base)

def _group(cfg, group: str, value, key: str):
    """A stage's value of ``group``: entries of the run's group (a list), a group option (a
    name) or the group itself (a mapping)."""
    if isinstance(value, str):
        path = CONFIG_DIR / group / f"{value}.yaml"
        if not path.is_file():
            options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
            raise UserError(f"{key}: no {group} option {value!r}", f"use one of {', '.join(options)}")
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        return loaded.get(group, loaded) if set(loaded) == {group} else loaded
    if isinstance(value, ListConfig) and group in LIST_GROUPS:
        own = cfg.get(group) or {}
        missing = [v for v in value if v not in own]
        if missing:
            raise UserError(f"{key}: {missing} are not entries of the run's {group} ({', '.join(map(str, own))})",
                            f"list names of the run's {group}, or give a {group} option name or mapping")
        return {str(v): OmegaConf.to_container(own[v], resolve=False) for v in value}
    mapping(value, key, f"{key}=NAME (a configs/{group}/ option) or a mapping")
    return OmegaConf.to_container(value, resolve=False)
