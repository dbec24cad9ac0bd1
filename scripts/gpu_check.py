"""The acceptance run for CUDA: every check that needs a GPU, and the GPU figures, in one call
that ends before ``--deadline`` seconds (default 450) whatever happens.

From a bare machine with a CUDA GPU (the ``test`` extra brings pytest for ``pytest_gpu``)::

    python -m venv .venv && . .venv/bin/activate && pip install torch && pip install -e ".[test]" \\
        && python scripts/gpu_check.py

    python scripts/gpu_check.py [--deadline 450] [--out gpu_check.json] [--steps 100]
                                [--skip-pytest] [--no-compile] [--dry-run]

Checks (each passes, fails or is skipped with its reason; a skip is never a pass). A check
made of parts fails if one part fails, passes if one passes and the others were skipped, and
is skipped if every part was:

- ``weight_drop``: WeightDropLSTM (400 -> 1150, 70 x 20) on CUDA: the gradient reaches the raw
  W_hh; no cuDNN "not part of single contiguous chunk of memory" warning (other warnings are
  listed, not held against it); ``aten::_cudnn_rnn`` runs; the profiler shows a cuDNN RNN
  kernel (skipped where CUPTI records no kernel events, as in many containers); the layer's
  ``flat_buffer`` keeps its ``data_ptr()`` over two training forwards.
- ``set_device``: with 2+ GPUs, a few training steps on ``cuda:1`` leave the memory allocated
  on ``cuda:0`` where it was (its peak is measured): nothing of the run lands on GPU 0.
  Skipped with one GPU.
- ``precision``: every recurrent dropout x fp32, tf32, bf16, fp16 on a 2-layer 64-unit model:
  forward and backward finite, fp32 gradients, loss within 1 % of fp32.
- ``no_sync``: an epoch of the AWD model (V=10k, 400/1150/3) at AWD's batch 80 (5,600 tokens
  a segment: the embedding backward's sort-based path) under
  ``torch.cuda.set_sync_debug_mode("error")``, with SGD and ASGD, each at fp32 and ``precision=fp16``:
  the only host syncs are the loss checks at each tenth of the epoch and its end
  (``Trainer._check_loss``), each counted; under fp16 (SGD and ASGD) the gradient scaler's
  skip is decided on the device (fused SGD / AveragedSGD take ``found_inf``), so no more.
- ``resume``: under ``deterministic=true``, SGD then ASGD steps with dropout, checkpointed and
  resumed into a fresh model: weights and ASGD averages equal to the uninterrupted run's.
- ``deterministic``: the same training steps twice from the same seed under
  ``deterministic=true`` give bitwise-equal weights, for WeightDrop (cuDNN) and the Gal tied
  step loop.
- ``smoke``: ``rnnlm train experiment=smoke device=cuda`` end to end on a corpus this script
  writes (random words of a 200-word vocabulary, ~5,600 tokens, ``dataset.path=DIR``);
  result.csv read with the csv module.
- ``pytest_gpu``: ``pytest -m gpu`` (the CUDA instances of the device-fixture tests);
  skipped if pytest is not installed; cut off at its share of the time left (then a fail if
  a test had failed, else skipped, with the counts so far).

Measurements (figures, not checks), all through ``rnnlm.training.Trainer.train_step`` (AR/TAR,
clipping, SGD, the hidden state carried) by one helper, :func:`time_steps`: AWD PTB tokens/s
and the projected PTB epoch time at fp32, tf32 and bf16, for AWD (WeightDrop, cuDNN), a
no-WeightDrop stack (``nn.LSTM``'s kernel) and the Gal tied step loop (V=10k, 400/1150/3,
batch 20, bptt 70); and the Gal tied step at a size that compiles in time (2 x 256 units,
batch 20, bptt 35) with ``trainer.compile=off`` here and ``trainer.compile=default`` in a
child process (compiling included, killed at its share of the time left; ``--no-compile``
leaves it out): ``compile_speedup`` = off step time / compiled step time.

Time: one deadline from the process's start. The items run in this order: the checks from
``weight_drop`` to ``smoke``, the nine step-time figures, ``pytest_gpu``, the compile
measurement (uncompiled, then the child). Each check and measurement is granted its share
of the seconds (below), at most what is left less a 2 s reserve for the report; one that would
get less than its minimum is skipped with a reason starting "deadline". A check still running
at the end of its grant is stopped (SIGALRM in this process, SIGKILL to a child's process
group) and reported, and a watchdog thread ends the process just before the deadline, should a
call never return. Shares / minimums in seconds: weight_drop 30/5, set_device 30/5,
precision 45/10, no_sync 60/15, resume 30/5, deterministic 30/5, smoke 60/20, each of the
nine step-time figures 12/3, pytest_gpu 150/30, the uncompiled compile-size step 20/5, the
compiled one (child) 180/60.

Output: ``--out PATH`` (default ``gpu_check.json`` in the current directory) is rewritten
atomically after every check and measurement (at first with every one ``pending``), and a
line per item goes to stderr, so a run cut off still reports what it did. The final JSON
(machine, checks, measurements, summary) is also printed as stdout's last line.

``--dry-run`` runs, on the CPU at tiny sizes, every code path that does not need CUDA (the
deadline, the report, each check's CPU-capable parts, the smoke run with ``device=cpu`` for
two batches, the compile child timing ``trainer.compile=off``); what needs CUDA is reported
skipped, "dry run: needs CUDA". About 30 s on a 2-core CPU.

Exit status: 0 when every check passed or was skipped, 1 when one failed (or the watchdog
fired), 2 when there is no CUDA device (without ``--dry-run``).
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the deadline counts from here, imports included

import os  # noqa: E402

from rnnlm.cli import fix_cublas_workspace  # noqa: E402

# cuBLAS reads CUBLAS_WORKSPACE_CONFIG once, when it initialises (CUDA docs, "cuBLAS
# reproducibility"): deterministic=true needs it set before the first cuBLAS call of the
# process, i.e. before any check runs a matmul on the GPU. Importing torch (which this import
# does) creates no cuBLAS handle; the first GPU matmul does, so setting it here is in time.
fix_cublas_workspace()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine  # noqa: E402
from rnnlm.atomic import atomic_write_text  # noqa: E402
from rnnlm.config import (  # noqa: E402
    DropoutConfig, ModelConfig, Precision, RecurrentDropoutConfig, RunConfig, TrainerConfig,
)
from rnnlm.data import get_batch  # noqa: E402
from rnnlm.dropout import WeightDropLSTM  # noqa: E402
from rnnlm.dropout.scheme import every_variant  # noqa: E402
from rnnlm.model import AWDLSTM  # noqa: E402
from rnnlm.precision import autocast, numerics  # noqa: E402
from rnnlm.training import Trainer  # noqa: E402
from rnnlm.training.optim import make_asgd  # noqa: E402

PTB_TRAIN_TOKENS = 929_589
RESERVE_S = 2.0  # kept back from every grant: the report's last write and the exit
CHILD_MARGIN_S = 1.5  # a child process is killed this long before its grant ends
NEEDS_CUDA = "dry run: needs CUDA"
# `rnnlm train ...` with this interpreter (rnnlm has no __main__; the console script may not be on PATH)
RNNLM_CLI = "import sys; from rnnlm.cli import main; sys.exit(main())"


@dataclass(frozen=True)
class Size:
    vocab: int
    emsize: int
    nhid: int
    nlayers: int
    batch: int
    bptt: int

    @property
    def model(self) -> ModelConfig:
        return ModelConfig(emsize=self.emsize, nhid=self.nhid, nlayers=self.nlayers)


@dataclass(frozen=True)
class Sizes:
    awd: Size  # the step-time figures
    no_sync: Size  # AWD at batch 80
    small: Size  # resume, deterministic, set_device
    compiled: Size  # the compile measurement
    weight_drop: tuple[int, int, int, int]  # input, hidden, T, B


GPU_SIZES = Sizes(
    awd=Size(10_000, 400, 1150, 3, 20, 70),
    no_sync=Size(10_000, 400, 1150, 3, 80, 70),
    small=Size(10_000, 200, 400, 3, 20, 35),
    compiled=Size(10_000, 256, 256, 2, 20, 35),
    weight_drop=(400, 1150, 70, 20),
)
DRY_SIZES = Sizes(
    awd=Size(200, 16, 32, 2, 4, 10),
    no_sync=Size(200, 16, 32, 2, 8, 10),
    small=Size(200, 16, 32, 2, 4, 10),
    compiled=Size(200, 16, 32, 2, 4, 10),
    weight_drop=(16, 32, 10, 4),
)

GAL_TIED = replace(DropoutConfig(), recurrent=RecurrentDropoutConfig("variational", 0.5, "tied"))
STEP_VARIANTS = {
    "awd": DropoutConfig(),
    "nn_lstm": replace(DropoutConfig(), recurrent=RecurrentDropoutConfig("weight_drop", 0.0)),
    "gal_tied": GAL_TIED,
}


# --------------------------------------------------------------------------- deadline
class Skip(Exception):
    """A check that cannot run here; its message says why."""


class Cutoff(BaseException):
    """A check or child process that ran to the end of its grant (a BaseException, so no
    ``except Exception`` inside a check swallows it)."""


class Deadline:
    """The run's end, ``seconds`` after ``start`` (``clock()`` if None), and each item's grant."""

    def __init__(self, seconds: float, start: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.seconds = seconds
        self.end = (clock() if start is None else start) + seconds

    def left(self) -> float:
        return self.end - self.clock()

    def grant(self, share: float, need: float) -> float:
        """Seconds an item may take: its share, at most what is left less the reserve; raises
        :class:`Skip` ("deadline: ...") when that is less than the ``need`` it cannot start without."""
        available = self.left() - RESERVE_S
        if available < need:
            raise Skip(f"deadline: {max(available, 0.0):.0f} s left of {self.seconds:.0f}, it needs at least {need:.0f} s")
        return min(share, available)


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`Cutoff` in this (main) thread after ``seconds``."""
    def ring(signum, frame):
        raise Cutoff(f"still running after its {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


_children: list[subprocess.Popen] = []  # the running child, for the watchdog


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def run_child(cmd: list[str], timeout: float, **kwargs: Any) -> tuple[int | None, str, str]:
    """Run ``cmd`` in its own process group for at most ``timeout`` s; (returncode, stdout,
    stderr), returncode None if it was killed at the timeout (the output is what it wrote by then).
    The group is killed however this returns, so no compile worker outlives it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    _children.append(proc)
    try:
        try:
            out, err = proc.communicate(timeout=max(timeout, 0.1))
            return proc.returncode, out, err
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return None, out or "", err or ""
    finally:
        _kill_group(proc)
        _children.remove(proc)


# ----------------------------------------------------------------------------- report
@dataclass
class Item:
    name: str
    kind: str  # check | measurement
    fn: Callable[[float], dict]  # granted seconds -> details
    share: float
    need: float

    @property
    def section(self) -> str:
        """Where the report keeps its entry."""
        return "checks" if self.kind == "check" else "measurements"

    @property
    def failure(self) -> str:
        """Its status when it crashed or overran its whole share."""
        return "fail" if self.kind == "check" else "error"


class Report:
    """The JSON result, rewritten atomically (:func:`rnnlm.atomic.atomic_write_text`) after every item."""

    def __init__(self, path: Path, result: dict) -> None:
        self.path, self.result = path, result
        self.lock = threading.Lock()
        self.running: Item | None = None
        self.closed = False

    def write(self) -> None:
        atomic_write_text(self.path, json.dumps(self.result, indent=1) + "\n")

    def record(self, item: Item, entry: dict) -> None:
        with self.lock:
            self.result[item.section][item.name] = entry
            self.summarise()
            self.write()

    def summarise(self) -> None:
        statuses = [c["status"] for c in self.result["checks"].values()]
        self.result["summary"] = {s: statuses.count(s) for s in ("pass", "fail", "skipped", "pending")}
        self.result["seconds"] = round(time.monotonic() - STARTED, 1)


def status_of(details: dict) -> str:
    """pass/fail from ``ok``, or the status a parts check worked out."""
    if "status" in details:
        return details.pop("status")
    return "pass" if details.pop("ok") else "fail"


def where(exc: BaseException) -> list[str]:
    """The innermost frames of ``exc``'s traceback, as ``file:line function``."""
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    return [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames]


def run_item(item: Item, deadline: Deadline, report: Report | None = None) -> dict:
    """Run ``item`` within its grant; its entry (status, details, seconds), recorded in ``report``."""
    t = time.monotonic()
    granted = None
    try:
        granted = deadline.grant(item.share, item.need)
        if report is not None:
            report.running = item
        with alarm(granted):
            details = item.fn(granted)
        status = status_of(details)
        if item.kind == "measurement":
            status = {"pass": "done", "fail": "error"}.get(status, status)
        entry = {"status": status, **details}
    except Skip as why:
        entry = {"status": "skipped", "reason": str(why)}
    except Cutoff as why:
        # Cut short by the time left: skipped. Over its whole share: something is wrong.
        limited = granted is not None and granted < item.share
        entry = ({"status": "skipped", "reason": f"deadline: {why} (all the time left)"} if limited
                 else {"status": item.failure, "error": f"deadline: {why}"})
    except Exception as exc:  # a check that crashes has failed; say where
        entry = failed(exc, item.failure, limit=500)
    finally:
        if report is not None:
            report.running = None
    entry["seconds"] = round(time.monotonic() - t, 1)
    if granted is not None:
        entry["granted_seconds"] = round(granted, 1)
    if report is not None:
        report.record(item, entry)
    return entry


def start_watchdog(deadline: Deadline, report: Report) -> threading.Timer:
    """End the process half a second before the deadline, should an item hang in a call that
    SIGALRM cannot interrupt: the running item is recorded as failed and the report printed."""
    def fire() -> None:
        with report.lock:
            if report.closed:
                return
            item = report.running
            if item is not None:
                report.result[item.section][item.name] = {
                    "status": item.failure, "error": "deadline: still running at the deadline (watchdog)"}
            report.result["complete"] = False
            report.summarise()
            report.write()
            print(json.dumps(report.result), flush=True)
        for proc in list(_children):
            _kill_group(proc)
        os._exit(1)

    timer = threading.Timer(max(deadline.left() - 0.5, 0.0), fire)
    timer.daemon = True
    timer.start()
    return timer


# ---------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def part(ok: bool, **details: Any) -> dict:
    return {"status": "pass" if ok else "fail", **details}


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def failed(exc: Exception, status: str = "fail", limit: int = 400) -> dict:
    """``exc`` as an entry: its type and message on one line (at most ``limit`` characters), and where."""
    return {"status": status, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}",
            "where": where(exc)}


