"""Checks and timings that need a CUDA GPU, in one short script.

    python scripts/gpu_check.py [--steps 200] [--data DIR]

1. WeightDrop on CUDA: the gradient reaches the raw W_hh, no warning is raised, and
   the fused cuDNN kernel runs (the profiler shows a cudnn RNN kernel, no step loop).
2. A 200-step timing of the AWD-size model (V=10k, 400/1150/3, batch 20, bptt 70),
   with and without WeightDrop, and with a Gal step-loop layer stack for comparison.
3. The smoke preset end to end on CUDA (needs the PTB files: --data DIR with ptb/, by
   default $RNNLM_DATA_DIR; skipped without them).

Prints one JSON object on its last line, starting with the machine (GPU, CPU, torch version;
scripts/machine.py). Exits non-zero if a check fails. docs/performance.md collects the
figures measured so far, each with its machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine  # noqa: E402
from rnnlm.config import DropoutConfig, ModelConfig, RecurrentDropoutConfig  # noqa: E402
from rnnlm.dropout import WeightDropLSTM  # noqa: E402
from rnnlm.model import AWDLSTM  # noqa: E402


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
    kernels = [e.key for e in prof.key_averages()]
    grad = layer.lstm.weight_hh_l0.grad
    return {
        "weight_drop_warnings": [str(w.message) for w in caught],
        "weight_drop_grad_nonzero": bool(grad is not None and grad.abs().sum().item() > 0),
        "weight_drop_cudnn_kernel": any("cudnn" in k.lower() or "rnn" in k.lower() for k in kernels),
    }


def time_steps(dropout: DropoutConfig, device: torch.device, steps: int) -> float:
    torch.manual_seed(0)
    model = AWDLSTM(10_000, ModelConfig(), dropout).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x = torch.randint(0, 10_000, (70, 20), device=device)
    y = torch.randint(0, 10_000, (70, 20), device=device)
    hidden = model.init_hidden(20)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(x, hidden)
        F.cross_entropy(out.logits.flatten(0, 1), y.flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def smoke(data: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RNNLM_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"}
        t = time.perf_counter()
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "rnnlm"), "train", "experiment=smoke", "device=cuda",
             "trainer.progress=false", f"hydra.run.dir={tmp}/run"],
            env=env, capture_output=True, text=True,
        )
        rows = (Path(tmp) / "run" / "result.csv").read_text().splitlines() if proc.returncode == 0 else []
        result = dict(zip(rows[0].split(","), rows[1].split(","))) if len(rows) == 2 else {}
        return {
            "smoke_returncode": proc.returncode,
            "smoke_seconds": round(time.perf_counter() - t, 1),
            "smoke_test_ppl": result.get("test_ppl"),
            "smoke_device": result.get("device"),
            "smoke_warnings": [l for l in proc.stderr.splitlines() if "Warning" in l][:5],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--data", type=Path, default=os.environ.get("RNNLM_DATA_DIR"),
                        help="directory with ptb/ for the smoke run (default: $RNNLM_DATA_DIR)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    result: dict = machine(device)
    result.update(check_weight_drop(device))
    awd = DropoutConfig()
    no_wd = replace(awd, recurrent=RecurrentDropoutConfig("weight_drop", 0.0))
    gal = replace(awd, recurrent=RecurrentDropoutConfig("variational", 0.5, "tied"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        times = {name: time_steps(cfg, device, args.steps) for name, cfg in
                 (("awd", awd), ("no_weight_drop", no_wd), ("gal_tied", gal))}
    result.update({
        "awd_step_ms": round(1e3 * times["awd"], 2),
        "awd_tokens_per_second": round(1400 / times["awd"]),
        "weight_drop_ratio": round(times["awd"] / times["no_weight_drop"], 4),
        "gal_tied_step_ratio": round(times["gal_tied"] / times["awd"], 4),
        "timing_warnings": sorted({str(w.message) for w in caught}),
    })
    if args.data is not None and (args.data / "ptb").is_dir():
        result.update(smoke(args.data))
    else:
        result["smoke"] = "skipped: no --data DIR with ptb/"
    ok = (result["weight_drop_grad_nonzero"] and not result["weight_drop_warnings"]
          and not result["timing_warnings"] and result.get("smoke_returncode", 0) == 0)
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
