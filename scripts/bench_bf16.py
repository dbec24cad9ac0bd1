"""bf16 against fp32 training on the CPU: where the time goes, side by side in one process.

    python scripts/bench_bf16.py [--rounds 7] [--threads N] [--profile]

The model is the AWD-LSTM at 200/400/3 (V = 10k, tied, batch 20, bptt 70, AWD's dropouts),
trained through ``rnnlm.training.Trainer.train_step`` as ``rnnlm train`` runs it. Printed,
each figure from interleaved rounds so that machine noise hits every variant alike:

- ``gemm``: fp32 and bf16 GEMM throughput (GFLOP/s) at the model's own shapes (the decoder,
  the input projection, one recurrent step, the weight gradients) and at 2048^3. A CPU
  whose bf16 GEMMs are not faster than its fp32 ones cannot make bf16 training pay.
- ``steps``: training-step time of fp32 and bf16 for WeightDrop (oneDNN's LSTM kernel),
  ``nn.LSTM`` (no recurrent dropout) and Gal's tied masks (the fused step loop), and the
  bf16 / fp32 speedup of each (median of the within-round ratios). ``weight_drop_functional``
  is WeightDrop on the parameters and a freshly computed ``W_hh * mask`` tensor instead of
  the persistent flat buffer, to show what the buffer costs or saves on this CPU.
- ``--profile``: the top operators by self CPU time of one step of each precision
  (``torch.profiler``), for WeightDrop.

The first line names the machine (scripts/machine.py); the LAST line is one JSON object.
Figures and what they mean: docs/performance.md, "bf16 against fp32".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import STEP_VARIANTS, Size, config, make_trainer  # noqa: E402
from machine import machine, machine_line  # noqa: E402
from rnnlm.config import Precision  # noqa: E402
from rnnlm.data import get_batch  # noqa: E402
from rnnlm.dropout.schemes.weight_drop import WeightDropLSTM  # noqa: E402
from rnnlm.precision import numerics  # noqa: E402

VOCAB, EMSIZE, NHID, NLAYERS, BATCH, BPTT = 10_000, 200, 400, 3, 20, 70
SIZE = Size(VOCAB, EMSIZE, NHID, NLAYERS, BATCH, BPTT)
CPU = torch.device("cpu")
# the variants of gpu_check's step-time figures, under this benchmark's names
DROPOUT = {"weight_drop": STEP_VARIANTS["awd"], "weight_drop_functional": STEP_VARIANTS["awd"],
           "nn_lstm": STEP_VARIANTS["nn_lstm"], "gal_tied": STEP_VARIANTS["gal_tied"]}


def gemm_seconds(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 10) -> float:
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return (time.perf_counter() - t) / repeats


def gemm_table(rounds: int) -> dict:
    """GFLOP/s of fp32 and bf16 at the model's GEMM shapes (medians over interleaved rounds)."""
    shapes = {
        "decoder (T*B, E) x (E, V)": (BPTT * BATCH, EMSIZE, VOCAB),
        "input projection (T*B, H) x (H, 4H)": (BPTT * BATCH, NHID, 4 * NHID),
        "recurrent step (B, H) x (H, 4H)": (BATCH, NHID, 4 * NHID),
        "weight gradient (4H, T*B) x (T*B, H)": (4 * NHID, BPTT * BATCH, NHID),
        "square 2048^3": (2048, 2048, 2048),
    }
    out = {}
    for name, (m, k, n) in shapes.items():
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(rounds):
            times["fp32"].append(gemm_seconds(m, k, n, torch.float32, 3 if m == 2048 else 10))
            times["bf16"].append(gemm_seconds(m, k, n, torch.bfloat16, 3 if m == 2048 else 10))
        flops = 2 * m * k * n
        f32, b16 = (flops / statistics.median(times[p]) / 1e9 for p in ("fp32", "bf16"))
        out[name] = {"fp32_gflops": round(f32, 1), "bf16_gflops": round(b16, 1), "bf16_speedup": round(b16 / f32, 2)}
    return out


