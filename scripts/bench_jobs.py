"""How to spread a sweep over a machine's cores: J concurrent jobs of T threads each.

    python scripts/bench_jobs.py [--layouts 1x2,2x1] [--seconds 30] [--rounds 3]
                                 [--variants none,gal_untied] [OVERRIDE ...]

The model, batch and BPTT are those of the composed ``rnnlm train`` config (default
``experiment=recurrent_dropout_ptb``; any override applies). For each layout J x T, J worker
processes with T torch threads each run training steps (forward, cross-entropy, backward,
gradient clipping, SGD step) on random tokens of the run's vocabulary size; after a warm-up
they start together and count tokens for ``--seconds``. The figure of a layout is the sum of
its jobs' tokens/s: the machine's throughput for a sweep laid out that way. Layouts alternate
within each round, and the ratio to the first layout is the median of the within-round
ratios, so slow drift hits all alike; a second busy process does not cancel out, so run it on
an otherwise idle machine (the first line printed says the load average).

Prints a table; the LAST line is one JSON object with the machine (scripts/machine.py) and,
per variant and layout, the aggregate tokens/s of each round and the median ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine, machine_line  # noqa: E402


def compose(overrides: list[str]):
    """The validated run config of ``overrides``, composed as ``rnnlm train`` does."""
    from hydra import compose as hydra_compose, initialize_config_module

    from rnnlm.cli.train import CONFIG_MODULE, to_run_config

    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return to_run_config(hydra_compose("config", overrides=overrides))


def worker(overrides: list[str], threads: int, seconds: float, start, out) -> None:
    """One job: warm up, wait for the others, then train for ``seconds``; put tokens/s on ``out``."""
    import torch
    import torch.nn.functional as F

    from rnnlm.model import AWDLSTM

    torch.set_num_threads(threads)
    cfg = compose(overrides)
    vocab, batch, bptt = 10_000, cfg.dataset.batch_size, cfg.trainer.bptt
    torch.manual_seed(0)
    model = AWDLSTM(vocab, cfg.model, cfg.dropout).train()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    tokens = torch.randint(vocab, (bptt + 1, batch))
    hidden = model.init_hidden(batch)

    def step() -> None:
        out = model(tokens[:-1], hidden)
        loss = F.cross_entropy(out.logits.reshape(-1, vocab), tokens[1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip or 1e9)
        opt.step()

    for _ in range(3):
        step()
    start.wait()
    steps, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        step()
        steps += 1
    out.put(steps * bptt * batch / (time.perf_counter() - begin))


def run_layout(overrides: list[str], jobs: int, threads: int, seconds: float) -> float:
    """Aggregate tokens/s of ``jobs`` concurrent workers with ``threads`` threads each."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(jobs), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(overrides, threads, seconds, start, out)) for _ in range(jobs)]
    for p in procs:
        p.start()
    rates: list[float] = []
    while len(rates) < jobs:
        try:
            rates.append(out.get(timeout=5))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:  # a worker failed (its traceback is on stderr): do not wait for it forever
                for p in procs:
                    p.kill()
                raise SystemExit(f"bench_jobs: a worker exited with code {dead[0]}")
    for p in procs:
        p.join()
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", default="1x2,2x1", help="JOBSxTHREADS, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per layout")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="none,gal_untied",
                        help="dropout/recurrent presets to time (configs/dropout/recurrent/)")
    parser.add_argument("overrides", nargs="*", default=["experiment=recurrent_dropout_ptb"])
    args = parser.parse_args()
    layouts = [tuple(int(n) for n in layout.split("x")) for layout in args.layouts.split(",")]
    info = machine()
    print(machine_line(info))
    result: dict = {**info, "overrides": args.overrides, "seconds": args.seconds, "variants": {}}
    for variant in args.variants.split(","):
        overrides = [*args.overrides, f"dropout/recurrent={variant}"]
        rates = {layout: [] for layout in layouts}
        for _ in range(args.rounds):
            for layout in layouts:
                rates[layout].append(run_layout(overrides, *layout, args.seconds))
        first = rates[layouts[0]]
        row = {}
        for (jobs, threads), values in rates.items():
            ratio = statistics.median(v / f for v, f in zip(values, first))
            row[f"{jobs}x{threads}"] = {"tokens_per_second": [round(v) for v in values], "ratio": round(ratio, 3)}
            print(f"{variant:<12} {jobs} job(s) x {threads} thread(s): "
                  f"{statistics.median(values):8.0f} tokens/s (median of {len(values)}), "
                  f"{ratio:.2f} x {layouts[0][0]}x{layouts[0][1]}")
        result["variants"][variant] = row
    print(json.dumps(result))


if __name__ == "__main__":
    main()
