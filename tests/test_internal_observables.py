"""Distributions of internal coordinates (difftre_cli/observables/internal.py): unit integrals, a
delta-like set of bonds gives the configured Gaussian, the dihedral kernel wraps around ±π, the
φ-ψ map's marginals are the 1-D dihedral distributions, a uniform φ gives 1/2π within its
statistical error, values and histograms equal MDAnalysis's, minimum image = open space, bad
input names its key, the engine's reweighted average at uniform weights is the plain mean, and
a 2-D target file (as `difftre targets` writes it) reads back onto the grid; the evaluation's
curve file and heat map of the 2-D observable."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from MDAnalysis.lib.distances import calc_angles, calc_bonds, calc_dihedrals
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from difftre_cli import observables, potentials, targets, units
from difftre_cli.compare import _plot as compare_plot
from difftre_cli.curves import curve_tables
from difftre_cli.errors import UserError
from difftre_cli.molecule import geometry
from difftre_cli.observables import Context
from difftre_cli.observables.engine import ObservableEngine
from difftre_cli.observables.internal import periodic_rows, window_density
from difftre_cli.plots import plot_all
from difftre_cli.sampler import Trajectory
from difftre_cli.reference.write import write_extxyz
from difftre_cli.trajectory_targets import compute as trajectory_compute
from difftre_cli.trajectory_targets import write as write_targets

pytestmark = pytest.mark.usefixtures("double_precision")

CONFIGS = Path(__file__).parents[1] / "configs" / "observables"
#: alanine dipeptide heavy atoms: ACE CH3(0) C(1) O(2), ALA N(3) CA(4) CB(5) C(6) O(7), NME N(8) CH3(9)
BONDS = np.array([[0, 1], [1, 2], [1, 3], [3, 4], [4, 5], [4, 6], [6, 7], [6, 8], [8, 9]])
PHI, PSI = [1, 3, 4, 6], [3, 4, 6, 8]


@dataclass(frozen=True)
class Topology:
    """A stand-in for molecule/topology.py's Topology (duck-typed: the index arrays)."""
    names: tuple
    types: np.ndarray
    bonds: np.ndarray
    angles: np.ndarray
    dihedrals: np.ndarray
    n_beads: int


def topology_of(bonds, n: int) -> Topology:
    """Angles (i, j, k) and proper dihedrals (i, j, k, l) of a bond graph."""
    nbr = {i: sorted({int(b) for a, b in bonds if a == i} | {int(a) for a, b in bonds if b == i}) for i in range(n)}
    angles = [(i, j, k) for j in range(n) for i in nbr[j] for k in nbr[j] if i < k]
    dihedrals = [(i, j, k, m) for j, k in bonds for i in nbr[j] if i != k for m in nbr[k] if m not in (j, i)]
    return Topology(tuple(f"B{i}" for i in range(n)), np.zeros(n, int), np.asarray(bonds), np.asarray(angles),
                    np.asarray(dihedrals), n)


TOPOLOGY = topology_of(BONDS, 10)
CTX = Context(10, 1.0, 2.494, topology=TOPOLOGY)


def molecule_frames(n_frames: int, seed: int, lengths=(0.12, 0.16)) -> np.ndarray:
    """(S, 10, 3) random conformations of the alanine-dipeptide bond graph (nm): each bead at a
    random direction from its parent, bond lengths uniform in ``lengths``."""
    rng = np.random.default_rng(seed)
    R = np.zeros((n_frames, 10, 3))
    for a, b in BONDS:                     # parents come first
        u = rng.normal(size=(n_frames, 3))
        R[:, b] = R[:, a] + rng.uniform(*lengths, size=(n_frames, 1)) * u / np.linalg.norm(u, axis=1, keepdims=True)
    return R


