"""``trainer.compile``: the setting, the schemes it applies to, its record in result.csv, and a
compiled run that trains as an uncompiled one (the step functions of
rnnlm/dropout/fused_lstm.py under torch.compile; tests/test_step_kernels.py checks them).

The end-to-end test compiles with Inductor on the CPU, which takes a minute there (it is
marked ``compile``: ``pytest -m compile`` runs it); where CUDA exists its GPU instance runs
with the other GPU tests (the ``device`` fixture).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import read_rows, run_rnnlm, tiny

from rnnlm.cli import main as rnnlm_main
from rnnlm.config import (COMPILE_MODES, ConfigError, DropoutConfig, ModelConfig, RecurrentDropoutConfig, RunConfig,
                          TrainerConfig)
from rnnlm.model import AWDLSTM
from rnnlm.results import RESULT_COLUMNS
from rnnlm.run import RunFiles


@pytest.mark.parametrize("bad", ["on", "max-autotune", "reduce-overhead", "False"])
def test_a_bad_compile_mode_is_refused_in_one_line(bad):
    with pytest.raises(ConfigError) as info:
        TrainerConfig(compile=bad)
    message = str(info.value)
    assert message == (f"trainer.compile={bad} is not one of off, default; "
                       f"e.g. trainer.compile=default on CUDA with a step-loop recurrent dropout.")
    assert "\n" not in message


def test_compile_is_off_by_default_and_every_mode_is_accepted():
    assert TrainerConfig().compile == "off" and COMPILE_MODES == ("off", "default")
    for mode in COMPILE_MODES:
        assert TrainerConfig(compile=mode).compile == mode


def test_the_cli_refuses_a_bad_compile_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert rnnlm_main(["train", "experiment=smoke", "trainer.compile=fast"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "rnnlm: error: trainer.compile=fast is not one of off, default; "
        "e.g. trainer.compile=default on CUDA with a step-loop recurrent dropout.")
    assert not (tmp_path / "outputs").exists()


GAL_TIED = DropoutConfig(recurrent=RecurrentDropoutConfig("variational", 0.5, "tied"))


@pytest.mark.parametrize("kind,rate", [("weight_drop", 0.5), ("none", 0.0), ("variational", 0.0)])
def test_compile_is_refused_where_there_is_no_step_loop_to_compile(kind, rate):
    """WeightDrop, none, and a step scheme at rate 0 run the fused LSTM kernel (cuDNN on CUDA),
    which torch.compile would only decompose into per-step matmuls."""
    with pytest.raises(ConfigError) as info:
        RunConfig(trainer=TrainerConfig(compile="default"),
                  dropout=DropoutConfig(recurrent=RecurrentDropoutConfig(kind, rate, "tied" if kind == "variational"
                                                                         else "element")))
    message = str(info.value)
    assert message.startswith("trainer.compile=default compiles the step loop of a step-loop recurrent dropout "
                              "(semeniuta, variational, zoneout, at a rate > 0); "
                              f"dropout.recurrent.kind={kind} at rate {rate} runs the fused LSTM kernel")
    assert message.endswith("set trainer.compile=off.") and "\n" not in message
    RunConfig(trainer=TrainerConfig(compile="default"), dropout=GAL_TIED)  # accepted


def test_result_csv_records_the_compile_mode(tmp_path):
    assert "trainer.compile" in RESULT_COLUMNS
    for mode in COMPILE_MODES:
        cfg = RunConfig(trainer=TrainerConfig(compile=mode), dropout=GAL_TIED, device="cpu")
        files = RunFiles(tmp_path / mode, cfg, [f"trainer.compile={mode}"], torch.device("cpu"))
        files.dir.mkdir()
        files.write_result()
        (row,) = read_rows(files.path("result.csv"))
        assert row["trainer.compile"] == mode


# The smoke experiment on the tiny corpus, Gal's tied masks (the step loop the option is
# for), 1 epoch of 3 fixed-length segments: few shapes, so few compiles.
SHORT = ("experiment=smoke", "dropout/recurrent=gal_tied", "dataset.batch_size=4", "trainer.bptt=10",
         "trainer.variable_bptt=false", "optim.lr=5", "trainer.max_epochs=1", "trainer.max_batches=3",
         "trainer.progress=false", "threads=1")


@pytest.mark.compile
def test_a_compiled_run_trains_as_an_uncompiled_one(tmp_path, device):
    """Same seed, compile off and on: the same losses (nothing random is compiled) and
    checkpoints with the plain module's keys that load into an uncompiled model."""
    runs = {}
    for mode in ("off", "default"):
        (tmp_path / mode).mkdir()
        proc = run_rnnlm("train", *SHORT, f"device={device}", f"trainer.compile={mode}", "hydra.run.dir=run",
                         cwd=tmp_path / mode, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[mode] = tmp_path / mode / "run"
    rows = {mode: read_rows(run / "metrics.csv") for mode, run in runs.items()}
    results = {mode: read_rows(run / "result.csv")[0] for mode, run in runs.items()}
    assert results["default"]["trainer.compile"] == "default"
    assert results["off"]["trainer.compile"] == "off"
    assert len(rows["off"]) == len(rows["default"]) == 1
    for key in ("train_loss", "val_loss"):
        assert math.isclose(float(rows["off"][0][key]), float(rows["default"][0][key]), rel_tol=1e-4), key
    assert math.isclose(float(results["off"]["test_ppl"]), float(results["default"]["test_ppl"]),
                        rel_tol=1e-4)

    plain = AWDLSTM(len(tiny().vocab), ModelConfig(emsize=32, nhid=64, nlayers=2), GAL_TIED)
    for name in ("best.pt", "last.pt"):
        weights = {mode: torch.load(run / "checkpoints" / name, weights_only=True)["model"]
                   for mode, run in runs.items()}
        assert not any("_orig_mod" in key for key in weights["default"])
        plain.load_state_dict(weights["default"])  # strict: the same keys and shapes
        for key, value in weights["off"].items():
            assert torch.allclose(value, weights["default"][key], rtol=1e-4, atol=1e-6), (name, key)
