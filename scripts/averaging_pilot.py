"""Which weights should a study validate: the current iterate, a uniform average from an
epoch, or an exponential moving average? One training run per (seed, variant) answers it
for all of them at once, since averaging never changes the trajectory
(rnnlm/training/averaging.py): each epoch validates the current weights and every
average side by side.

    python scripts/averaging_pilot.py OUT_DIR [--seeds 1 2] [--epochs 14]
        [--variant none] [--variant weight_drop:element:0.3] [-- threads=1 OVERRIDE ...]
    python scripts/averaging_pilot.py OUT_DIR --analyse DIR [DIR ...]   # pool earlier runs' curves.csv

Runs ``experiment=recurrent_dropout_ptb`` (plus OVERRIDEs; ``threads=1`` unless one sets
``threads``) with ``optim=sgd`` and ``trainer.average=none trainer.validate_from=1``, so the
Trainer validates the current weights every epoch and the averages of ``AVERAGES`` are kept
and validated beside them here; each run in :func:`rnnlm.runtime.execution`, as ``rnnlm
train`` runs it. Writes ``OUT_DIR/curves.csv`` (seed, variant, epoch, weights, val_ppl) and
``OUT_DIR/jitter.csv``. Printed per weights:

* step: the mean absolute change of log validation perplexity between consecutive epochs
  from ``--from-epoch`` on, in percent (trend and noise together);
* jitter: the noise around a locally linear trend over the same epochs, in percent: the
  root mean square of the second differences of log validation perplexity over sqrt(6)
  (for independent noise of sd s on a straight line, a second difference has variance 6 s^2;
  what a snapshot's noise adds to a run's figure);
* between-seed sd: the sd over seeds of log best validation, in percent, per variant, pooled;
* level: the mean best validation perplexity.

The machine (scripts/machine.py) is printed first; the figures depend on it only through
rounding.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_jobs import compose  # noqa: E402
from machine import machine, machine_line  # noqa: E402

from rnnlm.config import Average, RunConfig  # noqa: E402
from rnnlm.data import batchify  # noqa: E402
from rnnlm.results import read_csv, write_csv  # noqa: E402
from rnnlm.run import build  # noqa: E402
from rnnlm.runtime import cpu_threads, execution, resolve_device  # noqa: E402
from rnnlm.training import Trainer, evaluate, perplexity  # noqa: E402
from rnnlm.training.averaging import WeightAverage  # noqa: E402
from rnnlm.training.streams import seed_init, stream_seeds  # noqa: E402

# name -> (kind, first averaged epoch, ema decay)
AVERAGES = {
    "uniform_from_2": (Average.uniform, 2, 0.0),
    "uniform_from_3": (Average.uniform, 3, 0.0),
    "uniform_from_5": (Average.uniform, 5, 0.0),
    "ema_0.995": (Average.ema, 1, 0.995),
    "ema_0.998": (Average.ema, 1, 0.998),
}


CURVE_COLUMNS = ["seed", "variant", "epoch", "weights", "val_ppl"]


class PilotTrainer(Trainer):
    """The Trainer (validating the current weights), keeping every average of ``AVERAGES``
    and validating each of them after every epoch."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.extra = {name: (WeightAverage(self.model, kind, decay), start)
                      for name, (kind, start, decay) in AVERAGES.items()}
        self.curves: list[dict] = []

    def train_epoch(self, started: float) -> bool:
        for average, start in self.extra.values():
            if not average.started and self.state.epoch >= start:
                average.start()
        return super().train_epoch(started)

    def train_step(self, inputs, targets, lr):
        loss = super().train_step(inputs, targets, lr)
        for average, _ in self.extra.values():
            average.update()
        return loss

    def end_epoch(self) -> None:
        epoch = self.state.epoch
        for name, (average, _) in self.extra.items():
            if average.started:
                with average.swapped_in():
                    loss = evaluate(self.model, self.valid_data, self.cfg.trainer.bptt)
                self.curves.append({"epoch": epoch, "weights": name, "val_ppl": perplexity(loss)})
        super().end_epoch()
        self.curves.append({"epoch": epoch, "weights": "current", "val_ppl": self.state.metrics[-1]["val_ppl"]})


def variant_overrides(spec: str) -> list[str]:
    """``none`` or ``kind:mask:rate`` -> the dropout.recurrent overrides."""
    if spec == "none":
        return ["dropout.recurrent.kind=none", "dropout.recurrent.rate=0.0"]
    kind, mask, rate = spec.split(":")
    return [f"dropout.recurrent.kind={kind}", f"dropout.recurrent.mask={mask}", f"dropout.recurrent.rate={rate}"]


