"""Phonon dispersion and density of states from JAX force constants, through phonopy.

phonopy (Togo & Tanaka, Scr. Mater. 108, 1 (2015)) does all of the lattice dynamics here:
building the supercell, the dynamical matrices, the band path and the tetrahedron/smearing DOS.
This module only supplies the force constants Φ_iα,jβ = ∂²U/∂R_iα∂R_jβ of phonopy's own
supercell, computed by autodiff of the JAX MD energy (eV Å⁻², masses in amu, so phonopy's
default unit conversion gives THz).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .observables.elastic import force_constants
from .plots import plt

#: high-symmetry path of the fcc Brillouin zone, in the primitive reciprocal basis
FCC_PATH = [("Γ", [0.0, 0.0, 0.0]), ("X", [0.5, 0.0, 0.5]), ("W", [0.5, 0.25, 0.75]), ("K", [0.375, 0.375, 0.75]),
            ("Γ", [0.0, 0.0, 0.0]), ("L", [0.5, 0.5, 0.5])]


@dataclass
class PhononResult:
    distances: list            # per band segment, path length (1/Å · 2π-free phonopy units)
    frequencies: list          # per segment, (n_q, n_bands) THz
    labels: list
    label_positions: list
    dos_frequency: np.ndarray  # THz
    dos: np.ndarray            # states / THz per primitive cell
    gamma_frequencies: np.ndarray
    acoustic_sum_max: float    # max_i |Σ_j Φ_ij| (eV/Å²)
    force_constants: np.ndarray  # (N, N, 3, 3) phonopy layout


def make_phonopy(unit_frac, unit_cell, symbol: str, mass: float, reps, primitive_matrix="auto"):
    """A Phonopy object for the unit cell (columns of ``unit_cell`` are lattice vectors, Å);
    ``primitive_matrix`` as phonopy takes it ("F" for the fcc primitive cell of diamond)."""
    from phonopy import Phonopy   # phonopy: heavy, only for phonon dispersions
    from phonopy.structure.atoms import PhonopyAtoms
    atoms = PhonopyAtoms(symbols=[symbol] * len(unit_frac), cell=np.asarray(unit_cell).T,
                         scaled_positions=np.asarray(unit_frac), masses=[mass] * len(unit_frac))
    return Phonopy(atoms, supercell_matrix=np.diag(np.asarray(reps, int)), primitive_matrix=primitive_matrix)


def supercell_force_constants(ph, energy_builder) -> np.ndarray:
    """Force constants of phonopy's supercell in phonopy's (N, N, 3, 3) layout.

    ``energy_builder(cell, frac)`` returns a JAX energy ``E(frac)`` for a periodic cell whose
    columns are lattice vectors (``frac``, the supercell's fractional coordinates, lets the builder
    make a neighbour list)."""

    sc = ph.supercell
    cell = jnp.asarray(sc.cell.T)
    frac = jnp.asarray(sc.scaled_positions)
    e_fn = energy_builder(cell, frac)
    H = jax.jit(lambda f: force_constants(e_fn, f, cell))(frac)
    return np.transpose(np.asarray(H), (0, 2, 1, 3))


def analyse(ph, fc: np.ndarray, mesh=(16, 16, 16), band_points: int = 51) -> PhononResult:
    from phonopy.phonon.band_structure import get_band_qpoints_and_path_connections   # phonopy: heavy, optional use
    ph.force_constants = fc
    path = [[q for _, q in FCC_PATH]]
    labels = [name for name, _ in FCC_PATH]
    qpoints, connections = get_band_qpoints_and_path_connections(path, npoints=band_points)
    ph.run_band_structure(qpoints, path_connections=connections, labels=labels)
    bs = ph.band_structure
    dist = [np.asarray(d) for d in bs.distances]
    freq = [np.asarray(f) for f in bs.frequencies]
    ph.run_mesh(list(mesh), is_gamma_center=True)
    ph.run_total_dos()
    dos = {"frequency_points": ph.total_dos.frequency_points, "total_dos": ph.total_dos.dos}
    ph.run_qpoints([[0.0, 0.0, 0.0]])
    gamma = np.asarray(ph.qpoints.frequencies[0])
    asr = float(np.max(np.abs(fc.sum(axis=1))))
    positions = [float(dist[0][0])] + [float(d[-1]) for d in dist]
    return PhononResult(dist, freq, labels, positions, np.asarray(dos["frequency_points"]),
                        np.asarray(dos["total_dos"]), gamma, asr, fc)


def write(result: PhononResult, run_dir, prefix: str = "phonon") -> list:
    """``phonon_bands.csv`` (segment, distance, one column per band, THz), ``phonon_dos.csv``
    (frequency THz, DOS states/THz per primitive cell) and ``phonons.png``."""
    run_dir = Path(run_dir)
    n_bands = result.frequencies[0].shape[1]
    rows = [np.column_stack([np.full(len(d), s), d, f]) for s, (d, f) in enumerate(zip(result.distances, result.frequencies))]
    header = "segment,distance," + ",".join(f"band{b}_THz" for b in range(n_bands))
    np.savetxt(run_dir / f"{prefix}_bands.csv", np.vstack(rows), delimiter=",", header=header, comments="")
    np.savetxt(run_dir / f"{prefix}_dos.csv", np.column_stack([result.dos_frequency, result.dos]), delimiter=",",
               header="frequency_THz,dos_states_per_THz_per_primitive_cell", comments="")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8, 4), sharey=True, gridspec_kw={"width_ratios": [3, 1]})
    for d, f in zip(result.distances, result.frequencies):
        ax.plot(d, f, "C0-", lw=1)
    for x in result.label_positions:
        ax.axvline(x, color="0.7", lw=0.5)
    ax.set_xticks(result.label_positions, result.labels)
    ax.set_xlim(result.label_positions[0], result.label_positions[-1])
    ax.set_ylabel("frequency [THz]")
    ax.axhline(0, color="k", lw=0.5)
    ax2.plot(result.dos, result.dos_frequency, "C0-")
    ax2.set_xlabel("DOS [1/THz]")
    fig.tight_layout()
    png = run_dir / "phonons.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return [run_dir / f"{prefix}_bands.csv", run_dir / f"{prefix}_dos.csv", png]
