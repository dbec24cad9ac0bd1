"""Devices and numerics: precision, RNG state in checkpoints, host syncs, sync-free ASGD, the
placement of sweep jobs on GPUs.

Tests taking the ``device`` fixture run on the CPU and, where CUDA exists, on the GPU too
(marked ``gpu``; ``pytest -m gpu``). Precisions checked on the CPU: fp32 and bf16; on CUDA
also tf32 and fp16.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from eval_helpers import make_run, tiny_config
from helpers import read_rows as csv_rows
from helpers import sigterm_on_call
from tiny_corpus import write_split_files

from rnnlm.config import ConfigError, DropoutConfig, Precision, RecurrentDropoutConfig, RunConfig
from rnnlm.dropout import StepLSTM
from rnnlm.dropout.scheme import every_variant
from rnnlm.model import AWDLSTM
from rnnlm.precision import autocast, numerics
from rnnlm.run import train
from rnnlm.runtime import sweep_device
from rnnlm.training import Trainer, evaluate, evaluate_mc
from rnnlm.training.checkpoint import load_checkpoint
from rnnlm.training.optim import AveragedSGD, make_asgd

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 30


def precisions(device: torch.device) -> list[Precision]:
    if device.type == "cpu":
        return [Precision.fp32, Precision.bf16]
    return list(Precision)


def tiny_model(recurrent: RecurrentDropoutConfig, device: torch.device) -> AWDLSTM:
    from rnnlm.config import ModelConfig

    torch.manual_seed(0)
    dropout = DropoutConfig(embedding=0.1, input=0.2, hidden=0.2, output=0.2, recurrent=recurrent)
    return AWDLSTM(VOCAB, ModelConfig(emsize=8, nhid=12, nlayers=2), dropout).to(device)


def loss_and_grads(model: AWDLSTM, precision: Precision, device: torch.device) -> tuple[float, list]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (7, 3), generator=g).to(device)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)  # the same masks under every precision
    with autocast(precision, device):
        out = model(tokens[:-1], model.init_hidden(3))
    loss = F.cross_entropy(out.logits.flatten(0, 1), tokens[1:].flatten())
    loss.backward()
    return loss.item(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize("recurrent", every_variant(), ids=lambda c: f"{c.kind}-{c.mask}")
def test_every_scheme_is_finite_and_close_to_fp32_under_each_precision(recurrent, device):
    """Forward and backward in train mode (masks on), fp32 weights and gradients, loss in fp32."""
    model = tiny_model(recurrent, device).train()
    reference, ref_grads = loss_and_grads(model, Precision.fp32, device)
    for precision in precisions(device):
        with numerics(precision, False, device):
            loss, grads = loss_and_grads(model, precision, device)
        assert math.isfinite(loss) and math.isclose(loss, reference, rel_tol=1e-2), (precision, loss, reference)
        for p, g, ref in zip(model.parameters(), grads, ref_grads):
            assert g is not None and g.dtype == p.dtype == torch.float32 and torch.isfinite(g).all()
            assert (g - ref).norm() <= 0.05 * ref.norm(), precision  # CPU bf16: at most 0.021 seen


@pytest.mark.parametrize("kind,mask", [("variational", "tied"), ("variational", "untied"),
                                       ("semeniuta", "step"), ("zoneout", "step")])
def test_fused_loop_equals_plain_loop_on_the_device(kind, mask, device):
    torch.manual_seed(0)
    fused = StepLSTM(6, 8, kind, 0.3, mask, cell_rate=0.2 if kind == "zoneout" else 0.0).to(device).train()
    plain = StepLSTM(6, 8, kind, 0.3, mask, cell_rate=0.2 if kind == "zoneout" else 0.0, fused=False).to(device)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(5, 3, 6, device=device)
    masks = fused.sample_masks(5, 3)
    for precision, tol in [(p, 1e-5 if p in (Precision.fp32, Precision.tf32) else 3e-2) for p in precisions(device)]:
        outs = []
        for layer in (fused, plain):
            layer.zero_grad(set_to_none=True)
            with numerics(precision, False, device), autocast(precision, device):
                y, (h, c) = layer(x, masks=masks)
            (y.float().square().sum() + c.float().sum()).backward()
            outs.append((y.float(), layer.weight_hh_l0.grad.clone()))
        (y1, g1), (y2, g2) = outs
        assert torch.allclose(y1, y2, atol=tol) and torch.allclose(g1, g2, atol=tol * 10), precision


def test_mc_evaluation_under_each_precision(device):
    model = tiny_model(RecurrentDropoutConfig("variational", 0.3, "tied"), device)
    data = torch.randint(0, VOCAB, (25, 2), generator=torch.Generator().manual_seed(3)).to(device)
    fp32 = evaluate_mc(model, data, 6, samples=4, columns=2, seed=1)
    for precision in precisions(device):
        with numerics(precision, False, device), autocast(precision, device):
            loss = evaluate_mc(model, data, 6, samples=4, columns=2, seed=1)
            again = evaluate_mc(model, data, 6, samples=4, columns=2, seed=1)
            standard = evaluate(model, data, 6)
        assert loss == again and math.isfinite(standard)
        assert math.isclose(loss, fp32, rel_tol=2e-2)


def test_fp16_on_cpu_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="^precision=fp16 needs a CUDA device"):
        RunConfig(device="cpu", precision=Precision.fp16)


def test_a_bf16_run_and_every_eval_method(tmp_path, capsys):
    """A bf16 run completes, records its precision, and every `rnnlm eval` method scores it."""
    from rnnlm.cli.eval import eval_command
    from rnnlm.evaluation.rows import read_rows

    run_dir = make_run(tmp_path, precision=Precision.bf16, **{"trainer.max_epochs": 1})
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["scaler"] is None
    assert csv_rows(run_dir / "result.csv")[0]["precision"] == "bf16"
    code = eval_command([str(run_dir), "method=standard,mc,pointer,dynamic", "split=valid", "mc.samples=2",
                         "dynamic.stats_batches=2"])
    assert code == 0, capsys.readouterr().err
    rows = read_rows(run_dir)
    assert [r["precision"] for r in rows] == ["bf16"] * 4
    assert all(math.isfinite(float(r["ppl"])) for r in rows)
    assert eval_command([str(run_dir), "precision=fp16"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "rnnlm: error: precision=fp16 needs a CUDA device; on CPU use precision=bf16 or fp32")


def test_resume_equals_uninterrupted_deterministic(tmp_path, device, monkeypatch):
    """SIGTERM after epoch 1 stops the run one segment into epoch 2; resumed, it gives the
    epochs and the test figure of the uninterrupted run."""
    data = write_split_files(tmp_path / "data")
    changes = {"device": str(device), "deterministic": True, "trainer.max_epochs": 2}
    whole = tiny_config(data, **changes)
    uninterrupted = train(whole, tmp_path / "whole")
    sigterm_on_call(monkeypatch, "rnnlm.run.progress_fields", 2)  # 1: the run's start, 2: epoch 1's end
    assert train(whole, tmp_path / "split")["stop_reason"] == "interrupted_train"
    resumed = train(whole, tmp_path / "split", resume=True)
    timings = ("epoch_seconds", "tokens_per_second")
    rows = [[{k: v for k, v in r.items() if k not in timings} for r in csv_rows(tmp_path / name / "metrics.csv")]
            for name in ("whole", "split")]
    assert rows[0] == rows[1] and len(rows[0]) == 2
    assert resumed["status"] == "completed" and resumed["test_ppl"] == uninterrupted["test_ppl"]
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is back


# ------------------------------------------------------------------ RNG state in checkpoints
def tiny_trainer(device: torch.device | str = "cpu") -> Trainer:
    cfg = RunConfig(device="cpu", seed=3)
    cfg.model.emsize, cfg.model.nhid, cfg.model.nlayers = 8, 8, 1
    model = AWDLSTM(VOCAB, cfg.model, cfg.dropout)
    data = torch.randint(0, VOCAB, (40, 2), generator=torch.Generator().manual_seed(0))
    trainer = Trainer(model, cfg, data, data[:12], save_best=lambda w: None, load_best=lambda: {})
    trainer.cfg.trainer.progress = False
    return trainer


def test_a_checkpoint_from_several_gpus_resumes_on_cpu():
    """A CUDA run's checkpoint written by older code, with the RNG state of every GPU visible
    then (here three), resumes on the CPU: only the CPU state applies there."""
    trainer = tiny_trainer()
    payload = trainer.state_dict()
    assert payload["cuda_rng"] is None  # a CPU run saves no CUDA state
    cpu_state = torch.get_rng_state()
    payload["cuda_rng"] = [torch.randint(0, 255, (16,), dtype=torch.uint8) for _ in range(3)]
    torch.manual_seed(99)
    resumed = tiny_trainer()
    resumed.load_state_dict(payload)
    assert torch.equal(torch.get_rng_state(), cpu_state)


def test_the_run_s_own_gpu_state_is_chosen():
    """On CUDA: the run's GPU's state from a list (index as saved), else the first; one state
    as newer checkpoints hold it."""
    trainer = tiny_trainer()
    states = [torch.full((4,), k, dtype=torch.uint8) for k in range(3)]
    trainer.device = torch.device("cuda", 1)
    assert torch.equal(trainer._own_cuda_rng(states), states[1])
    assert torch.equal(trainer._own_cuda_rng(states[2]), states[2])
    trainer.device = torch.device("cuda", 5)  # requeued on a node with fewer GPUs
    assert torch.equal(trainer._own_cuda_rng(states), states[0])
    trainer.device = torch.device("cpu")
    assert trainer._own_cuda_rng(states) is None


# ------------------------------------------------------------------------- host syncs
@pytest.fixture
def host_reads(monkeypatch) -> list[str]:
    """The names of Tensor methods that copy to the host, called while the test runs."""
    calls: list[str] = []
    for name in ("item", "tolist", "cpu"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_a_training_step_reads_nothing_back(host_reads):
    trainer = tiny_trainer()
    trainer.hidden = trainer.model.init_hidden(2)
    inputs, targets = trainer.train_data[:6], trainer.train_data[1:7]
    for optimizer in ("sgd", "asgd"):
        if optimizer == "asgd":
            trainer.optimizer = make_asgd(trainer.model, 1.0, 1e-6)
        host_reads.clear()
        for _ in range(3):
            trainer.train_step(inputs, targets, 1.0)
        assert host_reads == [], optimizer


def test_an_epoch_reads_the_loss_at_each_tenth_and_at_its_end(host_reads):
    trainer = tiny_trainer()
    trainer.cfg.trainer.variable_bptt, trainer.cfg.trainer.bptt = False, 2
    trainer.train_epoch(started=0.0)
    # 78 targets, a mark every ceil(7.8) = 8 of the 76 trained: 9 marks, and the epoch's end
    assert trainer.state.batches == 19 and host_reads.count("tolist") == 9 + 1


def test_divergence_names_the_epoch_within_one_interval():
    from rnnlm.training import Diverged

    trainer = tiny_trainer()
    trainer.cfg.trainer.variable_bptt, trainer.cfg.trainer.bptt = False, 2
    trainer.state.epoch = 4
    with torch.no_grad():
        trainer.model.decoder.bias.fill_(float("nan"))
    with pytest.raises(Diverged, match="at epoch 4"):
        trainer.train_epoch(started=0.0)
    assert trainer.state.batches <= 2  # the first tenth of the epoch: 2 of 19 segments


def test_sync_free_asgd_is_torch_asgd():
    """AveragedSGD against torch.optim.ASGD (its default single-tensor path), lr changing every
    step as variable BPTT changes it, with weight decay: the same weights and averages."""
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a = torch.optim.ASGD(theirs, lr=3.0, t0=0, lambd=0.0, weight_decay=1e-3, foreach=False)
    b = AveragedSGD(ours, lr=3.0, t0=0, lambd=0.0, weight_decay=1e-3)
    for k in range(12):
        for p, q in zip(theirs, ours):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        for opt in (a, b):
            opt.param_groups[0]["lr"] = 3.0 * (0.5 + k / 10)
        a.step()
        b.step()
    for p, q in zip(theirs, ours):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b.state[q]["ax"], a.state[p]["ax"], rtol=1e-6, atol=1e-6)
        assert b.state[q]["eta"].item() == a.state[p]["eta"].item()
    b.load_state_dict(a.state_dict())  # torch's state (step on the CPU) loads, and steps on
    b.step()


# ---------------------------------------------------------------------------- sweeps
@pytest.mark.parametrize("name,job,gpus,want", [
    ("cuda", 0, 4, "cuda:0"), ("cuda", 5, 4, "cuda:1"), ("auto", 3, 2, "cuda:1"), ("cuda:2", 5, 4, "cuda:2"),
    ("cpu", 3, 4, "cpu"), ("auto", 3, 0, "auto"), ("cuda", 7, 1, "cuda:0"),
])
def test_sweep_jobs_spread_over_the_visible_gpus(name, job, gpus, want):
    assert sweep_device(name, job, gpus) == want
