"""HDF5 run store.

Layout of a run directory::

    difftre.h5                 checkpoint (params, optimiser state, PRNG key, simulator state,
                               neighbour list), metrics table, config, versions, units;
                               /trajectories/ref_XXXXX are external links to the files below
    trajectories/ref_XXXXX.h5md  kept snapshots of each reference trajectory, H5MD 1.1 layout
                               (/h5md, /particles/all/{position,box,species}, /observables/
                               reference_energy); older runs have ``.h5`` files, still read
    topology.pdb               the particles' names, types and first positions (topology.py)
    metrics.csv                one row per completed update

Crash safety: every HDF5 file is written to ``NAME.tmp``, flushed and fsynced, then renamed over
``NAME`` (atomic on POSIX). A torn write leaves only a ``.tmp`` file, which is never read; the
previous complete checkpoint stays in place.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import jax
import numpy as np

from . import __version__
from .errors import UserError
from .sampler import Trajectory
from .topology import topology_name, write_topology

CHECKPOINT_FILE = "difftre.h5"
#: Extension of trajectory files, and the one of runs written before trajectories were ``.h5md``
TRAJECTORY_SUFFIX, OLD_TRAJECTORY_SUFFIX = ".h5md", ".h5"
#: H5MD unit attributes (length, time, energy) by unit system, in the spelling readers such as
#: MDAnalysis understand; reduced units have none
H5MD_UNITS = {"real": ("nm", "ps", "kJ mol-1"), "metal": ("Angstrom", "ps", "eV")}
METRICS_FILE = "metrics.csv"
FORMAT_VERSION = 1

# errno values meaning "this disk/quota/file-size limit cannot take the write".
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_NO_ROOM_TEXT = ("no space left", "disk quota", "file too large", "read-only file system")


def versions() -> dict:
    """Exact versions of everything that can change the numbers, and the device."""
    def v(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"
    dev = jax.devices()[0]
    return {"difftre": __version__, "python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": v("jaxlib"), "jax_md": v("jax-md"), "flax": v("flax"), "optax": v("optax"),
            "numpy": v("numpy"), "h5py": v("h5py"), "hydra_core": v("hydra-core"),
            "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}", "n_devices": jax.device_count(),
            "x64": bool(jax.config.jax_enable_x64), "machine": platform.machine(), "system": platform.system()}


@contextlib.contextmanager
def _writing(tmp: Path | None, what: str, run_dir: Path, fix: str | None = None):
    """Turn a full disk (or quota, file-size limit, read-only mount) during a write into a
    UserError, removing the partial ``.tmp`` file; the previous complete file stays. ``fix``:
    what to do then (default: free space and resume the run)."""
    try:
        yield
    except OSError as exc:
        text = str(exc).lower()
        if exc.errno in _NO_ROOM or any(t in text for t in _NO_ROOM_TEXT):
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            raise UserError(f"cannot write {what} in {run_dir}: {exc.strerror or str(exc).splitlines()[0]}",
                            fix or f"free disk space (or raise the quota) and continue with resume={run_dir}") from None
        raise


def _check_finite(name: str, tree: Any) -> None:
    """A NaN or inf never reaches a checkpoint: refuse to write one (internal error)."""
    for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
        if _is_typed_key(leaf):
            continue
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            raise ValueError(f"refusing to checkpoint non-finite values in {name} (leaf {i}); "
                             "the previous checkpoint is kept")


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    try:
        dfd = os.open(final.parent, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    except OSError:
        pass


def write_text_atomic(path: Path, text: str, fix: str | None = None) -> Path:
    """Write ``text`` to ``path`` as the run's files are written (module doc): ``NAME.tmp``,
    fsynced and renamed over ``NAME``; a full disk is a UserError with ``fix`` (_writing)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with _writing(tmp, path.name, path.parent, fix):
        with open(tmp, "w", newline="") as fh:
            fh.write(text)
            fh.flush()
        _fsync_replace(tmp, path)
    return path


