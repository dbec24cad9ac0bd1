"""The acceptance run for CUDA: every check that needs a GPU, in one call of at most ~8 minutes.

    python scripts/gpu_check.py [--steps 100] [--data DIR] [--skip-pytest]

Checks (each one passes, fails or is skipped with its reason; a skip is never a pass):

1. ``weight_drop``: WeightDrop on CUDA: the gradient reaches the raw W_hh, no warning, and
   the fused cuDNN RNN kernel runs (the profiler shows it).
2. ``precision``: every dropout scheme x fp32, tf32, bf16, fp16 at a small size: forward and
   backward finite, fp32 gradients, loss within 1 % of fp32.
3. ``asgd_no_sync``: one ASGD epoch of the AWD-size model (V=10k, 400/1150/3, batch 20) under
   ``torch.cuda.set_sync_debug_mode("error")``: no hidden host sync in the step loop (the
   loss is read only at the progress marks and the epoch's end, where syncs are allowed).
4. ``resume``: under ``deterministic=true``, SGD then ASGD steps with dropout, checkpointed
   through a file and resumed into a fresh model: weights equal to the uninterrupted run's.
5. ``smoke``: ``rnnlm train experiment=smoke device=cuda`` end to end (needs ``ptb/`` under
   --data or $RNNLM_DATA_DIR; skipped without it); result.csv read with the csv module.
6. ``pytest_gpu``: ``pytest -m gpu`` (the CUDA instances of the device-fixture tests).

Measurements (figures, not checks): AWD PTB training tokens/s and the projected PTB epoch time
at fp32, tf32 and bf16, for AWD (WeightDrop, cuDNN), a no-WeightDrop stack (``nn.LSTM``'s
kernel) and the Gal tied step loop; and the Gal tied training step through rnnlm's own
``Trainer.train_step`` with ``trainer.compile=off`` against ``trainer.compile=reduce-overhead``
(the latter in a child process given at most 150 s, compiling included; ``--no-compile``
leaves it out): ``compile_speedup`` (off step time / compiled step time) is the figure that
decides the option's default.

Prints one JSON object on its last line: the machine (scripts/machine.py), ``checks`` and
``measurements``. Exits 0 when every check passed or was skipped, 1 when one failed, 2 when
there is no CUDA device. docs/performance.md collects the figures, each with its machine.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine  # noqa: E402
from rnnlm.config import (  # noqa: E402
    DropoutConfig, ModelConfig, Precision, RecurrentDropoutConfig, RunConfig, TrainerConfig,
)
from rnnlm.dropout import WeightDropLSTM  # noqa: E402
from rnnlm.dropout.scheme import every_variant  # noqa: E402
from rnnlm.model import AWDLSTM  # noqa: E402
from rnnlm.precision import autocast, numerics, to_fp32  # noqa: E402
from rnnlm.training import Trainer  # noqa: E402
from rnnlm.training.optim import make_asgd  # noqa: E402

VOCAB, BATCH, BPTT = 10_000, 20, 70
PTB_TRAIN_TOKENS = 929_589
COMPILE_LIMIT_S = 150  # the torch.compile measurement's share of the ~8-minute run


class Skip(Exception):
    """A check that cannot run here; its message says why."""


def run_check(fn: Callable[[], dict]) -> dict:
    """``fn()``'s details with ``status`` pass/fail (``ok`` in them), or fail with the error, or
    skipped with the reason."""
    try:
        details = fn()
    except Skip as why:
        return {"status": "skipped", "reason": str(why)}
    except Exception as exc:  # a check that crashes has failed; say where
        return {"status": "fail", "error": f"{type(exc).__name__}: {exc}",
                "where": traceback.format_exc().strip().splitlines()[-3:]}
    ok = details.pop("ok")
    return {"status": "pass" if ok else "fail", **details}


# ------------------------------------------------------------------------------ checks
def check_weight_drop(device: torch.device) -> dict:
    torch.manual_seed(0)
    layer = WeightDropLSTM(400, 1150, 0.5).to(device).train()
    x = torch.randn(70, 20, 400, device=device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            out, _ = layer(x)
            out.sum().backward()
            torch.cuda.synchronize()
    kernels = sorted({e.key for e in prof.key_averages()})
    rnn_kernels = [k for k in kernels if "cudnn" in k.lower() or "rnn" in k.lower() or "lstm" in k.lower()]
    grad = layer.lstm.weight_hh_l0.grad
    grad_nonzero = bool(grad is not None and grad.abs().sum().item() > 0)
    messages = [str(w.message) for w in caught]
    return {"ok": grad_nonzero and not messages and bool(rnn_kernels), "grad_nonzero": grad_nonzero,
            "warnings": messages, "rnn_kernels": rnn_kernels[:5]}


def check_precision(device: torch.device) -> dict:
    """Every scheme x precision on a 2-layer 64-unit model, batch 8, 20 steps, masks on."""
    failures, worst = [], {}
    tokens = torch.randint(0, 500, (21, 8), generator=torch.Generator().manual_seed(0)).to(device)
    for recurrent in every_variant():
        torch.manual_seed(0)
        dropout = DropoutConfig(embedding=0.1, input=0.2, hidden=0.2, output=0.2, recurrent=recurrent)
        model = AWDLSTM(500, ModelConfig(emsize=32, nhid=64, nlayers=2), dropout).to(device).train()
        losses = {}
        for precision in Precision:
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1)
            with numerics(precision, False, device):
                with autocast(precision, device):
                    out = model(tokens[:-1], model.init_hidden(8))
                loss = F.cross_entropy(out.logits.flatten(0, 1), tokens[1:].flatten())
                loss.backward()
            grads_ok = all(p.grad is not None and p.grad.dtype == torch.float32 and bool(torch.isfinite(p.grad).all())
                           for p in model.parameters())
            losses[precision.value] = loss.item()
            if not grads_ok or not torch.isfinite(loss):
                failures.append(f"{recurrent.kind}/{recurrent.mask}/{precision.value}: non-finite or non-fp32 grads")
        name = f"{recurrent.kind}/{recurrent.mask}"
        worst[name] = max(abs(v / losses["fp32"] - 1) for v in losses.values())
        if worst[name] > 1e-2:
            failures.append(f"{name}: loss {losses} more than 1 % from fp32")
    return {"ok": not failures, "failures": failures,
            "max_relative_loss_gap": {k: float(f"{v:.3g}") for k, v in worst.items()}}


def awd_config(**trainer) -> RunConfig:
    return RunConfig(trainer=TrainerConfig(progress=False, **trainer), device="cuda")


class MarksAllowed(Trainer):
    """The Trainer, with host syncs allowed only where the loop reads its loss on purpose."""

    def _check_loss(self) -> None:
        torch.cuda.set_sync_debug_mode("default")
        try:
            super()._check_loss()
        finally:
            torch.cuda.set_sync_debug_mode("error")


def check_asgd_no_sync(device: torch.device) -> dict:
    cfg = awd_config()
    torch.manual_seed(0)
    model = AWDLSTM(VOCAB, cfg.model, cfg.dropout).to(device)
    data = torch.randint(0, VOCAB, (30 * BPTT + 1, BATCH), device=device)  # an epoch of ~31 segments
    trainer = MarksAllowed(model, cfg, data, data[:200], save_best=lambda w: None, load_best=lambda: {})
    trainer.optimizer = make_asgd(model, cfg.optim.lr, cfg.optim.weight_decay)
    trainer.train_step(data[:BPTT], data[1:BPTT + 1], cfg.optim.lr)  # state of ASGD allocated
    trainer.hidden = None
    torch.cuda.synchronize()
    start = time.perf_counter()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_epoch(started=time.monotonic())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    walked = trainer.state.position >= data.size(0) - 2
    return {"ok": walked, "batches": trainer.state.batches,
            "tokens_per_second": round(trainer.state.tokens / seconds)}


def check_resume(device: torch.device) -> dict:
    """6 steps (3 SGD, 3 ASGD) uninterrupted, against 3 + checkpoint file + 3 in a fresh model."""
    cfg = awd_config(bptt=35)
    cfg.model = ModelConfig(emsize=200, nhid=400, nlayers=3)
    cfg.deterministic = True
    data = torch.randint(0, VOCAB, (8 * 35, BATCH), generator=torch.Generator().manual_seed(0)).to(device)
    segments = [(data[i * 35:(i + 1) * 35], data[i * 35 + 1:(i + 1) * 35 + 1]) for i in range(6)]

    def trainer(seed: int) -> Trainer:
        torch.manual_seed(seed)
        model = AWDLSTM(VOCAB, cfg.model, cfg.dropout).to(device)
        t = Trainer(model, cfg, data, data[:100], save_best=lambda w: None, load_best=lambda: {})
        t.hidden = model.init_hidden(BATCH)
        return t

    def steps(t: Trainer, which: range) -> None:
        for i in which:
            if i == 3:
                t.optimizer = make_asgd(t.model, cfg.optim.lr, cfg.optim.weight_decay)
            t.train_step(*segments[i], cfg.optim.lr)

    with numerics(Precision.fp32, True, device):
        torch.manual_seed(7)
        whole = trainer(0)
        torch.cuda.manual_seed(11)
        steps(whole, range(6))
        first = trainer(0)
        torch.cuda.manual_seed(11)
        steps(first, range(4))
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)
        buffer.seek(0)
        torch.cuda.manual_seed(12345)  # whatever the new process would have
        second = trainer(1)
        second.load_state_dict(torch.load(buffer, map_location="cpu", weights_only=True))
        steps(second, range(4, 6))
    diffs = [(a - b).abs().max().item() for a, b in zip(whole.model.parameters(), second.model.parameters())]
    averaged = [(whole.optimizer.state[a]["ax"] - second.optimizer.state[b]["ax"]).abs().max().item()
                for a, b in zip(whole.model.parameters(), second.model.parameters())]
    return {"ok": max(diffs) == 0.0 and max(averaged) == 0.0, "max_weight_diff": max(diffs),
            "max_average_diff": max(averaged)}


def check_smoke(data: Path | None) -> dict:
    if data is None or not (data / "ptb").is_dir():
        raise Skip("no --data DIR (or $RNNLM_DATA_DIR) with ptb/")
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RNNLM_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"}
        t = time.perf_counter()
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "rnnlm"), "train", "experiment=smoke", "device=cuda",
             "trainer.progress=false", f"hydra.run.dir={tmp}/run"],
            env=env, capture_output=True, text=True, timeout=300,
        )
        path = Path(tmp) / "run" / "result.csv"
        rows = list(csv.DictReader(path.open(newline=""))) if path.is_file() else []
    row = rows[0] if len(rows) == 1 else {}
    warned = [line for line in proc.stderr.splitlines() if "Warning" in line][:5]
    ok = proc.returncode == 0 and row.get("status") == "completed" and row.get("device", "").startswith("cuda")
    return {"ok": ok, "returncode": proc.returncode, "seconds": round(time.perf_counter() - t, 1),
            "status": row.get("status"), "test_ppl": row.get("test_ppl"), "device": row.get("device"),
            "warnings": warned, "stderr_tail": proc.stderr.strip().splitlines()[-3:] if proc.returncode else []}


def check_pytest_gpu(skip: bool) -> dict:
    if skip:
        raise Skip("--skip-pytest")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {"ok": proc.returncode == 0, "returncode": proc.returncode, "summary": summary}


# ------------------------------------------------------------------------ measurements
def step_seconds(dropout: DropoutConfig, precision: Precision, device: torch.device, steps: int) -> float:
    torch.manual_seed(0)
    model = AWDLSTM(VOCAB, ModelConfig(), dropout).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x = torch.randint(0, VOCAB, (BPTT, BATCH), device=device)
    y = torch.randint(0, VOCAB, (BPTT, BATCH), device=device)
    hidden = model.init_hidden(BATCH)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(precision, device):
            out = model(x, hidden)
        F.cross_entropy(to_fp32(out.logits).flatten(0, 1), y.flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()

    with numerics(precision, False, device):
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


GAL_TIED = replace(DropoutConfig(), recurrent=RecurrentDropoutConfig("variational", 0.5, "tied"))


def trainer_step(device: torch.device, steps: int, compile_mode: str) -> dict:
    """The Gal tied AWD model's training step as rnnlm runs it (``Trainer.train_step``: AR/TAR,
    clipping, SGD, the hidden state carried), fp32, fixed length BPTT (one compiled shape),
    with ``trainer.compile=compile_mode``: step time, and the time of the first 5 steps
    (compiling and CUDA-graph recording, if any)."""
    cfg = awd_config(variable_bptt=False, compile=compile_mode)
    cfg.dropout = GAL_TIED
    torch.manual_seed(0)
    model = AWDLSTM(VOCAB, cfg.model, cfg.dropout).to(device)
    data = torch.randint(0, VOCAB, (BPTT + 1, BATCH), device=device)
    trainer = Trainer(model, cfg, data, data, save_best=lambda w: None, load_best=lambda: {})
    trainer.hidden = model.init_hidden(BATCH)
    model.train()
    x, y = data[:BPTT], data[1:]
    n = max(10, steps // 4)
    with numerics(Precision.fp32, False, device):
        t = time.perf_counter()
        for _ in range(5):
            trainer.train_step(x, y, cfg.optim.lr)
        torch.cuda.synchronize()
        warmup = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(n):
            trainer.train_step(x, y, cfg.optim.lr)
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t) / n
    return {"compile": compile_mode, "step_ms": round(1e3 * seconds, 2),
            "tokens_per_second": round(BPTT * BATCH / seconds), "first_5_steps_seconds": round(warmup, 1)}


def measure(device: torch.device, steps: int, compiled: bool) -> dict:
    awd = DropoutConfig()
    variants = {
        "awd": awd,
        "nn_lstm": replace(awd, recurrent=RecurrentDropoutConfig("weight_drop", 0.0)),
        "gal_tied": GAL_TIED,
    }
    out: dict = {"tokens_per_step": BPTT * BATCH, "ptb_train_tokens": PTB_TRAIN_TOKENS}
    for name, dropout in variants.items():
        for precision in (Precision.fp32, Precision.tf32, Precision.bf16):
            n = steps if name != "gal_tied" else max(10, steps // 4)
            seconds = step_seconds(dropout, precision, device, n)
            tps = BPTT * BATCH / seconds
            out[f"{name}_{precision.value}"] = {"step_ms": round(1e3 * seconds, 2), "tokens_per_second": round(tps),
                                                "ptb_epoch_seconds": round(PTB_TRAIN_TOKENS / tps, 1)}
    out["gal_tied_fp32_trainer"] = trainer_step(device, steps, "off")
    if compiled:  # in a child process, so a slow compile cannot eat the run's time budget
        try:
            proc = subprocess.run([sys.executable, __file__, "--compiled-step-only", "--steps", str(steps)],
                                  capture_output=True, text=True, timeout=COMPILE_LIMIT_S)
            lines = proc.stdout.strip().splitlines()
            on = (json.loads(lines[-1]) if proc.returncode == 0 and lines
                  else {"error": proc.stderr.strip().splitlines()[-1:]})
            # Inductor's perf hints (on in the child) say when it ran a graph without CUDA graphs.
            skipped = [line.strip() for line in proc.stderr.splitlines() if "skipping cudagraphs" in line.lower()]
            if skipped:
                on["cudagraphs_skipped"] = skipped[:5]
        except subprocess.TimeoutExpired:
            on = {"error": f"compile and timing took over {COMPILE_LIMIT_S} s"}
        out["gal_tied_fp32_trainer_compiled"] = on
        if "step_ms" in on:
            out["compile_speedup"] = round(out["gal_tied_fp32_trainer"]["step_ms"] / on["step_ms"], 3)
    return out


def compiled_step(device: torch.device, steps: int) -> dict:
    """:func:`trainer_step` with ``trainer.compile=reduce-overhead`` (the child process)."""
    torch._logging.set_logs(perf_hints=True)
    t = time.perf_counter()
    return {**trainer_step(device, steps, "reduce-overhead"), "with_compile_seconds": round(time.perf_counter() - t, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per AWD measurement")
    parser.add_argument("--data", type=Path, default=os.environ.get("RNNLM_DATA_DIR"),
                        help="directory with ptb/ for the smoke run (default: $RNNLM_DATA_DIR)")
    parser.add_argument("--skip-pytest", action="store_true", help="leave out pytest -m gpu (reported skipped)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile measurement")
    parser.add_argument("--compiled-step-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    if args.compiled_step_only:
        print(json.dumps(compiled_step(device, args.steps)))
        return 0
    started = time.perf_counter()
    result: dict = {"machine": machine(device), "checks": {}}
    checks = {
        "weight_drop": lambda: check_weight_drop(device),
        "precision": lambda: check_precision(device),
        "asgd_no_sync": lambda: check_asgd_no_sync(device),
        "resume": lambda: check_resume(device),
        "smoke": lambda: check_smoke(args.data),
        "pytest_gpu": lambda: check_pytest_gpu(args.skip_pytest),
    }
    for name, fn in checks.items():
        t = time.perf_counter()
        result["checks"][name] = {**run_check(fn), "seconds": round(time.perf_counter() - t, 1)}
        print(f"{name}: {result['checks'][name]['status']}", file=sys.stderr, flush=True)
    try:
        result["measurements"] = measure(device, args.steps, compiled=not args.no_compile)
    except Exception as exc:
        result["measurements"] = {"error": f"{type(exc).__name__}: {exc}"}
    statuses = [c["status"] for c in result["checks"].values()]
    result["summary"] = {s: statuses.count(s) for s in ("pass", "fail", "skipped")}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 1 if "fail" in statuses else 0


if __name__ == "__main__":
    sys.exit(main())
