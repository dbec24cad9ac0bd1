"""fp16 training steps without host syncs: the gradient scaler's skip decided on the device.

Under ``precision=fp16`` the scaler's ``found_inf`` goes to the optimiser (torch's fused SGD,
rnnlm's AveragedSGD) instead of being read on the host, and ``shrink_weights`` skips the
steps the scaler skipped. fp16 needs CUDA for a run; these tests drive the Trainer's fp16 step
on the CPU (autocast fp16 and a CPU GradScaler) with Gal's step loop, whose GEMMs have CPU
fp16 kernels, and count host reads with a spy on ``Tensor.item``. scripts/gpu_check.py checks
the same on CUDA under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from rnnlm.config import (DropoutConfig, ModelConfig, OptimConfig, Precision, RecurrentDropoutConfig, RunConfig,
                          TrainerConfig)
from rnnlm.model import AWDLSTM
from rnnlm.training import Trainer
from rnnlm.training.optim import AveragedSGD, make_asgd

pytestmark = pytest.mark.usefixtures("one_thread")


def fp16_trainer(optimizer: str, shrink: float = 1e-3) -> Trainer:
    cfg = RunConfig(device="cpu", trainer=TrainerConfig(progress=False, bptt=5),
                    model=ModelConfig(emsize=8, nhid=16, nlayers=2), optim=OptimConfig(weight_shrink=shrink),
                    dropout=DropoutConfig(recurrent=RecurrentDropoutConfig("variational", 0.3, "tied")))
    cfg.precision = Precision.fp16  # RunConfig refuses fp16 without CUDA; the step itself runs on CPU
    torch.manual_seed(0)
    model = AWDLSTM(50, cfg.model, cfg.dropout)
    data = torch.randint(0, 50, (40, 4), generator=torch.Generator().manual_seed(1))
    trainer = Trainer(model, cfg, data, data[:10], save_best=lambda w: None, load_best=lambda: {})
    trainer.hidden = model.init_hidden(4)
    if optimizer == "asgd":
        trainer.train_step(data[:5], data[1:6], 1.0)  # ASGD's state exists before the checks
        trainer.optimizer = make_asgd(model, 1.0, 0.0)
        trainer.train_step(data[:5], data[1:6], 1.0)
    return trainer


def segment(trainer: Trainer, i: int = 1):
    data = trainer.train_data
    return data[5 * i:5 * i + 5], data[5 * i + 1:5 * i + 6]


@pytest.mark.parametrize("optimizer", ["sgd", "asgd"])
def test_an_fp16_step_reads_nothing_back_from_the_device(optimizer, monkeypatch):
    trainer = fp16_trainer(optimizer)
    assert trainer.scaler is not None and getattr(trainer.optimizer, "_step_supports_amp_scaling", False)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    reads = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: (reads.append(self.shape), item(self))[1])
    trainer.train_step(*segment(trainer), 1.0)
    assert reads == []
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))


@pytest.mark.parametrize("optimizer", ["sgd", "asgd"])
def test_a_step_with_inf_gradients_changes_no_weight_and_no_optimiser_state(optimizer):
    trainer = fp16_trainer(optimizer)
    model = trainer.model
    weights = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(trainer.optimizer.state_dict())
    scale = trainer.scaler.get_scale()
    hook = model.decoder.bias.register_hook(lambda g: g * float("inf"))
    trainer.train_step(*segment(trainer), 1.0)
    hook.remove()
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key  # no SGD step, no weight shrink
    for key, value in trainer.optimizer.state_dict()["state"].items():
        for name, tensor in value.items():
            if torch.is_tensor(tensor):
                assert torch.equal(tensor, state["state"][key][name]), (key, name)  # ASGD: step, eta, mu, ax
    assert trainer.scaler.get_scale() == scale / 2  # the scaler backed off
    trainer.train_step(*segment(trainer, 2), 1.0)  # and the next finite step steps
    assert any(not torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_averaged_sgd_unscales_gradients_by_grad_scale():
    """A scaler that has not unscaled passes grad_scale: the step equals the unscaled one."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    grads = [torch.randn_like(p) for p in params]
    plain, scaled = AveragedSGD(params, lr=0.5, weight_decay=0.1), AveragedSGD(twins, lr=0.5, weight_decay=0.1)
    for _ in range(3):
        for p, t, g in zip(params, twins, grads):
            p.grad, t.grad = g.clone(), g * 1024
        plain.step()
        scaled.grad_scale, scaled.found_inf = torch.tensor(1024.0), torch.tensor(0.0)
        scaled.step()
        del scaled.grad_scale, scaled.found_inf
    for p, t in zip(params, twins):
        torch.testing.assert_close(t, p, atol=0, rtol=0)
        torch.testing.assert_close(scaled.state[t]["ax"], plain.state[p]["ax"], atol=0, rtol=0)