def save_pytree(group: h5py.Group, tree: Any) -> None:
    """Store the array leaves of ``tree`` as leaf_00000 … in flattening order."""
    leaves = jax.tree_util.tree_leaves(tree)
    group.attrs["n_leaves"] = len(leaves)
    for i, leaf in enumerate(leaves):
        if _is_typed_key(leaf):  # new-style PRNG keys: store the raw key data
            arr = np.asarray(jax.random.key_data(leaf))
        else:
            arr = np.asarray(leaf)
        group.create_dataset(f"leaf_{i:05d}", data=arr)


def _is_typed_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def load_pytree(group: h5py.Group, template: Any) -> Any:
    """Rebuild a pytree with the structure of ``template`` from :func:`save_pytree` output."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    n = int(group.attrs["n_leaves"])
    if n != len(leaves):
        raise ValueError(f"checkpoint has {n} leaves, the current config expects {len(leaves)}")
    out = []
    for i, like in enumerate(leaves):
        arr = group[f"leaf_{i:05d}"][()]
        if _is_typed_key(like):
            data = jax.random.key_data(like)
            if arr.shape != data.shape:
                raise ValueError(f"checkpoint leaf {i} has shape {arr.shape}, expected {data.shape}")
            out.append(jax.random.wrap_key_data(jax.numpy.asarray(arr, dtype=data.dtype), impl=jax.random.key_impl(like)))
            continue
        like_arr = np.asarray(like)
        if arr.shape != like_arr.shape:
            raise ValueError(f"checkpoint leaf {i} has shape {arr.shape}, expected {like_arr.shape}")
        if getattr(like, "weak_type", False):
            # a weakly typed leaf (e.g. a Python-float scalar of an integrator state) stays weak:
            # a strong one changes the compiled program's signature, i.e. a recompile on resume
            out.append(jax.numpy.full_like(like, arr))
        else:
            out.append(jax.numpy.asarray(arr, dtype=like_arr.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        self.traj_dir = self.dir / "trajectories"

    def _commit(self, buf: io.BytesIO, tmp: Path, final: Path) -> None:
        """Write an HDF5 image built in memory to ``tmp``, fsync, and rename it over ``final``.
        Building in memory keeps HDF5 out of disk errors: a full disk fails a plain write,
        which is reported cleanly, instead of leaving the HDF5 library with a half-closed file."""
        with _writing(tmp, final.name, self.dir):
            with open(tmp, "wb") as fh:
                fh.write(buf.getbuffer())
                fh.flush()
            _fsync_replace(tmp, final)

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT_FILE

    # -- trajectories ------------------------------------------------------------------
    @staticmethod
    def trajectory_name(index: int, state: str = "") -> str:
        """File stem of a reference trajectory: ``ref_00003`` (one state) or ``xA25_ref_00003``."""
        return f"{state + '_' if state else ''}ref_{index:05d}"

    def trajectory_path(self, index_or_name, state: str = "") -> Path:
        """The file of a reference trajectory: ``.h5md``, or ``.h5`` where an older run has one."""
        name = index_or_name if isinstance(index_or_name, str) else self.trajectory_name(index_or_name, state)
        old = self.traj_dir / f"{name}{OLD_TRAJECTORY_SUFFIX}"
        return old if old.is_file() else self.traj_dir / f"{name}{TRAJECTORY_SUFFIX}"

    def trajectory_files(self, state: str = "") -> list[Path]:
        """The complete reference trajectories of the run (of one state point), in order."""
        prefix = f"{state}_" if state else ""
        files = [p for p in self.traj_dir.glob(f"{prefix}ref_*")
                 if p.suffix in (TRAJECTORY_SUFFIX, OLD_TRAJECTORY_SUFFIX) and p.stem.startswith(prefix + "ref_")]
        return sorted(files, key=lambda p: p.stem)

    def write_trajectory(self, index: int, traj, box_size: float, dt: float, unit_system, state: str = "",
                         species=None, species_names=("X",)) -> Path:
        """Write one trajectory as H5MD (and, with the run's first one, the topology file)."""
        self.traj_dir.mkdir(parents=True, exist_ok=True)
        final = self.traj_dir / f"{self.trajectory_name(index, state)}{TRAJECTORY_SUFFIX}"
        tmp = final.with_name(final.name + ".tmp")
        pos = np.asarray(traj.positions, np.float32)
        steps = np.asarray(traj.step, np.int64)
        times = steps * float(dt)
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            h5 = f.create_group("h5md")
            h5.attrs["version"] = np.array([1, 1])
            h5.create_group("author").attrs["name"] = "difftre"
            creator = h5.create_group("creator")
            creator.attrs["name"] = "difftre"
            creator.attrs["version"] = __version__
            part = f.create_group("particles/all")
            box = part.create_group("box")
            dim = pos.shape[-1]
            box.attrs["dimension"] = dim
            ev = None
            if box_size is None:   # free space (independent particles on a line): no box edges
                box.attrs["boundary"] = np.array([b"none"] * dim)
            else:
                box.attrs["boundary"] = np.array([b"periodic"] * dim)
                edges = box.create_group("edges")
                edges.create_dataset("step", data=steps)
                edges.create_dataset("time", data=times)
                ev = edges.create_dataset("value", data=np.full((len(steps), dim), box_size, np.float32))
            p = part.create_group("position")
            p.create_dataset("step", data=steps)
            t = p.create_dataset("time", data=times)
            v = p.create_dataset("value", data=pos, compression="gzip", compression_opts=1, shuffle=True)
            e = f.create_group("observables/reference_energy")
            e.create_dataset("step", data=steps)
            e.create_dataset("time", data=times)
            ee = e.create_dataset("value", data=np.asarray(traj.energies, np.float64))
            k = f.create_group("observables/kinetic_temperature")
            k.create_dataset("step", data=steps)
            k.create_dataset("time", data=times)
            k.create_dataset("value", data=np.asarray(traj.kT, np.float64))
            if species is not None:   # H5MD species: one integer per particle (index into species_names)
                sp = part.create_dataset("species", data=np.asarray(species, np.int32))
                sp.attrs["names"] = np.array([str(x).encode() for x in species_names])
            h5md_units = H5MD_UNITS.get(unit_system.name)
            if h5md_units:   # H5MD unit attributes; omitted in reduced units, which readers cannot convert
                length, time, energy = h5md_units
                v.attrs["unit"] = length
                if ev is not None:
                    ev.attrs["unit"] = length
                t.attrs["unit"] = time
                ee.attrs["unit"] = energy
            f.attrs["units"] = json.dumps(unit_system.to_dict())
        self._commit(buf, tmp, final)
        topology = self.dir / topology_name(state)
        if not topology.is_file() and box_size is not None and dim == 3 and len(pos):
            write_topology(topology, pos[0], box_size, species, species_names, unit_system)
        return final

    def read_trajectory(self, index: int, state: str = ""):
        with h5py.File(self.trajectory_path(index, state), "r") as f:
            return Trajectory(f["particles/all/position/value"][()], f["observables/reference_energy/value"][()],
                              f["observables/kinetic_temperature/value"][()], f["particles/all/position/step"][()])

    # -- checkpoints -------------------------------------------------------------------
    def write_checkpoint(self, *, update: int, trees: dict, attrs: dict, metrics: list[dict],
                         n_trajectories: int, config_yaml: str, versions: dict,
                         trajectory_names: list[str] | None = None) -> None:
        """Atomically replace difftre.h5 with a complete checkpoint after ``update`` updates."""
        for name, tree in trees.items():
            _check_finite(name, tree)
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.checkpoint_path
        tmp = final.with_suffix(".h5.tmp")
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["config"] = config_yaml
            f.attrs["versions"] = json.dumps(versions)
            ck = f.create_group("checkpoint")
            ck.attrs["update"] = update
            for k, v in attrs.items():
                ck.attrs[k] = v
            for name, tree in trees.items():
                save_pytree(ck.create_group(name), tree)
            if metrics:   # columns: every row's keys in first-seen order (interleaved trainers differ)
                m = f.create_group("metrics")
                columns = list(dict.fromkeys(k for row in metrics for k in row))
                for col in columns:
                    vals = [row.get(col) for row in metrics]
                    if all(isinstance(x, str) for x in vals):
                        m.create_dataset(col, data=np.array(vals, dtype=h5py.string_dtype()))
                    elif all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in vals):
                        m.create_dataset(col, data=np.array(vals, np.int64))  # stay integers on resume
                    else:
                        m.create_dataset(col, data=np.array([np.nan if x is None else x for x in vals], float))
                m.attrs["columns"] = json.dumps(columns)
            tg = f.create_group("trajectories")
            names = trajectory_names if trajectory_names is not None else [
                self.trajectory_name(i) for i in range(n_trajectories)]
            for name in names:
                tg[name] = h5py.ExternalLink(f"trajectories/{self.trajectory_path(name).name}", "/")
            ck.attrs["complete"] = True
        self._commit(buf, tmp, final)

    def read_checkpoint(self, templates: dict) -> tuple[int, dict, dict, list[dict]]:
        with h5py.File(self.checkpoint_path, "r") as f:
            ck = f["checkpoint"]
            if not ck.attrs.get("complete", False):
                raise ValueError("checkpoint is incomplete")
            update = int(ck.attrs["update"])
            trees = {k: load_pytree(ck[k], t) for k, t in templates.items() if k in ck}
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in ck.attrs.items()}
            metrics = read_metrics_table(f)
        return update, trees, attrs, metrics

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def checkpoint_attrs(self) -> dict:
        with h5py.File(self.checkpoint_path, "r") as f:
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in f["checkpoint"].attrs.items()}

    def saved_config(self) -> str | None:
        """The config (YAML) the checkpoint was written with."""
        with h5py.File(self.checkpoint_path, "r") as f:
            return f.attrs.get("config")

    def prepare(self) -> None:
        """Create the run directory and drop ``.tmp`` leftovers of writes a kill interrupted."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in [*self.dir.glob("*.tmp"), *self.traj_dir.glob("*.tmp")]:
            with contextlib.suppress(OSError):
                stale.unlink()

    # -- metrics -------------------------------------------------------------------------
    def rewrite_metrics_csv(self, rows: list[dict]) -> None:
        path = self.dir / METRICS_FILE
        tmp = path.with_suffix(".csv.tmp")
        with _writing(tmp, METRICS_FILE, self.dir):
            with open(tmp, "w", newline="") as fh:
                if rows:   # columns: every row's keys in first-seen order (stages differ in theirs)
                    w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
                    w.writeheader()
                    w.writerows(rows)
            os.replace(tmp, path)

    def append_metrics_csv(self, row: dict) -> None:
        """One row at the end of metrics.csv; a row with columns the file lacks rewrites it with
        the union of the columns (rows of interleaved trainers differ in theirs)."""
        path = self.dir / METRICS_FILE
        new = not path.exists() or path.stat().st_size == 0
        size = 0 if new else path.stat().st_size
        header = list(row)
        if not new:
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                header = list(reader.fieldnames or [])
                if any(k not in header for k in row):
                    self.rewrite_metrics_csv([*reader, row])
                    return
        try:
            with _writing(None, METRICS_FILE, self.dir), open(path, "a", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=header, restval="")
                if new:
                    w.writeheader()
                w.writerow(row)
                fh.flush()
        except BaseException:
            with contextlib.suppress(OSError):   # never leave a torn row behind
                os.truncate(path, size)
            raise


def read_metrics_table(f: h5py.File) -> list[dict]:
    if "metrics" not in f:
        return []
    m = f["metrics"]
    cols = json.loads(m.attrs["columns"])
    data = {c: m[c][()] for c in cols}
    n = len(next(iter(data.values()))) if data else 0
    rows = []
    for i in range(n):
        row = {}
        for c in cols:
            v = data[c][i]
            row[c] = v.decode() if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v)
        rows.append(row)
    return rows
