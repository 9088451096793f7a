"""The config tree itself: presets that extend others, ground_truth as a group, one dispatch key
(`kind`), observables and targets composed from one-per-file options, trainer=static presets
without the MD groups. Compose (+ validate) only; nothing is compiled or trained."""
from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from difftre_cli.config import validate
from difftre_cli.config_files import CONFIG_DIR, presets
from difftre_cli.reference.write import write_extxyz

RDF = {"kind": "rdf", "r_min": 0.0, "r_max": 3.0, "n_bins": 150, "sigma": 0.02}


def _compose(*overrides) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=False)


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


def test_observables_and_targets_compose_from_lists():
    """observables=[rdf,pressure] is what the former rdf_pressure option held, and the target
    lists give the former lj_liquid_rdf_pressure / lj_rdf_sk files' content."""
    cfg = _compose("config=lj", "observables=[rdf,pressure]", "targets=[lj_liquid_rdf,lj_liquid_pressure]")
    assert cfg["observables"] == {"rdf": RDF, "pressure": {"kind": "pressure"}}
    assert cfg["targets"] == {
        "rdf": {"file": "configs/targets/data/lj_rdf_rho0.70_kT1.00.txt", "x_unit": "sigma", "gamma": 1.0},
        "pressure": {"value": 0.527, "unit": "reduced", "gamma": 0.1}}
    cfg = _compose("config=lj", "observables=[rdf,sk]", "targets=[lj_rdf,lj_sk]")
    assert cfg["observables"]["sk"] == {"kind": "structure_factor", "k_min": 0.4, "k_max": 8.0, "n_bins": 38}
    assert cfg["targets"]["sk"] == {"file": "configs/targets/data/lj_sk_rho0.50_kT1.50.txt", "x_unit": "1/sigma",
                                    "gamma": 1.0}
    assert list(_compose("config=diamond")["observables"]) == ["stress", "stiffness"]
    water = _compose("config=water")["observables"]
    assert list(water) == ["rdf", "adf", "pressure", "q"]
    assert water["rdf"] == {**RDF, "r_max": 1.0, "n_bins": 300, "sigma": None}   # the preset's grid


def test_lj_ibi_is_lj_with_another_trainer_and_model():
    lj, ibi = _compose("config=lj"), _compose("config=lj_ibi")
    assert ibi["trainer"]["kind"] == "ibi" and ibi["trainer"]["updates"] == 60
    assert ibi["model"]["kind"] == "table" and ibi["model"]["n_points"] == 69
    for key in ("system", "prior", "simulator", "observables", "targets", "optimizer", "ground_truth", "evaluate"):
        assert ibi[key] == lj[key], key
    assert ibi["name"] == "${hydra:runtime.choices.config}"
    direct = _compose("config=lj_direct_ad")
    assert direct["trainer"]["kind"] == "direct_ad" and direct["optimizer"]["kind"] == "adam"
    assert direct["optimizer"]["lr"] == 0.02 and direct["optimizer"]["clip_norm"] == 1.0
    for key in ("system", "prior", "model", "observables", "targets", "ground_truth"):
        assert direct[key] == lj[key], key
    # the command line still picks the last word: an override on top of an extending preset
    assert _compose("config=lj_ibi", "trainer=difftre")["trainer"]["kind"] == "difftre"


def test_preset_name_is_the_selected_preset_not_the_one_it_extends():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=["config=lj_ibi"], return_hydra_config=True)
    assert cfg.hydra.runtime.choices.config == "lj_ibi"


def test_ground_truth_group():
    assert _compose("config=water")["ground_truth"] is None              # none: null, read as absent
    assert _compose("config=lj")["ground_truth"] == {"kind": "lj", "epsilon": 1.0, "sigma": 1.0, "cutoff": 2.5}
    assert _compose("config=water", "ground_truth=lj", "ground_truth.epsilon=2.0")["ground_truth"]["epsilon"] == 2.0
    assert _compose("config=tiny", "ground_truth=none")["ground_truth"] is None
    assert _compose("config=double_well")["ground_truth"]["kind"] == "double_well"
    mix = _compose("config=lj_mixture")["ground_truth"]
    assert mix["kind"] == "lj" and mix["pairs"]["B-B"] == {"sigma": 1.1}


def test_static_presets_compose_no_md_groups():
    for name in ("si_sw_elastic", "si_edip_elastic", "si_sw_phonons"):
        cfg = _compose(f"config={name}")
        assert not {"prior", "model", "simulator", "observables"} & set(cfg), name
        assert cfg["trainer"]["kind"] == "static" and cfg["optimizer"]["kind"] == "bfgs"
    edip, phonons = _compose("config=si_edip_elastic"), _compose("config=si_sw_phonons")
    assert edip["classical"]["kind"] == "edip" and edip["classical"]["learnable"] == ["A", "lam"]
    assert list(phonons["targets"]) == ["fc"] and phonons["system"]["replicate"] == [2, 2, 2]


def _stand_in_molecule(cfg, directory) -> str:
    """A molecule preset's stand-in: frames of its topology's beads in open space (no cell)."""
    import ase
    import ase.io
    n = len(OmegaConf.load(CONFIG_DIR.parent / cfg.topology.file).beads)
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(12):   # at least 10: the Boltzmann-inversion fit's minimum
        atoms = ase.Atoms(["Ar"] * n, positions=np.cumsum(rng.normal(scale=0.9, size=(n, 3)), 0), pbc=False)
        atoms.arrays["forces"] = rng.normal(size=(n, 3))
        frames.append(atoms)
    path = directory / "molecule.extxyz"
    ase.io.write(path, frames, format="extxyz")
    return str(path)


def _stand_in_reference(cfg, directory) -> str:
    """A two-frame extended-XYZ file with the preset's bead count and box, standing in for a
    reference trajectory the preset names but a fresh checkout lacks (runs/ is not tracked):
    validation opens it and checks its beads and box (atoms named Ar, one bead each: the preset's
    mapping is replaced, see the test)."""
    n = int(cfg.system.n_particles)
    box = float(cfg.system.box_size) if cfg.system.get("density") is None else (n / float(cfg.system.density)) ** (1 / 3)
    box *= 10.0 if cfg.system.units == "real" else 1.0    # ase reads extended XYZ in Å (real units: nm)
    rng = np.random.default_rng(0)
    return str(write_extxyz(directory / "ref.extxyz", rng.uniform(0, box, (2, n, 3)), rng.normal(size=(2, n, 3)),
                            np.zeros(2), box))


@pytest.mark.parametrize("preset", presets())
def test_every_preset_dispatches_on_kind_and_validates(preset, tmp_path):
    cfg = _cfg(f"config={preset}")
    if cfg.get("reference") is not None:
        make = cfg.reference.get("make")
        if make:   # the command the missing-file error names must exist
            assert (CONFIG_DIR.parent / make.split()[1]).is_file(), make
        stand_in = _stand_in_molecule if cfg.get("topology") is not None else _stand_in_reference
        cfg = _cfg(f"config={preset}", f"reference.file={stand_in(cfg, tmp_path)}", "reference.topology=null",
                   "~reference.mapping", "+reference.mapping={beads: {A: 'name Ar'}, per: atom, center: geometry}")
    for group in ("simulator", "optimizer", "trainer", "model", "prior"):
        node = cfg.get(group)
        if node is not None:
            assert "kind" in node and "integrator" not in node and "name" not in node, (preset, group)
    validate(cfg)