def functional_weight_drop(layer: WeightDropLSTM, mask: torch.Tensor) -> list[torch.Tensor]:
    """WeightDrop's weights with a new ``W_hh * mask`` tensor each forward (no flat buffer)."""
    lstm = layer.lstm
    return [lstm.weight_ih_l0, layer.dropped_weight(mask), lstm.bias_ih_l0, lstm.bias_hh_l0]


def make_step(kind: str, precision: Precision) -> Callable[[], float]:
    """A timed training step (seconds) of ``kind`` at ``precision`` through Trainer.train_step,
    on the model and data of gpu_check's step-time figures (:func:`gpu_check.make_trainer`)."""
    cfg = config(SIZE, CPU, DROPOUT[kind], precision, variable_bptt=False)
    trainer = make_trainer(cfg, SIZE, CPU, rows=BPTT + 1)
    if kind == "weight_drop_functional":
        for layer in trainer.model.modules():
            if isinstance(layer, WeightDropLSTM):
                layer.flat_weights = lambda mask, layer=layer: functional_weight_drop(layer, mask)
    x, y = get_batch(trainer.train_data, 0, BPTT)

    def step() -> float:
        with numerics(precision, False, CPU):
            t = time.perf_counter()
            trainer.train_step(x, y, cfg.optim.lr)
            return time.perf_counter() - t

    return step


def step_table(rounds: int) -> dict:
    kinds = ("weight_drop", "weight_drop_functional", "nn_lstm", "gal_tied")
    steps = {(k, p): make_step(k, p) for k in kinds for p in (Precision.fp32, Precision.bf16)}
    for step in steps.values():  # warm-up: allocations, oneDNN primitive caches
        step(), step()
    times: dict = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            times[key].append(step())
    out = {}
    for kind in kinds:
        f32, b16 = times[(kind, Precision.fp32)], times[(kind, Precision.bf16)]
        out[kind] = {"fp32_tokens_per_second": round(BPTT * BATCH / statistics.median(f32)),
                     "bf16_tokens_per_second": round(BPTT * BATCH / statistics.median(b16)),
                     "bf16_speedup": round(statistics.median(a / b for a, b in zip(f32, b16)), 3)}
    for p in (Precision.fp32, Precision.bf16):  # functional step time / flat-buffer step time
        wd, fn = times[("weight_drop", p)], times[("weight_drop_functional", p)]
        out[f"flat_buffer_{p.value}_speedup"] = round(statistics.median(b / a for a, b in zip(wd, fn)), 3)
    return out


def profile(rows: int = 12) -> dict:
    """Top operators by self CPU time of one WeightDrop step at each precision."""
    out = {}
    for precision in (Precision.fp32, Precision.bf16):
        step = make_step("weight_drop", precision)
        step(), step()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
        out[precision.value] = {e.key: round(e.self_cpu_time_total / 1e3, 1) for e in events}  # ms
        print(f"\n{precision.value}: top operators, self CPU ms of one step")
        for name, ms in out[precision.value].items():
            print(f"  {ms:8.1f}  {name}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="also profile one step of each precision")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine(CPU)
    print(machine_line(info))
    result: dict = {"machine": info, "model": f"V={VOCAB} {EMSIZE}/{NHID}/{NLAYERS} batch {BATCH} bptt {BPTT}"}
    result["gemm"] = gemm_table(args.rounds)
    for name, row in result["gemm"].items():
        print(f"gemm {name:<40} fp32 {row['fp32_gflops']:7.1f}  bf16 {row['bf16_gflops']:7.1f} GFLOP/s  "
              f"bf16 x{row['bf16_speedup']}")
    result["steps"] = step_table(args.rounds)
    for name, row in result["steps"].items():
        print(f"step {name:<24} {row}")
    if args.profile:
        result["profile_ms"] = profile()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