def from_parts(parts: dict[str, dict], **details: Any) -> dict:
    """A check made of parts: fail if one failed, else pass if one passed, else skipped."""
    statuses = [p["status"] for p in parts.values()]
    status = "fail" if "fail" in statuses else "pass" if "pass" in statuses else "skipped"
    out = {"status": status, "parts": parts, **details}
    if status == "skipped":
        out["reason"] = "; ".join(f"{name}: {p.get('reason')}" for name, p in parts.items())
    return out


def config(size: Size, device: torch.device, dropout: DropoutConfig | None = None,
           precision: Precision = Precision.fp32, deterministic: bool = False, **trainer: Any) -> RunConfig:
    return RunConfig(model=size.model, dropout=dropout or DropoutConfig(),
                     trainer=TrainerConfig(progress=False, bptt=size.bptt, **trainer),
                     precision=precision, deterministic=deterministic, device=str(device))


def make_trainer(cfg: RunConfig, size: Size, device: torch.device, init_seed: int = 0,
                 rows: int | None = None, cls: type[Trainer] = Trainer) -> Trainer:
    """A Trainer of a freshly initialised model (``torch.manual_seed(init_seed)``) on random tokens
    ``(rows, size.batch)`` (drawn on the CPU from seed 0, so alike on every device), its hidden
    state initialised, the model in training mode. Its masks come from the Trainer's streams
    (:mod:`rnnlm.training.streams`), seeded by ``cfg``, not from torch's global generator."""
    torch.manual_seed(init_seed)
    model = AWDLSTM(size.vocab, cfg.model, cfg.dropout).to(device)
    rows = rows or 4 * size.bptt + 1
    data = torch.randint(0, size.vocab, (rows, size.batch), generator=torch.Generator().manual_seed(0))
    data = data.to(device)
    trainer = cls(model, cfg, data, data[: min(rows, 100)], save_best=lambda weights: None, load_best=dict)
    trainer.hidden = model.init_hidden(size.batch)
    model.train()
    return trainer


