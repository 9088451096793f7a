"""`difftre compare`: the literature metrics (Δ, D) and the side-by-side table/figure."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from difftre_cli import cli
from difftre_cli.compare import COMPARISON, check_compare_with
from difftre_cli.errors import UserError
from difftre_cli.evaluate import rdf_deviation
from difftre_cli.observables.rdf import RDF


def test_rdf_deviation_of_a_constant_offset_is_analytic():
    obs = RDF.from_config("rdf", {"kind": "rdf", "r_min": 0.0, "r_max": 3.0, "n_bins": 3000, "sigma": 0.02})
    r = np.asarray(obs.grid)
    g_ref = 1.0 - np.exp(-r ** 2)
    c, rho, rc = 0.1, 0.7, 2.5
    d = rdf_deviation(obs, g_ref + c, g_ref, rho, rc)
    assert d == pytest.approx(4 * np.pi * rho * c ** 2 * rc ** 3 / 3, rel=2e-3)
    assert rdf_deviation(obs, g_ref, g_ref, rho, rc) == 0.0
    assert rdf_deviation(object(), g_ref, g_ref, rho, rc) is None


def _fake_run(d: Path, trainer: str, rmse: float, losses: list[float]):
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(f"trainer:\n  kind: {trainer}\n")
    (d / "difftre.h5").write_bytes(b"")
    grid = np.linspace(0, 3, 30)
    (d / "evaluation.json").write_text(json.dumps({
        "targets": {"rdf": {"rmse": rmse, "grid": grid.tolist(), "observable": (grid * 0 + 1).tolist(),
                            "target": (grid * 0 + 1 + rmse).tolist(), "rdf_deviation_D": 10 * rmse ** 2}},
        "potential": {"r": grid.tolist(), "total": (grid * 0).tolist(), "truth": (grid * 0 - 1).tolist(),
                      "delta": 1.6, "max_abs_error": 1.0}}))
    with open(d / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["update", "loss", "sample_time", "update_time"])
        w.writeheader()
        for i, loss in enumerate(losses):
            w.writerow({"update": i, "loss": loss, "sample_time": 1.0, "update_time": 0.5})


def test_compare_writes_one_table_and_one_figure(tmp_path, capsys):
    _fake_run(tmp_path / "a", "difftre", 0.01, [1.0, 0.5, 0.2])
    _fake_run(tmp_path / "b", "ibi", 0.03, [1.0, 0.8])
    out = tmp_path / "cmp"
    assert cli.main(["compare", f"run={tmp_path / 'a'}", f"run={tmp_path / 'b'}", f"out={out}"]) == 0
    table = json.loads((out / "comparison.json").read_text())["runs"]
    assert [r["trainer"] for r in table] == ["difftre", "ibi"]
    assert table[0]["train_wall_s"] == pytest.approx(4.5) and table[1]["updates"] == 2
    assert table[0]["rmse"]["rdf"] == 0.01 and table[1]["final_loss"] == 0.8
    assert table[0]["delta"] == 1.6
    assert (out / "comparison.png").stat().st_size > 10_000
    assert "difftre compare" in capsys.readouterr().out


def test_compare_needs_evaluated_runs(tmp_path, capsys):
    _fake_run(tmp_path / "a", "difftre", 0.01, [1.0])
    (tmp_path / "b" / ".hydra").mkdir(parents=True)
    (tmp_path / "b" / ".hydra" / "config.yaml").write_text("trainer:\n  kind: difftre\n")
    (tmp_path / "b" / "difftre.h5").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        cli.main(["compare", f"run={tmp_path / 'a'}", f"run={tmp_path / 'b'}", f"out={tmp_path / 'c'}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no evaluation.json" in err and "difftre evaluate run=" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["compare", f"run={tmp_path / 'a'}"])
    assert exc.value.code == 2


def test_comparison_section_puts_the_run_being_evaluated_beside_the_listed_runs(tmp_path, capsys):
    """evaluate.compare_with: the section compares this run's results (not yet written) with
    evaluated runs, into <run>/comparison/, and adds the table to its evaluation.json."""
    _fake_run(tmp_path / "a", "ibi", 0.03, [1.0, 0.8])
    this = tmp_path / "this"
    this.mkdir()
    cfg = OmegaConf.create({"trainer": {"kind": "difftre"}, "evaluate": {"compare_with": [str(tmp_path / "a")]}})
    grid = np.linspace(0, 3, 30).tolist()
    out = {"targets": {"rdf": {"rmse": 0.01, "grid": grid, "observable": [1.0] * 30, "target": [1.01] * 30}}}
    rows = [{"update": "0", "loss": "0.5", "sample_time": "2.0", "update_time": "1.0"}]
    assert COMPARISON.on(cfg)
    COMPARISON.run(SimpleNamespace(cfg=cfg, run_dir=this, rows=rows), out)
    table = out["comparison"]["runs"]
    assert [r["trainer"] for r in table] == ["difftre", "ibi"]
    assert [r["rmse"]["rdf"] for r in table] == [0.01, 0.03]
    assert table[0]["train_wall_s"] == pytest.approx(3.0) and table[1]["final_loss"] == 0.8
    assert json.loads((this / "comparison" / "comparison.json").read_text())["runs"][0]["run"] == str(this)
    assert (this / "comparison" / "comparison.png").stat().st_size > 10_000
    assert not COMPARISON.on(OmegaConf.create({"evaluate": {"compare_with": []}}))


def test_compare_with_names_a_run_that_was_not_evaluated(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(UserError, match=r"evaluate.compare_with\[0\]=.*no evaluation.json"):
        check_compare_with([str(tmp_path / "b")])
    with pytest.raises(UserError, match="must be a list"):
        check_compare_with("runs/a")
    _fake_run(tmp_path / "a", "ibi", 0.03, [1.0])
    assert check_compare_with([str(tmp_path / "a")]) == [tmp_path / "a"]


def _fake_mixture_run(d: Path, trainer: str, rmse: float):
    """An evaluated multi-state mixture run: partial RDFs per state point, one curve per pair."""
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(f"trainer:\n  kind: {trainer}\n")
    grid = np.linspace(0, 3, 30).tolist()
    targets = {f"{s}_rdf_{p}": {"rmse": rmse, "grid": grid, "observable": [1.0] * 30, "target": [1.0 + rmse] * 30,
                                "rdf_deviation_D": 0.01}
               for s in ("xA25", "xA75") for p in ("AA", "AB", "BB")}
    pairs = {p: {"r": grid, "total": [0.0] * 30, "prior": [0.0] * 30, "truth": [-0.5] * 30, "delta": d_,
                 "max_abs_error": 0.5} for p, d_ in (("A-A", 0.1), ("A-B", 0.2), ("B-B", 0.3))}
    (d / "evaluation.json").write_text(json.dumps({"targets": targets, "potential": {
        "pairs": pairs, "delta": 0.6, "max_abs_error": 0.5}}))
    with open(d / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["update", "loss", "sample_time", "update_time"])
        w.writeheader()
        w.writerow({"update": 0, "loss": 0.1, "sample_time": 1.0, "update_time": 0.5})


def test_compare_mixture_overlays_each_pair_potential(tmp_path, capsys):
    """Mixtures keep their curves under potential.pairs: every pair gets a panel with the truth
    and each run's curve (it used to draw an empty 'pair potential' panel)."""
    from difftre_cli.compare import compare
    _fake_mixture_run(tmp_path / "a", "difftre", 0.01)
    _fake_mixture_run(tmp_path / "b", "ibi", 0.02)
    res = compare([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp")
    for p in ("A-A", "A-B", "B-B"):
        assert res["panels"][f"pair potential {p}"] == 3          # truth + two runs
    assert res["panels"]["xA75_rdf_BB"] == 3 and len(res["panels"]) == 6 + 3 + 1
    assert res["runs"][1]["pairs"]["B-B"] == {"delta": 0.3, "max_abs_error": 0.5}
    assert res["runs"][0]["delta"] == 0.6
    out = capsys.readouterr().out        # many targets: one row per metric, one column per run
    assert "train wall [s]" in out and "RMSE xA75_rdf_BB" in out and "max|Δu| B-B" in out
