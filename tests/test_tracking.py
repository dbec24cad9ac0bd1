"""Experiment trackers (logger=...): TensorBoard, MLflow and W&B get the numbers of the CSV
files, a resumed run and `rnnlm eval` continue the same tracker run, and a failing tracker
never touches training. All offline: a local MLflow file store, W&B offline mode, each read
back with the tracker's own reader. A test whose tracker is not installed is skipped."""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import struct
import threading
import time
from pathlib import Path

import pytest
from helpers import read_rows, sigterm_on_call

from rnnlm.cli import main as rnnlm_main
from rnnlm.cli.resume import load_saved_config
from rnnlm.config import settings

pytestmark = pytest.mark.usefixtures("one_thread")

# Two epochs of 12 segments of 4 x 10 tokens: each tenth of a full epoch (190 tokens) is a progress point.
RUN = ("experiment=smoke", "dataset.batch_size=4", "dataset.eval_batch_size=2", "dataset.test_batch_size=2",
       "trainer.bptt=10", "trainer.max_batches=12", "trainer.max_epochs=2", "trainer.progress=false", "threads=1")
TRACKERS = [name for name in ("tensorboard", "mlflow", "wandb") if importlib.util.find_spec(name) is not None]
TIMING = {"epoch_seconds", "tokens_per_second", "wall_seconds", "run_dir"}


def needs(name: str) -> None:
    if name not in TRACKERS:
        pytest.skip(f'{name} is not installed (pip install "rnnlm[{name}]")')


