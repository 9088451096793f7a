"""HDF5 run store: bit-exact pytree round trips, checkpoints, crash safety, H5MD trajectories."""
from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax_md import energy, simulate, space

from difftre_cli import units
from difftre_cli.sampler import Trajectory
from difftre_cli.store import RunStore, load_pytree, save_pytree


# -- helpers ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _params_cached():
    k1, k2 = jax.random.split(jax.random.PRNGKey(42))
    return {"knots": jax.random.normal(k1, (40,)),
            "mlp": {"w": jax.random.normal(k2, (3, 5)), "b": jnp.zeros(5)},
            "scale": jnp.float32(0.7)}


def _params():
    return dict(_params_cached())   # a fresh top-level dict (tests modify it); arrays are immutable


def _adam_state(params):
    opt = optax.adam(1e-2)
    state = opt.init(params)
    grads = jax.tree_util.tree_map(lambda p: 0.1 * jnp.ones_like(p), params)
    _, state = opt.update(grads, state, params)   # non-trivial count, mu, nu
    return state


@functools.lru_cache(maxsize=None)
def _langevin_state(n=16, box=4.0):
    _, shift = space.periodic(box)
    disp, _ = space.periodic(box)
    init, step = simulate.nvt_langevin(energy.soft_sphere_pair(disp), shift, 1e-3, 1.0)
    R = jax.random.uniform(jax.random.PRNGKey(1), (n, 3)) * box
    st = init(jax.random.PRNGKey(0), R, mass=1.0)
    return step(st)   # advanced once: the PRNG key differs from the seed's


