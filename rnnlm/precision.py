"""Numerics of a run: the ``precision`` setting, TF32, deterministic kernels.

* ``fp32``: IEEE fp32. TF32 is switched off for CUDA matmuls *and* cuDNN, whose LSTM kernel
  otherwise runs in TF32 on Ampere and later while ``torch.mm`` (the step loop, the decoder)
  does not, so WeightDrop and step-loop runs would train at different precisions.
* ``tf32``: TF32 on for both (CUDA, Ampere and later); on CPU the same as fp32.
* ``bf16`` / ``fp16``: the forward pass under ``torch.autocast`` (weights, gradients and
  optimiser state stay fp32; the loss is computed from fp32 logits). fp16 needs a
  ``torch.amp.GradScaler`` (:func:`grad_scaler`) and CUDA (:func:`check_device`).

:func:`numerics` sets the process-wide flags for the duration of a run or an evaluation and
puts the caller's back afterwards (:func:`rnnlm.runtime.execution` enters it with the run's
device and threads); :func:`autocast` is the context of each forward pass.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Callable, Iterator, Optional

import torch

from .checks import ConfigError
from .config import Precision
from .dropout.cpu_kernels import cpu_has_amx_bf16, cpu_has_bf16

log = logging.getLogger(__name__)

LOW_PRECISION = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}
# cuBLAS needs a fixed workspace for deterministic results (CUDA docs, "cuBLAS reproducibility");
# it must be set before the process's first cuBLAS call.
CUBLAS_WORKSPACE = ":4096:8"


def check_device(precision: Precision, device: str | torch.device) -> None:
    """ConfigError, in one line, where ``precision`` cannot run on ``device`` (a device or a
    device setting such as ``auto``): fp16 needs CUDA."""
    if Precision(precision) is not Precision.fp16:
        return
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type != "cuda":
        raise ConfigError("precision=fp16 needs a CUDA device; on CPU use precision=bf16 or fp32")


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


@functools.cache
def _warn_slow_cpu_bf16() -> None:
    """Once per process: where bf16 on this CPU is expected to be slower than fp32."""
    if not cpu_has_bf16():
        log.warning("precision=bf16 on a CPU without AVX512_BF16 or AMX: bf16 is emulated there "
                    "and slower than fp32")
    elif not cpu_has_amx_bf16():
        log.warning("precision=bf16 on a CPU with AVX512_BF16 but no AMX: its bf16 GEMMs may be slower "
                    "than fp32 (0.5x on one such machine, docs/performance.md); "
                    "python scripts/bench_bf16.py measures this one")


@contextlib.contextmanager
def numerics(precision: Precision, deterministic: bool, device: torch.device) -> Iterator[None]:
    """TF32 as ``precision`` asks, and deterministic kernels if ``deterministic``, inside;
    the caller's flags afterwards. ``CUBLAS_WORKSPACE_CONFIG`` is set (if unset) for the
    rest of the process; cuBLAS reads it once, at its first use, so the ``rnnlm`` CLI sets it
    at entry (:func:`rnnlm.cli.fix_cublas_workspace`) and this only helps code that has not
    used cuBLAS yet.

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
    if precision is Precision.bf16 and device.type == "cpu":
        _warn_slow_cpu_bf16()
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flush:
            torch.set_flush_denormal(False)
        restore_tf32()
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_flags
