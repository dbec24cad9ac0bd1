"""Averaged weights against by-hand averages; validation from an epoch; patience."""

from __future__ import annotations

import math

import pytest
import torch

from rnnlm.config import (
    Average,
    ConfigError,
    DropoutConfig,
    ModelConfig,
    OptimConfig,
    Optimizer,
    RecurrentDropoutConfig,
    RunConfig,
    TrainerConfig,
)
from rnnlm.data import batchify
from rnnlm.model import AWDLSTM
from rnnlm.training import Trainer, evaluate
from rnnlm.training.streams import seed_init, stream_seeds

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 17


def stream(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n,), generator=g)


def config(**trainer) -> RunConfig:
    return RunConfig(
        model=ModelConfig(emsize=8, nhid=10, nlayers=1),
        dropout=DropoutConfig(embedding=0.1, input=0.2, hidden=0.2, output=0.2,
                              recurrent=RecurrentDropoutConfig("weight_drop", 0.3)),
        optim=OptimConfig(name=Optimizer.sgd, lr=2.0),
        trainer=TrainerConfig(bptt=6, progress=False, **{"max_epochs": 3, **trainer}),
        seed=3,
    )


class Iterates(Trainer):
    """Keeps a copy of the weights after every step, with the step's epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.iterates: list[tuple[int, list[torch.Tensor]]] = []
        self.best: dict | None = None

    def train_step(self, inputs, targets, lr):
        loss = super().train_step(inputs, targets, lr)
        self.iterates.append((self.state.epoch, [p.detach().clone() for p in self.model.parameters()]))
        return loss


def fit(cfg: RunConfig) -> Iterates:
    seed_init(stream_seeds(cfg))
    model = AWDLSTM(VOCAB, cfg.model, cfg.dropout)
    box: dict = {}
    trainer = Iterates(model, cfg, batchify(stream(300), 4), batchify(stream(80, 1), 2),
                       save_best=lambda w: box.update(best={k: v.clone() for k, v in w.items()}),
                       load_best=lambda: box["best"])
    trainer.fit()
    trainer.best = box.get("best")
    return trainer


def by_hand_uniform(iterates, first_epoch):
    chosen = [ws for epoch, ws in iterates if epoch >= first_epoch]
    return [torch.stack(ts).mean(0) for ts in zip(*chosen)]


def by_hand_ema(iterates, first_epoch, decay):
    average = None
    for epoch, ws in iterates:
        if epoch < first_epoch:
            continue
        average = [w.clone() for w in ws] if average is None else [decay * a + (1 - decay) * w
                                                                  for a, w in zip(average, ws)]
    return average


@pytest.mark.parametrize("kind", ["uniform", "ema"])
def test_the_average_is_the_by_hand_average_and_training_is_unchanged(kind):
    plain = fit(config())
    averaged = fit(config(average=Average(kind), average_from=2, ema_decay=0.9))
    # The optimiser trains the same weights, step for step, whatever is averaged
    assert len(plain.iterates) == len(averaged.iterates)
    for (_, a), (_, b) in zip(plain.iterates, averaged.iterates):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    want = (by_hand_uniform(averaged.iterates, 2) if kind == "uniform"
            else by_hand_ema(averaged.iterates, 2, 0.9))
    got = averaged.average.average
    assert averaged.average.steps == sum(1 for epoch, _ in averaged.iterates if epoch >= 2)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    # The model holds the trained weights outside evaluated_weights(), the average inside it
    last = averaged.iterates[-1][1]
    assert all(torch.equal(p, w) for p, w in zip(averaged.model.parameters(), last))
    with averaged.evaluated_weights():
        for p, w in zip(averaged.model.parameters(), want):
            torch.testing.assert_close(p, w, rtol=1e-5, atol=1e-6)
    # Epoch 1 validated the current weights; epochs 2-3 the average, which the metrics say
    assert [row["weights"] for row in averaged.state.metrics] == ["current", kind, kind]


def test_validation_and_the_best_checkpoint_are_of_the_averaged_weights():
    trainer = fit(config(average=Average.uniform, average_from=1, validate_from=3))  # best: epoch 3
    model = trainer.model
    with trainer.evaluated_weights():
        expected = evaluate(model, trainer.valid_data, 6)
        assert all(torch.equal(trainer.best[k], v) for k, v in model.state_dict().items())
    assert math.isclose(trainer.state.metrics[-1]["val_loss"], expected, rel_tol=1e-9)
    assert trainer.state.best_epoch == 3


def test_resume_restores_the_average(tmp_path):
    from rnnlm.training import load_checkpoint, save_checkpoint

    trainer = fit(config(average=Average.ema, average_from=1, ema_decay=0.8))
    save_checkpoint(tmp_path / "last.pt", trainer.state_dict())
    cfg = config(average=Average.ema, average_from=1, ema_decay=0.8)
    again = Trainer(AWDLSTM(VOCAB, cfg.model, cfg.dropout), cfg, trainer.train_data, trainer.valid_data,
                    save_best=lambda w: None, load_best=lambda: {})
    again.load_state_dict(load_checkpoint(tmp_path / "last.pt"))
    assert again.average.steps == trainer.average.steps
    assert all(torch.equal(a, b) for a, b in zip(again.average.average, trainer.average.average))


def test_no_validation_before_validate_from():
    trainer = fit(config(validate_from=3))
    rows = trainer.state.metrics
    assert [row["validated"] for row in rows] == [False, False, True]
    assert rows[0]["val_loss"] is None and rows[0]["val_ppl"] is None and rows[0]["weights"] is None
    assert trainer.state.best_epoch == 3 and trainer.state.val_history == [rows[2]["val_loss"]]


def test_patience_stops_after_that_many_validations_without_a_better_one(monkeypatch):
    from rnnlm.training import trainer as trainer_module

    losses = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    monkeypatch.setattr(trainer_module, "mean_loss", lambda segments: next(losses))
    trainer = fit(config(max_epochs=6, patience=2))
    assert trainer.state.stop_reason == "patience"
    assert len(trainer.state.metrics) == 4 and trainer.state.best_epoch == 2


def test_a_stop_decided_at_the_end_of_an_epoch_stands_when_the_time_budget_ran_out_too():
    """A search's pruner stops a run in ``on_epoch_end``; the epoch that ran past
    ``max_minutes`` does not turn that into ``max_minutes``."""
    cfg = config(max_epochs=5, max_minutes=1e-9)
    seed_init(stream_seeds(cfg))

    def prune(trainer: Trainer) -> None:
        trainer.state.finished, trainer.state.stop_reason = True, "pruned"

    trainer = Trainer(AWDLSTM(VOCAB, cfg.model, cfg.dropout), cfg, batchify(stream(300), 4),
                      batchify(stream(80, 1), 2), save_best=lambda w: None, load_best=lambda: {},
                      on_epoch_end=prune)
    assert trainer.fit().stop_reason == "pruned" and len(trainer.state.metrics) == 1
    unpruned = fit(cfg)
    assert unpruned.state.stop_reason == "max_minutes" and len(unpruned.state.metrics) == 1


@pytest.mark.parametrize("overrides, message", [
    (dict(average=Average.uniform, optim=Optimizer.nt_asgd), "needs optim=sgd"),
    (dict(ema_decay=1.0), "trainer.ema_decay=1.0"),
    (dict(validate_from=0), "trainer.validate_from=0"),
    (dict(patience=0), "trainer.patience=0"),
])
def test_bad_averaging_settings_are_config_errors(overrides, message):
    optim = overrides.pop("optim", Optimizer.sgd)
    with pytest.raises(ConfigError, match=message):
        RunConfig(optim=OptimConfig(name=optim), trainer=TrainerConfig(**overrides))
