"""``difftre targets``: target files computed from a trajectory with the observables' own definitions.

The trajectory is the ``reference`` group's (any format it reads: LAMMPS dump, GROMACS .trr,
H5MD, extended XYZ; mapped onto beads by its ``mapping``), the observables are the config's
``observables`` group — the same grid, smoothing and cutoff weights a training run learns
with, because the very observable engine of training (observables/engine.py) computes them on
the mapped frames. Observables that depend on the potential (pressure, energy, stress) are not
properties of positions alone and are skipped with a note, except a pressure the file gives per
frame (extended XYZ stress, H5MD observables/pressure), which is averaged as read. Each gridded observable becomes
``OUT/<name>.txt`` — x, mean, standard error (from ``blocks`` consecutive blocks of frames) —
under a provenance header (a 2-D map such as ``phi_psi``: ``OUT/<name>.csv`` with columns phi,
psi, mean, standard error; surfaces.py); ``OUT/targets.yaml`` lists them as ``targets`` entries, scalar
observables as values.

    difftre targets config=lj reference=lammps_dump reference.file=traj.lammpstrj reference.units=lj \\
        reference.mapping.beads='{A: "type 1"}' observables=[rdf,adf] out=my_targets
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np
import yaml
from omegaconf import OmegaConf, open_dict

from . import __version__, molecule_setup, potentials, reference, surfaces
from . import observables as observables_mod
from .errors import UserError
from .observables import Context
from .observables.engine import ObservableEngine
from .observables.pressure import Pressure
from .onebody import is_one_body_system
from .sampler import Trajectory
from .system import build_system
from .units import unit_name

USAGE = """usage: difftre targets [config=NAME] reference=... reference.file=PATH [observables=[...]] [out=DIR] [blocks=N]

Compute target files from a trajectory (the reference group: file, format, units, mapping,
start/stop/stride) with the config's observables (the definitions training uses); write
OUT/<name>.txt (x, mean, standard error from blocks of frames) and OUT/targets.yaml.
  out=DIR     output directory (default: runs/targets/<timestamp>)
  blocks=N    consecutive blocks of frames for the standard error (default 10)
  key=value   config overrides as for train (system.*, observables, reference.*)
