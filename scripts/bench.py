"""Training-step speed of rnnlm's AWD-LSTM at real sizes, side by side in one process.

    python scripts/bench.py [--repeats 5] [--device cpu]

Times full training steps (forward, AR/TAR, backward, clipping, SGD step) of the
AWD-LSTM PTB model (V=10k, 400/1150/3 layers, batch 20, bptt 70) in variants that
differ by one dropout, interleaved so machine noise hits all alike; ratios are medians of the
within-round ratios. Also measures the fp32 matmul peak of this machine and the fraction of
it the model achieves (model FLOPs = 3 x forward matmul FLOPs per token, the
usual fwd + 2 x bwd count). The same code gives 1.7x the tokens/s on a 2-core AVX-512 machine
as on a 2-core AVX2 one (docs/performance.md), so every figure comes with its machine: the
first line printed names the CPU model, its vector ISA, the thread count and the torch
version, and the JSON carries them.
Prints a table; the LAST line is one JSON object:

    cpu_model, cpu_isa, cpu_count, threads, torch_version (gpu)   the machine (scripts/machine.py)
    tokens_per_second        AWD training throughput (all dropouts on)
    weight_drop_ratio        step time with / without WeightDrop
    embedding_dropout_ratio  step time with / without embedding dropout
    flops_fraction           achieved model FLOP/s / measured matmul peak
    variational_*_ratio ...  step-loop LSTM layer vs nn.LSTM (scripts/bench_step_lstm.py)
    bf16                     bf16 against fp32 (--budget-steps): tokens/s of each and the
                             perplexity gap after the same number of steps, or why skipped
                             (a CPU without AVX512_BF16 or AMX only emulates bf16)

docs/performance.md collects the figures measured so far, each with its machine.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine, machine_line  # noqa: E402
from rnnlm.config import DropoutConfig, ModelConfig, Precision, RecurrentDropoutConfig  # noqa: E402
from rnnlm.model import AWDLSTM  # noqa: E402
from rnnlm.dropout.cpu_kernels import cpu_has_bf16  # noqa: E402
from rnnlm.precision import autocast, numerics, to_fp32  # noqa: E402
from rnnlm.training.regularization import (  # noqa: E402
    activation_regularization,
    temporal_activation_regularization,
)

VOCAB, BATCH, BPTT = 10_000, 20, 70


def forward_flops_per_token(model: AWDLSTM) -> float:
    """Matmul FLOPs of one forward per token: 2 x (LSTM gate GEMMs + decoder)."""
    macs = sum(4 * out * (inp + out) for inp, out in zip(model.sizes[:-1], model.sizes[1:]))
    macs += model.decoder.weight.numel()
    return 2.0 * macs


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 20) -> float:
    """Best fp32 GEMM FLOP/s over ``repeats`` n x n x n products."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = 0.0
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class StepTimer:
    """One AWD training step of a model built from ``dropout``."""

    def __init__(self, dropout: DropoutConfig, device: torch.device, precision: Precision = Precision.fp32,
                 data: torch.Tensor | None = None) -> None:
        torch.manual_seed(0)
        self.precision, self.data, self.position = precision, data, 0
        self.model = AWDLSTM(VOCAB, ModelConfig(), dropout).to(device).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1.0, weight_decay=1.2e-6)
        self.inputs = torch.randint(0, VOCAB, (BPTT, BATCH), device=device)
        self.targets = torch.randint(0, VOCAB, (BPTT, BATCH), device=device)
        self.hidden = self.model.init_hidden(BATCH)
        self.device = device

    def __call__(self) -> float:
        sync(self.device)
        t = time.perf_counter()
        if self.data is not None:  # walk a token stream instead of one fixed batch
            if self.position + BPTT + 1 > self.data.size(0):
                self.position = 0
            self.inputs = self.data[self.position:self.position + BPTT]
            self.targets = self.data[self.position + 1:self.position + BPTT + 1]
            self.position += BPTT
        self.opt.zero_grad(set_to_none=True)
        with autocast(self.precision, self.device):
            out = self.model(self.inputs, self.hidden)
        loss = F.cross_entropy(out.logits.flatten(0, 1), self.targets.flatten())
        loss = (loss + activation_regularization(to_fp32(out.output), 2.0)
                + temporal_activation_regularization(to_fp32(out.raw_output), 1.0))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.25)
        self.opt.step()
        sync(self.device)
        return time.perf_counter() - t