def _assert_trees_identical(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert y.dtype == x.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()   # bit-exact (also for NaN payloads / -0.0)


def _roundtrip(tmp_path, tree, template=None):
    path = tmp_path / "tree.h5"
    with h5py.File(path, "w") as f:
        save_pytree(f.create_group("t"), tree)
    with h5py.File(path, "r") as f:
        return load_pytree(f["t"], tree if template is None else template)


def _zeros_like(tree):
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


# -- pytrees ----------------------------------------------------------------------------------
def test_params_roundtrip_bit_exact(tmp_path):
    p = _params()
    p["knots"] = p["knots"].at[0].set(-0.0).at[1].set(jnp.nan).at[2].set(jnp.inf)
    _assert_trees_identical(_roundtrip(tmp_path, p, _zeros_like(p)), p)


def test_adam_state_roundtrip_bit_exact(tmp_path):
    st = _adam_state(_params())
    out = _roundtrip(tmp_path, st, _zeros_like(st))
    _assert_trees_identical(out, st)
    assert int(out[0].count) == 1


def test_langevin_state_roundtrip_bit_exact(tmp_path):
    st = _langevin_state()
    out = _roundtrip(tmp_path, st, _zeros_like(st))
    assert type(out) is type(st)
    _assert_trees_identical(out, st)
    assert out.rng.dtype == jnp.uint32


def test_typed_prng_key_roundtrip(tmp_path):
    tree = {"key": jax.random.split(jax.random.key(3))[1], "x": jnp.arange(3.0)}
    template = {"key": jax.random.key(0), "x": jnp.zeros(3)}
    _assert_trees_identical(_roundtrip(tmp_path, tree, template), tree)


def test_load_rejects_mismatched_template(tmp_path):
    p = _params()
    with pytest.raises(ValueError, match="leaves"):
        _roundtrip(tmp_path, p, {"knots": p["knots"]})
    bad = dict(p, knots=jnp.zeros(41))
    with pytest.raises(ValueError, match="shape"):
        _roundtrip(tmp_path, p, bad)


# -- checkpoints ------------------------------------------------------------------------------
def _rows(n):
    return [{"update": i, "loss": 0.5 / (i + 1), "loss_rdf": 0.25 / (i + 1), "n_eff": 20.0 - i,
             "reused": i % 2, "grad_norm": float(np.float32(0.1 * i)), "event": "ok" if i else "non_finite_loss"}
            for i in range(n)]


def _write(store, update, params, opt_state, sim_state, rows, **attrs):
    store.write_checkpoint(update=update,
                           trees={"params": params, "opt_state": opt_state, "sim_state": sim_state},
                           attrs={"lr_scale": 0.5, "failures": 0, "n_trajectories": 2, "feature_capacity": 57,
                                  **attrs},
                           metrics=rows, n_trajectories=0, config_yaml="seed: 0\n", versions={"jax": jax.__version__})


def _templates(params, opt_state, sim_state):
    return {"params": _zeros_like(params), "opt_state": _zeros_like(opt_state), "sim_state": _zeros_like(sim_state)}


def test_checkpoint_roundtrip(tmp_path):
    store = RunStore(tmp_path / "run")
    params = _params()
    opt_state = _adam_state(params)
    sim_state = _langevin_state()
    rows = _rows(4)
    _write(store, 4, params, opt_state, sim_state, rows)
    assert not (tmp_path / "run" / "difftre.h5.tmp").exists()

    update, trees, attrs, metrics = store.read_checkpoint(_templates(params, opt_state, sim_state))
    assert update == 4
    _assert_trees_identical(trees["params"], params)
    _assert_trees_identical(trees["opt_state"], opt_state)
    _assert_trees_identical(trees["sim_state"], sim_state)
    for k, v in {"lr_scale": 0.5, "failures": 0, "n_trajectories": 2, "feature_capacity": 57}.items():
        assert attrs[k] == v
    assert metrics == rows
    # integer columns stay integers (a resumed run rewrites metrics.csv from these rows)
    assert all(type(r["update"]) is int and type(r["reused"]) is int for r in metrics)


def test_checkpoint_replaced_by_newer(tmp_path):
    store = RunStore(tmp_path)
    params, sim = _params(), _langevin_state()
    opt = _adam_state(params)
    _write(store, 2, params, opt, sim, _rows(2))
    params2 = jax.tree_util.tree_map(lambda x: x + 1, params)
    _write(store, 4, params2, opt, sim, _rows(4))
    update, trees, _, metrics = store.read_checkpoint(_templates(params, opt, sim))
    assert update == 4 and len(metrics) == 4
    _assert_trees_identical(trees["params"], params2)


def test_torn_tmp_file_is_never_read(tmp_path):
    store = RunStore(tmp_path)
    params, sim = _params(), _langevin_state()
    opt = _adam_state(params)
    _write(store, 2, params, opt, sim, _rows(2))
    # A crash while writing the next checkpoint leaves garbage / a truncated file in .tmp.
    good = (tmp_path / "difftre.h5").read_bytes()
    (tmp_path / "difftre.h5.tmp").write_bytes(good[: len(good) // 2])
    update, trees, _, metrics = store.read_checkpoint(_templates(params, opt, sim))
    assert update == 2 and len(metrics) == 2
    _assert_trees_identical(trees["params"], params)
    (tmp_path / "difftre.h5.tmp").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0garbage" * 100)
    assert store.read_checkpoint(_templates(params, opt, sim))[0] == 2
    # and the next complete write succeeds over the stale .tmp
    _write(store, 4, params, opt, sim, _rows(4))
    assert store.read_checkpoint(_templates(params, opt, sim))[0] == 4
    assert not (tmp_path / "difftre.h5.tmp").exists()


def test_exception_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from difftre_cli import store as store_mod

    store = RunStore(tmp_path)
    params, sim = _params(), _langevin_state()
    opt = _adam_state(params)
    _write(store, 2, params, opt, sim, _rows(2))
    calls = {"n": 0}
    real = store_mod.save_pytree

    def dying(group, tree):
        calls["n"] += 1
        if calls["n"] == 2:   # after params were written, before the rest
            raise OSError("disk full")
        real(group, tree)

    monkeypatch.setattr(store_mod, "save_pytree", dying)
    with pytest.raises(OSError):
        _write(store, 4, jax.tree_util.tree_map(lambda x: x + 1, params), opt, sim, _rows(4))
    monkeypatch.setattr(store_mod, "save_pytree", real)
    update, trees, _, _ = store.read_checkpoint(_templates(params, opt, sim))
    assert update == 2
    _assert_trees_identical(trees["params"], params)


def test_process_killed_mid_write_keeps_previous_checkpoint(tmp_path):
    """A process that dies (os._exit, no cleanup) inside write_checkpoint leaves the last
    complete checkpoint readable."""
    script = textwrap.dedent(f"""
        import os, jax.numpy as jnp
        from difftre_cli import store as s
        st = s.RunStore({str(tmp_path)!r})
        kw = dict(attrs={{}}, metrics=[{{"update": 0, "loss": 1.0}}], n_trajectories=0, config_yaml="", versions={{}})
        st.write_checkpoint(update=1, trees={{"params": {{"a": jnp.arange(4.0)}}}}, **kw)
        def die(self, buf, tmp, final):      # killed halfway through writing the new file
            data = buf.getvalue()
            with open(tmp, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
            os._exit(9)
        s.RunStore._commit = die
        st.write_checkpoint(update=2, trees={{"params": {{"a": jnp.arange(4.0) + 1}}}}, **kw)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert (tmp_path / "difftre.h5.tmp").exists()   # the torn write is there ...
    update, trees, _, _ = RunStore(tmp_path).read_checkpoint({"params": {"a": jnp.zeros(4)}})
    assert update == 1                                # ... and never read
    np.testing.assert_array_equal(np.asarray(trees["params"]["a"]), np.arange(4.0))


def test_incomplete_checkpoint_is_rejected(tmp_path):
    with h5py.File(tmp_path / "difftre.h5", "w") as f:
        f.create_group("checkpoint").attrs["update"] = 3
    with pytest.raises(ValueError, match="incomplete"):
        RunStore(tmp_path).read_checkpoint({})


# -- trajectories (H5MD) ----------------------------------------------------------------------
def _trajectory(S=6, N=11, box=4.0, seed=0):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, box, (S, N, 3)).astype(np.float32)
    return Trajectory(pos, rng.normal(size=S), rng.uniform(0.8, 1.2, S), 200 + 10 * np.arange(1, S + 1))


def test_trajectory_roundtrip(tmp_path):
    store = RunStore(tmp_path)
    traj = _trajectory()
    path = store.write_trajectory(3, traj, 4.0, 0.005, units.get("lj"))
    assert path == tmp_path / "trajectories" / "ref_00003.h5md"
    assert not list(path.parent.glob("*.tmp"))
    back = store.read_trajectory(3)
    np.testing.assert_array_equal(back.positions, traj.positions)
    np.testing.assert_array_equal(back.energies, traj.energies)
    np.testing.assert_array_equal(back.kT, traj.kT)
    np.testing.assert_array_equal(back.step, traj.step)
    with h5py.File(path, "r") as f:
        assert list(f["h5md"].attrs["version"]) == [1, 1]
        np.testing.assert_allclose(f["particles/all/position/time"][()], traj.step * 0.005)
        assert f["particles/all/box"].attrs["dimension"] == 3


@pytest.mark.parametrize("unit_system, scale", [("lj", 1.0), ("real", 10.0), ("metal", 1.0)])
def test_trajectory_is_h5md_for_mdanalysis(tmp_path, unit_system, scale):
    mda = pytest.importorskip("MDAnalysis")
    from MDAnalysis.coordinates.H5MD import H5MDReader

    S, N, box, dt = 6, 11, 4.0, 0.005
    traj = _trajectory(S, N, box)
    path = RunStore(tmp_path).write_trajectory(0, traj, box, dt, units.get(unit_system))
    # Reduced units carry no H5MD unit attributes, so MDAnalysis must not try to convert.
    kw = {"convert_units": False} if unit_system == "lj" else {}
    u = mda.Universe.empty(N, trajectory=False)
    u.load_new(str(path), format="H5MD", **kw)
    assert isinstance(u.trajectory, H5MDReader)
    assert u.trajectory.n_frames == S and u.atoms.n_atoms == N
    for i, ts in enumerate(u.trajectory):
        np.testing.assert_allclose(ts.positions, traj.positions[i] * scale, rtol=1e-6)
        np.testing.assert_allclose(ts.dimensions, [box * scale] * 3 + [90.0] * 3, rtol=1e-6)
        assert ts.data["step"] == traj.step[i]
        assert ts.time == pytest.approx(traj.step[i] * dt)
    if unit_system == "real":
        assert u.trajectory.units["length"] == "nm" and u.trajectory.units["time"] == "ps"
    u.trajectory.close()
