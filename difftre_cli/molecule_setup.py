"""A molecule config (the ``topology`` group set): its topology, system, bonded prior and potential.

- topology: molecule/topology.py reads ``topology.file`` (a YAML of beads and bonds, or a file
  MDAnalysis reads); an all-atom topology is mapped onto the beads of ``reference.mapping``;
- system: one particle per bead, species = bead types, in open space (``system.periodic: false``:
  no box, no minimum image; a molecule in vacuum or implicit solvent) or in the periodic cubic
  box ``system.box_size``; start positions from ``system.structure`` or else the first training
  frame of the reference;
- bonded prior: ``prior.bonded`` (molecule/bonded.py), its parameters from the config or fitted
  to the reference's bond, angle and dihedral distributions by Boltzmann inversion;
- potential: potentials/molecule.py (bonded + non-bonded prior with exclusions + model).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import reference
from . import units as units_mod
from .checks import number
from .errors import UserError
from .molecule import bonded as bonded_mod
from .molecule import topology as topology_mod
from .potentials import molecule as molecule_potential
from .system import System, read_structure

#: system keys of a molecule config (the rest of the system group is for boxes of identical beads)
SYSTEM_KEYS = ("units", "temperature", "kT", "mass", "periodic", "box_size", "structure", "structure_format",
               "structure_unit", "n_particles", "cutoff")


def is_molecule(cfg) -> bool:
    """True if the config has a topology (``topology`` group not none)."""
    return cfg.get("topology") is not None


@dataclass(frozen=True)
class Molecule:
    system: System
    topology: object
    bonded: object | None
    potential: molecule_potential.MoleculePotential


def _reference(cfg, unit_system, box):
    ref_cfg = cfg.get("reference")
    return None if not reference.is_set(ref_cfg) else reference.open_reference(ref_cfg, unit_system, box=box)


def read_topology(cfg, ref):
    """The topology of ``cfg.topology``; an all-atom file is mapped onto ``ref``'s beads."""
    atom_to_bead = bead_types = None
    if ref is not None:
        atom_to_bead, bead_types = topology_mod.atom_to_bead_of(ref.cg_map, ref.trajectory.universe.atoms.n_atoms)
    top = topology_mod.read(cfg.topology, atom_to_bead=atom_to_bead, bead_types=bead_types)
    if ref is not None:
        topology_mod.check_count(top, ref.n_beads, "the reference trajectory (reference.mapping) maps to")
    return top


def _system(cfg, topology, ref) -> System:
    sc = cfg.system
    unknown = sorted(str(k) for k in sc if k not in SYSTEM_KEYS and sc.get(k) is not None)
    if unknown:
        raise UserError(f"system: key(s) {', '.join(unknown)} do not apply to a molecule (topology is set)",
                        f"remove them; a molecule's system keys are {', '.join(SYSTEM_KEYS)}")
    unit_system = units_mod.get(sc.get("units", "real"))
    units_mod.check_thermal(unit_system, sc.get("kT"), sc.get("temperature"))
    kT = units_mod.kT_of(unit_system, sc.get("kT"), sc.get("temperature"))
    mass = number(sc, "mass", prefix="system", lo=0, lo_open=True, required=False, default=1.0, example="12.0")
    periodic = sc.get("periodic", True)
    if not isinstance(periodic, bool):
        raise UserError(f"system.periodic must be true or false, got {periodic!r}", "set system.periodic=false")
    box = number(sc, "box_size", prefix="system", lo=0, lo_open=True, required=periodic, example="5.0")
    if not periodic and box is not None:
        raise UserError("system.box_size is set but system.periodic=false (open space has no box)",
                        "remove system.box_size, or set system.periodic=true")
    n = topology.n_beads
    if sc.get("n_particles") is not None and int(sc.get("n_particles")) != n:
        raise UserError(f"system.n_particles={sc.get('n_particles')} but the topology has {n} beads",
                        "remove system.n_particles (a molecule's count comes from its topology)")
    if sc.get("structure") is not None:
        st = read_structure(sc.get("structure"), sc.get("structure_format"), sc.get("structure_unit"), unit_system,
                            periodic=periodic)
        pos = st.positions
        topology_mod.check_count(topology, len(pos), f"system.structure {st.path} holds")
    elif ref is not None:
        pos = ref.map(ref.split["train"][:1]).positions[0]
    else:
        raise UserError("a molecule needs start positions: system.structure is null and there is no reference",
                        "set system.structure to a file of the beads' positions (PDB, XYZ, ...) or select a "
                        "reference trajectory")
    return System(n_particles=n, box_size=box, kT=kT, mass=mass, positions=np.asarray(pos, float),
                  units=unit_system, species=topology.species.astype(np.int32), species_names=topology.type_names)


def _fit_positions(ref, bonded_cfg, load: bool = True):
    """Every training frame's bead positions when ``prior.bonded.fit`` asks for them (``load``
    False: only check that there is a reference), else None."""
    if (bonded_cfg or {}).get("fit") is None:
        return None
    if ref is None:
        raise UserError("prior.bonded.fit=boltzmann_inversion fits the bonded terms to a reference trajectory, "
                        "and reference is none", "select a reference (reference=...) or give the bonded "
                        "parameters in prior.bonded")
    return np.concatenate([b.positions for b in ref.batches("train")]) if load else None


def build(cfg, fit: bool = True) -> Molecule:
    """Topology, system, bonded prior and potential of a molecule config. ``fit`` False (config
    validation) skips the Boltzmann-inversion fit and checks its inputs only."""
    unit_system = units_mod.get(cfg.system.get("units", "real"))
    periodic = cfg.system.get("periodic", True) is not False
    box = cfg.system.get("box_size") if periodic else None
    ref = _reference(cfg, unit_system, box)
    topology = read_topology(cfg, ref)
    system = _system(cfg, topology, ref)
    bonded_cfg = cfg.prior.get("bonded")
    positions = _fit_positions(ref, bonded_cfg, load=fit)
    fitted = (bonded_cfg or {}).get("fit") is not None
    if fitted and not fit:   # config validation: the fit's input exists; the fit runs when the run is built
        bonded = None
    else:
        bonded = bonded_mod.build(bonded_cfg, topology, system.kT, positions=positions, box=system.box_size)
    cutoff = float(cfg.model.get("cutoff", 1.0))
    potential = molecule_potential.build(cfg.prior, cfg.model, cutoff, topology, bonded, topology.exclusions)
    potential = potential.bind(system)
    return Molecule(system, topology, bonded, potential)