def toy_stream(n: int, seed: int) -> torch.Tensor:
    """``(n // BATCH, BATCH)`` tokens a model can learn: a cycle over the vocabulary with 20 %
    noise, so a short budget moves the perplexity (random tokens would not)."""
    g = torch.Generator().manual_seed(seed)
    cycle = torch.arange(n) * 7 % VOCAB
    noise = torch.randint(0, VOCAB, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.8, cycle, noise).view(-1, BATCH)


def bf16_against_fp32(device: torch.device, steps: int) -> dict:
    """Tokens/s of bf16 and fp32 AWD training steps, and the validation perplexity of each
    after the same ``steps`` steps from the same weights on the same stream (the gap)."""
    if device.type == "cpu" and not cpu_has_bf16():
        return {"skipped": "this CPU has no AVX512_BF16 or AMX (see /proc/cpuinfo): bf16 is only emulated"}
    train, valid = toy_stream(BATCH * BPTT * 50, 0).to(device), toy_stream(BATCH * 200, 1).to(device)
    out: dict = {"budget_steps": steps}
    for precision in (Precision.fp32, Precision.bf16):
        with numerics(precision, False, device):
            timer = StepTimer(DropoutConfig(), device, precision, data=train)
            timer.opt.param_groups[0]["lr"] = 30.0
            seconds = [timer() for _ in range(steps)]
            model = timer.model.eval()
            with torch.no_grad(), autocast(precision, device):
                logits = model(valid[:-1], model.init_hidden(BATCH)).logits
            loss = F.cross_entropy(logits.flatten(0, 1), valid[1:].flatten()).item()
        name = precision.value
        out[f"{name}_tokens_per_second"] = round(BPTT * BATCH / statistics.median(seconds[1:]), 1)
        out[f"{name}_val_ppl"] = round(math.exp(loss), 2)
    out["speedup"] = round(out["bf16_tokens_per_second"] / out["fp32_tokens_per_second"], 3)
    out["ppl_gap"] = round(out["bf16_val_ppl"] / out["fp32_val_ppl"] - 1, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant (median)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-step-loop", action="store_true", help="skip the step-loop LSTM ratios")
    parser.add_argument("--budget-steps", type=int, default=40,
                        help="steps of the bf16-vs-fp32 comparison (0 skips it)")
    args = parser.parse_args()
    device = torch.device(args.device)
    info = machine(device)
    print(machine_line(info), flush=True)

    awd = DropoutConfig()  # the AWD PTB rates, WeightDrop element 0.5
    variants = {
        "awd": awd,
        "no_weight_drop": replace(awd, recurrent=RecurrentDropoutConfig("weight_drop", 0.0)),
        "no_embedding_dropout": replace(awd, embedding=0.0),
    }
    peak_before = matmul_peak(device)
    timers = {name: StepTimer(cfg, device) for name, cfg in variants.items()}
    for timer in timers.values():  # warm-up (allocator, kernels)
        timer()
    times: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(args.repeats):
        for name, timer in timers.items():
            times[name].append(timer())
    median = {name: statistics.median(ts) for name, ts in times.items()}

    def paired_ratio(name: str, baseline: str) -> float:
        """Median over rounds of the within-round ratio: drift of a shared machine cancels."""
        return statistics.median(a / b for a, b in zip(times[name], times[baseline]))

    # The best of two measurements around the timings: a busy machine lowers the peak.
    peak = max(peak_before, matmul_peak(device))
    model_flops = 3 * forward_flops_per_token(timers["awd"].model)
    tokens = BPTT * BATCH
    tps = tokens / median["awd"]
    result = {
        **info,
        "device": str(device),
        "tokens_per_second": round(tps, 1),
        "step_seconds": round(median["awd"], 4),
        "weight_drop_ratio": round(paired_ratio("awd", "no_weight_drop"), 4),
        "embedding_dropout_ratio": round(paired_ratio("awd", "no_embedding_dropout"), 4),
        "model_mflop_per_token": round(model_flops / 1e6, 1),
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "flops_fraction": round(tps * model_flops / peak, 4),
    }
    print(f"AWD-LSTM step, V={VOCAB}, 400/1150/3, batch {BATCH}, bptt {BPTT}, {device}, "
          f"median of {args.repeats}")
    print(f"{'variant':<24}{'step s':>10}{'tokens/s':>12}")
    for name in timers:
        print(f"{name:<24}{median[name]:>10.3f}{tokens / median[name]:>12.1f}")
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s, model {model_flops / 1e6:.1f} MFLOP/token")

    if not args.skip_step_loop:
        from bench_step_lstm import step_loop_ratios

        result.update(step_loop_ratios())
    if args.budget_steps > 0:
        result["bf16"] = bf16_against_fp32(device, args.budget_steps)
        print("bf16 against fp32:", json.dumps(result["bf16"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
