"""`difftre evaluate` is one evaluator of sections (evaluate.py): the trainer registry's
evaluator name selects the section set, and each section's rule reads the config alone."""
from __future__ import annotations

from omegaconf import OmegaConf

from difftre_cli.evaluate import EVALUATORS
from difftre_cli.learn.registry import TRAINERS


def _on(evaluator: str, evaluate: dict | None) -> list[str]:
    cfg = OmegaConf.create({"evaluate": evaluate})
    return [s.name for s in EVALUATORS[evaluator].sections if s.on(cfg)]


def test_every_trainer_names_an_evaluator():
    assert {k.evaluator for k in TRAINERS.values()} <= set(EVALUATORS)
    assert TRAINERS["static"].evaluator == "static" and TRAINERS["difftre"].evaluator == "md"


def test_md_sections_follow_the_config():
    assert _on("md", {"production_steps": 100, "stress_strain": None}) == ["observables", "temperature", "potential"]
    assert _on("md", {"stress_strain": True}) == ["observables", "stress_strain", "temperature", "potential"]
    assert _on("md", {"stress_strain": {"strains": [0.01, 0.02]}}) == ["observables", "stress_strain", "temperature", "potential"]
    assert _on("md", {"stress_strain": False}) == ["observables", "temperature", "potential"]
    assert _on("md", None) == ["observables", "temperature", "potential"]


def test_static_sections_follow_the_config():
    assert _on("static", None) == ["static", "landscape", "files"]                 # the code's defaults
    assert _on("static", {"landscape": {"enabled": False}, "phonons": {"enabled": True}}) == \
        ["static", "phonons", "files"]
    assert _on("static", OmegaConf.to_container(OmegaConf.load("configs/evaluate/static.yaml"))) == \
        ["static", "landscape", "files"]


def test_the_comparison_section_is_on_when_compare_with_lists_runs():
    assert _on("md", {"compare_with": ["runs/a"]}) == ["observables", "temperature", "potential", "comparison"]
    assert _on("md", {"compare_with": []}) == ["observables", "temperature", "potential"]
    assert _on("static", {"compare_with": ["runs/a"]}) == ["static", "landscape", "files", "comparison"]
