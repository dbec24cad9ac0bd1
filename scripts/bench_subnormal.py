"""Training speed with and without flushing subnormal floats to zero on the CPU, side by side.

    RNNLM_DATA_DIR=/path/to/data python scripts/bench_subnormal.py RUN_DIR [--steps 80] [--rounds 2]

Loads the last iterate of ``RUN_DIR/checkpoints/last.pt`` (a run of the study preset,
``experiment=recurrent_dropout_ptb``, e.g. with Semeniuta's dropout, whose saturated gates
make the backward produce subnormal values once the model has trained a few epochs): the raw
weights the run was training, not the average it validates (``trainer.average``, or ASGD's),
which ``load_run(..., "last")`` puts in the model. Times ``--steps`` training steps of its
config from those weights with ``torch.set_flush_denormal`` off and on, alternating, on one
thread. Prints the machine, then tokens/s of each and their ratio (medians over rounds).
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
from rnnlm.evaluation.runs import CHECKPOINTS, load_run, read_checkpoint  # noqa: E402
from rnnlm.training import Trainer  # noqa: E402


def tokens_per_second(run, weights, train_data, valid_data, flush: bool) -> float:
    """Training tokens/s of ``run.cfg`` (``trainer.max_batches`` steps) from ``weights``."""
    torch.set_flush_denormal(flush)
    run.model.load_state_dict(weights)
    trainer = Trainer(run.model, run.cfg, train_data, valid_data, save_best=lambda w: None, load_best=lambda: {})
    trainer.train_epoch(time.monotonic())
    return trainer.state.tokens / trainer.state.train_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_line(machine("cpu")), flush=True)
    run = load_run(args.run_dir, "last", "cpu")
    weights, _, _ = read_checkpoint(args.run_dir / CHECKPOINTS["last"], run.device)  # the raw last iterate
    cfg = run.cfg
    cfg.trainer.max_batches, cfg.trainer.progress = args.steps, False
    train_data = batchify(run.corpus.train, cfg.dataset.batch_size)
    valid_data = batchify(run.corpus.valid, cfg.dataset.eval_batch_size)
    off, on = [], []
    for _ in range(args.rounds):
        off.append(tokens_per_second(run, weights, train_data, valid_data, False))
        on.append(tokens_per_second(run, weights, train_data, valid_data, True))
    torch.set_flush_denormal(False)
    a, b = statistics.median(off), statistics.median(on)
    print(f"subnormals kept: {a:.0f} tok/s; flushed: {b:.0f} tok/s; ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
