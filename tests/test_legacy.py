"""Configs of older versions (difftre_cli/legacy.py): a saved config with simulator.integrator and
optimizer.name, and the overrides a resumed run replays, are read with today's names; an old name
on a new command line stops with exit 2 and the new name. Nothing here trains (compose + validate)."""
from __future__ import annotations

import h5py
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from difftre_cli import cli, commands, run_dirs
from difftre_cli.config import validate
from difftre_cli.config_files import CONFIG_DIR
from difftre_cli.errors import UserError
from difftre_cli.legacy import check_overrides, translate_config, translate_overrides
from difftre_cli.run_config import compose_run


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


def _old_style(cfg) -> dict:
    """The job config as an older version saved it: simulator.integrator, optimizer.name."""
    old = OmegaConf.to_container(cfg, resolve=False)
    old["simulator"]["integrator"] = old["simulator"].pop("kind")
    old["optimizer"]["name"] = old["optimizer"].pop("kind")
    return old


def test_old_saved_config_is_translated_and_validates(tmp_path, caplog):
    cfg = _compose("config=tiny")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_old_style(cfg)))
    with caplog.at_level("WARNING", logger="difftre"):
        loaded = translate_config(OmegaConf.load(path), str(path))
    assert OmegaConf.to_container(loaded) == OmegaConf.to_container(cfg, resolve=False)
    assert "simulator.integrator (renamed since this run was trained) read as simulator.kind" in caplog.text
    assert "optimizer.name (renamed since this run was trained) read as optimizer.kind" in caplog.text
    validate(loaded)
    # a state point's own simulator settings are translated too; a new config is left alone
    states = OmegaConf.create({"states": {"a": {"simulator": {"integrator": "nve"}}}})
    assert translate_config(states, "x").states.a.simulator == {"kind": "nve"}
    assert translate_config(OmegaConf.create({"simulator": {"kind": "nve"}}), "x").simulator == {"kind": "nve"}



def test_evaluate_composes_an_old_saved_config_with_todays_names(tmp_path):
    """`difftre evaluate` translates the saved config before Hydra composes it: today's names
    can be overridden, and the old ones are gone."""
    cfg = _compose("config=tiny")
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(_old_style(cfg)))
    composed = compose_run(run, ["simulator.kind=langevin", "optimizer.lr=0.02"])
    assert composed.simulator.kind == "langevin" and "integrator" not in composed.simulator
    assert composed.optimizer.lr == 0.02 and "name" not in composed.optimizer
    validate(composed)

def test_auto_resume_accepts_a_checkpoint_written_with_the_old_names(tmp_path):
    """hydra.run.dir holding a checkpoint of the same config (a requeued job): same config,
    although its copy in difftre.h5 uses the old key names."""
    cfg = _compose("config=tiny")
    with h5py.File(tmp_path / "difftre.h5", "w") as f:
        f.attrs["config"] = yaml.safe_dump(_old_style(cfg))
    assert run_dirs.auto_resume(cfg, tmp_path) is True
    other = _compose("config=tiny", "simulator.kind=nose_hoover")
    with pytest.raises(UserError, match="different config"):
        run_dirs.auto_resume(other, tmp_path)


def test_resume_replays_old_overrides_with_todays_names(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        ["config=lj", "simulator.integrator=nose_hoover", "optimizer.name=adam", "observables=rdf_pressure",
         "targets=lj_liquid_rdf_pressure", "trainer.updates=5"]))
    replayed = commands._resume_overrides([f"resume={tmp_path}"])
    assert replayed[:6] == ["config=lj", "simulator.kind=nose_hoover", "optimizer.kind=adam",
                            "observables=[rdf,pressure]", "targets=[lj_liquid_rdf,lj_liquid_pressure]",
                            "trainer.updates=5"]
    cfg = _compose(*replayed[:6])
    assert cfg.simulator.kind == "nose_hoover" and cfg.optimizer.kind == "adam"
    assert set(cfg.observables) == {"rdf", "pressure"} and set(cfg.targets) == {"rdf", "pressure"}


def test_translate_overrides_keeps_prefixes_and_other_overrides():
    assert translate_overrides(["+simulator.integrator=nve", "~optimizer.name", "optimizer.lr=0.1",
                                "states.a.simulator.integrator=nve"], "x") == \
        ["+simulator.kind=nve", "~optimizer.kind", "optimizer.lr=0.1", "states.a.simulator.kind=nve"]


@pytest.mark.parametrize("override, needles", [
    ("simulator.integrator=nve", ["simulator.integrator was renamed to simulator.kind", "fix: use simulator.kind=nve"]),
    ("optimizer.name=sgd", ["optimizer.name was renamed to optimizer.kind", "fix: use optimizer.kind=sgd"]),
    ("+optimizer.name=sgd", ["optimizer.kind", "fix: use +optimizer.kind=sgd"]),
    ("observables=rdf_pressure", ["observables=rdf_pressure was split", "observables=[rdf,pressure]"]),
])
def test_old_name_on_a_new_command_line_is_a_user_error(tmp_path, capsys, override, needles):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "config=tiny", f"hydra.run.dir={run}", override])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("difftre: error:")]) == 1
    for needle in needles:
        assert needle in err
    assert not run.exists()
    with pytest.raises(UserError, match="renamed"):
        check_overrides(["config=tiny", "states.a.simulator.integrator=nve"])
