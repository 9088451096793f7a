"""`difftre evaluate` is one evaluator of sections (evaluate.py): the trainer registry's
evaluator name selects the section set, and each section's rule reads the config alone."""
from __future__ import annotations

from omegaconf import OmegaConf

from difftre_cli import plots
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


def test_the_training_plot_shows_n_eff_on_its_own_scale(tmp_path, monkeypatch):
    """N_eff runs from 0 to S: a run whose trajectories are always reweighted at their own
    parameters (N_eff = S up to rounding) shows a flat line at S, not rounding noise blown up
    around an offset (as a 64-atom diamond run's training.png did: "+1e2", ticks of 2.5e-5)."""
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    rows = [{"update": k, "loss": 1.0 / (k + 1), "n_eff": 100.0 + 5e-5 * (-1) ** k, "update_time": 1.0,
             "sample_time": 0.5} for k in range(6)]
    plots.plot_training(tmp_path, rows)
    ax = figs[0].axes[1]
    figs[0].canvas.draw()
    assert ax.get_title() == "N_eff" and ax.get_ylim()[0] == 0.0 and ax.get_ylim()[1] >= 100.0
    assert ax.yaxis.get_major_formatter().get_offset() == ""
    plots.plt.close(figs[0])
