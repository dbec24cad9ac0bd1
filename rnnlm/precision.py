"""Numerics of a run: the ``precision`` setting, TF32, deterministic kernels.

* ``fp32``: IEEE fp32. TF32 is switched off for CUDA matmuls *and* cuDNN, whose LSTM kernel
  otherwise runs in TF32 on Ampere and later while ``torch.mm`` (the step loop, the decoder)
  does not, so WeightDrop and step-loop runs would train at different precisions.
* ``tf32``: TF32 on for both (CUDA, Ampere and later); on CPU the same as fp32.
* ``bf16`` / ``fp16``: the forward pass under ``torch.autocast`` (weights, gradients and
  optimiser state stay fp32; the loss is computed from fp32 logits). fp16 needs a
  ``torch.amp.GradScaler`` (:func:`grad_scaler`) and CUDA.

:func:`numerics` sets the process-wide flags for the duration of a run or an evaluation and
puts the caller's back afterwards; :func:`autocast` is the context of each forward pass.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Callable, Iterator, Optional

import torch

from .config import Precision

log = logging.getLogger(__name__)

LOW_PRECISION = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}
# cuBLAS needs a fixed workspace for deterministic results (CUDA docs, "cuBLAS reproducibility");
# it must be set before the process's first cuBLAS call.
CUBLAS_WORKSPACE = ":4096:8"


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bf16/fp16 on ``device`` for those precisions, else a no-op."""
    dtype = LOW_PRECISION.get(Precision(precision))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(precision: Precision, device: torch.device) -> Optional["torch.amp.GradScaler"]:
    """A gradient scaler for fp16 (its small exponent range underflows gradients), else None."""
    if Precision(precision) is Precision.fp16:
        return torch.amp.GradScaler(device.type)
    return None


def to_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32 if autocast made it bf16/fp16 (the loss and AR/TAR are computed in fp32);
    other dtypes (fp32, the float64 of tests) unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _set_tf32(on: bool) -> Callable[[], None]:
    """Switch TF32 for CUDA matmuls and cuDNN; returns a function putting the old flags back."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the flags by operator family
        targets = [(matmul, "fp32_precision"), (cudnn.rnn, "fp32_precision"), (cudnn.conv, "fp32_precision")]
        value = "tf32" if on else "ieee"
    else:
        targets = [(matmul, "allow_tf32"), (cudnn, "allow_tf32")]
        value = on
    before = [(obj, name, getattr(obj, name)) for obj, name in targets]
    for obj, name in targets:
        setattr(obj, name, value)

    def restore() -> None:
        for obj, name, old in before:
            setattr(obj, name, old)

    return restore


@contextlib.contextmanager
def numerics(precision: Precision, deterministic: bool, device: torch.device) -> Iterator[None]:
    """TF32 as ``precision`` asks, and deterministic kernels if ``deterministic``, inside;
    the caller's flags afterwards. ``CUBLAS_WORKSPACE_CONFIG`` is set (if unset) for the
    rest of the process: cuBLAS reads it once.

    On the CPU, subnormal floats are flushed to zero inside (``torch.set_flush_denormal``,
    x86's FTZ and DAZ), as GPU kernels commonly do: saturated gates make an LSTM's backward
    produce values below 1.2e-38 in fp32, whose arithmetic the CPU runs many times slower
    (docs/performance.md), and flushing them changes nothing above that magnitude. Torch
    keeps no getter for the flag, so it is switched off again afterwards (its default)."""
    precision = Precision(precision)
    restore_tf32 = _set_tf32(precision is Precision.tf32)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    cudnn_flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    if precision is Precision.bf16 and device.type == "cpu" and not cpu_has_bf16():
        log.warning("precision=bf16 on a CPU without AVX512_BF16 or AMX: bf16 is emulated there "
                    "and slower than fp32")
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flush:
            torch.set_flush_denormal(False)
        restore_tf32()
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_flags


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (``/proc/cpuinfo`` flags avx512_bf16, amx_bf16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@functools.cache
def _cpu_low_precision_lstm(dtype: torch.dtype) -> bool:
    """Whether ``nn.LSTM``'s CPU kernel runs under autocast to ``dtype``: oneDNN's LSTM
    primitive has no bf16 form on CPUs without bf16 instructions and raises there."""
    with torch.random.fork_rng(devices=[]):  # the probe's init leaves the global RNG alone
        lstm = torch.nn.LSTM(2, 2)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            lstm(torch.zeros(1, 1, 2))
    except RuntimeError:
        return False
    return True


def lstm_kernel(call: Callable, x: torch.Tensor, hx):
    """``call(x, hx)``, an ``nn.LSTM`` forward on ``x (T, B, I)``, ``hx`` = (h0, c0) or None.
    Under CPU autocast on a CPU whose LSTM kernel has no low-precision form, it runs in fp32
    outside autocast instead (the rest of the model stays in bf16)."""
    if (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and not _cpu_low_precision_lstm(torch.get_autocast_dtype("cpu"))):
        with torch.autocast("cpu", enabled=False):
            return call(x.float(), None if hx is None else tuple(t.float() for t in hx))
    return call(x, hx)
