"""Target files as people have them (targets.py, target_files.py): header CSV, TSV, GROMACS xvg,
npz/h5 with an error array, ``columns`` by name and index; the standard error as
inverse-variance loss weights (mean 1 on the grid, the loss of every learner equal to a hand
computation); the RDF's own Gaussian kernel applied to histogram targets (a Gaussian peak
smoothed with σ is the Gaussian of width √(s² + σ²), the exact convolution); each malformed
case a UserError with a fix. Everything here is numpy on small files: no MD, no compilation.
"""
from __future__ import annotations

from types import SimpleNamespace

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

from difftre_cli import targets, units
from difftre_cli.errors import UserError
from difftre_cli.learn import ibi
from difftre_cli.learn.difftre import DiffTRe
from difftre_cli.observables.density import Density
from difftre_cli.observables.rdf import RDF

RDF_OBS = RDF(name="rdf", r_min=0.0, r_max=2.4, n_bins=60, sigma=0.05)
X = np.linspace(0.0, 3.0, 61)
Y = 1.0 + 0.1 * np.sin(3.0 * X)
ERR = 0.01 + 0.02 * X                  # a standard error growing with r


def _gauss(r, s):
    return np.exp(-0.5 * (r / s) ** 2) / (np.sqrt(2.0 * np.pi) * s)


def _build(tmp_path, text=None, name="t.txt", obs=RDF_OBS, **keys):
    """The target ``rdf`` of ``obs`` from a file written with ``text`` (or an existing ``name``)."""
    if text is not None:
        (tmp_path / name).write_text(text)
    cfg = {"rdf": {"file": str(tmp_path / name), "x_unit": "sigma", "gamma": 1.0, **keys}}
    return targets.build(cfg, {"rdf": obs}, units.LJ)["rdf"]


def _rows(sep=" ", err=False):
    return "\n".join(sep.join(f"{v:.6f}" for v in ((a, b, e) if err else (a, b))) for a, b, e in zip(X, Y, ERR)) + "\n"


@pytest.fixture
def plain(tmp_path):
    """The headerless two-column target, the reference every other format must equal."""
    return _build(tmp_path, _rows(), "plain.txt")


def test_header_csv_equals_headerless(tmp_path, plain):
    t = _build(tmp_path, "r,g\n" + _rows(","), "pandas.csv")   # what pandas.to_csv(index=False) writes
    np.testing.assert_array_equal(t.value, plain.value)
    assert t.error is None and t.weight is None
    t = _build(tmp_path, '"r","g"\n' + _rows(","), "quoted.csv")
    np.testing.assert_array_equal(t.value, plain.value)


def test_pandas_index_column_is_skipped(tmp_path, plain):
    rows = "\n".join(f"{i},{a:.6f},{b:.6f}" for i, (a, b) in enumerate(zip(X, Y)))
    t = _build(tmp_path, ",r,g\n" + rows + "\n", "indexed.csv")
    np.testing.assert_array_equal(t.value, plain.value)


def test_tsv_and_columns_by_name_and_index(tmp_path, plain):
    text = "junk\tg\tr\n" + "\n".join(f"7\t{b:.6f}\t{a:.6f}" for a, b in zip(X, Y)) + "\n"
    by_name = _build(tmp_path, text, "t.tsv", columns=["r", "g"])
    by_index = _build(tmp_path, name="t.tsv", columns=[2, 1])
    np.testing.assert_array_equal(by_name.value, plain.value)
    np.testing.assert_array_equal(by_index.value, plain.value)


def test_xvg_with_at_and_hash_lines(tmp_path, plain):
    text = ('# This file was created by gmx rdf\n@    title "Radial distribution"\n@    xaxis  label "r"\n'
            '@TYPE xy\n@ s0 legend "OW-OW"\n' + _rows("  "))
    np.testing.assert_array_equal(_build(tmp_path, text, "rdf.xvg").value, plain.value)


def test_lammps_fix_ave_time_vector_file_gives_its_last_block(tmp_path, plain):
    """LAMMPS's `fix ave/time ... c_rdf[*] file rdf.lammps mode vector` as it writes it: comment
    lines, then per output step `step nrows` and the rows (index, r, g, coordination number)."""
    head = ("# Time-averaged data for fix rdf\n# TimeStep Number-of-rows\n"
            "# Row c_rdf[1] c_rdf[2] c_rdf[3]\n")
    block = lambda step, g: f"{step} {len(X)}\n" + "".join(   # noqa: E731
        f"{i + 1} {a:.6f} {b:.6f} {5.0 * a:.6f}\n" for i, (a, b) in enumerate(zip(X, g)))
    t = _build(tmp_path, head + block(1000, Y + 7.0) + block(2000, Y), "rdf.lammps")
    np.testing.assert_array_equal(t.value, plain.value)   # the last block; column 3 is not an error
    assert t.error is None
    cut = head + block(1000, Y) + block(2000, Y)[:-40]
    with pytest.raises(UserError, match="truncated"):
        _build(tmp_path, cut.rsplit("\n", 3)[0] + "\n", "cut.lammps")