def with_dihedral(phi) -> np.ndarray:
    """(S, 4, 3) four beads whose dihedral (0, 1, 2, 3) is ``phi`` (up to the sign convention)."""
    phi = np.atleast_1d(phi)
    R = np.zeros((len(phi), 4, 3))
    R[:, 0] = [1.0, 0.0, -0.5]
    R[:, 2] = [0.0, 0.0, 1.0]
    R[:, 3] = np.stack([np.cos(phi), np.sin(phi), np.full_like(phi, 1.5)], axis=1)
    return R


def build(**spec):
    """Observables from ``name={kind: ..., ...}`` mappings (the observables config group)."""
    return observables.build(OmegaConf.create(spec))


def per_frame(obs, R, box=None, ctx=CTX):
    """obs.snapshot of every frame of R (S, N, 3), compiled."""
    fn = jax.jit(jax.vmap(lambda x: obs.snapshot(ctx, {"R": x, "box": box})))
    return np.asarray(fn(jnp.asarray(R)))


def preset(name: str) -> dict:
    return dict(OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml")))


# ---------------------------------------------------------------------------------------
def test_presets_build_and_every_distribution_integrates_to_one():
    obs = build(**preset("bonds"), **preset("angles"), **preset("dihedrals"), **preset("phi_psi"))
    b, a, d, pp = obs["bonds"], obs["angles"], obs["dihedrals"], obs["phi_psi"]
    assert (b.grid[0], b.grid[-1], b.n_bins) == (pytest.approx(0.10025), pytest.approx(0.17975), 160)
    assert a.grid[-1] == pytest.approx(math.pi - math.pi / 360) and d.n_bins == 72 and pp.n_bins == 36
    assert pp.grid.shape == (36 * 36, 2) and (pp.phi, pp.psi) == (tuple(PHI), tuple(PSI))
    for o in obs.values():
        assert not o.depends_on_params and o.reach == 0.0 and o.combine is None
        o.check_box(None)
    R = molecule_frames(20, seed=1)
    for o, cell in ((b, b.width), (a, a.width), (d, d.width), (pp, pp.width ** 2)):
        p = per_frame(o, R)
        assert p.shape == (20, len(o.grid)) and np.all(p >= 0)
        np.testing.assert_allclose(p.sum(1) * cell, 1.0, rtol=1e-12)


def test_position_gradients_are_finite_and_match_finite_differences():
    obs = build(**preset("bonds"), **preset("angles"), **preset("dihedrals"), **preset("phi_psi"))
    R = jnp.asarray(molecule_frames(1, seed=11)[0])
    straight = R.at[2].set(R[1] + (R[1] - R[0]) * 0.123 / jnp.linalg.norm(R[1] - R[0]))   # angle 0-1-2 = π
    direction = jnp.asarray(np.random.default_rng(12).normal(size=R.shape))
    for name, o in obs.items():
        w = jnp.asarray(np.random.default_rng(13).uniform(size=len(o.grid)))
        loss = jax.jit(lambda x, o=o, w=w: jnp.sum(w * o.snapshot(CTX, {"R": x, "box": None})))
        assert np.all(np.isfinite(np.asarray(jax.grad(loss)(straight)))), name   # finite at the cusp θ = π
        g = jax.grad(loss)(R)
        h = 1e-7
        fd = (loss(R + h * direction) - loss(R - h * direction)) / (2 * h)
        assert float(jnp.sum(g * direction)) == pytest.approx(float(fd), rel=1e-5, abs=1e-6), name


def test_a_delta_like_set_of_bonds_gives_a_gaussian_of_the_configured_width():
    r0, sigma = 0.1372, 0.003
    obs = build(b={"kind": "bond_distribution", "r_min": 0.10, "r_max": 0.18, "n_bins": 320, "sigma": sigma,
                   "bonds": [[0, 1], [1, 2], [2, 3]]})["b"]
    R = np.array([[0, 0, 0], [r0, 0, 0], [r0, r0, 0], [r0, r0, r0]])     # three bonds of length r0
    p = per_frame(obs, R[None])[0]
    gauss = np.exp(-0.5 * ((obs.grid - r0) / sigma) ** 2) / (math.sqrt(2 * math.pi) * sigma)
    np.testing.assert_allclose(p, gauss, atol=1e-9 * gauss.max())
    mean = np.sum(obs.grid * p) * obs.width
    assert mean == pytest.approx(r0, abs=1e-10)
    assert math.sqrt(np.sum((obs.grid - mean) ** 2 * p) * obs.width) == pytest.approx(sigma, rel=1e-3)


def test_the_dihedral_density_wraps_around_plus_minus_pi():
    """φ ∈ π + [−0.3, 0.3] (crossing ±π) gives the density of φ ∈ [−0.3, 0.3] shifted by half a
    period, bin for bin: nothing lost at the boundary, continuous across it."""
    obs = build(d={"kind": "dihedral_distribution", "dihedrals": [[0, 1, 2, 3]], "n_bins": 72, "sigma": 0.1})["d"]
    delta = np.linspace(-0.3, 0.3, 13)
    across = per_frame(obs, with_dihedral(math.pi + delta)).mean(0)
    centred = per_frame(obs, with_dihedral(delta)).mean(0)
    np.testing.assert_allclose(across, np.roll(centred, 36), atol=1e-12)
    assert across.sum() * obs.width == pytest.approx(1.0, rel=1e-12)
    near = np.abs(obs.grid) > math.pi - 0.8     # 5 σ beyond the data
    assert across[near].sum() * obs.width == pytest.approx(1.0, abs=1e-6)
    assert across[0] == pytest.approx(across[-1], rel=1e-9)       # symmetric about π: both ends alike
    assert abs(across[0] - across[-1]) < 0.05 * abs(across[0] - across[1])   # no jump at the edge


def test_phi_psi_marginals_are_the_dihedral_distributions_of_phi_and_psi():
    pp = build(**preset("phi_psi"))["phi_psi"]
    kw = {"kind": "dihedral_distribution", "n_bins": pp.n_bins, "sigma": pp.sigma}
    one = build(phi={**kw, "dihedrals": [PHI]}, psi={**kw, "dihedrals": [PSI]})
    R = molecule_frames(50, seed=2)
    p2 = per_frame(pp, R).mean(0).reshape(pp.n_bins, pp.n_bins)
    np.testing.assert_allclose(pp.grid[:, 0].reshape(pp.n_bins, -1)[:, 0], one["phi"].grid, atol=1e-15)
    np.testing.assert_allclose(p2.sum(1) * pp.width, per_frame(one["phi"], R).mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(p2.sum(0) * pp.width, per_frame(one["psi"], R).mean(0), rtol=1e-12, atol=1e-14)


def test_a_uniform_dihedral_is_flat_within_its_statistical_error():
    obs = build(d={"kind": "dihedral_distribution", "dihedrals": [[0, 1, 2, 3]], "n_bins": 36})["d"]
    phi = np.random.default_rng(3).uniform(-math.pi, math.pi, 4000)
    p = per_frame(obs, with_dihedral(phi))
    mean, err = p.mean(0), p.std(0, ddof=1) / math.sqrt(len(p))
    z = (mean - 1.0 / (2 * math.pi)) / err
    assert np.all(np.abs(z) < 4.0)
    assert np.mean(z ** 2) == pytest.approx(1.0, abs=0.5)     # χ²/n: errors neither too small nor too large


def _mdanalysis(f, box):
    """Bond lengths, angles and dihedrals of the topology in frame ``f`` by MDAnalysis."""
    t, dims = TOPOLOGY, None if box is None else np.array([box, box, box, 90.0, 90.0, 90.0])
    return {"bonds": calc_bonds(f[t.bonds[:, 0]], f[t.bonds[:, 1]], box=dims),
            "angles": calc_angles(*(f[t.angles[:, k]] for k in range(3)), box=dims),
            "dihedrals": calc_dihedrals(*(f[t.dihedrals[:, k]] for k in range(4)), box=dims)}


def test_values_and_histograms_equal_mdanalysis_in_open_space_and_in_a_box():
    obs = build(**preset("bonds"), **preset("angles"), **preset("dihedrals"))
    measure = {"bonds": geometry.bond_lengths, "angles": geometry.angles, "dihedrals": geometry.dihedrals}
    box, R = 0.8, molecule_frames(5, seed=4)
    for x, b in ((R, None), (np.mod(R + 0.1, box), box)):        # wrapped into a small box: minimum image
        for k, o in obs.items():
            ours = per_frame(o, x, b)
            for f, p in zip(x, ours):
                ref = _mdanalysis(f, b)[k]
                # MDAnalysis computes in float32: values agree to ~1e-6
                delta = np.max(np.abs(np.asarray(measure[k](f, getattr(TOPOLOGY, k), b)) - ref))
                assert delta < 2e-6, k
                hist = np.asarray(window_density(jnp.asarray(ref), o.grid, o.sigma, o.width) if k != "dihedrals" else
                                  jnp.mean(periodic_rows(jnp.asarray(ref), o.grid, o.sigma, o.width), axis=0))
                # a value moved by δ changes its Gaussian by at most ~0.6 δ/σ of the peak height
                np.testing.assert_allclose(p, hist, rtol=0, atol=(delta / o.sigma + 1e-12) * hist.max(), err_msg=k)


def test_minimum_image_far_from_the_boundary_is_open_space():
    obs = build(**preset("bonds"), **preset("angles"), **preset("dihedrals"), **preset("phi_psi"))
    R = molecule_frames(4, seed=5)
    centred = R - R.mean(1, keepdims=True) + 2.5                    # the middle of a 5 nm box
    for o in obs.values():
        np.testing.assert_allclose(per_frame(o, centred, 5.0), per_frame(o, centred), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(per_frame(o, np.mod(centred + 2.4, 5.0), 5.0), per_frame(o, centred),
                                   rtol=1e-9, atol=1e-9)            # the molecule broken over the edge
    obs["bonds"].check_box(0.5)
    with pytest.raises(UserError, match=r"observables.bonds.r_max=0.18 exceeds half the box"):
        obs["bonds"].check_box(0.3)


@pytest.mark.parametrize("spec,when,match", [
    ({"kind": "bond_distribution", "r_max": 0.18}, "snapshot", r"observables.x.bonds=all needs a topology"),
    ({"kind": "angle_distribution", "angles": "all"}, "snapshot", r"observables.x.angles=all needs a topology"),
    ({"kind": "bond_distribution", "r_max": 0.18, "bonds": [[0, 12]]}, "snapshot",
     r"observables.x.bonds: bond \[0, 12\] has a bead index out of range for 10 beads"),
    ({"kind": "phi_psi", "phi": [1, 3, 4, 6], "psi": [3, 4, 6, 10]}, "snapshot",
     r"observables.x.psi: dihedral \[3, 4, 6, 10\] has a bead index out of range"),
    ({"kind": "dihedral_distribution", "dihedrals": [[1, 3, 3, 6]]}, "build",
     r"observables.x.dihedrals: \[1, 3, 3, 6\] names a bead twice"),
    ({"kind": "phi_psi", "phi": [1, 3, 4, 1], "psi": [3, 4, 6, 8]}, "build", r"observables.x.phi: .* names a bead twice"),
    ({"kind": "dihedral_distribution", "dihedrals": [[1, 3, 4]]}, "build",
     r"observables.x.dihedrals: \[1, 3, 4\] is not 4 bead indices"),
    ({"kind": "dihedral_distribution", "dihedrals": "some"}, "build", r"observables.x.dihedrals must be all or a list"),
    ({"kind": "phi_psi", "psi": [3, 4, 6, 8]}, "build", r"observables.x.phi must be 4 bead indices"),
    ({"kind": "dihedral_distribution", "n_bins": 1}, "build", r"observables.x.n_bins must be an integer >= 2"),
    ({"kind": "angle_distribution", "n_bins": 2.5}, "build", r"observables.x.n_bins must be an integer"),
    ({"kind": "phi_psi", "phi": PHI, "psi": PSI, "n_bins": "many"}, "build", r"observables.x.n_bins must be"),
    ({"kind": "bond_distribution", "r_min": 0.2, "r_max": 0.18}, "build", r"observables.x.r_max=0.18 must be larger"),
    ({"kind": "angle_distribution", "sigma": 0}, "build", r"observables.x.sigma must be a number in \(0"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_is_a_user_error_naming_the_key(spec, when, match):
    no_topology = Context(10, 1.0, 2.494)
    with pytest.raises(UserError, match=match) as exc:
        o = build(x=spec)["x"]
        assert when == "snapshot", "the build should have failed"
        o.snapshot(no_topology, {"R": jnp.asarray(molecule_frames(1, seed=6)[0]), "box": None})
    assert exc.value.fix
    if "needs a topology" in match:
        assert exc.value.fix.startswith("set topology=... or list the")


def test_topology_all_is_every_tuple_and_a_topology_without_one_is_an_error():
    obs = build(d={"kind": "dihedral_distribution"})["d"]
    R = molecule_frames(3, seed=7)
    listed = build(d={"kind": "dihedral_distribution", "dihedrals": TOPOLOGY.dihedrals.tolist()})["d"]
    np.testing.assert_allclose(per_frame(obs, R), per_frame(listed, R, ctx=Context(10, 1.0, 1.0)), atol=1e-14)
    bare = Topology((), np.zeros(10, int), BONDS, np.zeros((0, 3), int), np.zeros((0, 4), int), 10)
    with pytest.raises(UserError, match="observables.d.dihedrals=all: the topology has no dihedrals"):
        obs.snapshot(Context(10, 1.0, 1.0, topology=bare), {"R": jnp.asarray(R[0]), "box": None})


def test_the_engines_reweighted_average_at_uniform_weights_is_the_plain_mean():
    """Through the training engine (observables/engine.py) in a periodic box: featurize, then
    predict with a potential of zero energy (weights 1/S)."""
    s, box = 6, 3.0
    R = molecule_frames(s, seed=8) + 1.5
    potential = potentials.build(OmegaConf.create({"kind": "none"}), OmegaConf.create({"kind": "none"}), 1.0)
    obs = build(**preset("bonds"), **preset("dihedrals"), **preset("phi_psi"))
    engine = ObservableEngine(potential, obs, Context(10, box ** 3, 1.0, topology=TOPOLOGY), box, 1.0)
    feats = engine.featurize(Trajectory(R, np.zeros(s), np.ones(s), np.arange(s)))
    params = potential.init(jax.random.PRNGKey(0))
    avg, w = engine.predict(params, feats)
    np.testing.assert_allclose(np.asarray(w), 1.0 / s, rtol=1e-12)
    for name, o in obs.items():
        np.testing.assert_allclose(np.asarray(avg[name]), per_frame(o, R, box).mean(0), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------
def _meta(obs: dict) -> dict:
    info = {"source": "traj.xtc", "format": "xtc", "frames": 50, "start": 0, "stop": None, "stride": 1,
            "blocks": 10, "mapping": {}, "units": "real", "skipped": [], "difftre": "test"}
    return {"info": info, "observables": obs, "units": units.REAL}


def test_difftre_targets_computes_them_from_a_trajectory_and_writes_files_training_reads(tmp_path):
    """`difftre targets` (trajectory_targets.compute/write) on an extended-XYZ trajectory of 25
    ten-bead molecules in the LJ config's periodic box (reduced units): the φ-ψ map and the
    dihedral distribution of molecule 0 are the means of the per-frame observables, written
    and read back as targets; ``all`` without a topology is a UserError naming the key."""
    n_mol, n_frames = 25, 10
    box = (n_mol * 10 / 0.5) ** (1 / 3)                           # config=lj_fm: ρ = 0.5
    sites = np.stack(np.meshgrid(np.arange(5), np.arange(5), [0], indexing="ij"), -1).reshape(-1, 3) * 1.5 + 0.8
    mols = molecule_frames(n_frames * n_mol, seed=14).reshape(n_frames, n_mol, 10, 3)
    pos = (mols - mols.mean(2, keepdims=True) + sites[None, :, None]).reshape(n_frames, -1, 3)
    file = write_extxyz(tmp_path / "mol.extxyz", pos, np.zeros_like(pos), np.zeros(n_frames), box)
    with initialize_config_dir(config_dir=str(CONFIGS.parent), version_base=None):
        cfg = compose(config_name="train", overrides=["config=lj_fm", f"system.n_particles={10 * n_mol}",
                                                      f"reference.file={file}", "observables=[phi_psi]"])
    with open_dict(cfg):
        cfg.observables.dihedrals = {"kind": "dihedral_distribution", "dihedrals": [PHI, PSI]}
    results, meta = trajectory_compute(cfg, blocks=5)
    obs = meta["observables"]
    for name in ("phi_psi", "dihedrals"):   # difftre targets featurizes float32 positions
        np.testing.assert_allclose(results[name][1], per_frame(obs[name], pos[:, :10], box).mean(0), rtol=1e-4,
                                   atol=1e-5 * results[name][1].max())
    entries = write_targets(results, meta, tmp_path / "out")
    assert Path(entries["phi_psi"]["file"]).name == "phi_psi.csv" and entries["dihedrals"]["file"].endswith(".txt")
    t = targets.build(OmegaConf.create(entries), obs, units.LJ)
    for name, rtol in (("phi_psi", 1e-12), ("dihedrals", 1e-6)):   # .csv: repr floats; .txt: 10 digits
        np.testing.assert_allclose(t[name].value, results[name][1], rtol=rtol, atol=1e-12)
    with open_dict(cfg):
        cfg.observables.angles = {"kind": "angle_distribution"}
    with pytest.raises(UserError, match="observables.angles.angles=all needs a topology"):
        trajectory_compute(cfg, blocks=5)


@pytest.mark.parametrize("x_unit", ["rad", "deg"])
def test_a_2d_target_file_reads_back_onto_the_grid(tmp_path, x_unit):
    obs = build(**preset("phi_psi"))
    o = obs["phi_psi"]
    p = per_frame(o, molecule_frames(50, seed=9))
    mean, err = p.mean(0), p.std(0, ddof=1) / math.sqrt(50) + 1e-3
    entries = write_targets({"phi_psi": (o.grid, mean, err)}, _meta(obs), tmp_path)
    path = Path(entries["phi_psi"]["file"])
    assert path.name == "phi_psi.csv" and entries["phi_psi"]["x_unit"] == "rad"
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# difftre targets: phi_psi") and "phi,psi,p,err" in lines
    if x_unit == "deg":   # the same table in degrees on [0°, 360°), rows shuffled
        data = np.loadtxt(path, delimiter=",", comments="#", skiprows=lines.index("phi,psi,p,err") + 1)
        data[:, :2] = np.mod(np.degrees(data[:, :2]), 360.0)
        path = tmp_path / "deg.csv"
        np.savetxt(path, np.random.default_rng(0).permutation(data), delimiter=",", header="phi,psi,p,err",
                   comments="")
    cfg = {"phi_psi": {"file": str(path), "x_unit": x_unit, "weight": "inverse_variance"}}
    t = targets.build(OmegaConf.create(cfg), obs, units.REAL)["phi_psi"]
    np.testing.assert_allclose(t.value, mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(t.error, err, rtol=1e-12)
    assert t.weight.mean() == pytest.approx(1.0) and float(t.loss(jnp.asarray(mean), jnp)) == pytest.approx(0.0)
    assert float(t.loss(jnp.asarray(mean) + 0.1, jnp)) == pytest.approx(0.01)


def test_a_2d_target_on_another_grid_is_interpolated_and_bad_tables_are_user_errors(tmp_path):
    obs = build(**preset("phi_psi"))
    o = obs["phi_psi"]
    fine = np.linspace(-180.0, 180.0, 72, endpoint=False) + 2.5
    F1, F2 = np.meshgrid(fine, fine, indexing="ij")
    smooth = lambda a, b: 1.0 + 0.5 * np.cos(a) * np.sin(2 * b)
    rows = np.stack([F1.ravel(), F2.ravel(), smooth(np.radians(F1), np.radians(F2)).ravel()], 1)
    path = tmp_path / "fine.txt"
    np.savetxt(path, rows)
    t = targets.build(OmegaConf.create({"phi_psi": {"file": str(path), "x_unit": "deg"}}), obs, units.REAL)["phi_psi"]
    np.testing.assert_allclose(t.value, smooth(o.grid[:, 0], o.grid[:, 1]), atol=3e-3)   # bilinear, 5° steps
    bad = [(rows[1:], r"1 missing"), (np.vstack([rows, rows[:1]]), r"given twice"),
           (rows[:, :2], r"a 2-D target needs the same 3 or 4"),
           (np.c_[rows[:, 0] * 1.1, rows[:, 1:]], r"x1 values of .* do not form a regular grid")]
    for k, (table, match) in enumerate(bad):
        np.savetxt(tmp_path / f"bad{k}.txt", table)
        with pytest.raises(UserError, match=r"targets.phi_psi.file: .*" + match):
            targets.build(OmegaConf.create({"phi_psi": {"file": str(tmp_path / f"bad{k}.txt"), "x_unit": "deg"}}),
                          obs, units.REAL)
    for keys, match in (({"x_unit": "nm"}, r"targets.phi_psi.x_unit='nm'"),
                        ({"x_unit": "deg", "histogram": True}, r"targets.phi_psi.histogram=true"),
                        ({"x_unit": "deg", "columns": [0, 1]}, r"targets.phi_psi.columns must be three or four"),
                        ({"x_unit": "deg", "weight": "inverse_variance"}, r"inverse_variance needs a positive")):
        with pytest.raises(UserError, match=match):
            targets.build(OmegaConf.create({"phi_psi": {"file": str(path), **keys}}), obs, units.REAL)


def test_evaluation_curve_file_and_heat_map_of_the_2d_observable(tmp_path):
    o = build(**preset("phi_psi"))["phi_psi"]
    p = per_frame(o, molecule_frames(30, seed=10)).mean(0)
    grid = o.grid.tolist()
    common = {"grid": grid, "unit": "1/rad^2", "grid_unit": "rad", "symbols": list(o.symbols)}
    ev = {"units": {"length": "nm", "energy": "kJ/mol"}, "potential": {"kind": "many_body"},
          "observables": {"phi_psi": {**common, "value": p.tolist(), "error": None}},
          "targets": {"phi_psi": {**common, "observable_name": "phi_psi", "target": (0.9 * p).tolist(),
                                  "observable": p.tolist(), "rmse": 0.1}}}
    cols = curve_tables(ev)["phi_psi"]
    assert [h for h, _ in cols] == ["phi [rad]", "psi [rad]", "p_model [1/rad^2]", "p_model_err [1/rad^2]",
                                    "p_target [1/rad^2]"]
    np.testing.assert_array_equal(np.array([c[1] for c in cols[:2]]).T, o.grid)
    paths = plot_all(tmp_path, ev, [])
    assert [x.name for x in paths] == ["phi_psi.png"] and paths[0].stat().st_size > 10_000
    with open(tmp_path / "phi_psi.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    rdf = {"grid": [0.1, 0.2], "target": [0.0, 1.0], "observable": [0.0, 1.1]}
    item = {"evaluation": {"targets": {**ev["targets"], "rdf": rdf}, "potential": {}}, "cfg": None, "run": "a",
            "rows": [{"loss": 1.0, "update_time": 1.0}]}
    assert compare_plot([item], tmp_path / "compare.png") == {"rdf": 2, "loss": 1}   # no 2-D overlay
