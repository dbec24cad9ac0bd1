"""Training speed with and without flushing subnormal floats to zero on the CPU, side by side.

    RNNLM_DATA_DIR=/path/to/data python scripts/bench_subnormal.py RUN_DIR [--steps 80] [--rounds 2]

Loads the weights of ``RUN_DIR/checkpoints/last.pt`` (a run of the study preset,
``experiment=recurrent_dropout_ptb``, e.g. with Semeniuta's dropout, whose saturated gates
make the backward produce subnormal values once the model has trained a few epochs), and
times ``--steps`` training steps of its config from those weights with
``torch.set_flush_denormal`` off and on, alternating, on one thread. Prints the machine, then
tokens/s of each and their ratio (medians over rounds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine, machine_line  # noqa: E402

from rnnlm.data import batchify  # noqa: E402
from rnnlm.evaluation.runs import load_run  # noqa: E402
from rnnlm.training import Trainer  # noqa: E402


def tokens_per_second(run, weights, steps: int, flush: bool) -> float:
    torch.set_flush_denormal(flush)
    run.model.load_state_dict(weights)
    cfg = run.cfg
    cfg.trainer.max_batches, cfg.trainer.progress = steps, False
    trainer = Trainer(run.model, cfg, batchify(run.corpus.train, cfg.dataset.batch_size),
                      batchify(run.corpus.valid, cfg.dataset.eval_batch_size),
                      save_best=lambda w: None, load_best=lambda: {})
    start = time.perf_counter()
    trainer.train_epoch(time.monotonic())
    return trainer.state.tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_line(machine("cpu")), flush=True)
    run = load_run(args.run_dir, "last", "cpu")
    weights = {k: v.clone() for k, v in run.model.state_dict().items()}
    off, on = [], []
    for _ in range(args.rounds):
        off.append(tokens_per_second(run, weights, args.steps, False))
        on.append(tokens_per_second(run, weights, args.steps, True))
    torch.set_flush_denormal(False)
    a, b = statistics.median(off), statistics.median(on)
    print(f"subnormals kept: {a:.0f} tok/s; flushed: {b:.0f} tok/s; ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
