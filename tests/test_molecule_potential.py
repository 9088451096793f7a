"""The potential of coarse-grained molecules (potentials/molecule.py) and open space.

Energy = bonded terms + the non-bonded prior (and pair model) over exactly the pairs the
topology does not exclude (an explicit double loop is the reference); forces are −∇U (central
differences, float64); a molecule in open space (no box, JAX MD's space.free) conserves energy
in NVE and keeps its internal coordinates whatever its distance from the origin."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from difftre_cli import neighbors
from difftre_cli.errors import UserError
from difftre_cli.molecule import bonded as bonded_mod
from difftre_cli.molecule.geometry import dihedrals
from difftre_cli.molecule.topology import Topology, generate_angles, generate_dihedrals
from difftre_cli.potentials import molecule, priors
from difftre_cli.sampler import SamplerConfig
from difftre_cli.simulate import Sampler
from difftre_cli.system import System
from difftre_cli.units import get as unit_system

PRIOR = {"kind": "repulsive", "epsilon": 1.0, "sigma": 0.25, "exponent": 12}
BONDED = {"bonds": {"*": {"k": 2.0e5, "r0": 0.15}}, "angles": {"*": {"k": 400.0, "theta0": 112.0}},
          "dihedrals": {"*": {"k": [1.0, 0.5, 2.0], "phase": [0.0, 180.0, 0.0]}}}


def _branched():
    """A 9-bead branched molecule (two branch points), two bead types."""
    bonds = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [2, 5], [5, 6], [6, 7], [6, 8]])
    types = ("A", "B", "B", "A", "A", "B", "B", "A", "A")
    return Topology(names=tuple(f"b{i}" for i in range(9)), types=types, bonds=bonds,
                    angles=generate_angles(bonds, 9), dihedrals=generate_dihedrals(bonds, 9))


def _zigzag(n_beads=9, seed=0):
    """Positions of a molecule with bonds ~0.15 nm built by a random walk of bond vectors
    (every pair at least 0.14 nm apart)."""
    rng = np.random.default_rng(seed)
    top = _branched()
    R = np.zeros((n_beads, 3))
    placed = {0}
    for i, j in top.bonds:
        for _ in range(1000):
            v = rng.normal(size=3)
            cand = R[i] + 0.15 * v / np.linalg.norm(v)
            if all(np.linalg.norm(cand - R[k]) > 0.2 for k in placed if k != i):
                break
        R[j] = cand
        placed.add(j)
    return R


def _potential(top, exclusions=2, model=None, cutoff=0.5):
    bonded = bonded_mod.build(OmegaConf.create(BONDED), top, 2.494)
    model_cfg = OmegaConf.create(model or {"kind": "none"})
    return molecule.build(OmegaConf.create(PRIOR), model_cfg, cutoff, top, bonded, exclusions)


def _system(R, top, box=None):
    return System(n_particles=len(R), box_size=box, kT=2.494, mass=14.0, positions=R, units=unit_system("real"),
                  species=top.species.astype(np.int32), species_names=top.type_names)


@pytest.mark.parametrize("exclusions", [0, 1, 2, 3])
def test_energy_is_bonded_plus_prior_over_exactly_the_pairs_not_excluded(exclusions):
    top = _branched()
    R = _zigzag()
    pot = _potential(top, exclusions).bind(_system(R, top))
    nb = neighbors.make_neighbor_fn(None, pot.cutoff, 0.1).allocate(jnp.asarray(R))
    got = float(pot.energy_fn(None)(jnp.asarray(R), nb, {}))
    u = priors.build(PRIOR, 0.5)
    pairs = top.nonbonded_pairs(exclusions)
    r = np.linalg.norm(R[pairs[:, 0]] - R[pairs[:, 1]], axis=-1)
    want = float(np.sum(np.where(r < 0.5, np.asarray(u(jnp.asarray(r))), 0.0)))
    want += float(pot.bonded.energy(jnp.asarray(R)))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-4)
    n_all = 9 * 8 // 2
    assert len(pairs) + len(top.excluded_pairs(exclusions)) == n_all
    if exclusions:   # the exclusions change the energy: the check is not vacuous
        assert len(top.excluded_pairs(exclusions)) > 0


def test_forces_are_minus_gradient_with_a_graph_model():
    """Open space, a species-aware three-body model with random parameters: forces from
    force_fn equal central differences of energy_fn (float64), and the energy is invariant
    under a rigid rotation and a translation far from the origin."""
    with jax.enable_x64(True):
        top = _branched()
        R = _zigzag(seed=1)
        model = {"kind": "three_body", "cutoff": 0.5, "n_species": 2, "lam": 5.0, "pair_knots": 8,
                 "pair_r_min": 0.2, "dihedral_terms": 2}
        pot = _potential(top, 3, model).bind(_system(R, top))
        params = pot.init(jax.random.PRNGKey(0))
        params = jax.tree_util.tree_map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
        nb = neighbors.make_neighbor_fn(None, pot.cutoff, 0.1).allocate(jnp.asarray(R))
        energy, force = jax.jit(pot.energy_fn(None)), jax.jit(pot.force_fn(None))   # compiled: eager op-by-op took ~40 s
        F = np.asarray(force(jnp.asarray(R), nb, params))
        h = 1e-6
        shifts = h * np.eye(R.size).reshape(R.size, *R.shape)      # every coordinate moved by ±h
        energies = jax.jit(jax.vmap(lambda r: energy(r, nb, params)))
        fd = -(np.asarray(energies(jnp.asarray(R + shifts))) - np.asarray(energies(jnp.asarray(R - shifts)))) / (2 * h)
        fd = fd.reshape(R.shape)
        assert np.allclose(F, fd, rtol=1e-5, atol=1e-4 * np.abs(fd).max())
        q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
        moved = R @ q.T + np.array([120.0, -75.0, 33.0])
        nb2 = neighbors.make_neighbor_fn(None, pot.cutoff, 0.1).allocate(jnp.asarray(moved))
        assert float(energy(jnp.asarray(moved), nb2, params)) == pytest.approx(float(energy(jnp.asarray(R), nb, params)),
                                                                               rel=1e-9)


def test_dihedral_correction_is_its_fourier_series():
    """model.dihedral_terms: U gains Σ_d Σ_n a_dn cos(nφ_d) + b_dn sin(nφ_d) with φ the IUPAC
    dihedrals of the topology (MDAnalysis's sign), zero at initialisation."""
    import MDAnalysis.lib.distances as mdd
    top = _branched()
    R = _zigzag(seed=5)
    pot = _potential(top, 2, {"kind": "none", "dihedral_terms": 3}).bind(_system(R, top))
    params = pot.init(jax.random.PRNGKey(0))
    assert params["bonded"]["dihedral"].shape == (len(top.dihedrals), 3, 2) and not np.any(params["bonded"]["dihedral"])
    nb = neighbors.make_neighbor_fn(None, pot.cutoff, 0.1).allocate(jnp.asarray(R))
    energy = pot.energy_fn(None)
    c = np.random.default_rng(6).normal(size=(len(top.dihedrals), 3, 2))
    got = float(energy(jnp.asarray(R), nb, {"bonded": {"dihedral": jnp.asarray(c)}})) - float(energy(jnp.asarray(R), nb, params))
    q = top.dihedrals
    phi = mdd.calc_dihedrals(R[q[:, 0]], R[q[:, 1]], R[q[:, 2]], R[q[:, 3]])
    n = np.arange(1, 4)
    want = np.sum(c[..., 0] * np.cos(n * phi[:, None]) + c[..., 1] * np.sin(n * phi[:, None]))
    assert got == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_graph_model_species_count_must_match_the_topology():
    top = _branched()
    with pytest.raises(UserError, match="n_species=1 but the topology has 2 bead types"):
        _potential(top, 2, {"kind": "three_body", "cutoff": 0.5, "n_species": 1})


def test_open_space_nve_conserves_energy_far_from_the_origin():
    """NVE of a molecule in open space (space.free, no minimum image), started 500 nm from the
    origin: the sampler moves its centre to the origin (where float32 positions are fine: at
    500 nm the drift was 40x larger), total energy drifts < 2e-3 of the kinetic energy, bonds
    stay intact (no bond across a box edge) and dihedrals are finite."""
    top = _branched()
    R = _zigzag(seed=3) + 500.0
    system = _system(R, top)
    pot = _potential(top, 3).bind(system)
    sampler = Sampler(pot, system, SamplerConfig(integrator="nve", dt=0.0005, first_equilibration_steps=0,
                                                 production_steps=4000, every=20, skin=0.1))
    state, nbrs = sampler.init(jax.random.PRNGKey(4), {})
    res = sampler.sample({}, state, nbrs, first=True)
    assert res.ok
    kinetic = 1.5 * len(R) * np.asarray(res.trajectory.kT, np.float64)
    total = kinetic + np.asarray(res.trajectory.energies, np.float64)
    e0 = float(sampler.energy(state.position, nbrs, {})) + 0.5 * float(jnp.sum(state.momentum ** 2 / state.mass))
    assert np.max(np.abs(total - e0)) < 2e-3 * kinetic.mean()
    assert np.ptp(np.asarray(res.trajectory.energies)) > 10 * np.max(np.abs(total - e0))   # energy is exchanged
    pos = np.asarray(res.trajectory.positions)
    assert np.all(np.abs(pos.mean(axis=1)) < 1e-3)            # centred at the origin
    b = np.linalg.norm(pos[:, top.bonds[:, 0]] - pos[:, top.bonds[:, 1]], axis=-1)
    assert 0.1 < b.min() and b.max() < 0.2                   # bonds intact
    phi = np.asarray(jax.vmap(lambda x: dihedrals(x, top.dihedrals))(jnp.asarray(pos)))
    assert np.all(np.isfinite(phi))
