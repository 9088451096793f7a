"""The potential protocol (potentials/protocol.py) and the observable protocol (observables/base.py).

Every potential the config builders can produce from the presets (every preset's model × prior,
every model and every prior of the ``model`` and ``prior`` groups, on the presets' systems) is
built the way ``assemble`` builds it and checked: it is a Potential of exactly one kind, and every declared capability
agrees with what the potential does (``takes_strain`` iff ``energy_from_features`` takes a
``strain``, ``can_strain`` iff ``strained`` works, ``temperature_dependent`` iff ``bind`` binds a
kT, pair terms that add up to the energy, …). No MD: a start configuration at most.

The ``model`` and ``prior`` groups: every YAML names a registered kind and builds, every
registered pair model and pair prior has a YAML (so the protocol test above covers it), and an
unknown kind is a user error that lists the registered ones.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from difftre_cli import observables as observables_mod
from difftre_cli import potentials
from difftre_cli.errors import UserError
from difftre_cli.observables.base import Observable
from difftre_cli.observables.engine import BORN
from difftre_cli.onebody import build_line_system, is_one_body_system
from difftre_cli.potentials import pair, priors
from difftre_cli.potentials.base import PairModel
from difftre_cli.potentials.pair import ThermalPair
from difftre_cli.potentials.protocol import (
    BoxPotential,
    GraphCapacity,
    OneBodyPotential,
    PairTerm,
    Potential,
)
from difftre_cli.system import build_system

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _group(name: str) -> dict:
    """{option: its config mapping} of the config group ``configs/<name>/``."""
    return {p.stem: OmegaConf.load(p) for p in sorted((CONFIGS / name).glob("*.yaml"))}


MODEL_YAMLS, PRIOR_YAMLS = _group("model"), _group("prior")
# the options of the groups that make a PairPotential: every registered pair model and pair prior
PAIR_MODELS = tuple(m for m, cfg in MODEL_YAMLS.items() if cfg.get("kind") in (*pair.MODELS, "none"))
# (a molecule's prior, with bonded terms, needs a topology: tests/test_molecule_potential.py)
PAIR_PRIORS = tuple(p for p, cfg in PRIOR_YAMLS.items() if cfg.get("kind") in priors.PRIORS and "bonded" not in cfg)
SMALL_LJ = ["system.n_particles=256"]    # the preset's density (all pairs by hand below)
SMALL_WATER = ["system.n_particles=64", "system.box_size=1.2415", "system.lattice=sc"]
SMALL_NET = ["model.embed_size=8", "model.out_embed_size=8", "model.int_emb_size=4", "model.num_blocks=1",
             "model.num_spherical=3", "model.num_radial=3", "model.num_dense_out=1"]

# (id, overrides): every model × prior combination the presets use, and every model and every
# prior of the groups (the prior's kind only changes the elementwise function u_prior(r))
CASES = ([(f"lj-{m}", ["config=lj", f"model={m}", *SMALL_LJ]) for m in PAIR_MODELS]
         + [(f"lj-spline-{p}", ["config=lj", f"prior={p}", *SMALL_LJ]) for p in PAIR_PRIORS if p != "repulsive"]
         + [(f"mixture-{m}", ["config=lj_mixture", f"model={m}", *SMALL_LJ]) for m in PAIR_MODELS]
         + [("water", ["config=water", *SMALL_WATER, *SMALL_NET]),            # pair prior + DimeNet++
            ("water-dense", ["config=water", "model.graph_format=dense", *SMALL_WATER, *SMALL_NET]),
            ("diamond", ["config=diamond", *SMALL_NET]),
            ("water-three_body", ["config=water", "model=three_body", *SMALL_WATER]),   # pair prior + SW form
            ("diamond-three_body", ["config=diamond", "model=three_body", "model.cutoff=0.2", "model.lam=1.0"]),
            ("double_well-spline_1d", ["config=double_well"]),
            ("double_well-mlp_1d", ["config=double_well", "model=mlp_1d"]),
            ("double_well-none", ["config=double_well", "model=none"])]
         + [(f"preset-{name}", [f"config={name}", *SMALL_LJ]) for name in ("lj_direct_ad", "lj_ibi", "lj_liquid",
                                                                          "lj_thermal", "tiny")])


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


def _built(overrides):
    """(config, system, potential) as assemble.build makes them (the potential bound to the system)."""
    cfg = _compose(overrides)
    system = build_line_system(cfg.system) if is_one_body_system(cfg.system) else build_system(cfg.system)
    cutoff = float(cfg.model.get("cutoff", cfg.system.get("cutoff", 2.5)))
    return cfg, system, potentials.build(cfg.prior, cfg.model, cutoff, system.species_names).bind(system)


def _noisy(params, scale=0.1):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(7), max(1, len(leaves)))
    return jax.tree_util.tree_unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                               for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("overrides", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_every_preset_potential_satisfies_the_protocol(overrides):
    cfg, system, pot = _built(overrides)
    assert isinstance(pot, Potential)
    assert isinstance(pot, BoxPotential) != isinstance(pot, OneBodyPotential)   # exactly one kind
    assert pot.one_body == isinstance(pot, OneBodyPotential)
    assert pot.has_graph_capacity == isinstance(pot, GraphCapacity)
    assert pot.takes_strain == ("strain" in inspect.signature(pot.energy_from_features).parameters)
    assert pot.snapshot_batch is None or (isinstance(pot.snapshot_batch, int) and pot.snapshot_batch >= 1)
    if isinstance(pot, BoxPotential):
        assert pot.cutoff > 0 and pot.list_cutoff >= pot.cutoff

    # can_strain iff strained works; a strained potential is the same kind with a wider list
    eps = np.diag([0.01, -0.01, 0.0])
    if pot.can_strain:
        strained = pot.strained(eps)
        assert type(strained) is type(pot) and strained.list_cutoff >= pot.cutoff
    else:
        with pytest.raises(NotImplementedError):
            pot.strained(eps)

    # temperature_dependent iff the model is u(r, T), and then bind gave it the state point's kT
    assert pot.temperature_dependent == isinstance(pot.model, ThermalPair)
    if pot.temperature_dependent:
        assert pot.model.kT == pytest.approx(float(system.kT))

    terms = pot.pair_terms()
    assert all(isinstance(t, PairTerm) for t in terms)
    if pot.has_graph_capacity:   # graph networks: their energy is checked in test_manybody / test_diamond
        assert not terms
        return
    params = _noisy(pot.init(jax.random.PRNGKey(0)))
    if pot.one_body:
        x = jnp.asarray(system.positions, jnp.float32)
        u = pot.energy_from_features(params, pot.features(x))
        assert np.isclose(float(u), float(jnp.sum(pot.per_particle_energy(params, x))), rtol=1e-5)
        assert pot.force(params, x).shape == x.shape and not terms
        return
    _check_pair_terms(pot, system, params, terms)


def _check_pair_terms(pot, system, params, terms):
    """The pair terms name the species pairs of the system and add up to energy_from_features."""
    names = tuple(system.species_names)
    if len(names) == 1:
        assert [(t.key, t.species) for t in terms] == [(None, None)]
    else:
        assert {t.species for t in terms} == {(a, b) for i, a in enumerate(names) for b in names[i:]}
        assert all(t.key == f"{a}-{b}" for t, (a, b) in ((t, t.species) for t in terms))
    R = np.asarray(system.positions, np.float64)
    box, n = float(system.box_size), len(R)
    d = R[:, None, :] - R[None, :, :]
    d -= box * np.round(d / box)
    r = np.sqrt((d ** 2).sum(-1))
    near = (r < pot.list_cutoff) & ~np.eye(n, dtype=bool)
    idx = np.full((n, near.sum(1).max()), n, np.int32)   # a dense list by hand, padded with N
    for a in range(n):
        idx[a, :near[a].sum()] = np.flatnonzero(near[a])
    u = float(jax.jit(lambda p: pot.energy_from_features(p, pot.features_on_list(jnp.asarray(R, jnp.float32), idx,
                                                                                 box)))(params))
    # all pairs by hand with the pair terms
    species = np.asarray(system.species)
    i, j = np.triu_indices(len(R), 1)
    inside = r[i, j] < pot.cutoff
    total = 0.0
    for t in terms:
        if t.species is None:
            sel = inside
        else:
            a, b = (names.index(s) for s in t.species)
            si, sj = species[i], species[j]
            sel = inside & (((si == a) & (sj == b)) | ((si == b) & (sj == a)))
        total += float(jax.jit(lambda p, x, u=t.u: jnp.sum(u(p, x)))(params, jnp.asarray(r[i, j][sel], jnp.float32)))
    assert u == pytest.approx(total, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("group", sorted(p.stem for p in (CONFIGS / "observables").glob("*.yaml")))
def test_every_preset_observable_satisfies_the_protocol(group):
    cfg = _compose(["config=lj", f"observables={group}"])
    for name, obs in observables_mod.build(cfg.observables).items():
        assert isinstance(obs, Observable), name
        assert set(obs.needs) <= set(BORN) and obs.reach >= 0.0
        assert (obs.combine is not None) == ("combine" in type(obs).__dict__)
        assert obs.components is None or (obs.grid is None and len(obs.components) > 0)
        assert obs.pair is None or len(obs.pair) == 2


def test_every_registered_regime_implements_the_regime_protocol():
    """Each trainer kind's regimes derive from learn.regime.Regime with nothing abstract left
    (the loop calls the optional hooks unconditionally)."""
    import inspect

    from difftre_cli.learn.regime import Regime
    from difftre_cli.learn.registry import TRAINERS

    for kind, entry in TRAINERS.items():
        for factory in (entry.regime, entry.multistate):
            if factory is None:
                continue
            refs = inspect.getclosurevars(factory)
            classes = {obj for obj in (*refs.globals.values(), *refs.nonlocals.values()) if inspect.isclass(obj)}
            assert classes, kind
            for cls in classes:
                assert issubclass(cls, Regime) and not inspect.isabstract(cls), (kind, cls)


# ---------------------------------------------------------------------------------------
# the model and prior registries
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(MODEL_YAMLS))
def test_every_model_yaml_names_a_registered_kind_and_builds(name):
    cfg = MODEL_YAMLS[name]
    assert cfg.kind in potentials.MODEL_KINDS, f"configs/model/{name}.yaml: kind {cfg.kind!r} is not registered"
    pot = potentials.build(OmegaConf.create({"kind": "none"}), cfg, float(cfg.get("cutoff", 2.5)))
    assert isinstance(pot, Potential)
    if cfg.kind in pair.MODELS:   # the registry's class, from its own from_config
        assert type(pot.model) is pair.MODELS[cfg.kind] and pot.model.cutoff == cfg.cutoff
    elif cfg.kind == "none":
        assert pot.model is None


@pytest.mark.parametrize("name", sorted(PRIOR_YAMLS))
def test_every_prior_yaml_names_a_registered_kind_and_builds(name):
    cfg = PRIOR_YAMLS[name]
    assert cfg.kind in potentials.PRIOR_KINDS, f"configs/prior/{name}.yaml: kind {cfg.kind!r} is not registered"
    # the many-body Stillinger–Weber prior exists under the graph network only (sw_prior.py)
    model = MODEL_YAMLS["dimenet"] if cfg.kind == "stillinger_weber" else OmegaConf.create({"kind": "none"})
    pair_part = OmegaConf.create({k: v for k, v in cfg.items() if k != "bonded"})   # bonded: molecule tests
    pot = potentials.build(pair_part, model, float(model.get("cutoff", 2.5)))
    assert isinstance(pot, Potential)
    if cfg.kind in priors.PRIORS:
        assert float(pot.prior(jnp.float32(pot.cutoff))) == pytest.approx(0.0, abs=1e-6)


def test_every_registered_pair_model_and_prior_has_a_yaml():
    """A new pair model or pair prior comes with its YAML, so the protocol test covers it."""
    assert set(pair.MODELS) <= {cfg.kind for cfg in MODEL_YAMLS.values()}
    assert set(priors.PRIORS) <= {cfg.kind for cfg in PRIOR_YAMLS.values()}
    for kind, cls in pair.MODELS.items():
        assert issubclass(cls, PairModel) and not inspect.isabstract(cls), kind


def _listed(err) -> list[str]:
    """The kinds a choice error offers: 'use one of a, b, c (e.g. ...)'."""
    return err.value.fix.split("use one of ", 1)[1].split(" (e.g.", 1)[0].split(", ")


def test_an_unknown_kind_lists_the_registered_kinds():
    lj, none = OmegaConf.create({"kind": "lj"}), OmegaConf.create({"kind": "none"})
    with pytest.raises(UserError, match="model.kind: unknown model 'gaussian_process'") as err:
        pair.build(OmegaConf.create({"kind": "gaussian_process"}), 2.5)
    assert _listed(err) == [*pair.MODELS, "none"]
    with pytest.raises(UserError, match="model.kind: unknown model 'gaussian_process'") as err:
        potentials.build(lj, OmegaConf.create({"kind": "gaussian_process"}), 2.5)
    assert _listed(err) == list(potentials.MODEL_KINDS)
    assert {"dimenet", "three_body", "spline_1d", "mlp_1d", "none", *pair.MODELS} == set(potentials.MODEL_KINDS)
    with pytest.raises(UserError, match="prior.kind: unknown prior 'buckingham'") as err:
        potentials.build(OmegaConf.create({"kind": "buckingham"}), none, 2.5)
    assert _listed(err) == list(potentials.PRIOR_KINDS)
    assert {"stillinger_weber", "harmonic_1d", "double_well", *priors.PRIORS} == set(potentials.PRIOR_KINDS)
    # the parts of the composite u1 − kT u2: every temperature-independent registered model
    parts = [k for k, cls in pair.MODELS.items() if not cls.temperature_dependent]
    assert "thermal" not in parts and {"spline", "table", "mlp"} <= set(parts)
    with pytest.raises(UserError, match=f"model.u1.kind must be {', '.join(parts[:-1])} or {parts[-1]}, "
                                        "got 'thermal'"):
        pair.build(OmegaConf.create({"kind": "thermal", "u1": {"kind": "thermal"}, "u2": {"kind": "spline"}}), 2.5)


def test_a_kind_registered_twice_is_refused(monkeypatch):
    """pair.py collects the KINDS of every pair_*.py module; one kind in two places is an error."""
    monkeypatch.setitem(pair.KINDS, "mlp", pair.SplinePair)   # pair_mlp.py registers mlp too
    with pytest.raises(RuntimeError, match="'mlp' defined twice"):
        pair._collect()
