"""`difftre export` (difftre_cli/export/): pair tables for LAMMPS and GROMACS.

* tabulation: a table holds u and −du/dr of the function itself (LJ: analytic values to float64
  precision) from its inner end on; below it a wall continues u, f and f' and only repels harder;
  the inner end is where u reaches `wall` kT, or where a model's repulsion stops growing; a
  function that does not repel is refused;
* units: the table conversions are the inverse of the trajectory conversions;
* writers: the LAMMPS file's N/R lines and rows, pair_coeff per species pair; the GROMACS
  xvg's seven columns on the 0.002 nm grid, zero past the cutoff, the mdp/itp lines;
* the command's arguments: bad ones are user errors with a fix.
The end-to-end checks with LAMMPS itself are in test_export_lammps.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from difftre_cli import assemble, units
from difftre_cli.config_files import CONFIG_DIR
from difftre_cli.errors import UserError
from difftre_cli.export import (
    ExportOptions,
    export_potential,
    export_run,
    gromacs,
    lammps,
    parse_args,
)
from difftre_cli.export.tabulate import PairTable, inner_end, tabulate


def lj(r):
    return 4.0 * (r ** -12 - r ** -6)


def lj_force(r):
    return 24.0 * (2.0 * r ** -13 - r ** -7)


def test_lj_table_is_the_function_and_its_derivative_and_a_repulsive_wall_below():
    kT = 1.5
    r_inner = inner_end(lj, 2.5, kT, wall=30.0)
    assert lj(r_inner) >= 45.0 and lj(r_inner + 2.5 * 0.95 / 19999) < 45.0   # first grid point at ≥ 30 kT
    r = np.linspace(0.5 * r_inner, 2.5, 4001)
    t = tabulate(lj, "X-X", ("X", "X"), r, 2.5, r_inner)
    above = r >= r_inner
    np.testing.assert_allclose(t.u[above], lj(r[above]), rtol=1e-12)
    np.testing.assert_allclose(t.f[above], lj_force(r[above]), rtol=1e-11)
    assert t.u_cut == pytest.approx(lj(2.5), rel=1e-12)
    below = ~above
    assert np.all(np.diff(t.f[below]) < 0) and np.all(np.diff(t.u[below]) < 0)   # harder repulsion inward
    # u, f and the force's slope continue across r_inner
    h = 1e-6
    wall = tabulate(lj, "X-X", ("X", "X"), np.array([0.0, r_inner - h, r_inner, r_inner + h]), 2.5, r_inner)
    assert wall.u[1] == pytest.approx(lj(r_inner - h), rel=1e-9)
    assert wall.f[1] == pytest.approx(lj_force(r_inner - h), rel=1e-8)
    assert np.isfinite(wall.u[0]) and wall.f[0] > wall.f[1]


def test_inner_end_where_a_flat_core_begins_and_the_wall_repels_below():
    """A model whose repulsion stops below r = 0.9 (like a spline below its first knot, no prior)."""
    def soft(r):
        return jnp.where(r > 0.9, 10.0 * (1.2 - r) ** 2, 0.9)
    r_inner = inner_end(soft, 2.0, 1.0)
    assert r_inner == pytest.approx(0.9, abs=2e-4)
    t = tabulate(soft, "X-X", ("X", "X"), np.linspace(0.1, 2.0, 2000), 2.0, r_inner)
    below = t.r < r_inner
    assert np.all(t.f[below] >= 20 * (1.2 - r_inner) - 1e-9) and np.all(np.diff(t.f[below]) < 0)


def test_a_function_that_does_not_repel_is_refused():
    with pytest.raises(UserError, match="not repulsive") as exc:
        inner_end(lambda r: -jnp.exp(-r * r), 2.5, 1.0)
    assert "prior=repulsive" in exc.value.fix


def test_table_units_invert_the_trajectory_units():
    assert units.table_factors("real", units.REAL) == pytest.approx((10.0, 1 / 4.184))
    assert units.table_factors("metal", units.REAL) == pytest.approx((10.0, 1 / 96.48533212))
    assert units.table_factors("real", units.METAL) == pytest.approx((1.0, 96.48533212 / 4.184))
    assert units.table_factors("lj", units.LJ) == (1.0, 1.0)
    for style in ("real", "metal", "gromacs"):
        fl, fe, _ = units.trajectory_factors(*units.TABLE_STYLES[style], units.REAL)
        assert units.table_factors(style, units.REAL) == pytest.approx((1 / fl, 1 / fe))
    with pytest.raises(UserError, match="no conversion"):
        units.table_factors("real", units.LJ)


def _tables(species=("A", "B")):
    pairs = [(a, b) for i, a in enumerate(species) for b in species[i:]]
    r = np.linspace(0.5, 2.5, 101)
    return [PairTable(f"{a}-{b}", (a, b), r, k * lj(r), k * lj_force(r), 0.9, 2.5, float(k * lj(2.5)))
            for k, (a, b) in enumerate(pairs, start=1)]


def test_lammps_file_and_input_lines(tmp_path):
    tables = _tables()
    lammps.write(tables, tmp_path, style="lj", units_note="r in sigma", header="test run", species=("A", "B"),
                 interpolation="spline")
    text = (tmp_path / lammps.TABLE_FILE).read_text().splitlines()
    for t in tables:
        k = text.index(t.name)
        assert text[k + 1] == "N 101 R 0.5 2.5" and text[k + 2] == ""
        rows = np.array([[float(x) for x in line.split()] for line in text[k + 3:k + 3 + 101]])
        np.testing.assert_array_equal(rows[:, 0], np.arange(1, 102))
        np.testing.assert_allclose(rows[:, 1:], np.stack([t.r, t.u, t.f], 1), rtol=1e-11)
    snippet = (tmp_path / lammps.INPUT_FILE).read_text()
    assert "`units lj`" in snippet and "\npair_style table spline 101\n" in snippet
    for line in ("pair_coeff 1 1 difftre.table A-A 2.5", "pair_coeff 1 2 difftre.table A-B 2.5",
                 "pair_coeff 2 2 difftre.table B-B 2.5"):
        assert line in snippet
    assert "1 = A, 2 = B" in snippet


def test_gromacs_tables_on_their_grid(tmp_path):
    r = gromacs.model_grid(1.2)
    assert r[0] == 0.0 and r[-1] == pytest.approx(1.2) and np.allclose(np.diff(r), 0.002)
    t = tabulate(lambda x: lj(x / 0.3 + 0.5), "A-B", ("A", "B"), r, 1.2, 0.15)
    files = gromacs.write([t], tmp_path, header="test run", species=("A", "B"), units_note="nm, kJ/mol")
    assert [f.name for f in files] == ["table_A_B.xvg", "table.xvg", gromacs.MDP_FILE, gromacs.ITP_FILE]
    rows = np.loadtxt(tmp_path / "table_A_B.xvg", comments="#")
    assert rows.shape == (len(gromacs.grid(1.2)), 7) and rows[-1, 0] == pytest.approx(2.2)
    inside = rows[:, 0] <= 1.2 + 1e-9
    np.testing.assert_allclose(rows[inside, 5], t.u, rtol=1e-9)
    np.testing.assert_allclose(rows[inside, 6], t.f, rtol=1e-9)
    assert not rows[~inside, 1:].any() and not rows[:, 1:5].any()
    mdp = (tmp_path / gromacs.MDP_FILE).read_text()
    assert "cutoff-scheme    = group" in mdp and "energygrp-table  = A B" in mdp and "rvdw             = 1.2" in mdp
    assert "A  B  1  0.0  1.0" in (tmp_path / gromacs.ITP_FILE).read_text()


@pytest.mark.parametrize("args, needle", [
    ([], "format= is missing"),
    (["format=mol2"], "format=mol2"),
    (["format=lammps", "points=abc"], "points=abc"),
    (["format=lammps", "points=3"], "points=3"),
    (["format=lammps", "wall=-1"], "wall=-1"),
    (["format=lammps", "interpolation=cubic"], "interpolation=cubic"),
    (["format=lammps", "lammps"], "unexpected argument"),
])
def test_bad_export_arguments_are_user_errors(args, needle):
    with pytest.raises(UserError, match=needle) as exc:
        parse_args(args)
    assert exc.value.fix


def test_export_arguments_and_config_overrides_are_separated(tmp_path):
    run, opts, overrides = parse_args([f"run={tmp_path}", "format=gromacs", "r_inner=0.9", "system.kT=1.2",
                                       "state=T1", f"out={tmp_path}/x"])
    assert run == tmp_path and overrides == ["system.kT=1.2"]
    assert opts == ExportOptions(format="gromacs", out=tmp_path / "x", r_inner=0.9, state="T1")


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("preset, needle", [("water", "many-body"), ("double_well", "one-body")])
def test_potentials_a_table_cannot_hold_are_refused(preset, needle, tmp_path):
    c = assemble.build(_cfg(f"config={preset}"))
    with pytest.raises(UserError, match=needle) as exc:
        export_potential(c, {}, ExportOptions("lammps"), tmp_path, "test")
    assert "pair models" in exc.value.fix and not any(tmp_path.iterdir())


def test_a_classical_0K_fit_is_refused_with_the_engines_own_pair_style(tmp_path):
    with pytest.raises(UserError, match="classical many-body") as exc:
        export_run(_cfg("config=si_sw_elastic"), tmp_path, ExportOptions("lammps"))
    assert "pair_style" in exc.value.fix


def test_a_thermal_model_is_tabulated_at_the_state_points_kT(tmp_path):
    """model=thermal, u(r) = u1(r) − kT·u2(r): the table at kT = 1.0 and at 2.0 (system.kT) are
    each the model at that kT, and differ by −ΔkT·u2."""
    tables = {}
    for kT in (1.0, 2.0):
        c = assemble.build(_cfg("config=lj", "model=thermal", f"system.kT={kT}", "system.n_particles=256"))
        params = c.potential.init(jax.random.PRNGKey(0))
        params = jax.tree_util.tree_map(lambda x: x + 0.2, params)   # u1 and u2 non-zero
        m = export_potential(c, params, ExportOptions("lammps", points=500), tmp_path / str(kT), "test")
        assert m["kT"] == kT
        lines = (tmp_path / str(kT) / "difftre.table").read_text().splitlines()
        rows = np.array([[float(v) for v in line.split()] for line in lines[lines.index("X-X") + 3:]])
        (term,) = c.potential.pair_terms()
        above = rows[:, 1] >= m["tables"][0]["r_inner"]
        np.testing.assert_allclose(rows[above, 2], np.asarray(term.u(params, jnp.asarray(rows[above, 1]))),
                                   rtol=1e-5, atol=1e-5)
        tables[kT] = rows
    assert not np.allclose(tables[1.0][:, 2], tables[2.0][:, 2])


def test_an_mlp_pair_model_is_tabulated_as_the_model(tmp_path):
    """model=mlp: the table's rows above r_inner are u(r) of prior + MLP at its parameters."""
    c = assemble.build(_cfg("config=lj", "model=mlp", "system.n_particles=256"))
    params = c.potential.init(jax.random.PRNGKey(3))
    params = jax.tree_util.tree_map(lambda x: x + 0.05, params)   # a non-zero learned part
    m = export_potential(c, params, ExportOptions("lammps", points=400), tmp_path, "test")
    lines = (tmp_path / "difftre.table").read_text().splitlines()
    rows = np.array([[float(v) for v in line.split()] for line in lines[lines.index("X-X") + 3:]])
    above = rows[:, 1] >= m["tables"][0]["r_inner"]
    (term,) = c.potential.pair_terms()
    u = np.asarray(term.u(params, jnp.asarray(rows[above, 1])))
    np.testing.assert_allclose(rows[above, 2], u, rtol=1e-5, atol=1e-5 * np.max(np.abs(u)))
    assert not np.allclose(u, np.asarray(term.prior(jnp.asarray(rows[above, 1]))))   # the MLP is in it