@pytest.fixture(scope="module")
def offline():
    """No network, no account: W&B offline, MLflow's file store allowed, no HTTP retries."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_DISABLE_GIT", "true")
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store in maintenance mode
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        mp.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
        yield


def mlflow_uri(root: Path) -> str:
    return f"file://{root / 'mlruns'}"


def train(*overrides: str) -> int:
    return rnnlm_main(["train", *RUN, *overrides])


def logger_override(names) -> str:
    return f"logger=[{','.join(names)}]"


@pytest.fixture(scope="module")
def run(tmp_path_factory, offline):
    """One run logged to every installed tracker."""
    root = tmp_path_factory.mktemp("tracked")
    store = [f"logger.mlflow.tracking_uri={mlflow_uri(root)}"] if "mlflow" in TRACKERS else []
    assert train(logger_override(TRACKERS or ["csv"]), *store, f"hydra.run.dir={root / 'run'}") == 0
    return root / "run"


def state(run_dir: Path) -> dict:
    return json.loads((run_dir / "tracking.json").read_text())


def metrics(run_dir: Path) -> list[dict[str, str]]:
    return read_rows(run_dir / "metrics.csv")


def result(run_dir: Path) -> dict[str, str]:
    return read_rows(run_dir / "result.csv")[0]


def numeric(row: dict[str, str]) -> dict[str, float]:
    out = {}
    for key, text in row.items():
        try:
            out[key] = float(text)
        except (TypeError, ValueError):
            pass
    return out


# ------------------------------------------------------------------------ readers
def tensorboard_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_run(run_dir: Path):
    from mlflow import MlflowClient

    saved = state(run_dir)["mlflow"]
    client = MlflowClient(saved["tracking_uri"])
    return client, client.get_run(saved["run_id"])


def wandb_records(run_dir: Path, run_id: str) -> list:
    """The records of every offline W&B run file of ``run_id`` (a resumed run adds one): the
    LevelDB log format W&B writes (a ':W&B' header, then 32 KiB blocks of CRC'd chunks),
    each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for path in sorted(glob.glob(str(run_dir / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))):
        data = Path(path).read_bytes()
        assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
        pos, chunk = 7, b""
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if left < 7 or (length == 0 and kind == 0):
                pos += left  # the rest of a block is padding
                continue
            chunk += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # FULL or LAST
                record = wandb_internal_pb2.Record()
                record.ParseFromString(chunk)
                records.append(record)
                chunk = b""
    return records


def wandb_items(items) -> dict:
    """A record's items (``key``, or ``nested_key`` as W&B writes them now) with their values."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def wandb_history(records) -> list[dict]:
    return [wandb_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]


# ------------------------------------------------------------------------ what each tracker gets
def test_tensorboard_gets_every_metrics_column_progress_and_the_result(run):
    needs("tensorboard")
    scalars = tensorboard_scalars(state(run)["tensorboard"]["dir"])
    rows = metrics(run)
    for column in ("lr", "train_loss", "train_ppl", "val_loss", "val_ppl", "epoch_seconds", "tokens_per_second",
                   "epoch_tokens"):
        assert scalars[column] == [(int(r["epoch"]), pytest.approx(float(r[column]), rel=1e-6)) for r in rows]
    steps = [step for step, _ in scalars["progress/train_loss"]]
    assert len(steps) >= 4 and steps == sorted(steps)  # every tenth of each epoch, in training tokens
    assert steps[-1] <= sum(int(r["epoch_tokens"]) for r in rows)
    last_of_epoch1 = max(v for s, v in scalars["progress/train_loss"] if s <= int(rows[0]["epoch_tokens"]))
    assert math.isfinite(last_of_epoch1) and len(scalars["progress/tokens_per_second"]) == len(steps)
    res = result(run)
    assert scalars["result/test_ppl"][0][1] == pytest.approx(float(res["test_ppl"]), rel=1e-6)
    assert scalars["result/best_val_ppl"][0][1] == pytest.approx(float(res["best_val_ppl"]), rel=1e-6)


def test_mlflow_gets_the_config_metrics_result_and_status(run):
    needs("mlflow")
    client, mlrun = mlflow_run(run)
    cfg = load_saved_config(run, [])
    assert mlrun.data.params == {k: str(v) for k, v in settings(cfg).items()}  # the flattened config
    assert client.get_experiment(mlrun.info.experiment_id).name == "rnnlm"  # a single run
    assert mlrun.info.run_name == " ".join(RUN)  # its overrides (the logger's own left out)
    rows = metrics(run)
    for column in ("train_loss", "val_ppl", "lr", "epoch_tokens"):
        history = client.get_metric_history(mlrun.info.run_id, column)
        assert sorted((m.step, m.value) for m in history) == [
            (int(r["epoch"]), pytest.approx(float(r[column]))) for r in rows]
    assert mlrun.data.tags["stage"] == rows[-1]["stage"] and mlrun.data.tags["optimizer"] == rows[-1]["optimizer"]
    res = result(run)
    for key in ("best_val_ppl", "test_ppl", "test_loss", "epochs_run", "n_params", "wall_seconds", "train_split_tokens"):
        assert mlrun.data.metrics[f"result/{key}"] == pytest.approx(float(res[key]))
    assert mlrun.data.tags["status"] == "completed" and mlrun.data.tags["stop_reason"] == res["stop_reason"]
    assert mlrun.info.status == "FINISHED"
    progress = client.get_metric_history(mlrun.info.run_id, "progress/train_loss")
    assert len(progress) >= 4


def test_wandb_offline_run_files_hold_the_config_epochs_and_summary(run):
    needs("wandb")
    saved = state(run)["wandb"]
    records = wandb_records(run, saved["id"])
    kinds = [r.WhichOneof("record_type") for r in records]
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run_record.run_id == saved["id"] and run_record.project == "rnnlm"
    assert run_record.display_name == " ".join(RUN)
    config = {k: v for r in records if r.WhichOneof("record_type") == "config" for k, v in wandb_items(r.config.update).items()}
    assert config["dropout.output"] == float(load_saved_config(run, []).dropout.output)
    epochs = [h for h in wandb_history(records) if "val_ppl" in h]
    assert [(h["epoch"], h["val_ppl"]) for h in epochs] == [
        (int(r["epoch"]), pytest.approx(float(r["val_ppl"]))) for r in metrics(run)]
    assert len([h for h in wandb_history(records) if "progress/train_loss" in h]) >= 4
    summary = {k: v for r in records if r.WhichOneof("record_type") == "summary" for k, v in wandb_items(r.summary.update).items()}
    assert summary["result/test_ppl"] == pytest.approx(float(result(run)["test_ppl"]))
    assert summary["status"] == "completed"
    assert kinds[-1] == "exit" and records[-1].exit.exit_code == 0


def test_eval_rows_go_to_the_runs_own_tracker_runs(run, capsys):
    needs("mlflow")
    assert rnnlm_main(["eval", str(run), "method=standard", "split=valid", "device=cpu"]) == 0
    (row,) = read_rows(run / "eval.csv")
    client, mlrun = mlflow_run(run)
    assert mlrun.data.metrics["eval/standard_valid_ppl"] == pytest.approx(float(row["ppl"]))
    assert mlrun.info.status == "FINISHED" and len(client.search_runs([mlrun.info.experiment_id])) == 1
    if "tensorboard" in TRACKERS:
        scalars = tensorboard_scalars(state(run)["tensorboard"]["dir"])
        assert scalars["eval/standard_valid_ppl"] == [(1, pytest.approx(float(row["ppl"]), rel=1e-6))]


# ------------------------------------------------------------------------ resume, sweeps, failures
def test_a_resumed_run_continues_the_same_tracker_runs(tmp_path, offline, monkeypatch):
    needs("mlflow")
    names = [n for n in TRACKERS if n in ("mlflow", "tensorboard")]
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        sigterm_on_call(patch, "rnnlm.training.trainer.get_batch", 12 + 5)  # in epoch 2
        assert train(logger_override(names), f"logger.mlflow.tracking_uri={mlflow_uri(tmp_path)}",
                     f"hydra.run.dir={run_dir}") == 130
    before = state(run_dir)
    client, mlrun = mlflow_run(run_dir)
    assert mlrun.info.status == "KILLED" and mlrun.data.tags["status"] == "interrupted"
    assert rnnlm_main(["train", f"resume={run_dir}"]) == 0
    assert state(run_dir) == before  # the same tracker runs, the same name
    client, mlrun = mlflow_run(run_dir)
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["status"] == "completed"
    history = sorted((m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, "val_ppl"))
    assert history == [(int(r["epoch"]), pytest.approx(float(r["val_ppl"]))) for r in metrics(run_dir)]
    if "tensorboard" in names:
        assert [s for s, _ in tensorboard_scalars(before["tensorboard"]["dir"])["val_ppl"]] == [1, 2]


def test_a_sweep_is_one_experiment_and_each_job_a_run_named_after_its_overrides(tmp_path, offline):
    needs("mlflow")
    from mlflow import MlflowClient

    sweep = tmp_path / "sweep"
    assert rnnlm_main(["train", "-m", *RUN, "trainer.max_epochs=1", "trainer.max_batches=3", "dropout.output=0.1,0.3",
                       "logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_uri(tmp_path)}",
                       f"hydra.sweep.dir={sweep}"]) == 0
    client = MlflowClient(mlflow_uri(tmp_path))
    experiment = client.get_experiment_by_name(sweep.name)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["dropout.output=0.1", "dropout.output=0.3"]
    by_name = {r.info.run_name: r for r in runs}
    for job in ("0", "1"):
        res = result(sweep / job)
        mlrun = by_name[f"dropout.output={res['dropout.output']}"]
        assert mlrun.data.metrics["result/best_val_ppl"] == pytest.approx(float(res["best_val_ppl"]))


def warnings_logged(run_dir: Path) -> list[str]:
    return [line for line in (run_dir / "rnnlm_train.log").read_text().splitlines() if "[WARNING]" in line]


@pytest.fixture()
def quick_retries(monkeypatch):
    """Back-off and end wait in tenths of a second, so that failing trackers are quick to test."""
    import rnnlm.tracking.dispatch as tracking

    monkeypatch.setattr(tracking, "BACKOFF_FIRST", 0.02)
    monkeypatch.setattr(tracking, "BACKOFF_MAX", 0.1)
    monkeypatch.setattr(tracking, "END_RETRY", 0.05)
    monkeypatch.setattr(tracking, "END_WAIT", 1.0)


def test_a_failing_tracker_warns_and_the_run_is_unchanged(run, tmp_path, offline, monkeypatch, quick_retries):
    """The disk under MLflow's store fills up once the run has started: a warning when it first
    fails, retries in the background, one warning at the end saying what did not arrive, and
    metrics.csv, result.csv and the checkpoints are those of the same run without it."""
    needs("mlflow")
    from rnnlm.tracking.mlflow import MlflowRun

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(MlflowRun, "log_many", disk_full)
    run_dir = tmp_path / "run"
    assert train("logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_uri(tmp_path)}", f"hydra.run.dir={run_dir}") == 0
    warnings = warnings_logged(run_dir)
    assert len(warnings) == 2, warnings
    assert "logger=mlflow logging failed" in warnings[0] and "No space left" in warnings[0]
    assert "retrying in the background" in warnings[0]
    assert "records left undelivered, with the run's end (status completed)" in warnings[1]
    assert "may still show RUNNING" in warnings[1]
    strip = lambda row: {k: v for k, v in row.items() if k not in TIMING and k != "overrides"}  # noqa: E731
    assert [strip(r) for r in metrics(run_dir)] == [strip(r) for r in metrics(run)]
    assert strip(result(run_dir)) == strip(result(run))
    assert (run_dir / "checkpoints" / "best.pt").read_bytes() == (run / "checkpoints" / "best.pt").read_bytes()


def test_an_unreachable_tracking_server_is_retried_and_training_goes_on(tmp_path, offline, quick_retries):
    needs("mlflow")
    run_dir = tmp_path / "run"
    assert train("trainer.max_epochs=1", "logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9",
                 f"hydra.run.dir={run_dir}") == 0
    warnings = warnings_logged(run_dir)
    assert len(warnings) == 2, warnings
    assert "logger=mlflow start failed" in warnings[0] and "retrying in the background" in warnings[0]
    assert "its start and" in warnings[1] and "records left undelivered" in warnings[1]
    assert result(run_dir)["status"] == "completed" and not (run_dir / "tracking.json").exists()


def test_mlflow_outages_are_retried_and_the_run_ends_finished_with_every_point(tmp_path, offline, monkeypatch,
                                                                               quick_retries):
    """The tracking store fails a few calls (a server error, a locked database): the calls are
    retried, nothing is lost or doubled, and the run ends FINISHED."""
    needs("mlflow")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    real, calls = MlflowClient.log_batch, {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] in (2, 3, 4, 7):
            raise MlflowException("API request failed: 503 Service Unavailable", error_code="TEMPORARILY_UNAVAILABLE")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    run_dir = tmp_path / "run"
    assert train("logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_uri(tmp_path)}", f"hydra.run.dir={run_dir}") == 0
    client, mlrun = mlflow_run(run_dir)
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["status"] == "completed"
    history = sorted((m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, "val_ppl"))
    assert history == [(int(r["epoch"]), pytest.approx(float(r["val_ppl"]))) for r in metrics(run_dir)]
    steps = [m.step for m in client.get_metric_history(mlrun.info.run_id, "progress/train_loss")]
    assert len(steps) >= 4 and len(set(steps)) == len(steps)  # every point once
    warnings = warnings_logged(run_dir)
    assert len(warnings) == 1 and "503 Service Unavailable" in warnings[0]


@pytest.mark.parametrize("status,expected", [("completed", "FINISHED"), ("pruned", "FINISHED"),
                                             ("interrupted", "KILLED"), ("diverged", "FAILED"), ("failed", "FAILED")])
def test_the_mlflow_run_ends_with_the_runs_true_status(status, expected, tmp_path, offline):
    needs("mlflow")
    from mlflow import MlflowClient

    from rnnlm.tracking import Tracking
    from rnnlm.tracking.config import LoggerConfig, MlflowConfig

    cfg = LoggerConfig(mlflow=MlflowConfig(tracking_uri=mlflow_uri(tmp_path)))
    tracking = Tracking(cfg, tmp_path, name="run")
    tracking.start({"seed": 1})
    tracking.end({"status": status, "stop_reason": status, "test_ppl": 3.0}, [])
    mlrun = MlflowClient(mlflow_uri(tmp_path)).get_run(state(tmp_path)["mlflow"]["run_id"])
    assert mlrun.info.status == expected and mlrun.data.tags["status"] == status


# ------------------------------------------------------------------------ a resumed run after a crash
@pytest.fixture()
def crash_in_epoch_2(monkeypatch):
    """The process dies in epoch 2 without saving (as after kill -9 or a node failure): the
    checkpoint is epoch 1's, and epoch 2's progress points before the crash were logged."""
    import itertools

    import rnnlm.training.trainer as trainer_module

    real, calls = trainer_module.get_batch, itertools.count(1)

    class Crash(BaseException):  # not an Exception: nothing in the run catches it, as with kill -9
        pass

    def crashing(*args, **kwargs):
        if next(calls) == 12 + 9:
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "get_batch", crashing)
    return Crash


def test_a_run_resumed_after_a_crash_replaces_its_tensorboard_progress_points(run, tmp_path, offline, monkeypatch,
                                                                             crash_in_epoch_2):
    """TensorBoard's purge_step at the checkpoint's tokens: the killed process's points past
    it are hidden, each curve is that of the training the run kept, as without the crash."""
    needs("tensorboard")
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr("rnnlm.tracking.dispatch.END_WAIT", 5.0)
        loggers = ["logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={mlflow_uri(tmp_path)}"] \
            if "mlflow" in TRACKERS else ["logger=tensorboard"]
        before = set(threading.enumerate())
        with pytest.raises(crash_in_epoch_2):
            train(*loggers, f"hydra.run.dir={run_dir}")
    # The crash closed its tracker runs on the way out: no delivery thread is left writing.
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("rnnlm-tracker-")]
    log_dir = state(run_dir)["tensorboard"]["dir"]
    epoch1 = int(metrics(run_dir)[0]["epoch_tokens"])
    deadline = time.monotonic() + 10  # the crashed process's tracker thread may still be writing
    while not any(step > epoch1 for step, _ in tensorboard_scalars(log_dir).get("progress/train_loss", [])):
        assert time.monotonic() < deadline, "the crashed epoch's progress points were never logged"
        time.sleep(0.1)
    monkeypatch.undo()
    assert rnnlm_main(["train", f"resume={run_dir}"]) == 0
    scalars = tensorboard_scalars(log_dir)
    reference = tensorboard_scalars(state(run)["tensorboard"]["dir"])
    steps = [step for step, _ in scalars["progress/train_loss"]]
    assert steps == sorted(set(steps))  # no step twice
    expected = reference["progress/train_loss"]
    assert scalars["progress/train_loss"] == [(s, pytest.approx(v, rel=1e-5)) for s, v in expected]
    assert [s for s, _ in scalars["val_ppl"]] == [1, 2]
    if "mlflow" in TRACKERS:
        _, mlrun = mlflow_run(run_dir)
        assert mlrun.data.tags["rnnlm.resumed_at_tokens"] == str(epoch1) and mlrun.info.status == "FINISHED"



def test_a_reopened_tensorboard_run_purges_a_file_named_in_its_second_with_a_later_sorting_counter(tmp_path):
    """TensorBoard reads a directory's event files in name order and applies a purge only to
    the files read before it. A killed process's file stamped in the reopening's second, with a
    counter that sorts after the new one's as text (``...99999999`` > ``...12``), is read
    first all the same: its points at and past the purge step are hidden."""
    needs("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    from rnnlm.tracking.tensorboard import TensorBoardRun

    killed = SummaryWriter(log_dir=str(tmp_path))
    for step in (1, 2, 3, 4, 5):
        killed.add_scalar("loss", float(step), step)
    killed.close()
    (old,) = tmp_path.glob("events.out.tfevents.*")
    same_second = f"events.out.tfevents.{int(time.time()) + 1:010d}.host.1.99999999"  # also in the future
    old.rename(tmp_path / same_second)
    reopened = TensorBoardRun(tmp_path, purge_step=3)
    reopened.log_values({"loss": 30.0}, "tokens", 3)
    reopened.log_values({"loss": 40.0}, "tokens", 4)
    reopened.close(None)
    new = next(p.name for p in tmp_path.glob("events.out.tfevents.*") if p.name != same_second)
    assert sorted([new, same_second]) == [same_second, new]
    assert tensorboard_scalars(str(tmp_path))["loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


# ------------------------------------------------------------------------ configuration errors
@pytest.mark.parametrize("env,overrides,message", [
    ({"MLFLOW_TRACKING_URI": "file:./mlruns"}, ["logger=mlflow"],
     "MLFLOW_TRACKING_URI=file:./mlruns is a file store, which MLflow 3 refuses: set MLFLOW_ALLOW_FILE_STORE=true, "
     "or use a database, e.g. logger.mlflow.tracking_uri=sqlite:///mlruns.db"),
    ({}, ["logger=mlflow", "logger.mlflow.tracking_uri=./mlruns"], "is a file store, which MLflow 3 refuses"),
    ({}, ["logger=mlflow", "logger.mlflow.tracking_uri=htp://127.0.0.1:5000"],
     "MLflow has no tracking store for 'htp:' URIs"),
    ({}, ["logger=mlflow", "logger.mlflow.tracking_uri=sqlite:///no/such/dir/m.db"], "does not exist"),
    ({"WANDB_MODE": "online"}, ["logger=wandb"], "no W&B API key is set up: run `wandb login`"),
    ({}, ["logger=wandb", "logger.wandb.project="], "logger.wandb.project is empty"),
    ({}, ["logger=tensorboard", "logger.tensorboard.dir=README.md"], "is a file, not a directory"),
])
def test_a_trackers_configuration_error_is_one_line_exit_2_and_nothing_written(env, overrides, message, tmp_path,
                                                                               monkeypatch, capsys):
    name = overrides[0].split("=")[1]
    needs(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("a file\n")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings
    for key in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_TRACKING_URI", "WANDB_API_KEY", "WANDB_MODE", "NETRC",
                "WANDB_CONFIG_DIR", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for argv in (["train", *RUN, *overrides, "hydra.run.dir=run"],
                 ["train", "-m", *RUN, "seed=1,2", *overrides, "hydra.sweep.dir=sweep"]):
        assert rnnlm_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("rnnlm: error: ") and err.count("\n") == 1 and message in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # nothing written


def test_a_reachable_configuration_passes_the_check(tmp_path, monkeypatch):
    """The checks refuse only what can never work: an http URI is not contacted, offline W&B
    needs no key, MLflow's file store is allowed with MLFLOW_ALLOW_FILE_STORE=true."""
    from rnnlm.config import ConfigError
    from rnnlm.tracking import check
    from rnnlm.tracking.config import LoggerConfig, MlflowConfig, TensorBoardConfig, WandbConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_CONFIG_DIR", "WANDB_DIR", "NETRC"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    for uri in ("http://127.0.0.1:9", f"sqlite:///{tmp_path}/m.db", f"file://{tmp_path}/mlruns"):
        check(LoggerConfig(mlflow=MlflowConfig(tracking_uri=uri)) if "mlflow" in TRACKERS else LoggerConfig())
    if "wandb" in TRACKERS:
        check(LoggerConfig(wandb=WandbConfig(mode="offline")))
        settings = tmp_path / ".config" / "wandb" / "settings"  # what `wandb offline` leaves
        settings.parent.mkdir(parents=True)
        settings.write_text("[default]\nmode = offline\n")
        check(LoggerConfig(wandb=WandbConfig()))
        settings.unlink()
        with pytest.raises(ConfigError, match="no W&B API key"):
            check(LoggerConfig(wandb=WandbConfig()))
        monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
        check(LoggerConfig(wandb=WandbConfig(mode="online")))
    if "tensorboard" in TRACKERS:
        check(LoggerConfig(tensorboard=TensorBoardConfig(dir=str(tmp_path / "new" / "tb"))))


def test_a_missing_extra_is_refused_before_the_run_starts(tmp_path, monkeypatch, capsys):
    import rnnlm.tracking

    monkeypatch.setitem(rnnlm.tracking.EXTRAS, "wandb", "rnnlm_test_no_such_package")
    assert train("logger=wandb", f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capsys.readouterr().err
    assert err == ('rnnlm: error: logger=wandb needs the wandb package, which is not installed: '
                   'pip install "rnnlm[wandb]"\n')
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ never on the training thread
class FakeTracker:
    """A tracker whose calls take ``delay`` seconds, fail while ``down`` is set (a connection
    error), and refuse values marked ``bad`` (a ValueError); it records what it got."""

    def __init__(self, delay: float = 0.0) -> None:
        import threading

        self.delay, self.got, self.down = delay, [], threading.Event()

    def state(self):
        return {"id": "fake"}

    def opened(self):
        """Open the tracker's run: fails while down, as connecting to a server would."""
        self._call("open")
        self.got.remove(("open",))
        return self

    def _call(self, *record):
        time.sleep(self.delay)
        if self.down.is_set():
            raise ConnectionRefusedError(111, "Connection refused")
        self.got.append(record)

    def start(self, params, resumed):
        self._call("start", resumed)

    def log_values(self, values, step_key, step):
        if values.get("bad"):
            raise ValueError("a value the tracker does not take")
        self._call(step_key, step)

    def log_result(self, figures, status):
        self._call("result", status["status"])

    def close(self, status):
        self._call("close", status)


@pytest.fixture()
def fake(monkeypatch, tmp_path):
    """Tracking of one fake tracker (in the tensorboard slot) in tmp_path: (Tracking, FakeTracker)."""
    import rnnlm.tracking.dispatch as tracking
    from rnnlm.tracking.config import LoggerConfig, TensorBoardConfig

    def make(delay: float = 0.0, down: bool = False):
        tracker = FakeTracker(delay)
        if down:
            tracker.down.set()
        monkeypatch.setattr(tracking, "_open", lambda *args, **kwargs: tracker.opened())
        return tracking.Tracking(LoggerConfig(tensorboard=TensorBoardConfig()), tmp_path, name="run"), tracker

    return make


def timed(call, *args, **kwargs) -> float:
    start = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - start


def test_a_slow_tracker_never_slows_the_training_thread_and_gets_everything_in_order(fake):
    """Each call takes the tracker 0.3 s (a slow server); the run's calls return in under a
    tenth of that (they only queue), and after end() every record has arrived, in order, once."""
    sleep = 0.3
    tracking, tracker = fake(delay=sleep)
    durations = [timed(tracking.start, {"seed": 1})]
    for epoch in (1, 2):
        for i in range(2):
            durations.append(timed(tracking.progress, tokens=100 * epoch + i, train_loss=3.0, tokens_per_second=9.0))
        durations.append(timed(tracking.epoch, {"epoch": epoch, "val_ppl": 20.0}))
    assert max(durations) < 0.1 * sleep, durations
    tracking.end({"status": "completed", "stop_reason": "max_epochs"}, [])
    assert tracker.got == [("start", False),
                           *[("progress/tokens", 100 + i) for i in range(2)], ("epoch", 1),
                           *[("progress/tokens", 200 + i) for i in range(2)], ("epoch", 2),
                           ("result", "completed"), ("close", "completed")]


def test_an_outage_is_retried_with_back_off_and_nothing_is_lost(fake, quick_retries, caplog):
    caplog.set_level("INFO", "rnnlm.tracking")
    tracking, tracker = fake(down=True)  # unreachable from the start
    tracking.start({"seed": 1})
    for i in range(5):
        tracking.progress(tokens=i, train_loss=3.0, tokens_per_second=9.0)
    time.sleep(0.3)  # a few tries fail meanwhile
    assert tracker.got == [] and tracking.trackers == {}
    tracker.down.clear()  # the server is back
    tracking.epoch({"epoch": 1, "val_ppl": 20.0})
    tracking.end({"status": "interrupted", "stop_reason": "interrupted_train"}, [])
    assert tracker.got == [("start", False), *[("progress/tokens", i) for i in range(5)], ("epoch", 1),
                           ("result", "interrupted"), ("close", "interrupted")]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "start failed" in warnings[0] and "Connection refused" in warnings[0]
    assert any("reached again" in r.getMessage() for r in caplog.records)


def test_a_full_queue_drops_the_oldest_progress_points_and_says_so(fake, quick_retries, monkeypatch, caplog):
    monkeypatch.setattr("rnnlm.tracking.dispatch.QUEUE_LIMIT", 6)
    tracking, tracker = fake(down=True)
    tracking.start({"seed": 1})
    for i in range(10):
        tracking.progress(tokens=i, train_loss=3.0, tokens_per_second=9.0)
    tracking.epoch({"epoch": 1, "val_ppl": 20.0})
    tracker.down.clear()
    tracking.end({"status": "completed", "stop_reason": "max_epochs"}, [])
    # 6 epoch and progress records fit: the epoch and the newest 5 progress points; start, result
    # and close are never dropped
    assert tracker.got == [("start", False), *[("progress/tokens", i) for i in range(5, 10)], ("epoch", 1),
                           ("result", "completed"), ("close", "completed")]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "5 dropped while the queue was full" in warnings[-1] and "CSV files have every epoch" in warnings[-1]


def test_the_end_waits_for_a_dead_tracker_at_most_END_WAIT(fake, quick_retries, caplog):
    tracking, tracker = fake(down=True)
    tracking.start({"seed": 1})
    tracking.epoch({"epoch": 1, "val_ppl": 20.0})
    seconds = timed(tracking.end, {"status": "completed", "stop_reason": "max_epochs"}, [])
    assert 1.0 <= seconds < 3.0  # END_WAIT is 1 s here, plus a try in flight
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"][-1]
    assert "its start and 4 records left undelivered, with the run's end (status completed)" in warning
    tracker.down.clear()
    time.sleep(0.3)
    assert tracker.got == []  # abandoned: nothing arrives late, into a later run of the same process


def test_a_refused_record_is_left_out_and_the_next_ones_are_sent(fake, caplog):
    tracking, tracker = fake()
    tracking.start({"seed": 1})
    tracking.epoch({"epoch": 1, "val_ppl": 20.0, "bad": 1.0})
    tracking.epoch({"epoch": 2, "val_ppl": 19.0})
    tracking.end({"status": "completed", "stop_reason": "max_epochs"}, [])
    assert tracker.got == [("start", False), ("epoch", 2), ("result", "completed"), ("close", "completed")]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and "refused a record" in warnings[0] and "1 refused" in warnings[1]
