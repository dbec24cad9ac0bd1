"""The AWD-LSTM training loop (Merity et al. 2017; awd-lstm-lm ``main.py`` and
``finetune.py``), resumable at any batch boundary.

One epoch walks the training stream ``(L, B)`` in variable-length BPTT segments,
carrying the hidden state across them. After each epoch from ``trainer.validate_from`` on,
the evaluated weights are validated: the current ones, NT-ASGD's average once it switched,
or the uniform or exponential average of ``trainer.average`` (:mod:`.averaging`); the best
by validation loss are kept in ``checkpoints/best.pt``. NT-ASGD decides the switch from SGD
to ASGD; ``trainer.patience`` stops training after that many validations without a new
best. The optional finetune stage restarts ASGD from the best weights until the
non-monotone condition fires. Segment lengths and dropout masks come from the run's random
streams (:mod:`.streams`).

Everything the loop needs to continue (model, optimiser incl. ASGD averages, the weight
average, NT-ASGD history, the random streams, epoch, position in the epoch, hidden state,
the metrics rows so far) is in :meth:`Trainer.state_dict`, so an interrupted run resumes
to the same numbers as an uninterrupted one.

The step loop never waits for the device: the loss stays a device tensor, summed on the
device, and is read (one host sync) at each tenth of the epoch and at its end, where a
non-finite loss stops the run (:class:`Diverged`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..config import Average, LossReduction, Optimizer, RunConfig
from ..data import get_batch
from ..dropout import StepLSTM
from ..model import AWDLSTM, repackage_hidden
from ..precision import autocast, grad_scaler, to_fp32
from .averaging import WeightAverage
from .evaluate import main_lua_loss, mean_loss, perplexity, segment_losses
from .progress import EpochProgress
from .optim import averaged_weights, is_asgd, make_asgd, make_sgd, set_lr, shrink_weights
from .regularization import activation_regularization, temporal_activation_regularization
from .schedule import decays_after, nonmonotone_trigger, sample_seq_len, scaled_lr
from .streams import RandomStreams, stream_seeds

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    """The loss became NaN, infinite, or so large that the perplexity overflows."""


@dataclass
class TrainState:
    """The loop's position and history; plain values only (checkpoint-safe)."""

    stage: str = "train"  # train | finetune
    epoch: int = 1  # global epoch being trained, 1-based
    stage_epoch: int = 1  # epoch within the stage
    lr: float = 0.0  # base learning rate of the current epoch
    position: int = 0  # row of the training stream where the next segment starts
    batches: int = 0  # segments done in this epoch
    loss_sum: float = 0.0  # sum over this epoch's segments of loss * tokens
    tokens: int = 0  # training tokens seen this epoch
    train_seconds: float = 0.0  # training time of this epoch so far
    total_seconds: float = 0.0  # training + validation time of all epochs (budget)
    val_history: list[float] = field(default_factory=list)  # NT-ASGD's ``best_val_loss``
    best_val_loss: float = math.inf
    best_epoch: int = 0
    stale_validations: int = 0  # validations since the best one (trainer.patience)
    asgd_epoch: int = 0  # first ASGD epoch; 0 = never switched
    finished: bool = False
    stop_reason: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains ``model`` on ``train_data (L, B)``, validating on ``valid_data (L', B')``.

    ``save_best(state_dict)`` is called with the (averaged) weights whenever the
    validation loss improves; ``on_epoch_end(trainer)`` after every epoch (write
    metrics, checkpoint); ``should_stop()`` is polled after every segment (signals);
    ``on_progress(trainer)`` at every tenth of an epoch (experiment trackers).
    The device is that of ``train_data``; ``cfg.precision`` sets the forward's autocast.
    """

    def __init__(
        self,
        model: AWDLSTM,
        cfg: RunConfig,
        train_data: torch.Tensor,
        valid_data: torch.Tensor,
        save_best: Callable[[dict[str, torch.Tensor]], None],
        load_best: Callable[[], dict[str, torch.Tensor]],
        on_epoch_end: Callable[["Trainer"], None] = lambda trainer: None,
        should_stop: Callable[[], bool] = lambda: False,
        on_progress: Callable[["Trainer"], None] = lambda trainer: None,
    ) -> None:
        self.model = model
        if cfg.trainer.compile != "off":  # each step of the step loops under torch.compile
            for layer in model.modules():
                if isinstance(layer, StepLSTM):
                    layer.compiled = True
        self.cfg = cfg
        self.train_data = train_data
        self.valid_data = valid_data
        self.save_best = save_best
        self.load_best = load_best
        self.on_epoch_end = on_epoch_end
        self.should_stop = should_stop
        self.on_progress = on_progress
        self.state = TrainState(lr=cfg.optim.lr)
        self.scaler = grad_scaler(cfg.precision, train_data.device)  # fp16 only
        # Under fp16 the fused SGD kernel, which skips a step with inf/NaN gradients on the device.
        self.optimizer = make_sgd(model, cfg.optim.lr, cfg.optim.weight_decay, fused=self.scaler is not None)
        self.device = train_data.device
        self.streams = RandomStreams(stream_seeds(cfg), self.device)
        self.streams.attach(model)
        self.average = (WeightAverage(model, cfg.trainer.average, cfg.trainer.ema_decay)
                        if cfg.trainer.average is not Average.none else None)
        self.hidden = None  # carried across segments within an epoch
        self.interrupted = False
        self.autocast = lambda: autocast(cfg.precision, self.device)
        # Device-side sums since the last check (_check_loss): raw loss x tokens, and the
        # optimised loss (with AR/TAR), whose finiteness stands for every step's.
        self._loss_sum = self._objective_sum = None

    # ----------------------------------------------------------------- stages
    def fit(self) -> TrainState:
        """Train until a budget, the finetune trigger, a signal or divergence ends it."""
        started = time.monotonic() - self.state.total_seconds
        tc = self.cfg.trainer
        while not self.state.finished:
            if self._stage_over():
                if self.state.stage == "train" and tc.finetune:
                    self._start_finetune()
                    continue
                self._finish(self.state.stop_reason or "max_epochs")
                break
            out_of_time = self.train_epoch(started)
            if self.interrupted:
                self.state.total_seconds = time.monotonic() - started
                return self.state
            self.end_epoch()
            self.state.total_seconds = time.monotonic() - started
            self.on_epoch_end(self)
            if out_of_time and not self.state.finished:  # a stop on_epoch_end decided stands
                self._finish("max_minutes")
        return self.state

    def _stage_over(self) -> bool:
        tc, st = self.cfg.trainer, self.state
        if st.stop_reason in ("finetune_converged", "patience"):
            return True
        limit = tc.max_epochs if st.stage == "train" else tc.finetune_epochs
        return st.stage_epoch > limit

    def _start_finetune(self) -> None:
        """awd-lstm-lm ``finetune.py``: ASGD from the best weights, history reset."""
        log.info("finetune: restarting ASGD from the best checkpoint (epoch %d)", self.state.best_epoch)
        self.model.load_state_dict(self.load_best())
        self.optimizer = make_asgd(self.model, self.cfg.optim.lr, self.cfg.optim.weight_decay)
        st = self.state
        st.stage, st.stage_epoch, st.val_history, st.lr = "finetune", 1, [], self.cfg.optim.lr
        st.stop_reason, st.stale_validations = "", 0

    def _finish(self, reason: str) -> None:
        self.state.finished = True
        self.state.stop_reason = reason

    # ------------------------------------------------------------------ epoch
    def _budget_exceeded(self, started: float) -> bool:
        minutes = self.cfg.trainer.max_minutes
        return minutes is not None and time.monotonic() - started > 60 * minutes

    def train_epoch(self, started: float) -> bool:
        """Train from ``state.position`` to the end of the epoch; True if out of time.

        As awd-lstm-lm ``main.py``, an epoch walks the whole stream (``while position <
        L - 2``): it ends on position, never on a count of segments, so every one of the
        ``(L - 1) * B`` targets is trained on whatever the segment lengths turn out to
        be. ``trainer.max_batches`` (smoke runs) is the only cap.
        """
        cfg, st, model = self.cfg, self.state, self.model
        tc = cfg.trainer
        data = self.train_data
        batch_size = data.size(1)
        # finetune.py caps the sampled length at bptt + 10 (guarding against rare long draws)
        cap = tc.bptt + 10 if st.stage == "finetune" else None
        if self.hidden is None:
            self.hidden = model.init_hidden(batch_size)
        if self.average is not None and not self.average.started and st.epoch >= tc.average_from:
            self.average.start()
        model.train()
        progress = EpochProgress(
            f"epoch {st.epoch}", total_tokens=(data.size(0) - 1) * batch_size,
            done_tokens=st.tokens, enabled=tc.progress, on_mark=lambda: self.on_progress(self),
        )
        out_of_time = False
        t0 = time.monotonic() - st.train_seconds
        while st.position < data.size(0) - 2:
            if tc.max_batches is not None and st.batches >= tc.max_batches:
                break
            seq_len = sample_seq_len(tc.bptt, self.streams.data, tc.variable_bptt, cap=cap)
            inputs, targets = get_batch(data, st.position, seq_len)  # (T, B) each
            loss = self.train_step(inputs, targets, scaled_lr(st.lr, seq_len, tc.bptt))
            st.position += seq_len
            st.batches += 1
            self._loss_sum = self._accumulate(self._loss_sum, loss * targets.numel())
            st.tokens += targets.numel()
            st.train_seconds = time.monotonic() - t0
            if progress.update(targets.numel()):
                self._check_loss()
                st.train_seconds = time.monotonic() - t0
                progress.mark(st.loss_sum / max(st.tokens, 1), st.tokens / max(st.train_seconds, 1e-9))
            if self.should_stop():
                self.interrupted = True
                break
            if self._budget_exceeded(started):
                out_of_time = True
                break
        progress.close()
        self._check_loss()
        return out_of_time

    def _zero(self) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float64, device=self.device)

    def _accumulate(self, total: torch.Tensor | None, value: torch.Tensor | float) -> torch.Tensor:
        """``total + value`` in float64 on the device (no sync); None counts as 0."""
        value = torch.as_tensor(value, dtype=torch.float64, device=self.device)
        return value if total is None else total + value

    def _check_loss(self) -> None:
        """Add the device-side loss sum to ``state.loss_sum`` (one host sync) and raise
        :class:`Diverged`, naming the epoch, if a step since the last check had a NaN or
        infinite loss, or the epoch's mean loss overflows the perplexity."""
        if self._loss_sum is None and self._objective_sum is None:
            return
        sums = [self._zero() if t is None else t for t in (self._loss_sum, self._objective_sum)]
        loss_sum, objective = torch.stack(sums).tolist()
        self._loss_sum = self._objective_sum = None
        st = self.state
        st.loss_sum += loss_sum
        mean = st.loss_sum / max(st.tokens, 1)
        if not math.isfinite(perplexity(mean)) or not math.isfinite(objective):
            raise Diverged(f"training loss became {mean:.4g} at epoch {st.epoch}")

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor, lr: float) -> torch.Tensor:
        """One truncated-BPTT step on a ``(T, B)`` segment; returns the mean cross-entropy per
        token, a 0-d tensor on the device (reading it would wait for the step).
        ``trainer.loss_reduction=step_sum`` minimises T x that (and T x AR/TAR), as main.lua
        does, so lr and clip act on the summed loss. The forward runs under ``cfg.precision``'s
        autocast; the loss is computed in fp32."""
        cfg = self.cfg
        set_lr(self.optimizer, lr)
        # ASGD applies the lr of the previous step (its eta lags one step), as in awd-lstm-lm.
        self.hidden = repackage_hidden(self.hidden)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.model(inputs, self.hidden)
        raw_loss = F.cross_entropy(out.logits.flatten(0, 1), targets.flatten())
        loss = (
            raw_loss
            + activation_regularization(to_fp32(out.output), cfg.trainer.alpha)
            + temporal_activation_regularization(to_fp32(out.raw_output), cfg.trainer.beta)
        )
        if cfg.trainer.loss_reduction is LossReduction.step_sum:
            # main.lua: sum over the T unrolled steps of the batch-mean NLL = T x the token mean
            loss = loss * targets.size(0)
        self._objective_sum = self._accumulate(self._objective_sum, loss.detach())
        params = self.model.parameters()
        stepped = None  # a 0-d bool tensor under fp16: whether the scaler let the step happen
        if self.scaler is None:
            loss.backward()
            if cfg.optim.clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip)
            self.optimizer.step()
        else:  # fp16: scaled loss; on inf/NaN gradients the optimisers skip the step on the device
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            # stepped: what the scaler's found_inf will say, from the gradients' norm
            if cfg.optim.clip > 0:
                stepped = torch.isfinite(torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip))
            elif cfg.optim.weight_shrink:
                grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                stepped = torch.isfinite(torch.nn.utils.get_total_norm(grads))
            self.scaler.step(self.optimizer)  # fused SGD / AveragedSGD take found_inf: no sync
            self.scaler.update()
        if cfg.optim.weight_shrink:
            shrink_weights(self.model, cfg.optim.weight_shrink, stepped)
        if self.average is not None:
            self.average.update()
        self.hidden = out.hidden
        return raw_loss.detach()

    def evaluated_weights(self):
        """A context in which the model holds the weights this run validates and tests: NT-ASGD's
        average once it switched, else the ``trainer.average`` once started, else the current."""
        if self.average is not None:
            return self.average.swapped_in()
        return averaged_weights(self.model, self.optimizer)

    def weights_name(self) -> str:
        """What :meth:`evaluated_weights` holds now: current, asgd, uniform or ema."""
        if is_asgd(self.optimizer):
            return "asgd"
        if self.average is not None and self.average.started and self.average.steps:
            return self.cfg.trainer.average.value
        return "current"

    def end_epoch(self) -> None:
        """Validate (from ``trainer.validate_from`` on, and always in finetuning), keep the best
        weights, apply NT-ASGD / lr decay / patience, log the epoch row."""
        cfg, st = self.cfg, self.state
        t0 = time.monotonic()
        validate = st.stage == "finetune" or st.epoch >= cfg.trainer.validate_from
        val_loss = main_lua = None
        if validate:
            with self.evaluated_weights(), self.autocast():
                segments = segment_losses(self.model, self.valid_data, cfg.trainer.bptt)
                val_loss = mean_loss(segments)
                if not math.isfinite(perplexity(val_loss)):
                    raise Diverged(f"validation loss became {val_loss:.4g} at epoch {st.epoch}")
                if val_loss < st.best_val_loss:
                    st.best_val_loss, st.best_epoch, st.stale_validations = val_loss, st.epoch, 0
                    self.save_best(self.model.state_dict())  # saved now, inside evaluated_weights
                else:
                    st.stale_validations += 1
            if cfg.eval.main_lua_val:
                main_lua = perplexity(main_lua_loss(segments, self.valid_data.shape, cfg.trainer.bptt))
        optimizer_name = "asgd" if is_asgd(self.optimizer) else "sgd"
        train_loss = st.loss_sum / max(st.tokens, 1)
        row = {
            "epoch": st.epoch,
            "stage": st.stage,
            "lr": st.lr,
            "optimizer": optimizer_name,
            "train_loss": train_loss,
            "train_ppl": perplexity(train_loss),
            "val_loss": val_loss,
            "val_ppl": perplexity(val_loss) if validate else None,
            "val_ppl_main_lua": main_lua,
            "epoch_seconds": st.train_seconds + (time.monotonic() - t0),
            "tokens_per_second": st.tokens / max(st.train_seconds, 1e-9),
            "epoch_tokens": st.tokens,
            "validated": validate,
            "weights": self.weights_name() if validate else None,
        }
        st.metrics.append(row)
        log.info(
            "epoch %d (%s, %s) | lr %.4g | train ppl %.2f | valid ppl %s | %.1f s | %.0f tok/s",
            st.epoch, st.stage, optimizer_name, st.lr, row["train_ppl"],
            f"{row['val_ppl']:.2f} ({row['weights']})" if validate else f"- (from epoch {cfg.trainer.validate_from})",
            row["epoch_seconds"], row["tokens_per_second"],
        )
        if validate:
            self._update_schedule(val_loss)
        elif cfg.optim.name is Optimizer.sgd and decays_after(st.stage_epoch, cfg.optim.lr_decay_start):
            st.lr /= cfg.optim.lr_decay
        st.epoch += 1
        st.stage_epoch += 1
        st.position = st.batches = st.tokens = 0
        st.loss_sum = st.train_seconds = 0.0
        self.hidden = None

    def _update_schedule(self, val_loss: float) -> None:
        """NT-ASGD switch (or finetune stop), or Zaremba's step decay for plain SGD; the
        patience stop."""
        cfg, st = self.cfg, self.state
        patience = cfg.trainer.patience
        if st.stage == "train" and patience is not None and st.stale_validations >= patience:
            log.info("no better validation in %d epochs: stopping (trainer.patience)", patience)
            st.stop_reason = "patience"
        if st.stage == "finetune":
            if nonmonotone_trigger(st.val_history, val_loss, cfg.optim.nonmono):
                st.stop_reason = "finetune_converged"
        elif cfg.optim.name is Optimizer.nt_asgd and not is_asgd(self.optimizer):
            if nonmonotone_trigger(st.val_history, val_loss, cfg.optim.nonmono):
                log.info("switching to ASGD after epoch %d", st.epoch)
                self.optimizer = make_asgd(self.model, st.lr, cfg.optim.weight_decay)
                st.asgd_epoch = st.epoch + 1
        elif cfg.optim.name is Optimizer.sgd and decays_after(st.stage_epoch, cfg.optim.lr_decay_start):
            st.lr /= cfg.optim.lr_decay
        st.val_history.append(val_loss)

    # ---------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the loop stands. The RNG states are the
        CPU's and, on CUDA, the run's own GPU's: a resume on a node with another number of
        GPUs, or on CPU, restores what applies there. It waits for no step and raises nothing:
        :meth:`train_epoch` has folded the epoch's device-side loss sums into the state
        before it returns."""
        assert self._loss_sum is None and self._objective_sum is None, "state_dict() inside an epoch"
        return {
            "model": self.model.state_dict(),
            "optimizer_kind": "asgd" if is_asgd(self.optimizer) else "sgd",
            "optimizer": self.optimizer.state_dict(),
            "trainer": asdict(self.state),
            "generator": self.streams.data.get_state(),  # the data stream (variable-BPTT lengths)
            "streams": self.streams.state_dict(),
            "average": self.average.state_dict() if self.average is not None else None,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "hidden": [list(layer) for layer in self.hidden] if self.hidden is not None else None,
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        wd = self.cfg.optim.weight_decay
        if payload["optimizer_kind"] == "asgd":
            self.optimizer = make_asgd(self.model, self.cfg.optim.lr, wd)
        else:
            self.optimizer = make_sgd(self.model, self.cfg.optim.lr, wd, fused=self.scaler is not None)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.state = TrainState(**payload["trainer"])
        self.streams.data.set_state(payload["generator"])
        if "streams" in payload:
            self.streams.load_state_dict(payload["streams"])
        else:  # a run begun before masks had streams resumes with the global generator's masks
            RandomStreams.detach(self.model)
        if self.average is not None and payload.get("average") is not None:
            self.average.load_state_dict(payload["average"])
        torch.set_rng_state(payload["torch_rng"])
        cuda_rng = self._own_cuda_rng(payload.get("cuda_rng"))
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self.device)
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        hidden = payload["hidden"]
        device = self.train_data.device
        self.hidden = [tuple(t.to(device) for t in layer) for layer in hidden] if hidden is not None else None

    def _own_cuda_rng(self, saved: Any) -> torch.Tensor | None:
        """The saved CUDA RNG state that applies to this run's device; None on CPU. Older
        checkpoints hold a list, one state per GPU visible then: the run's GPU's (index as
        then), else the first."""
        if self.device.type != "cuda" or saved is None:
            return None
        if isinstance(saved, (list, tuple)):
            if not saved:
                return None
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            saved = saved[index] if index < len(saved) else saved[0]
        return saved