def time_steps(cfg: RunConfig, size: Size, device: torch.device, steps: int, budget: float) -> dict:
    """The training step of ``cfg`` at ``size`` as rnnlm runs it (``Trainer.train_step``) on one
    fixed segment, under the run's numerics: 3 warm-up steps (compiling, if any), then up to
    ``steps`` timed ones, fewer if the ``budget`` seconds (setup included) would not allow them."""
    t0 = time.perf_counter()
    until = t0 + budget
    trainer = make_trainer(cfg, size, device)
    x, y = get_batch(trainer.train_data, 0, size.bptt)
    lr = cfg.optim.lr
    with numerics(cfg.precision, cfg.deterministic, device):
        for _ in range(3):  # warm-up
            trainer.train_step(x, y, lr)
        sync(device)
        first = time.perf_counter() - t0
        t = time.perf_counter()
        for _ in range(2):  # a probe, to fit the count to the budget
            trainer.train_step(x, y, lr)
        sync(device)
        per_step = (time.perf_counter() - t) / 2
        n = max(1, min(steps, int(0.8 * (until - time.perf_counter()) / max(per_step, 1e-6))))
        t = time.perf_counter()
        for _ in range(n):
            trainer.train_step(x, y, lr)
        sync(device)
    seconds = (time.perf_counter() - t) / n
    tps = size.bptt * size.batch / seconds
    return {"ok": True, "step_ms": round(1e3 * seconds, 3), "tokens_per_second": round(tps),
            "ptb_epoch_seconds": round(PTB_TRAIN_TOKENS / tps, 1), "timed_steps": n,
            "setup_and_warmup_seconds": round(first, 2)}


