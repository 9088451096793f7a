"""Bonded terms (difftre_cli/molecule/bonded.py) and their Boltzmann inversion (boltzmann.py).

Identities: forces are −∇U (central finite differences, float64) for every term type; the
dihedral term follows MDAnalysis's sign convention and is 2π-periodic (an atom moved around a
full turn); the energy is invariant under rotations and translations (and periodic wrapping);
Boltzmann inversion of a harmonic bond's, a harmonic angle's and a cosine-series dihedral's
own distribution (1e5 samples drawn by inverse CDF, Jacobians r² and sin θ included) returns
their parameters; parameters by bead type; every bad input a UserError with a fix."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from MDAnalysis.lib.distances import calc_dihedrals
from omegaconf import OmegaConf

from difftre_cli.errors import UserError
from difftre_cli.molecule import boltzmann, bonded, geometry
from difftre_cli.molecule import topology as T

KT = 2.494   # kJ/mol at 300 K
BONDS = [(0, 1), (1, 2), (2, 3), (3, 4), (2, 5)]   # a branched 6-bead molecule
TYPES = ("A", "B", "B", "C", "A", "C")
MDA_RTOL = 1e-5   # MDAnalysis's calc_dihedrals computes in float32


def _topology(bonds=BONDS, types=TYPES):
    n = len(types)
    return T.Topology(tuple(f"b{i}" for i in range(n)), types, T.canonical(bonds, "bonds"),
                      T.generate_angles(bonds, n), T.generate_dihedrals(bonds, n))


def _random_terms(top, rng, m=3):
    nb, na, nd = len(top.bonds), len(top.angles), len(top.dihedrals)
    return bonded.BondedTerms(top.bonds, rng.uniform(1e3, 1e4, nb), rng.uniform(0.12, 0.2, nb),
                              top.angles, rng.uniform(50, 500, na), rng.uniform(1.5, 2.5, na),
                              top.dihedrals, rng.uniform(0.5, 3.0, (nd, m)), rng.uniform(-np.pi, np.pi, (nd, m)))


def _molecule(rng, n=6):
    """A random geometry: a random walk of 0.15 nm steps (no three beads on a line)."""
    steps = rng.normal(size=(n, 3))
    return np.cumsum(0.15 * steps / np.linalg.norm(steps, axis=1, keepdims=True), axis=0)


def _rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _dihedral_energy(phi, k, phase):
    n = np.arange(1, k.shape[-1] + 1)
    return np.sum(k * (1 + np.cos(n * phi[:, None] - phase)), axis=-1)


# ---------------------------------------------------------------- energies and forces

@pytest.mark.parametrize("kind", ["bonds", "angles", "dihedrals"])
def test_forces_are_minus_gradient_finite_differences(double_precision, kind):
    rng = np.random.default_rng(1)
    terms = _random_terms(_topology(), rng)
    R = _molecule(rng)

    def u(x):
        return jnp.sum(terms.term_energies(x)[kind])

    forces = -np.asarray(jax.grad(u)(jnp.asarray(R)))
    h, fd = 1e-6, np.zeros_like(R)
    for idx in np.ndindex(R.shape):
        d = np.zeros_like(R)
        d[idx] = h
        fd[idx] = -(float(u(R + d)) - float(u(R - d))) / (2 * h)
    assert np.abs(forces).max() > 1.0   # not a trivial zero
    np.testing.assert_allclose(forces, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


def test_term_energies_match_the_formulas(double_precision):
    rng = np.random.default_rng(2)
    top = _topology()
    terms = _random_terms(top, rng)
    R = _molecule(rng)
    e = {k: np.asarray(v) for k, v in terms.term_energies(R).items()}
    r = np.linalg.norm(R[top.bonds[:, 1]] - R[top.bonds[:, 0]], axis=1)
    np.testing.assert_allclose(e["bonds"], 0.5 * terms.k_bond * (r - terms.r0) ** 2, rtol=1e-10)
    a, b = R[top.angles[:, 0]] - R[top.angles[:, 1]], R[top.angles[:, 2]] - R[top.angles[:, 1]]
    theta = np.arccos(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(e["angles"], 0.5 * terms.k_angle * (theta - terms.theta0) ** 2, rtol=1e-8)
    q = top.dihedrals
    phi = calc_dihedrals(*(R[q[:, c]] for c in range(4)))
    np.testing.assert_allclose(e["dihedrals"], _dihedral_energy(phi, terms.k_dihedral, terms.phase), rtol=MDA_RTOL)
    assert float(terms.energy(R)) == pytest.approx(sum(v.sum() for v in e.values()), rel=1e-12)


def test_dihedral_sign_and_full_turn_periodicity_vs_mdanalysis(double_precision):
    rng = np.random.default_rng(3)
    quad = np.array([[0, 1, 2, 3]])
    k, phase = np.array([[1.0, 0.7, 0.3]]), np.radians([[30.0, -60.0, 90.0]])   # odd n: sign-sensitive
    terms = bonded.BondedTerms(np.zeros((0, 2)), [], [], np.zeros((0, 3)), [], [], quad, k, phase)
    frames = np.stack([_molecule(rng, 4) for _ in range(20)])
    phi = calc_dihedrals(*(frames[:, c] for c in range(4)))
    np.testing.assert_allclose(np.asarray(jax.vmap(geometry.dihedrals, (0, None))(frames, quad))[:, 0], phi,
                               atol=MDA_RTOL)
    energies = np.array([float(terms.energy(x)) for x in frames])
    np.testing.assert_allclose(energies, _dihedral_energy(phi, k, phase), rtol=MDA_RTOL)
    # bead 3 around the 1-2 axis by a full turn: φ goes once around, U(φ + 2π) = U(φ)
    x = frames[0]
    axis = (x[2] - x[1]) / np.linalg.norm(x[2] - x[1])
    turns, e, phis = np.linspace(0.0, 2 * np.pi, 25), [], []
    for alpha in turns:
        v = x[3] - x[2]
        v_rot = (v * np.cos(alpha) + np.cross(axis, v) * np.sin(alpha) + axis * (axis @ v) * (1 - np.cos(alpha)))
        y = x.copy()
        y[3] = x[2] + v_rot
        e.append(float(terms.energy(y)))
        phis.append(calc_dihedrals(*y))
    unwrapped = np.unwrap(phis)
    assert abs(unwrapped[-1] - unwrapped[0]) == pytest.approx(2 * np.pi, abs=MDA_RTOL)
    np.testing.assert_allclose(np.abs(unwrapped - unwrapped[0]), turns, atol=MDA_RTOL)   # φ moves with the turn
    np.testing.assert_allclose(e, _dihedral_energy(np.array(phis), k, phase), rtol=MDA_RTOL)
    assert e[-1] == pytest.approx(e[0], rel=1e-12) and np.ptp(e) > 0.5


def test_energy_invariant_under_rotation_translation_and_wrapping(double_precision):
    rng = np.random.default_rng(4)
    terms = _random_terms(_topology(), rng)
    R = _molecule(rng)
    e0 = float(terms.energy(R))
    for _ in range(3):
        moved = (R - R.mean(0)) @ _rotation(rng).T + rng.uniform(-5, 5, 3)
        assert float(terms.energy(moved)) == pytest.approx(e0, rel=1e-10)
    box = 1.3   # nm; the molecule spans less than half of it
    wrapped = (R + rng.uniform(0, box, 3)) % box
    assert float(terms.energy(wrapped, box)) == pytest.approx(e0, rel=1e-10)
    assert float(terms.energy(wrapped)) != pytest.approx(e0, rel=1e-3)   # wrapped without the box: broken bonds


# ---------------------------------------------------------------- Boltzmann inversion

def _sample(grid, density, n, rng):
    """``n`` samples of the (unnormalised) ``density`` on a fine ``grid`` by inverse CDF."""
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    return np.interp(rng.uniform(0, cdf[-1], n), cdf, grid)


def _unit(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_boltzmann_inversion_of_a_harmonic_bond():
    rng = np.random.default_rng(5)
    k, r0, n = 5000.0, 0.15, 100_000   # s = √(kT/k) = 0.022 nm: the r² Jacobian moves <r> by 4 %
    grid = np.linspace(1e-4, 0.4, 40_001)
    r = _sample(grid, grid ** 2 * np.exp(-0.5 * k * (grid - r0) ** 2 / KT), n, rng)
    frames = np.zeros((n, 2, 3))
    frames[:, 1] = r[:, None] * _unit(rng, n) + frames[:, 0]
    frames += rng.uniform(-1, 1, (n, 1, 3))
    terms = boltzmann.fit(frames, _topology([(0, 1)], ("A", "A")), KT)
    assert terms.r0[0] == pytest.approx(r0, rel=0.003)
    assert terms.k_bond[0] == pytest.approx(k, rel=0.03)
    assert abs(r.mean() - r0) / r0 > 0.03   # without the Jacobian r0 would be 4 % off
    assert terms.angles.shape == (0, 3) and terms.k_dihedral.shape == (0, 3)


def test_boltzmann_inversion_of_a_harmonic_angle():
    rng = np.random.default_rng(6)
    k, theta0, n = 60.0, np.radians(65.0), 100_000   # s = 0.2 rad: the sin θ Jacobian moves <θ> by 1.7 %
    grid = np.linspace(0.0, np.pi, 40_001)
    theta = _sample(grid, np.sin(grid) * np.exp(-0.5 * k * (grid - theta0) ** 2 / KT), n, rng)
    u = _unit(rng, n)
    v = _unit(rng, n)
    v -= np.sum(u * v, axis=1, keepdims=True) * u
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    frames = np.zeros((n, 3, 3))
    frames[:, 0] = 0.15 * u
    frames[:, 2] = 0.2 * (np.cos(theta)[:, None] * u + np.sin(theta)[:, None] * v)
    terms = boltzmann.fit(frames, _topology([(0, 1), (1, 2)], ("A", "B", "A")), KT)
    assert terms.angles.tolist() == [[0, 1, 2]]
    assert terms.theta0[0] == pytest.approx(theta0, rel=0.005)
    assert terms.k_angle[0] == pytest.approx(k, rel=0.03)
    assert abs(theta.mean() - theta0) / theta0 > 0.01


def test_boltzmann_inversion_of_a_cosine_series_dihedral():
    rng = np.random.default_rng(7)
    k, phase, n = np.array([2.0, 1.0, 0.5]), np.radians([30.0, 180.0, -90.0]), 100_000
    grid = np.linspace(-np.pi, np.pi, 40_001)
    psi = _sample(grid, np.exp(-_dihedral_energy(grid, k, phase) / KT), n, rng)
    L, a = 0.15, np.radians(110.0)
    frames = np.zeros((n, 4, 3))   # j at the origin, k on z, i at φ = 0, l at φ = ψ
    frames[:, 0] = [L * np.sin(a), 0.0, L * np.cos(a)]
    frames[:, 2] = [0.0, 0.0, L]
    frames[:, 3] = np.stack([L * np.sin(a) * np.cos(psi), L * np.sin(a) * np.sin(psi),
                             np.full(n, L - L * np.cos(a))], axis=1)
    top = _topology([(0, 1), (1, 2), (2, 3)], ("A", "B", "B", "A"))
    terms = boltzmann.fit(frames, top, KT, dihedral_terms=3)
    np.testing.assert_allclose(terms.k_dihedral[0], k, atol=0.08)
    dphase = np.angle(np.exp(1j * (terms.phase[0] - phase)))
    np.testing.assert_allclose(dphase, 0.0, atol=0.12)
    # the fitted profile itself (up to a constant)
    fitted = _dihedral_energy(grid, terms.k_dihedral, terms.phase)
    true = _dihedral_energy(grid, k[None], phase[None])
    assert np.ptp(fitted - true) < 0.25


def test_boltzmann_inversion_through_build_and_its_limits():
    rng = np.random.default_rng(8)
    top = _topology()
    frames = _molecule(rng)[None] + rng.normal(0, 0.01, (50, 6, 3))
    terms = bonded.build({"fit": "boltzmann_inversion", "dihedral_terms": 2}, top, KT, positions=frames)
    assert terms.k_dihedral.shape == (len(top.dihedrals), 2) and (terms.k_bond > 0).all()
    assert (terms.k_dihedral >= 0).all()
    boxes = rng.uniform(1.5, 2.0, (50, 3))   # per-frame periodic boxes (nm): wrapped frames fit the same
    wrapped = boltzmann.fit(frames % boxes[:, None, :], top, KT, box=boxes, dihedral_terms=2)
    for name in ("k_bond", "r0", "k_angle", "theta0", "k_dihedral"):
        np.testing.assert_allclose(getattr(wrapped, name), getattr(terms, name), rtol=1e-3, atol=1e-4)
    with pytest.raises(UserError, match="needs at least 10 reference frames, got 5") as e:
        boltzmann.fit(frames[:5], top, KT)
    assert e.value.fix
    with pytest.raises(UserError, match="topology has 6 beads but the reference frames have 5"):
        boltzmann.fit(frames[:, :5], top, KT)


# ---------------------------------------------------------------- parameters by type

def test_parameters_by_type_either_order_and_default():
    top = _topology()   # types A B B C A C; bonds 0-1 A-B, 1-2 B-B, 2-3 B-C, 2-5 B-C, 3-4 C-A
    cfg = OmegaConf.create({
        "dihedral_terms": 3,
        "bonds": {"*": {"k": 1000.0, "r0": 0.15}, "B-A": {"k": 2000.0, "r0": 0.12}, "C-B": {"k": 3000.0, "r0": 0.13}},
        "angles": {"*": {"k": 100.0, "theta0": 120.0}, "C-B-B": {"k": 200.0, "theta0": 90.0}},
        "dihedrals": {"*": {"k": [1.0, 2.0], "phase": [0.0, 180.0]}}})
    terms = bonded.build(cfg, top, KT)
    by_bond = dict(zip(map(tuple, terms.bonds.tolist()), zip(terms.k_bond, terms.r0)))
    assert by_bond == {(0, 1): (2000.0, 0.12), (1, 2): (1000.0, 0.15), (2, 3): (3000.0, 0.13),
                       (2, 5): (3000.0, 0.13), (3, 4): (1000.0, 0.15)}
    by_angle = dict(zip(map(tuple, terms.angles.tolist()), zip(terms.k_angle, terms.theta0)))
    assert by_angle[(1, 2, 3)] == (200.0, pytest.approx(np.pi / 2)) and by_angle[(1, 2, 5)][0] == 200.0
    assert by_angle[(0, 1, 2)] == (100.0, pytest.approx(2 * np.pi / 3))
    np.testing.assert_allclose(terms.k_dihedral, [[1.0, 2.0, 0.0]] * len(top.dihedrals))
    np.testing.assert_allclose(terms.phase, [[0.0, np.pi, 0.0]] * len(top.dihedrals))
    assert bonded.build(None, top, KT) is None


BASE = {"bonds": {"*": {"k": 1000.0, "r0": 0.15}}, "angles": {"*": {"k": 100.0, "theta0": 120.0}},
        "dihedrals": {"*": {"k": [1.0], "phase": [0.0]}}}


@pytest.mark.parametrize("cfg, pattern", [
    ({**BASE, "bonds": {"A-B": {"k": 1.0, "r0": 0.1}}},
     r"prior.bonded.bonds: no parameters for the bond b1\(1\)-b2\(2\) \(types B-B\)"),
    ({**BASE, "angles": None}, r"no parameters for the angle"),
    ({**BASE, "fit": "boltzmann_inversion"}, r"fit=boltzmann_inversion fits every term, but .* also sets bonds"),
    ({"fit": "boltzmann_inversion"}, r"needs reference frames of the molecule"),
    ({**BASE, "fit": "ibi"}, r"prior.bonded.fit: unknown fit method 'ibi'"),
    ({**BASE, "bonds": {"*": {"k": -1.0, "r0": 0.15}}}, r"prior.bonded.bonds.\*.k must be a number >= 0"),
    ({**BASE, "bonds": {"*": {"k": 1.0, "r0": 0.0}}}, r"prior.bonded.bonds.\*.r0 must be a number > 0"),
    ({**BASE, "angles": {"*": {"k": 1.0, "theta0": 190.0}}}, r"theta0 must be a number in \[0, 180\]"),
    ({**BASE, "dihedrals": {"*": {"k": [1.0, -1.0], "phase": [0, 0]}}}, r"dihedrals.\*.k must be a list .* >= 0"),
    ({**BASE, "dihedrals": {"*": {"k": [1.0, 1.0], "phase": [0]}}}, r"k has 2 terms but phase has 1"),
    ({**BASE, "dihedrals": {"*": {"k": [1.0] * 4, "phase": [0] * 4}}}, r"a list of 1..3 \(dihedral_terms\)"),
    ({**BASE, "bonds": {"A-B-C": {"k": 1.0, "r0": 0.1}}}, r"key 'A-B-C' must name 2 bead types"),
    ({**BASE, "bonds": {"A-Q": {"k": 1.0, "r0": 0.1}}}, r"unknown bead type\(s\) Q"),
    ({**BASE, "bonds": {"A-*": {"k": 1.0, "r0": 0.1}}}, r"unknown bead type\(s\) \*"),
    ({**BASE, "bonds": {"A-B": {"k": 1.0, "r0": 0.1}, "B-A": {"k": 1.0, "r0": 0.1}}}, r"name the same types"),
    ({**BASE, "bonds": {"*": {"k": 1.0, "length": 0.1}}}, r"unknown key\(s\) length"),
    ({**BASE, "kind": "harmonic"}, r"prior.bonded: unknown key\(s\) kind"),
    ({**BASE, "dihedral_terms": 0}, r"dihedral_terms must be an integer in \[1, 12\]"),
    ("harmonic", r"prior.bonded must be a group of keys"),
])
def test_bad_bonded_config_is_a_user_error(cfg, pattern):
    with pytest.raises(UserError, match=pattern) as e:
        bonded.build(OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg, _topology(), KT)
    assert e.value.fix


def test_bonded_without_topology_is_a_user_error():
    with pytest.raises(UserError, match="prior.bonded is set but there is no topology") as e:
        bonded.build(BASE, None, KT)
    assert "topology=" in e.value.fix
