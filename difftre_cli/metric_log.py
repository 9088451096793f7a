"""Where the metrics rows go besides metrics.csv: the ``logger`` config group (configs/logger/).

metrics.csv (store.py) stays the run's record, checkpointed with it; ``logger=tensorboard`` and
``logger=mlflow`` also send every row the training loop writes (train.py) to a dashboard:

* ``tensorboard``: event files in the run directory (a stage's in its stage directory), one
  scalar per numeric column at step ``update``: ``tensorboard --logdir runs/`` shows every run.
  A resumed run purges the steps from its checkpoint on (``purge_step``): the updates a killed
  run did after its last checkpoint are not shown twice.
* ``mlflow``: one MLflow run per job in the experiment ``logger.experiment`` (the preset's
  name) of the store ``logger.tracking_uri`` (SQLite under runs/, shared by the jobs of a
  sweep): the flattened config as parameters, every row as metrics at step ``update``, tags
  for the run directory, the preset and the overrides. The run's id is kept in
  RUN/mlflow_run_id: a resumed job continues its MLflow run, so a sweep stays one row per job.
  A staged run's columns are ``stageK_TRAINER/COLUMN``.

Only new rows are sent (a resumed run's start at its checkpoint). Text cells are no metrics:
an ``event`` other than ``ok`` becomes a text (TensorBoard) or a tag (MLflow); NaN, inf and
empty cells are skipped. One class per kind, :data:`KINDS` maps ``logger.kind`` to it.

The writers are optional dependencies (``pip install "difftre[tensorboard]"`` or
``"difftre[mlflow]"``), imported only when selected; a missing one is a UserError before
training starts (:func:`check_installed`).
"""
from __future__ import annotations

import importlib
import logging
import math
import re
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError
from .interrupt import Interrupted
from .store import write_text_atomic

log = logging.getLogger("difftre")

MLFLOW_RUN_ID_FILE = "mlflow_run_id"
#: characters MLflow accepts in metric, parameter and tag names
_NAME = re.compile(r"[^\w\-. /:]")


class MetricLog:
    """``logger=csv``: metrics.csv only (the loop writes it); the dashboards' base class.

    ``open(start)`` before the first row (``start``: the update the run resumes at),
    ``log(row)`` for every row, and the class as a context manager around the training,
    which closes the dashboard's run as finished, killed (a stop signal) or failed."""

    package: tuple[str, str] | None = None   # (module, extra) of the writer
    keys: tuple[str, ...] = ("kind",)

    def __init__(self, settings, cfg, run_dir: Path, stage: str | None = None):
        self.settings, self.cfg, self.run_dir, self.stage = settings, cfg, Path(run_dir), stage
        self.lib = _require(*self.package) if self.package else None
        self.opened = False

    def open(self, start: int) -> None:
        self.opened = True

    def log(self, row: dict) -> None:
        if self.opened:
            self._write(int(row["update"]), numeric(row), _event(row))

    def _write(self, step: int, values: dict[str, float], event: str | None) -> None:
        pass

    def _close(self, status: str) -> None:
        pass

    def __enter__(self) -> MetricLog:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.opened:
            self.opened = False
            killed = isinstance(exc, (Interrupted, KeyboardInterrupt, SystemExit))
            self._close("FINISHED" if exc is None else "KILLED" if killed else "FAILED")


class TensorBoardLog(MetricLog):
    """``logger=tensorboard``: event files written by tensorboardX (module doc)."""

    package = ("tensorboardX", "tensorboard")

    def open(self, start: int) -> None:
        logdir = self.run_dir / self.stage if self.stage else self.run_dir
        self.writer = self.lib.SummaryWriter(str(logdir), purge_step=start or None)
        self.opened = True

    def _write(self, step, values, event) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        if event:
            self.writer.add_text("event", event, global_step=step)
        self.writer.flush()   # the dashboard follows the run, and a kill loses nothing logged

    def _close(self, status: str) -> None:
        self.writer.close()