def write_corpus(directory: Path, seed: int = 0, vocab: int = 200,
                 tokens: dict[str, int] | None = None) -> Path:
    """``directory/{train,valid,test}.txt`` (the layout of ``dataset.path``): lines of 5-20
    random words of a ``vocab``-word vocabulary, ``tokens`` words per split."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (tokens or {"train": 4000, "valid": 800, "test": 800}).items():
        lines = []
        while n > 0:
            k = min(n, rng.randint(5, 20))
            lines.append(" ".join(rng.choice(words) for _ in range(k)))
            n -= k
        (directory / f"{split}.txt").write_text("".join(f" {line} \n" for line in lines), encoding="utf-8")
    return directory


# ----------------------------------------------------------------------------- checks
@dataclass
class Ctx:
    device: torch.device
    dry: bool
    sizes: Sizes
    steps: int
    skip_pytest: bool
    no_compile: bool

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def check_set_device(ctx: Ctx, budget: float) -> dict:
    if not ctx.cuda:
        raise Skip(NEEDS_CUDA)
    if torch.cuda.device_count() < 2:
        raise Skip(f"{torch.cuda.device_count()} GPU here; it needs 2 or more")
    other = torch.device("cuda:1")
    torch.cuda.synchronize(0)
    torch.cuda.reset_peak_memory_stats(0)
    before = torch.cuda.memory_allocated(0)
    size = ctx.sizes.small
    cfg = config(size, other, max_batches=3)
    trainer = make_trainer(cfg, size, other, rows=8 * size.bptt + 1)
    trainer.hidden = None
    trainer.train_epoch(started=time.monotonic())
    torch.cuda.synchronize(other)
    peak = torch.cuda.max_memory_allocated(0)
    on_1 = torch.cuda.memory_allocated(1)
    return {"ok": peak == before and on_1 > 0 and trainer.state.batches == 3,
            "cuda0_allocated_before": before, "cuda0_peak_during": peak, "cuda1_allocated": on_1,
            "batches": trainer.state.batches}


def check_weight_drop(ctx: Ctx, budget: float) -> dict:
    device = ctx.device
    inputs, hidden, steps, batch = ctx.sizes.weight_drop
    torch.manual_seed(0)
    layer = WeightDropLSTM(inputs, hidden, 0.5).to(device).train()
    x = torch.randn(steps, batch, inputs, device=device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if ctx.cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.profiler.profile(activities=activities) as prof:
            out, _ = layer(x)
            out.sum().backward()
            sync(device)
    messages = [str(w.message) for w in caught]
    contiguity = [m for m in messages if "contiguous chunk" in m]
    parts: dict[str, dict] = {}
    grad = layer.lstm.weight_hh_l0.grad
    parts["grad_reaches_raw_w_hh"] = part(grad is not None and bool(grad.abs().sum().item() > 0))
    parts["no_contiguity_warning"] = part(not contiguity, warnings=contiguity[:3])
    events = list(prof.events())
    if not ctx.cuda:
        parts["cudnn_op"] = skipped(NEEDS_CUDA)
        parts["cudnn_kernel"] = skipped(NEEDS_CUDA)
    else:
        ops = {e.key for e in events}
        parts["cudnn_op"] = part("aten::_cudnn_rnn" in ops)
        kernels = sorted({e.key for e in events if e.device_type == torch.autograd.DeviceType.CUDA})
        rnn = [k for k in kernels if any(s in k.lower() for s in ("cudnn", "rnn", "lstm"))]
        parts["cudnn_kernel"] = (part(bool(rnn), rnn_kernels=rnn[:5]) if kernels else
                                 skipped("the profiler recorded no CUDA kernel events (CUPTI unavailable, "
                                         "common in containers)"))
    first = layer.flat_buffer.data_ptr()  # made by the masked forward above
    for _ in range(2):
        out, _ = layer(x)
        out.sum().backward()
    sync(device)
    parts["flat_buffer_kept"] = part(layer.flat_buffer.data_ptr() == first)
    return from_parts(parts, other_warnings=[m for m in messages if m not in contiguity][:5])


def check_precision(ctx: Ctx, budget: float) -> dict:
    """Every scheme x precision on a 2-layer 64-unit model, batch 8, 20 steps, masks on."""
    device = ctx.device
    precisions = [p for p in Precision if ctx.cuda or p is not Precision.fp16]
    failures, worst = [], {}
    tokens = torch.randint(0, 500, (21, 8), generator=torch.Generator().manual_seed(0)).to(device)
    for recurrent in every_variant():
        torch.manual_seed(0)
        dropout = DropoutConfig(embedding=0.1, input=0.2, hidden=0.2, output=0.2, recurrent=recurrent)
        model = AWDLSTM(500, ModelConfig(emsize=32, nhid=64, nlayers=2), dropout).to(device).train()
        losses = {}
        for precision in precisions:
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1)
            with numerics(precision, False, device):
                with autocast(precision, device):
                    out = model(tokens[:-1], model.init_hidden(8))
                loss = F.cross_entropy(out.logits.flatten(0, 1), tokens[1:].flatten())
                loss.backward()
            grads_ok = all(p.grad is not None and p.grad.dtype == torch.float32 and bool(torch.isfinite(p.grad).all())
                           for p in model.parameters())
            losses[precision.value] = loss.item()
            if not grads_ok or not torch.isfinite(loss):
                failures.append(f"{recurrent.kind}/{recurrent.mask}/{precision.value}: non-finite or non-fp32 grads")
        name = f"{recurrent.kind}/{recurrent.mask}"
        worst[name] = max(abs(v / losses["fp32"] - 1) for v in losses.values())
        if worst[name] > 1e-2:
            failures.append(f"{name}: loss {losses} more than 1 % from fp32")
    parts = {"every_scheme": part(not failures, failures=failures, precisions=[p.value for p in precisions],
                                  max_relative_loss_gap={k: float(f"{v:.3g}") for k, v in worst.items()})}
    if not ctx.cuda:
        parts["fp16"] = skipped(NEEDS_CUDA)
    return from_parts(parts)


class MarksAllowed(Trainer):
    """The Trainer, under ``set_sync_debug_mode("error")`` on CUDA by :meth:`strict`, with host
    syncs allowed only where the loop reads its loss on purpose (``_check_loss``), counted in
    ``loss_checks``."""

    loss_checks = 0

    @contextlib.contextmanager
    def strict(self) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")

    def _check_loss(self) -> None:
        self.loss_checks += 1
        if self.device.type != "cuda":
            return super()._check_loss()
        torch.cuda.set_sync_debug_mode("default")
        try:
            super()._check_loss()
        finally:
            torch.cuda.set_sync_debug_mode("error")


def no_sync_epoch(ctx: Ctx, optimizer: str, precision: Precision) -> dict:
    """An epoch of ~10 segments at AWD's batch 80 under strict sync checking."""
    size = ctx.sizes.no_sync
    cfg = config(size, ctx.device, precision=precision)
    trainer = make_trainer(cfg, size, ctx.device, rows=10 * size.bptt + 1, cls=MarksAllowed)
    if optimizer == "asgd":
        trainer.optimizer = make_asgd(trainer.model, cfg.optim.lr, cfg.optim.weight_decay)
    x, y = get_batch(trainer.train_data, 0, size.bptt)
    with numerics(precision, False, ctx.device):
        trainer.train_step(x, y, cfg.optim.lr)  # optimiser state and the scaler allocated
        trainer.hidden = None
        sync(ctx.device)
        t = time.perf_counter()
        with trainer.strict():
            trainer.train_epoch(started=time.monotonic())
        sync(ctx.device)
    seconds = time.perf_counter() - t
    walked = trainer.state.position >= trainer.train_data.size(0) - 2
    details = {"batches": trainer.state.batches, "tokens_per_segment": size.bptt * size.batch,
               "allowed_syncs": {"loss_checks": trainer.loss_checks} if trainer.loss_checks else {},
               "tokens_per_second": round(trainer.state.tokens / seconds)}
    if not ctx.cuda:
        details["sync_debug_mode"] = f"skipped ({NEEDS_CUDA})"
    return part(walked, **details)