def test_third_column_gives_normalised_inverse_variance_weights(tmp_path, plain):
    t = _build(tmp_path, "r,g,err\n" + _rows(",", err=True), "e.csv", weight="inverse_variance")
    np.testing.assert_array_equal(t.value, plain.value)
    err_grid = np.interp(RDF_OBS.grid, X, np.round(ERR, 6))
    np.testing.assert_allclose(t.error, err_grid, rtol=1e-12)
    w = 1.0 / err_grid ** 2
    np.testing.assert_allclose(t.weight, w / w.mean(), rtol=1e-12)
    assert abs(t.weight.mean() - 1.0) < 1e-12
    # the error column read, but weight=uniform (default): no weights
    assert _build(tmp_path, name="e.csv").weight is None


def test_weighted_loss_is_the_hand_computation_in_every_learner(tmp_path):
    t = _build(tmp_path, _rows(err=True), "e.txt", weight="inverse_variance", gamma=2.5)
    pred = t.value + 0.05 * np.cos(7.0 * RDF_OBS.grid)
    hand = 2.5 * np.sum(t.weight * (pred - t.value) ** 2) / len(pred)
    assert t.loss(pred) == pytest.approx(hand, rel=1e-12)
    fake = SimpleNamespace(targets={"rdf": t})
    difftre = float(DiffTRe.target_losses(fake, {"rdf": jnp.asarray(pred, jnp.float32)})["rdf"])
    assert difftre == pytest.approx(hand, rel=1e-5)
    assert ibi.target_losses(fake, {"rdf": pred})["rdf"] == pytest.approx(hand, rel=1e-12)
    uniform = _build(tmp_path, name="e.txt", gamma=2.5)
    assert uniform.loss(pred) == pytest.approx(2.5 * np.mean((pred - t.value) ** 2), rel=1e-12)


def test_npz_and_h5_error_arrays(tmp_path):
    np.savez(tmp_path / "a.npz", x=X, y=Y, err=ERR)
    np.savez(tmp_path / "b.npz", r=X, g=Y, s=ERR)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["rdf/x"], f["rdf/y"], f["rdf/y_err"] = X, Y, ERR
    ref = _build(tmp_path, name="a.npz", weight="inverse_variance")
    for name, keys in (("b.npz", {"columns": ["r", "g", "s"]}), ("c.h5", {})):
        t = _build(tmp_path, name=name, weight="inverse_variance", **keys)
        np.testing.assert_array_equal(t.value, ref.value)
        np.testing.assert_array_equal(t.weight, ref.weight)


def test_smoothing_a_gaussian_histogram_adds_widths_in_quadrature(tmp_path):
    """A narrow histogram of g(r) = G_s(r − r₀)/r² (its pair density r² g a pure Gaussian) given
    the RDF's kernel K_σ is exactly G_√(s²+σ²)(r − r₀)/r² (the peak's height and shape, not just
    its area)."""
    r0, s, sigma = 1.2, 0.03, 0.05
    edges = np.arange(0.0, 2.6 + 1e-9, 0.002)
    x = 0.5 * (edges[1:] + edges[:-1])                    # bin centres of a fine histogram
    text = "\n".join(f"{a:.6f} {b:.10e}" for a, b in zip(x, _gauss(x - r0, s) / x ** 2))
    t = _build(tmp_path, text, "hist.txt", histogram=True)
    grid = RDF_OBS.grid
    exact = _gauss(grid - r0, np.hypot(s, sigma)) / grid ** 2
    assert np.max(np.abs(t.value - exact)) < 1e-3 * exact.max()
    raw = _gauss(grid - r0, s) / grid ** 2                 # the unsmoothed peak is far off
    assert np.max(np.abs(raw - exact)) > 0.3 * exact.max()
    # an explicit width (in x_unit) instead of the observable's
    t2 = _build(tmp_path, name="hist.txt", smooth=0.02)
    exact2 = _gauss(grid - r0, np.hypot(s, 0.02)) / grid ** 2
    assert np.max(np.abs(t2.value - exact2)) < 1e-3 * exact2.max()
    assert "smoothed" in t.source