"""
#: frames featurized per call of the engine
BATCH = 200


def parse_args(rest: list[str]) -> tuple[Path | None, int, list[str]]:
    """(out, blocks, config overrides)."""
    out, blocks, overrides = None, 10, []
    for a in rest:
        if a.startswith("out="):
            out = Path(a.split("=", 1)[1]).expanduser()
        elif a.startswith("blocks="):
            value = a.split("=", 1)[1]
            if not value.isdigit() or int(value) < 2:
                raise UserError(f"targets: blocks={value} must be an integer ≥ 2", "e.g. blocks=10")
            blocks = int(value)
        else:
            overrides.append(a)
    return out, blocks, overrides


def compute(cfg, blocks: int = 10) -> tuple[dict, dict]:
    """({name: (grid or None, mean, standard error)}, provenance) of the config's position-only
    observables over every selected frame of ``cfg.reference``."""
    if not reference.is_set(cfg.get("reference")):
        raise UserError("difftre targets reads a trajectory, and reference is none",
                        "add reference=lammps_dump reference.file=PATH (or another reference option)")
    with open_dict(cfg):
        cfg.reference.validation_fraction = 0.0   # every selected frame
    if is_one_body_system(cfg.system):
        raise UserError("difftre targets reads particles in a periodic box; this system is one-body (1-D)",
                        "use a box system (system.kind=box)")
    topology = None
    if molecule_setup.is_molecule(cfg):   # a molecule: its beads' species are the topology's types
        mol = molecule_setup.build(cfg, fit=False)
        system, potential, topology = mol.system, mol.potential, mol.topology
    else:
        system = build_system(cfg.system)
        cutoff = float(cfg.model.get("cutoff", cfg.system.get("cutoff", 2.5)))
        potential = potentials.build(cfg.prior, cfg.model, cutoff, system.species_names).bind(system)  # lists only
    every = observables_mod.build(cfg.observables)
    obs = {k: o for k, o in every.items() if not o.depends_on_params and o.combine is None}
    ref = reference.open_reference(cfg.reference, system.units, box=system.box_size, n_particles=system.n_particles)
    # a pressure the trajectory carries per frame (extended XYZ stress, H5MD observables/pressure)
    has_pressure = ref.trajectory.pressure_factor is not None
    read = {k: o for k, o in every.items() if isinstance(o, Pressure) and has_pressure}
    skipped = sorted(set(every) - set(obs) - set(read))
    if not obs and not read:
        raise UserError(f"none of the observables ({', '.join(every)}) is a property of positions alone, and the "
                        "trajectory has no pressures", "compute e.g. observables=[rdf,adf]; pressure and energy "
                        "depend on the potential (a pressure is read where the file has one per frame)")
    names = tuple(system.species_names)
    bead_types = ref.bead_type_names
    if topology is not None:   # a molecule: the topology types its beads
        bead_types = tuple(topology.types)
    elif len(names) == 1 and len(set(bead_types)) == 1:   # one species: the bead type's name is free
        bead_types = names * len(bead_types)
    if set(bead_types) - set(names):
        raise UserError(f"reference.mapping names bead types {sorted(set(bead_types))} but system.species is "
                        f"{list(names)}", "name the bead types as the system's species")
    species = np.asarray([names.index(t) for t in bead_types], np.int32)
    ctx = Context(system.n_particles, system.volume, system.kT, names,
                  tuple(int(np.sum(species == k)) for k in range(len(names))), species if len(names) > 1 else None,
                  topology=topology)   # a molecule's: `all` of observables/internal.py
    engine = ObservableEngine(potential, obs, ctx, system.box_size, 1.0 / system.kT)
    params = potential.init(jax.random.PRNGKey(0))   # position-only observables: any parameters
    values = {k: [] for k in [*obs, *read]}
    t0, n = time.perf_counter(), 0
    for batch in ref.batches("train", BATCH):
        if obs:
            pos = np.asarray(batch.positions, np.float32)
            feats = engine.featurize(Trajectory(pos, np.zeros(len(pos), np.float32), None, None))
            for k, v in engine.snapshot_observables_jit(params, feats).items():
                values[k].append(np.asarray(v, np.float64))
        for k in read:
            values[k].append(np.asarray(batch.pressures, np.float64))
        n += len(batch.positions)
    if n < blocks:
        raise UserError(f"the trajectory has {n} selected frames, fewer than blocks={blocks}",
                        "select more frames (reference.stride, start, stop) or lower blocks=")
    out = {}
    for k, parts in values.items():
        x = np.concatenate(parts)
        means = np.array([b.mean(0) for b in np.array_split(x, blocks)])
        grid = obs[k].grid if k in obs else None
        out[k] = (None if grid is None else np.asarray(grid, np.float64), x.mean(0), means.std(0, ddof=1) / np.sqrt(blocks))
    s = ref.settings
    info = {"source": str(s.file), "format": s.format, "frames": n, "start": s.start, "stop": s.stop,
            "stride": s.stride, "blocks": blocks, "mapping": OmegaConf.to_container(cfg.reference.mapping),
            "units": system.units.name, "skipped": skipped, "seconds": time.perf_counter() - t0,
            "difftre": __version__}
    return out, {"info": info, "observables": {**obs, **read}, "units": system.units}


def write(results: dict, meta: dict, out: Path) -> dict:
    """OUT/<name>.txt for gridded observables and OUT/targets.yaml; returns targets.yaml's dict."""
    out.mkdir(parents=True, exist_ok=True)
    info, obs, units = meta["info"], meta["observables"], meta["units"]
    entries, notes = {}, []
    for name, (grid, mean, err) in results.items():
        o = obs[name]
        if grid is None:   # a scalar (or vector) value target; its standard error in the comment
            entries[name] = {"value": np.ravel(mean).tolist() if np.size(mean) > 1 else float(mean),
                             "observable": name}
            if isinstance(o, Pressure):   # read from the file, in the run's pressure unit
                entries[name]["unit"] = unit_name("pressure", units)
            notes.append(f"# {name}: standard error {float(err):.4g}" if np.size(err) == 1
                         else f"# {name}: standard errors {np.ravel(err).tolist()}")
            continue
        x_unit = unit_name(o.unit_kind, units)
        header = [f"difftre targets: {name} ({type(o).__name__}) from {info['source']} ({info['format']})",
                  f"frames: {info['frames']} (start {info['start']}, stop {info['stop']}, stride {info['stride']}); "
                  f"standard error from {info['blocks']} consecutive blocks",
                  f"mapping: {json.dumps(info['mapping'])}; units: {info['units']} (x in {x_unit})"]
        if surfaces.is_surface(grid):   # a 2-D map (phi_psi): x1, x2, mean, standard error (surfaces.py)
            path = out / f"{name}.csv"
            header.append(f"difftre {info['difftre']}; columns: {', '.join(o.symbols[:-1])}, mean, standard error")
            surfaces.write_surface(path, grid, mean, err, o.symbols, header)
        else:
            path = out / f"{name}.txt"
            header.append(f"difftre {info['difftre']}; columns: x, mean, standard error")
            np.savetxt(path, np.stack([grid, mean, err], 1), header="\n".join(header), fmt="%.10g")
        entries[name] = {"file": str(path.resolve()), "x_unit": x_unit, "observable": name}
    (out / "targets.yaml").write_text(
        f"# difftre targets from {info['source']}: use as `targets` entries (skipped, depend on the potential: "
        f"{', '.join(info['skipped']) or 'none'})\n" + "".join(n + "\n" for n in notes)
        + yaml.safe_dump(entries, sort_keys=False))
    return entries