def check_no_sync(ctx: Ctx, budget: float) -> dict:
    parts = {}
    for name, optimizer, precision in (("sgd", "sgd", Precision.fp32), ("asgd", "asgd", Precision.fp32),
                                       ("fp16_sgd", "sgd", Precision.fp16), ("fp16_asgd", "asgd", Precision.fp16)):
        if precision is Precision.fp16 and not ctx.cuda:
            parts[name] = skipped(NEEDS_CUDA)
            continue
        try:
            parts[name] = no_sync_epoch(ctx, optimizer, precision)
        except Exception as exc:  # set_sync_debug_mode("error") raises at the sync: say where
            parts[name] = failed(exc)
    return from_parts(parts)


def check_resume(ctx: Ctx, budget: float) -> dict:
    """6 steps (3 SGD, 3 ASGD) uninterrupted, against 4 + checkpoint + 2 in a fresh model."""
    device, size = ctx.device, ctx.sizes.small
    cfg = config(size, device, deterministic=True)

    def steps(t: Trainer, which: range) -> None:
        for i in which:
            if i == 3:
                t.optimizer = make_asgd(t.model, cfg.optim.lr, cfg.optim.weight_decay)
            t.train_step(*get_batch(t.train_data, i * size.bptt, size.bptt), cfg.optim.lr)

    rows = 7 * size.bptt + 1
    with numerics(Precision.fp32, True, device):
        whole = make_trainer(cfg, size, device, rows=rows)
        steps(whole, range(6))
        first = make_trainer(cfg, size, device, rows=rows)
        steps(first, range(4))
        first._check_loss()  # the loss sums folded into the state, as at the end of an epoch
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)
        buffer.seek(0)
        second = make_trainer(cfg, size, device, init_seed=1, rows=rows)
        second.load_state_dict(torch.load(buffer, map_location="cpu", weights_only=True))
        steps(second, range(4, 6))
    pairs = list(zip(whole.model.parameters(), second.model.parameters()))
    diffs = [(a - b).abs().max().item() for a, b in pairs]
    averaged = [(whole.optimizer.state[a]["ax"] - second.optimizer.state[b]["ax"]).abs().max().item()
                for a, b in pairs]
    return {"ok": max(diffs) == 0.0 and max(averaged) == 0.0, "max_weight_diff": max(diffs),
            "max_average_diff": max(averaged)}


