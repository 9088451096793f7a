"""The logger group (metric_log.py): TensorBoard event files and MLflow runs hold the numbers
of metrics.csv; a sweep of two learning rates is one MLflow table of two runs; a resumed run
stays one MLflow run; a missing writer package or an unknown kind is a short UserError (exit
2) before anything is trained. Two-update runs of config=tiny, in process."""
from __future__ import annotations

import csv
import struct
import sys
from pathlib import Path

import pytest
from conftest import train_in_process
from hydra import compose, initialize_config_dir

from difftre_cli.commands import train_command
from difftre_cli.config import validate
from difftre_cli.config_files import CONFIG_DIR
from difftre_cli.errors import UserError
from difftre_cli.metric_log import MLFLOW_RUN_ID_FILE, numeric

FAST = ["config=tiny", "seed=0", "trainer.updates=2"]


def _losses(run: Path) -> list[float]:
    with open(run / "metrics.csv", newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def _tfrecords(path: Path):
    """The Event protos of a TensorBoard event file (TFRecord framing: length, its CRC, data, CRC)."""
    from tensorboardX.proto.event_pb2 import (
        Event,  # optional dependency (the test skips without it)
    )
    data, i = path.read_bytes(), 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        event = Event()
        event.ParseFromString(data[i + 12:i + 12 + n])
        yield event
        i += 12 + n + 4


def _scalars(run: Path, tag: str) -> dict[int, float]:
    out = {}
    for path in sorted(run.glob("events.out.tfevents.*")):
        for event in _tfrecords(path):
            for v in event.summary.value:
                if v.tag == tag:
                    out[event.step] = v.simple_value if v.HasField("simple_value") else v.tensor.float_val[0]
    return out


def test_tensorboard_scalars_equal_metrics_csv(tmp_path):
    pytest.importorskip("tensorboardX")
    run = tmp_path / "run"
    train_in_process([*FAST, "logger=tensorboard"], run)
    losses = _losses(run)
    assert len(losses) == 2
    logged = _scalars(run, "loss")
    assert sorted(logged) == [0, 1]
    assert [logged[k] for k in (0, 1)] == pytest.approx(losses, rel=1e-6)   # float32 in the event file
    assert set(_scalars(run, "n_eff")) == {0, 1} and _scalars(run, "event") == {}   # 'ok' is no scalar


@pytest.mark.slow   # suite time (issue: default suite <= 15 min on 2 cores): test_cli's sweep stays default
def test_mlflow_sweep_is_one_table_and_resume_stays_one_run(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = ["logger=mlflow", f"logger.tracking_uri={uri}", "logger.experiment=sweep"]
    runs = {lr: tmp_path / f"job{k}" for k, lr in enumerate(("0.003", "0.01"))}
    for lr, run in runs.items():   # the two jobs of `--multirun optimizer.lr=0.003,0.01 logger=mlflow`
        train_in_process([*FAST, f"optimizer.lr={lr}", *logger], run)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    table = mlflow.search_runs(experiment_names=["sweep"])
    assert len(table) == 2
    assert sorted(table["params.optimizer.lr"]) == ["0.003", "0.01"]
    for _, row in table.iterrows():
        run = runs[row["params.optimizer.lr"]]
        assert row["metrics.loss"] == pytest.approx(_losses(run)[-1], rel=1e-12)
        assert row["run_id"] == (run / MLFLOW_RUN_ID_FILE).read_text().strip()
        assert row["tags.difftre.run_dir"] == str(run.resolve()) and row["status"] == "FINISHED"

    # resume job 0 for one more update: the same MLflow run, no step logged twice
    run = runs["0.003"]
    train_in_process([*FAST, "optimizer.lr=0.003", *logger, "trainer.updates=3"], run, resume=True)
    table = mlflow.search_runs(experiment_names=["sweep"])
    assert len(table) == 2
    run_id = (run / MLFLOW_RUN_ID_FILE).read_text().strip()
    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(_losses(run), rel=1e-12)
    train_in_process([*FAST, "optimizer.lr=0.003", *logger, "trainer.updates=3"], run, resume=True)   # nothing to do
    assert len(mlflow.search_runs(experiment_names=["sweep"])) == 2


@pytest.mark.parametrize("kind,module", [("tensorboard", "tensorboardX"), ("mlflow", "mlflow")])
def test_missing_writer_package_is_exit_2_before_training(tmp_path, monkeypatch, capsys, kind, module):
    monkeypatch.setitem(sys.modules, module, None)   # `import MODULE` now fails as if not installed
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        train_command(["config=tiny", f"logger={kind}", f"hydra.run.dir={run}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f'pip install "difftre[{kind}]"' in err and "Traceback" not in err
    assert not run.exists()


def test_unknown_logger_kind_or_key_is_a_user_error():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        wrong_kind = compose(config_name="train", overrides=["config=tiny", "logger.kind=wandb"])
        wrong_key = compose(config_name="train", overrides=["config=tiny", "logger=tensorboard", "+logger.uri=x"])
    with pytest.raises(UserError, match="logger.kind: unknown logger 'wandb'"):
        validate(wrong_kind)
    with pytest.raises(UserError, match="unknown key.*uri"):
        validate(wrong_key)


def test_only_finite_numbers_are_metrics():
    row = {"update": 3, "loss": 0.5, "n_eff": float("nan"), "reused": True, "event": "unstable", "x": None}
    assert numeric(row) == {"loss": 0.5, "reused": 1.0}
