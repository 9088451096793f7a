"""The all-atom water reference: the committed target file against the water configs (always),
and a tiny OpenMM run of scripts/reference_water.py (skipped without the `reference` extra)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

from difftre_cli import observables, targets, units

ROOT = Path(__file__).resolve().parent.parent
TARGET_FILE = ROOT / "configs/targets/data/water_spce_296K.h5"


def _script():
    spec = importlib.util.spec_from_file_location("reference_water", ROOT / "scripts/reference_water.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check_file(path: Path, obs: dict):
    """Structure and units of a reference file made for the observables ``obs``."""
    with h5py.File(path, "r") as f:
        for key in ("water_model", "n_molecules", "box_nm", "temperature_K", "length_ps", "discarded_ps",
                    "every_ps", "n_snapshots", "seed", "openmm_version", "platform", "simulated_with",
                    "analysed_with", "simulated_on", "pressure_method"):
            assert key in f.attrs, key
        assert "SPC/E" in f.attrs["water_model"]
        assert f["rdf"].attrs["x_unit"] == "nm" and f["adf"].attrs["x_unit"] == "rad"
        for name in ("rdf", "adf"):
            g = f[name]
            x, y, err = g["x"][()], g["y"][()], g["y_err"][()]
            np.testing.assert_allclose(x, obs[name].grid, rtol=1e-12)     # the observable's own grid
            assert y.shape == err.shape == x.shape and np.all(np.isfinite(y)) and np.all(err >= 0)
            definition = json.loads(g.attrs["definition"])
            for k in ("n_bins", "sigma"):
                assert definition[k] == pytest.approx(getattr(obs[name], k))
        assert json.loads(f["adf"].attrs["definition"])["r_cut"] == obs["adf"].r_cut
        assert np.sum(f["adf/y"][()]) * np.pi / obs["adf"].n_bins == pytest.approx(1.0, rel=1e-6)
        p = f["pressure"]
        assert p.attrs["unit"] == "bar" and np.isfinite(p.attrs["value"]) and p.attrs["stderr"] >= 0
        assert len(p["series"]) == f.attrs["n_snapshots"]
        assert 0.0 < f["q"].attrs["value"] < 1.0
        return dict(f.attrs), f["rdf/x"][()], f["rdf/y"][()], f["adf/y"][()]


def test_committed_water_targets_match_the_water_configs():
    assert TARGET_FILE.stat().st_size < 200_000
    obs = observables.build(_script().water_observables())
    assert set(obs) == {"rdf", "adf", "pressure", "q"}
    attrs, r, g, p = _check_file(TARGET_FILE, obs)
    assert attrs["n_molecules"] == 901 and attrs["box_nm"] == 3.0 and attrs["temperature_K"] == 296.15
    assert attrs["n_snapshots"] >= 500
    # liquid water: first O–O peak near 0.275 nm, about 3 high; g → 1 at 1 nm
    assert 0.27 < r[np.argmax(g)] < 0.285 and 2.5 < g.max() < 3.5
    assert abs(g[-20:].mean() - 1.0) < 0.03
    # the targets load through difftre's own reader, on the observables' grids, in internal units
    tcfg = OmegaConf.load(ROOT / "configs/targets/water.yaml")
    tg = targets.build(tcfg, obs, units.REAL)
    np.testing.assert_allclose(tg["rdf"].value, g, rtol=1e-12)
    np.testing.assert_allclose(tg["adf"].value, p, rtol=1e-12)
    assert float(tg["pressure"].value) == pytest.approx(1.0 / units.BAR_PER_KJ_MOL_NM3)
    assert tg["pressure"].gamma == 1e-7 and tg["rdf"].gamma == tg["adf"].gamma == 1.0


def test_adf_target_in_degrees_equals_the_file_in_radians(tmp_path):
    """A user's own ADF file in degrees gives the same target as the committed one in rad."""
    obs = observables.build(_script().water_observables())
    with h5py.File(TARGET_FILE, "r") as f:
        x, y = f["adf/x"][()], f["adf/y"][()]
    text = tmp_path / "adf_deg.csv"
    text.write_text("# alpha (deg), p (1/rad)\n" + "\n".join(f"{a:.12f},{b:.12f}" for a, b in zip(np.degrees(x), y)))
    t = targets.build(OmegaConf.create({"adf": {"file": str(text), "x_unit": "deg"}}), obs, units.REAL)
    np.testing.assert_allclose(t["adf"].value, y, rtol=1e-8, atol=1e-9)


def test_tiny_openmm_run_writes_a_complete_target_file(tmp_path):
    pytest.importorskip("openmm")
    mod = _script()
    obs_cfg = tmp_path / "obs.yaml"       # a 50-molecule box is 1.14 nm wide: a shorter RDF
    obs_cfg.write_text("rdf: {kind: rdf, r_max: 0.5, n_bins: 50}\n"
                       "adf: {kind: adf, r_cut: 0.318, n_bins: 30, cdf_width: 0.005}\n"
                       "pressure: {kind: pressure}\nq: {kind: tetrahedral_q, reach: 0.45}\n")
    out = tmp_path / "water.h5"
    box = (50 * mod.WATER_MOLAR_MASS / mod.AVOGADRO / 0.998e-21) ** (1 / 3)   # nm, ρ = 998 g/l
    traj = tmp_path / "o.npz"
    summary = mod.main(["--molecules", "50", "--box", f"{box:.4f}", "--cutoff", "0.5", "--length-ps", "0.6",
                        "--discard-ps", "0.2", "--every-ps", "0.1", "--blocks", "2", "--threads", "1",
                        "--observables", str(obs_cfg), "--out", str(out), "--save-trajectory", str(traj)])
    obs = observables.build(OmegaConf.load(obs_cfg))
    attrs, r, g, p = _check_file(out, obs)
    assert attrs["n_molecules"] == 50 and attrs["n_snapshots"] == 4
    assert attrs["density_g_per_l"] == pytest.approx(998.0, rel=1e-3)
    assert 200 < attrs["temperature_mean"] < 400           # Langevin at 296 K, 0.6 ps after a minimisation
    assert summary["pressure_bar"]["stderr"] >= 0 and summary["diagnostics"]["q:coverage"] == 1.0
    # target files are read by difftre's own reader, each group by the target's name
    t = targets.build(OmegaConf.create({"rdf": {"file": str(out), "x_unit": "nm"},
                                        "adf": {"file": str(out), "x_unit": "rad"}}), obs, units.REAL)
    np.testing.assert_allclose(t["rdf"].value, g)
    # re-analysing the saved trajectory gives the same file content
    out2 = tmp_path / "again.h5"
    mod.main(["--from-trajectory", str(traj), "--observables", str(obs_cfg), "--out", str(out2), "--blocks", "2"])
    with h5py.File(out, "r") as a, h5py.File(out2, "r") as b:
        for k in ("rdf/y", "adf/y", "q/series", "pressure/series"):
            np.testing.assert_array_equal(a[k][()], b[k][()])