def test_smooth_auto_applies_only_to_declared_histograms(tmp_path):
    text = _rows()
    base = _build(tmp_path, text, "g.txt")
    np.testing.assert_array_equal(_build(tmp_path, name="g.txt", smooth="auto").value, base.value)
    np.testing.assert_array_equal(_build(tmp_path, name="g.txt", smooth="auto", histogram=False).value, base.value)
    np.testing.assert_array_equal(_build(tmp_path, name="g.txt", smooth="none", histogram=True).value, base.value)
    hist = _build(tmp_path, name="g.txt", histogram=True)
    assert np.max(np.abs(hist.value - base.value)) > 1e-3
    np.testing.assert_allclose(hist.value, _build(tmp_path, name="g.txt", smooth=RDF_OBS.sigma).value, rtol=1e-12)


DENSITY = Density(name="rdf", x_min=0.0, x_max=2.4, n_bins=30)

# (file text, extra keys, observable, words the message must contain)
BAD = [
    pytest.param("r,g,e\n0 1 2\n1 1\n", {}, RDF_OBS, ["ragged", "line 3"], id="header-ragged"),
    pytest.param("r,g,e\n" + _rows(","), {}, RDF_OBS, ["header of 3 names"], id="header-wider-than-data"),
    pytest.param("r,g\n" + _rows(","), {"columns": ["r", "gr"]}, RDF_OBS, ["targets.rdf.columns", "'gr'", "r, g"],
                 id="column-name-not-in-header"),
    pytest.param(_rows(), {"columns": ["r", "g"]}, RDF_OBS, ["targets.rdf.columns", "no header"],
                 id="column-name-without-header"),
    pytest.param(_rows(), {"columns": [0, 5]}, RDF_OBS, ["targets.rdf.columns", "index 5"], id="column-index-too-big"),
    pytest.param(_rows(), {"columns": [0]}, RDF_OBS, ["targets.rdf.columns", "two or three"], id="columns-one"),
    pytest.param(_rows(), {"columns": [0, 0]}, RDF_OBS, ["targets.rdf.columns", "twice"], id="columns-twice"),
    pytest.param(_rows(), {"columns": "r,g"}, RDF_OBS, ["targets.rdf.columns"], id="columns-string"),
    pytest.param("x,y\n1,2\nabc,3\n", {}, RDF_OBS, ["non-numeric line 3"], id="second-header"),
    pytest.param("\n".join(f"{a} {b} {-e if a > 1 else e}" for a, b, e in zip(X, Y, ERR)),
                 {"weight": "inverse_variance"}, RDF_OBS,
                 ["targets.rdf.weight=inverse_variance", "negative", "first at x = 1.0"], id="negative-error"),
    pytest.param(_rows(), {"weight": "inverse_variance"}, RDF_OBS, ["inverse_variance", "no error column"],
                 id="no-error-column"),
    pytest.param(_rows(), {"weight": "chi2"}, RDF_OBS, ["targets.rdf.weight", "chi2", "uniform"], id="weight-unknown"),
    pytest.param(_rows(), {"smooth": "yes"}, RDF_OBS, ["targets.rdf.smooth", "'yes'", "auto"], id="smooth-word"),
    pytest.param(_rows(), {"smooth": -0.1}, RDF_OBS, ["targets.rdf.smooth", "-0.1"], id="smooth-negative"),
    pytest.param(_rows(), {"histogram": "maybe"}, RDF_OBS, ["targets.rdf.histogram", "true or false"],
                 id="histogram-not-bool"),
    pytest.param(_rows(), {"smooth": 0.05}, DENSITY, ["targets.rdf.smooth", "no smoothing kernel", "smooth=none"],
                 id="smooth-without-kernel"),
    pytest.param(_rows(), {"histogram": True}, DENSITY, ["targets.rdf.histogram=true", "smooth=none"],
                 id="histogram-without-kernel"),
    pytest.param(_rows(), {"colums": [0, 1]}, RDF_OBS, ["targets.rdf", "unknown key", "colums", "columns"],
                 id="unknown-key"),
]


@pytest.mark.parametrize("text, keys, obs, words", BAD)
def test_malformed_targets_are_user_errors(tmp_path, text, keys, obs, words):
    with pytest.raises(UserError) as exc:
        _build(tmp_path, text, "bad.csv", obs=obs, **keys)
    msg = str(exc.value)
    assert exc.value.fix and "fix:" in msg
    for w in words:
        assert w in msg, (w, msg)


def test_value_target_refuses_file_keys():
    obs = SimpleNamespace(grid=None, components=None, unit_kind="pressure", kernel_width=None)
    cfg = {"p": {"value": 1.0, "unit": "reduced", "smooth": "auto"}}
    with pytest.raises(UserError, match="unknown key.*smooth"):
        targets.build(cfg, {"p": obs}, units.LJ)