class MlflowLog(MetricLog):
    """``logger=mlflow``: one MLflow run per job (module doc)."""

    package = ("mlflow", "mlflow")
    keys = ("kind", "tracking_uri", "experiment")

    def __init__(self, settings, cfg, run_dir: Path, stage: str | None = None):
        super().__init__(settings, cfg, run_dir, stage)
        # heavy optional dependency: the parts of mlflow used here, imported only when it is selected
        self.client_class = importlib.import_module("mlflow.tracking").MlflowClient
        self.entities = importlib.import_module("mlflow.entities")
        self.error = importlib.import_module("mlflow.exceptions").MlflowException
        self.max_value = getattr(importlib.import_module("mlflow.utils.validation"), "MAX_PARAM_VAL_LENGTH", 500)
        self.prefix = f"{stage}/" if stage else ""
        self.warned = False

    def open(self, start: int) -> None:
        uri = tracking_uri(str(_setting(self.settings, "tracking_uri", "sqlite:///runs/mlflow.db")))
        for name in ("alembic", "mlflow.store.db.utils"):   # SQLite's schema set-up would log a page
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            self.client = self.client_class(tracking_uri=uri)
            self.run_id, logged = self._run()
            params = flatten(self.cfg)
            params.update({k: v for k, v in _choices(self.run_dir).items() if k not in params})
            self._batch(params={k: v for k, v in params.items() if _name(k) not in logged}, tags=self._tags())
        except self.error as exc:
            raise UserError(f"logger.tracking_uri={uri}: MLflow cannot log there: {str(exc).splitlines()[0]}",
                            "use a local SQLite store (logger.tracking_uri=sqlite:///runs/mlflow.db) or a running "
                            "MLflow server (http://HOST:PORT), or logger=csv") from None
        self.opened = True

    def _run(self) -> tuple[str, dict]:
        """The job's MLflow run (RUN/mlflow_run_id's, else a new one) and its logged parameters."""
        id_file = self.run_dir / MLFLOW_RUN_ID_FILE
        if id_file.is_file():
            run_id = id_file.read_text().strip()
            try:
                run = self.client.get_run(run_id)
            except self.error:
                log.warning("logger=mlflow: run %s of %s is not in this store; starting a new MLflow run",
                            run_id, id_file)
            else:
                self.client.update_run(run_id, status="RUNNING")
                return run_id, dict(run.data.params)
        name = str(_setting(self.settings, "experiment", "difftre"))
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(name)
            except self.error:   # another job of the sweep created it first
                experiment_id = self.client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment_id)
        run = self.client.create_run(experiment_id, run_name=f"{self.run_dir.parent.name}/{self.run_dir.name}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(id_file, run.info.run_id + "\n")
        return run.info.run_id, {}

    def _tags(self) -> dict[str, str]:
        job = _hydra_job(self.run_dir)
        tags = {"difftre.run_dir": str(self.run_dir.resolve()),
                "difftre.preset": str(job.runtime.choices.get("config") if job else _setting(self.cfg, "name", ""))}
        if job is not None:
            tags["difftre.overrides"] = " ".join(job.overrides.task)
        return tags

    def _batch(self, metrics=(), params=None, tags=None) -> None:
        """``log_batch`` calls within MLflow's limits (100 parameters and tags, 1000 metrics a
        call; names of at most 250 characters, values cut to its maximum length)."""
        e = self.entities
        items = [e.Param(_name(k)[:250], v[:self.max_value]) for k, v in (params or {}).items()]
        items += [e.RunTag(_name(k)[:250], v[:self.max_value]) for k, v in (tags or {}).items()]
        for i in range(0, len(items), 100):
            chunk = items[i:i + 100]
            self.client.log_batch(self.run_id, params=[p for p in chunk if isinstance(p, e.Param)],
                                  tags=[t for t in chunk if isinstance(t, e.RunTag)])
        metrics = list(metrics)
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def _write(self, step, values, event) -> None:
        now = int(time.time() * 1000)
        metrics = [self.entities.Metric(_name(self.prefix + k), v, now, step) for k, v in values.items()]
        try:
            self._batch(metrics=metrics, tags={f"{self.prefix}event.{step}": event} if event else None)
        except self.error as exc:   # a dashboard hiccup must not stop the training
            if not self.warned:
                log.warning("logger=mlflow: update %d not logged (%s); metrics.csv has every row",
                            step, str(exc).splitlines()[0])
                self.warned = True

    def _close(self, status: str) -> None:
        try:
            self.client.set_terminated(self.run_id, status=status)
        except self.error as exc:
            log.warning("logger=mlflow: could not close MLflow run %s: %s", self.run_id, exc)


#: logger.kind → its class (configs/logger/KIND.yaml)
KINDS: dict[str, type[MetricLog]] = {"csv": MetricLog, "tensorboard": TensorBoardLog, "mlflow": MlflowLog}


def settings(cfg):
    """The ``logger`` group of ``cfg`` (a run saved before it existed: csv)."""
    value = OmegaConf.select(cfg, "logger", default=None) if isinstance(cfg, DictConfig) else None
    return value if value is not None else OmegaConf.create({"kind": "csv"})


def check(cfg) -> type[MetricLog]:
    """The class of ``logger.kind`` after checking the group's keys (UserError); no import."""
    s = settings(cfg)
    if not isinstance(s, DictConfig):
        raise UserError(f"logger must be a group of keys, got {s!r}", "select one, e.g. logger=tensorboard")
    kind = s.get("kind")
    if kind not in KINDS:
        raise UserError(f"logger.kind: unknown logger {kind!r}", f"use one of {', '.join(KINDS)} (e.g. logger=mlflow)")
    unknown = sorted(str(k) for k in s if k not in KINDS[kind].keys)
    if unknown:
        raise UserError(f"logger: unknown key(s) {', '.join(unknown)} for logger={kind}",
                        f"remove them; logger={kind} reads {', '.join(KINDS[kind].keys)}")
    return KINDS[kind]


def check_installed(cfg) -> None:
    """UserError if the writer of ``logger.kind`` is not installed (before training starts)."""
    kind = check(cfg)
    if kind.package:
        _require(*kind.package)


def create(cfg, run_dir, stage: str | None = None) -> MetricLog:
    """The metrics log of the run in ``run_dir`` (``stage``: a stage of a staged run, whose
    rows go to the run's MLflow run and to TensorBoard files in RUN/STAGE)."""
    return check(cfg)(settings(cfg), cfg, Path(run_dir), stage)


def _require(module: str, extra: str):
    try:
        # heavy optional dependency (tensorboardX, mlflow): imported only when the logger is selected
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"logger={extra} needs the {module} package, which cannot be imported ({exc})",
                        f'pip install "difftre[{extra}]" (in a checkout: pip install -e ".[{extra}]"), or choose '
                        "another logger, e.g. logger=csv") from None