def train_one(cfg: RunConfig) -> list[dict]:
    """One run of ``cfg`` as :func:`rnnlm.run.train` sets it up (streams seeded, corpus and
    model built, in its execution context), without its files; the validation curves."""
    device = resolve_device(cfg.device)
    with execution(device, cfg.precision, cfg.deterministic, cfg.threads):
        seed_init(stream_seeds(cfg))
        corpus, model = build(cfg, device)
        trainer = PilotTrainer(model, cfg, batchify(corpus.train, cfg.dataset.batch_size, device),
                               batchify(corpus.valid, cfg.dataset.eval_batch_size, device),
                               save_best=lambda weights: None, load_best=lambda: {})
        trainer.fit()
    return trainer.curves


def jitter_table(rows: list[dict], from_epoch: int) -> list[dict]:
    out = []
    for weights in ["current", *AVERAGES]:
        steps, seconds, best_by_variant = [], [], {}
        for (seed, variant) in sorted({(r["seed"], r["variant"]) for r in rows}):
            curve = sorted((r["epoch"], r["val_ppl"]) for r in rows
                           if r["weights"] == weights and r["seed"] == seed and r["variant"] == variant)
            if not curve:
                continue
            values = [math.log(v) for e, v in curve if e >= from_epoch]
            steps += [abs(b - a) for a, b in zip(values, values[1:])]
            seconds += [(c - 2 * b + a) ** 2 for a, b, c in zip(values, values[1:], values[2:])]
            best_by_variant.setdefault(variant, []).append(min(math.log(v) for _, v in curve))
        spread = [statistics.variance(v) for v in best_by_variant.values() if len(v) > 1]
        out.append({
            "weights": weights,
            "step_pct": 100 * statistics.fmean(steps) if steps else float("nan"),
            "jitter_pct": 100 * math.sqrt(statistics.fmean(seconds) / 6) if seconds else float("nan"),
            "between_seed_sd_pct": 100 * math.sqrt(statistics.fmean(spread)) if spread else float("nan"),
            "mean_best_val_ppl": statistics.fmean([math.exp(v) for vs in best_by_variant.values() for v in vs]
                                                  or [float("nan")]),
        })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--from-epoch", type=int, default=5, help="first epoch of the jitter measure")
    parser.add_argument("--variant", action="append", help="none or kind:mask:rate (repeatable)")
    parser.add_argument("--analyse", type=Path, nargs="+", metavar="DIR",
                        help="train nothing: pool the curves.csv of these directories")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()  # OUT_DIR, then options, then -- OVERRIDEs, as in the usage
    if args.analyse:
        rows = [{**r, "epoch": int(r["epoch"]), "val_ppl": float(r["val_ppl"])}
                for d in args.analyse for r in read_csv(d / "curves.csv")]
        return report(args.out, rows, args.from_epoch)
    # The Trainer validates the current weights every epoch (the preset's own average and its
    # late validation are off); the averages are PilotTrainer's. threads=1 unless an OVERRIDE says.
    base = ["experiment=recurrent_dropout_ptb", "optim=sgd", "trainer.average=none", "trainer.validate_from=1",
            f"trainer.max_epochs={args.epochs}", "trainer.progress=false", "device=cpu", "threads=1"]
    runs = [(seed, variant, compose([*base, f"seed={seed}", *variant_overrides(variant), *args.overrides]))
            for seed in args.seeds for variant in args.variant or ["none", "weight_drop:element:0.3"]]
    with cpu_threads(runs[0][2].threads):  # the machine line names the runs' thread count
        print(machine_line(machine("cpu")), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for seed, variant, cfg in runs:
        for row in train_one(cfg):
            rows.append({"seed": seed, "variant": variant, **row})
        write_csv(args.out / "curves.csv", rows, CURVE_COLUMNS)
        print(f"seed {seed} {variant}: done", flush=True)
    report(args.out, rows, args.from_epoch)


def report(out: Path, rows: list[dict], from_epoch: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    table = jitter_table(rows, from_epoch)
    write_csv(out / "jitter.csv", table, list(table[0]))
    for row in table:
        print(f"{row['weights']:>16}  step {row['step_pct']:5.2f} %  jitter {row['jitter_pct']:5.2f} %  between-seed sd "
              f"{row['between_seed_sd_pct']:5.2f} %  mean best val {row['mean_best_val_ppl']:7.2f}")


if __name__ == "__main__":
    main()
