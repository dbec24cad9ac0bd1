"""Speed of the StepLSTM step loop against ``nn.LSTM`` (fwd+bwd of one AWD-sized layer).

    python scripts/bench_step_lstm.py                 # rnnlm's step loop, every kind
    python scripts/bench_step_lstm.py --alternatives  # + plain autograd loop, jit.script, MKL GEMMs
    python scripts/bench_step_lstm.py --alternatives --compile   # + torch.compile: the whole
                                          # loop (slow to build) and trainer.compile's compiled steps

Each timing is one forward+backward of a 400 -> 1150 layer on a (70, 20) batch, fp32,
with torch's default thread count. Variants are timed round-robin (interleaved) and
each ratio is the median over rounds of (variant time / nn.LSTM time in that round),
so a machine that gets busier or quieter during the run moves both alike; still, run
it on an otherwise idle machine (see ``step_loop_load_avg_before`` in the result). The
first line printed names the machine (CPU model, vector ISA, threads, torch version;
scripts/machine.py); the last line is the result dict as JSON, with the same machine
keys. ``scripts/bench.py`` calls :func:`step_loop_ratios`. docs/performance.md collects
the figures measured so far, each with its machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine, machine_line  # noqa: E402
import rnnlm.dropout.fused_lstm as fused  # noqa: E402
import rnnlm.dropout.mkldnn_linear as mkldnn_linear  # noqa: E402
from rnnlm.dropout import StepLSTM  # noqa: E402

T, B, I, H = 70, 20, 400, 1150  # AWD-LSTM on PTB: bptt 70, batch 20, emsize 400, nhid 1150

KINDS = {  # result key -> StepLSTM(kind, rate, mask, cell_rate)
    "variational_tied": ("variational", 0.5, "tied", 0.0),
    "variational_untied": ("variational", 0.5, "untied", 0.0),
    "semeniuta": ("semeniuta", 0.25, "step", 0.0),
    "semeniuta_sequence": ("semeniuta", 0.25, "sequence", 0.0),
    "zoneout": ("zoneout", 0.05, "step", 0.5),  # Krueger et al.'s PTB word-level z_h, z_c
}


# --------------------------------------------------------------------------- alternatives


def autograd_loop(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
                  b_hh: Tensor, mask_h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gal variational LSTM as a plain autograd loop, input projection hoisted.

    x (T, B, I); h0, c0 (B, H); mask_h (B, H) tied or (4, B, H) untied (one batched
    matmul over the four gate blocks of W_hh).
    """
    T_, B_ = x.shape[0], x.shape[1]
    H_ = w_hh.shape[1]
    xw = torch.addmm(b_ih + b_hh, x.reshape(T_ * B_, -1), w_ih.t()).view(T_, B_, 4 * H_)
    w4 = w_hh.view(4, H_, H_).transpose(1, 2)  # (4, H, H): per gate, h @ w4[k]
    wt = w_hh.t()  # (H, 4H)
    untied = mask_h.dim() == 3
    h, c = h0, c0
    outs: list[Tensor] = []
    for t in range(T_):
        if untied:
            rec = torch.bmm(h.unsqueeze(0) * mask_h, w4).transpose(0, 1).reshape(B_, 4 * H_)
        else:
            rec = torch.mm(h * mask_h, wt)
        gates = xw[t] + rec  # (B, 4H)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), h, c


class _OneDNNOff:
    """Runs rnnlm's Function with every GEMM on torch.mm (MKL on CPU), forward and backward."""

    def __enter__(self):
        self.saved = mkldnn_linear.use_mkldnn
        mkldnn_linear.use_mkldnn = lambda w: False

    def __exit__(self, *exc):
        mkldnn_linear.use_mkldnn = self.saved


# --------------------------------------------------------------------------- timing


def _fwd_bwd(fn: Callable[[], Tensor], context=None) -> Callable[[], float]:
    """A callable timing one forward (``fn``) + backward of ``out.sum()``, in seconds."""
    def once() -> float:
        t0 = time.perf_counter()
        if context is None:
            fn().sum().backward()
        else:
            with context:
                fn().sum().backward()
        return time.perf_counter() - t0
    return once


