"""Evaluation speed of each ``rnnlm eval`` method relative to the standard evaluation,
measured side by side in one process at AWD-LSTM size on PTB test with batch 1.

    RNNLM_DATA_DIR=/path/to/data python scripts/bench_eval.py [--tokens 1200] [--dynamic-tokens 150]
        [--rounds 2] [--dynamic-bptt 5,20] [--mc-samples 2] [--stats-batches 5] [--device cpu]

The model is the AWD-LSTM PTB size (V = 10k, 400/1150/3 layers, tied), untrained:
speed does not depend on the weights. The first ``--tokens`` tokens of PTB test
(dynamic evaluation: the first ``--dynamic-tokens``, its cost per token is constant
and high) are scored by every method in turn, ``--rounds`` times round-robin; a
method's ratio is the median over rounds of its time per token / the standard
evaluation's time per token in the same round, so slow drift of the machine cancels
(a second busy process does not). With ``--tokens`` well above the pointer's window
of 500, most positions use the full cache, as on a whole test set. Methods:

    standard        rnnlm.training.evaluate, bptt 70
    pointer         cache pointer, PTB setting (window 500, theta 1, lambda 0.1), bptt 70
    mc K=k          MC dropout with k passes (costs ~k standard evaluations by design)
    dynamic bptt n  Krause et al.'s RMS rule, one update per n tokens (default 5, theirs)

The gradient statistics that dynamic evaluation gathers once on training data (all of
PTB train in ``rnnlm eval``; here ``--stats-batches`` segments of 100 x 5 tokens) are
timed separately and reported as training tokens/s. The first line printed names the
machine (scripts/machine.py: CPU model, vector ISA from /proc/cpuinfo, torch threads,
torch version, load); the last line is one JSON object with every figure.
docs/performance.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine, machine_line  # noqa: E402
from rnnlm.config import DropoutConfig, ModelConfig  # noqa: E402
from rnnlm.data import DataError, batchify, load_corpus  # noqa: E402
from rnnlm.evaluation.dynamic import DynamicSettings, evaluate_dynamic, gradient_statistics  # noqa: E402
from rnnlm.evaluation.pointer import PointerSettings, evaluate_pointer  # noqa: E402
from rnnlm.model import AWDLSTM  # noqa: E402
from rnnlm.training import evaluate, evaluate_mc  # noqa: E402

TARGETS = {"pointer": 1.5, "dynamic": 3.0}  # the design targets: at most this many times the standard time


def ptb(tokens: int, data: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(test ids, train ids, source) of PTB; random ids over 10k words if PTB is not found."""
    try:
        corpus = load_corpus("ptb", path=data)
        return corpus.test[: tokens + 1], corpus.train, "PTB test"
    except DataError as exc:
        print(f"note: PTB not found ({str(exc)[:120]}...); timing random tokens instead", file=sys.stderr)
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 10_000, (tokens + 1,), generator=g), torch.randint(0, 10_000, (60_000,), generator=g), \
            "random tokens"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1200, help="PTB test tokens scored per method and round")
    parser.add_argument("--dynamic-tokens", type=int, default=150, help="tokens scored by dynamic evaluation")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dynamic-bptt", default="5,20", help="segment lengths of dynamic evaluation to time")
    parser.add_argument("--mc-samples", type=int, default=2, help="K of the MC row (0: skip it)")
    parser.add_argument("--stats-batches", type=int, default=5, help="training segments of the RMS statistics")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=None, help="PTB directory (default: $RNNLM_DATA_DIR/ptb)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    info = machine(device)
    print(machine_line(info), flush=True)

    test_ids, train_ids, source = ptb(args.tokens, args.data)
    torch.manual_seed(0)
    model = AWDLSTM(10_000, ModelConfig(), DropoutConfig()).to(device).eval()  # AWD-LSTM PTB size
    test = batchify(test_ids, 1, device)  # (tokens + 1, 1)
    short = test[: min(args.dynamic_tokens, args.tokens) + 1]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    stats = gradient_statistics(model, batchify(train_ids[: 100 * 5 * args.stats_batches + 100], 100, device), 5,
                                args.stats_batches)
    sync()
    stats_seconds = time.perf_counter() - start
    stats_rate = stats.batches * 100 * 5 / stats_seconds

    pointer = PointerSettings(window=500, theta=1.0, lambd=0.1)
    dynamic = DynamicSettings(lr=4.64e-5, decay=1.43e-3, epsilon=2.32e-5)
    methods = {"standard": lambda: evaluate(model, test, 70),
               "pointer": lambda: evaluate_pointer(model, test, 70, pointer)}
    if args.mc_samples > 0:
        methods[f"mc K={args.mc_samples}"] = lambda: evaluate_mc(model, test, 70, samples=args.mc_samples, columns=1, seed=0)
    for n in (int(v) for v in args.dynamic_bptt.split(",") if v.strip()):
        methods[f"dynamic bptt {n}"] = lambda n=n: evaluate_dynamic(model, short, n, dynamic, stats)

    evaluate(model, test[:200], 70)  # warm-up: allocator, oneDNN primitives
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for round_ in range(args.rounds):
        order = list(methods.items())
        for name, run in order if round_ % 2 == 0 else order[::-1]:  # alternate, so no method always goes first
            sync()
            t = time.perf_counter()
            run()
            sync()
            seconds[name].append(time.perf_counter() - t)
    tokens = test.size(0) - 1
    count = {name: short.size(0) - 1 if name.startswith("dynamic") else tokens for name in methods}
    per_token = {name: [t / count[name] for t in times] for name, times in seconds.items()}
    rows = []
    for name, times in per_token.items():
        ratio = statistics.median(t / s for t, s in zip(times, per_token["standard"]))
        target = TARGETS.get(name.split()[0])
        rows.append({"method": name, "tokens": count[name], "tokens_per_second": round(1 / statistics.median(times), 1),
                     "time_ratio": round(ratio, 3), "target": target})
    print(f"\n{source}, batch 1, AWD-LSTM PTB size, {args.rounds} rounds; time per token / standard's")
    print(f"{'method':<18} {'tokens':>6} {'tokens/s':>9} {'time / standard':>16} {'target':>7}")
    for r in rows:
        target = f"<= {r['target']:g}" if r["target"] else ""
        print(f"{r['method']:<18} {r['tokens']:>6} {r['tokens_per_second']:>9.1f} {r['time_ratio']:>16.2f} {target:>7}")
    print(f"dynamic-eval gradient statistics: {stats_rate:.0f} training tokens/s ({stats.batches} segments of "
          f"100 x 5 in {stats_seconds:.1f} s; rnnlm eval uses all 1859 of PTB train by default)")
    print(json.dumps({**info, "device": str(device), "data": source, "tokens": tokens, "rounds": args.rounds,
                      "methods": rows, "stats_tokens_per_second": round(stats_rate, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