def numeric(row: dict) -> dict[str, float]:
    """The finite numeric cells of a metrics row (NumPy and JAX scalars too), except ``update``
    (the step); text, empty cells, NaN and inf are left out."""
    out = {}
    for key, value in row.items():
        if key == "update" or value is None or isinstance(value, (str, bytes)):
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[str(key)] = value
    return out


def _event(row: dict) -> str | None:
    event = row.get("event")
    return event if isinstance(event, str) and event not in ("", "ok") else None


def tracking_uri(uri: str) -> str:
    """A local SQLite store's path made absolute (relative paths: from the working directory,
    whose runs/ the jobs of a sweep share) with its folder created; other URIs as given."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix):] in ("", ":memory:"):
        return uri
    path = Path(uri[len(prefix):]).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return prefix + str(path)


def flatten(node, prefix: str = "") -> dict[str, str]:
    """The config's leaves as dotted key → text (a list is one value), without ``hydra`` and
    ``resume``; an interpolation that cannot be resolved (``${hydra:…}`` outside a Hydra job)
    keeps its text."""
    out = {}
    for key in node:
        dotted = f"{prefix}{key}"
        if dotted in ("hydra", "resume"):
            continue
        try:
            value = node[key]
        except (OmegaConfBaseException, ValueError):
            value = OmegaConf.to_container(node, resolve=False)[key]
        if isinstance(value, DictConfig):
            out.update(flatten(value, dotted + "."))
        elif isinstance(value, ListConfig):
            try:
                out[dotted] = str(OmegaConf.to_container(value, resolve=True))
            except (OmegaConfBaseException, ValueError):
                out[dotted] = str(OmegaConf.to_container(value, resolve=False))
        else:
            out[dotted] = "null" if value is None else str(value)
    return out


def _setting(node, key: str, default):
    try:
        value = OmegaConf.select(node, key, default=default)
    except (OmegaConfBaseException, ValueError):   # ${hydra:…} outside a Hydra job (Python API, tests)
        return default
    return default if value is None else value


def _hydra_job(run_dir: Path):
    """Hydra's config of the job writing ``run_dir`` (None outside it, e.g. ``train()`` from Python)."""
    if not HydraConfig.initialized():
        return None
    job = HydraConfig.get()
    try:
        out = job.runtime.output_dir
    except (OmegaConfBaseException, ValueError):   # composed, not run (commands._precompose)
        return None
    return job if out is not None and Path(str(out)).resolve() == Path(run_dir).resolve() else None


def _choices(run_dir: Path) -> dict[str, str]:
    """The job's group choices (``config``, ``optimizer`` …) as parameters: a sweep over
    ``optimizer=adam,sgd`` is a column too."""
    job = _hydra_job(run_dir)
    if job is None:
        return {}
    return {str(k): str(v) for k, v in job.runtime.choices.items() if not str(k).startswith("hydra")}


def _name(key) -> str:
    return _NAME.sub("_", str(key))