def _interleaved(cases: dict[str, Callable[[], float]], repeats: int, baseline: str,
                 warmup: int = 1) -> dict[str, tuple[float, float]]:
    """name -> (median seconds, median ratio to ``baseline`` over rounds)."""
    for once in cases.values():
        for _ in range(warmup):
            once()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, once in cases.items():
            times[name].append(once())
    base = times[baseline]
    return {name: (statistics.median(ts), statistics.median(t / b for t, b in zip(ts, base)))
            for name, ts in times.items()}


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    lstm = nn.LSTM(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    return lstm, x


def _step_loop_cases(lstm: nn.LSTM, x: Tensor, keys=KINDS) -> dict[str, Callable[[], float]]:
    cases = {"nn.LSTM": _fwd_bwd(lambda: lstm(x)[0])}
    for key in keys:
        kind, rate, mask, cell_rate = KINDS[key]
        m = StepLSTM(I, H, kind, rate, mask, cell_rate=cell_rate).train()
        m.load_state_dict(lstm.state_dict())
        cases[key] = _fwd_bwd(lambda m=m: m(x)[0])
    return cases


def step_loop_ratios(repeats: int = 5) -> dict:
    """fwd+bwd time of each StepLSTM kind over ``nn.LSTM`` (AWD layer 400 -> 1150, B 20,
    T 70, fp32), median over ``repeats`` interleaved rounds, same process.

    Returns ``{"<key>_ratio": float, "<key>_ms": float, ...}`` for the keys
    variational_tied, variational_untied, semeniuta (step masks), semeniuta_sequence and
    zoneout, plus ``step_loop_lstm_ms`` (the nn.LSTM time), ``step_loop_threads``,
    ``step_loop_onednn`` and ``step_loop_load_avg_before``.
    """
    load_before = os.getloadavg()[0]
    lstm, x = _setup()
    res = _interleaved(_step_loop_cases(lstm, x), repeats, "nn.LSTM")
    out: dict = {"step_loop_lstm_ms": round(res["nn.LSTM"][0] * 1e3, 1)}
    for key in KINDS:
        out[f"{key}_ratio"] = round(res[key][1], 3)
        out[f"{key}_ms"] = round(res[key][0] * 1e3, 1)
    out["step_loop_threads"] = torch.get_num_threads()
    out["step_loop_onednn"] = mkldnn_linear.ops_available()
    # Another busy process slows multi-threaded torch several-fold, and the many small
    # OpenMP regions of the step loop more than nn.LSTM: with a load average above ~0.5
    # before the run, the figures are suspect.
    out["step_loop_load_avg_before"] = round(load_before, 2)
    return out


def alternative_ratios(repeats: int = 5, compile_loop: bool = False) -> dict:
    """Ratios to nn.LSTM of other ways to write the loop, for Gal tied and untied."""
    lstm, x = _setup()
    w = [p for p in lstm.parameters()]
    zeros = x.new_zeros(B, H)
    masks = {"tied": torch.empty(B, H).bernoulli_(0.5).mul_(2),
             "untied": torch.empty(4, B, H).bernoulli_(0.5).mul_(2)}
    cases = _step_loop_cases(lstm, x, keys=["variational_tied", "variational_untied"])
    cases = {"nn.LSTM": cases["nn.LSTM"],
             "tied/function+oneDNN (rnnlm)": cases["variational_tied"],
             "untied/function+oneDNN (rnnlm)": cases["variational_untied"]}
    scripted = torch.jit.script(autograd_loop)
    build_s = {}
    compiled = None
    if compile_loop:
        compiled = torch.compile(autograd_loop, dynamic=False)
    for name, mask in masks.items():
        args = (x, zeros, zeros, *w)
        cases[f"{name}/autograd loop"] = _fwd_bwd(lambda a=args, m=mask: autograd_loop(*a, m)[0])
        cases[f"{name}/jit.script loop"] = _fwd_bwd(lambda a=args, m=mask: scripted(*a, m)[0])
        cases[f"{name}/function+MKL"] = _fwd_bwd(
            lambda a=args, m=mask: fused.fused_lstm(*a, {"h": m})[0],
            context=_OneDNNOff())
        if compiled is not None:
            t0 = time.perf_counter()
            compiled(*args, mask)[0].sum().backward()
            build_s[f"{name}/torch.compile loop"] = time.perf_counter() - t0
            cases[f"{name}/torch.compile loop"] = _fwd_bwd(lambda a=args, m=mask: compiled(*a, m)[0])
            # trainer.compile: rnnlm's loop with each step's pointwise work compiled
            leaves = [t.detach().requires_grad_() for t in args]
            t0 = time.perf_counter()
            fused.fused_lstm(*leaves, {"h": mask}, compiled=True)[0].sum().backward()
            build_s[f"{name}/compiled steps (trainer.compile)"] = time.perf_counter() - t0
            cases[f"{name}/compiled steps (trainer.compile)"] = _fwd_bwd(
                lambda a=args, m=mask: fused.fused_lstm(*a, {"h": m}, compiled=True)[0])
    res = _interleaved(cases, repeats, "nn.LSTM")
    out = {name: {"ms": round(t * 1e3, 1), "ratio": round(r, 3)} for name, (t, r) in res.items()}
    for name, s in build_s.items():
        out[name]["first_call_s"] = round(s, 1)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--alternatives", action="store_true",
                    help="also time other ways to write the loop (autograd, jit.script, MKL GEMMs)")
    ap.add_argument("--compile", action="store_true", help="with --alternatives: torch.compile too")
    args = ap.parse_args(argv)
    info = machine()
    print(machine_line(info))
    print(f"load average {os.getloadavg()[0]:.2f}; layer {I}->{H}, T={T}, B={B}, fp32 fwd+bwd")
    result = {**info, **step_loop_ratios(args.repeats)}
    print(f"{'variant':28s} {'ms':>8s} {'/ nn.LSTM':>10s}")
    print(f"{'nn.LSTM':28s} {result['step_loop_lstm_ms']:8.1f} {1.0:10.2f}")
    for key in KINDS:
        print(f"{key:28s} {result[key + '_ms']:8.1f} {result[key + '_ratio']:10.2f}")
    if args.alternatives:
        alt = alternative_ratios(args.repeats, compile_loop=args.compile)
        print(f"\n{'alternative':34s} {'ms':>8s} {'/ nn.LSTM':>10s}")
        for name, r in alt.items():
            extra = f"  (first call {r['first_call_s']} s)" if "first_call_s" in r else ""
            print(f"{name:34s} {r['ms']:8.1f} {r['ratio']:10.2f}{extra}")
        result["alternatives"] = alt
    print(json.dumps(result))


if __name__ == "__main__":
    main()