def deterministic_weights(ctx: Ctx, dropout: DropoutConfig, n: int = 4) -> list[torch.Tensor]:
    device, size = ctx.device, ctx.sizes.small
    cfg = config(size, device, dropout, deterministic=True)
    with numerics(Precision.fp32, True, device):
        trainer = make_trainer(cfg, size, device, rows=(n + 1) * size.bptt + 1)
        for i in range(n):
            trainer.train_step(*get_batch(trainer.train_data, i * size.bptt, size.bptt), cfg.optim.lr)
        sync(device)
    return [p.detach().cpu().clone() for p in trainer.model.parameters()]


def check_deterministic(ctx: Ctx, budget: float) -> dict:
    parts = {}
    for name in ("awd", "gal_tied"):
        try:
            a, b = (deterministic_weights(ctx, STEP_VARIANTS[name]) for _ in range(2))
            unequal = sum(not torch.equal(x, y) for x, y in zip(a, b))
            parts[name] = part(unequal == 0, unequal_tensors=unequal, tensors=len(a))
        except Exception as exc:  # e.g. an op with no deterministic kernel
            parts[name] = failed(exc)
    return from_parts(parts)


def check_smoke(ctx: Ctx, budget: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = write_corpus(Path(tmp) / "corpus")
        extra = ["trainer.max_batches=2", "trainer.max_epochs=1", "threads=1"] if ctx.dry else []
        cmd = [sys.executable, "-c", RNNLM_CLI, "train", "experiment=smoke", f"device={ctx.device.type}",
               f"dataset.path={data}", "trainer.progress=false", f"hydra.run.dir={tmp}/run", *extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RNNLM_CACHE_DIR": f"{tmp}/cache"}
        rc, _, err = run_child(cmd, budget - CHILD_MARGIN_S, env=env, cwd=tmp)
        if rc is None:
            raise Cutoff(f"rnnlm train still running after {budget - CHILD_MARGIN_S:.0f} s")
        path = Path(tmp) / "run" / "result.csv"
        rows = list(csv.DictReader(path.open(newline=""))) if path.is_file() else []
    row = rows[0] if len(rows) == 1 else {}
    warned = [line.strip() for line in err.splitlines() if "Warning" in line][:5]
    ok = rc == 0 and row.get("status") == "completed" and row.get("device", "").startswith(ctx.device.type)
    return {"ok": ok, "returncode": rc, "run_status": row.get("status"), "test_ppl": row.get("test_ppl"),
            "device": row.get("device"), "warnings": warned,
            "stderr_tail": err.strip().splitlines()[-3:] if rc else []}


def check_pytest_gpu(ctx: Ctx, budget: float) -> dict:
    if ctx.skip_pytest:
        raise Skip("--skip-pytest")
    if importlib.util.find_spec("pytest") is None:
        raise Skip("pytest is not installed (pip install -e '.[test]')")
    timeout = budget - CHILD_MARGIN_S
    rc, out, err = run_child([sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider"],
                             timeout, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = out.strip().splitlines()
    counts = {word.lower(): sum(f" {word}" in line for line in lines) for word in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    failing = [line.split(" ")[0] for line in lines if " FAILED" in line or " ERROR" in line][:10]
    if rc is None:
        if counts["failed"] or counts["error"]:
            return {"ok": False, "error": f"deadline: stopped after {timeout:.0f} s", "counts": counts,
                    "failing": failing}
        raise Skip(f"deadline: stopped after {timeout:.0f} s, the time left; so far {counts}")
    if rc == 5:
        raise Skip("pytest -m gpu selected no tests (they are deselected without CUDA)")
    return {"ok": rc == 0, "returncode": rc, "summary": lines[-1] if lines else err.strip()[-300:],
            "failing": failing}


# ------------------------------------------------------------------------ measurements
def measure_step(ctx: Ctx, name: str, precision: Precision) -> Callable[[float], dict]:
    def run(budget: float) -> dict:
        cfg = config(ctx.sizes.awd, ctx.device, STEP_VARIANTS[name], precision, variable_bptt=False)
        return time_steps(cfg, ctx.sizes.awd, ctx.device, ctx.steps, budget)  # fewer if the budget says
    return run


def compile_config(ctx: Ctx, mode: str) -> RunConfig:
    """The Gal tied step at the compile measurement's size, one fixed segment length."""
    return config(ctx.sizes.compiled, ctx.device, GAL_TIED, variable_bptt=False, compile=mode)


def measure_compile_off(ctx: Ctx, budget: float) -> dict:
    return {**time_steps(compile_config(ctx, "off"), ctx.sizes.compiled, ctx.device, ctx.steps, budget),
            "compile": "off"}


def measure_compiled(ctx: Ctx, budget: float) -> dict:
    """``trainer.compile=default`` (on the CPU of a dry run: ``off``) timed in a child process,
    killed at the end of the grant."""
    if ctx.no_compile:
        raise Skip("--no-compile")
    timeout = budget - CHILD_MARGIN_S
    cmd = [sys.executable, __file__, "--compile-child", "--budget", f"{timeout - 2:.1f}", "--steps", str(ctx.steps)]
    rc, out, err = run_child(cmd + (["--dry-run"] if ctx.dry else []), timeout)
    if rc is None:
        raise Skip(f"deadline: compiling and timing took over {timeout:.0f} s, its share of the time left")
    lines = out.strip().splitlines()
    if rc != 0 or not lines:
        return {"ok": False, "returncode": rc, "error": err.strip().splitlines()[-3:]}
    return json.loads(lines[-1])


def compile_child(ctx: Ctx, budget: float) -> dict:
    """In the child: the compiled step, compiling included in ``with_compile_seconds``."""
    mode = "off" if ctx.dry else "default"
    t = time.perf_counter()
    out = time_steps(compile_config(ctx, mode), ctx.sizes.compiled, ctx.device, ctx.steps, budget)
    out.update(compile=mode, with_compile_seconds=round(time.perf_counter() - t, 1))
    if ctx.dry:
        out["note"] = "dry run: the child timed trainer.compile=off (compiling is timed on CUDA only)"
    return out


# ------------------------------------------------------------------------------- main
def items(ctx: Ctx) -> list[Item]:
    def check(name: str, fn: Callable[[Ctx, float], dict], share: float, need: float) -> Item:
        return Item(name, "check", lambda budget: fn(ctx, budget), share, need)

    def measurement(name: str, fn: Callable[[float], dict], share: float, need: float) -> Item:
        return Item(name, "measurement", fn, share, need)

    steps = [measurement(f"{name}_{p.value}", measure_step(ctx, name, p), 12, 3)
             for name in STEP_VARIANTS for p in (Precision.fp32, Precision.tf32, Precision.bf16)]
    return [
        # weight_drop first: a warning that torch issues once per process must not be used up before it
        check("weight_drop", check_weight_drop, 30, 5),
        check("set_device", check_set_device, 30, 5),
        check("precision", check_precision, 45, 10),
        check("no_sync", check_no_sync, 60, 15),
        check("resume", check_resume, 30, 5),
        check("deterministic", check_deterministic, 30, 5),
        check("smoke", check_smoke, 60, 20),
        *steps,
        check("pytest_gpu", check_pytest_gpu, 150, 30),
        measurement("gal_tied_compile_off", lambda budget: measure_compile_off(ctx, budget), 20, 5),
        measurement("gal_tied_compiled", lambda budget: measure_compiled(ctx, budget), 180, 60),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deadline", type=float, default=450.0,
                        help="seconds the whole run may take, from its start (default 450)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"),
                        help="the JSON report, rewritten after every item (default ./gpu_check.json)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per figure, at most")
    parser.add_argument("--skip-pytest", action="store_true", help="leave out pytest -m gpu (reported skipped)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile measurement")
    parser.add_argument("--dry-run", action="store_true",
                        help="the CPU-capable paths on the CPU at tiny sizes (about 30 s)")
    parser.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=60.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}); --dry-run runs the CPU parts",
              file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        torch.set_num_threads(1)  # tiny sizes: threads only add spin-waits
    ctx = Ctx(device, args.dry_run, DRY_SIZES if args.dry_run else GPU_SIZES,
              min(args.steps, 5) if args.dry_run else args.steps, args.skip_pytest, args.no_compile)
    if args.compile_child:
        print(json.dumps(compile_child(ctx, args.budget)))
        return 0

    deadline = Deadline(args.deadline, start=STARTED)
    todo = items(ctx)
    result: dict = {
        "machine": {**machine(device), **({"gpu_count": torch.cuda.device_count()} if ctx.cuda else {})},
        "mode": "dry run (CPU)" if args.dry_run else "cuda",
        "deadline_seconds": args.deadline, "complete": False,
        "checks": {i.name: {"status": "pending"} for i in todo if i.section == "checks"},
        "measurements": {i.name: {"status": "pending"} for i in todo if i.section == "measurements"},
    }
    report = Report(args.out, result)
    with report.lock:
        report.summarise()
        report.write()
    watchdog = start_watchdog(deadline, report)
    for item in todo:
        entry = run_item(item, deadline, report)
        detail = entry.get("reason") or entry.get("error") or ""
        print(f"gpu_check: [{time.monotonic() - STARTED:6.1f} s] {item.name}: {entry['status']} "
              f"({entry['seconds']} s){' - ' + detail if detail else ''}", file=sys.stderr, flush=True)
        if ctx.cuda:  # what the item left behind, freed before the next one
            gc.collect()
            torch.cuda.empty_cache()
    measurements = result["measurements"]
    off, on = measurements.get("gal_tied_compile_off", {}), measurements.get("gal_tied_compiled", {})
    if "step_ms" in off and "step_ms" in on:
        on["compile_speedup"] = round(off["step_ms"] / on["step_ms"], 3)  # off step time / compiled
    with report.lock:
        watchdog.cancel()
        report.closed = True
        result["complete"] = True
        result["deadline_left_seconds"] = round(deadline.left(), 1)
        report.summarise()
        report.write()
    print(json.dumps(result), flush=True)
    return 1 if result["summary"]["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
