"""CPU kernel facts and the shim of ``nn.LSTM``'s CPU kernel under autocast.

Beside :mod:`rnnlm.dropout.mkldnn_linear` (the oneDNN GEMMs of the fused step loop): what the
CPU and torch's oneDNN build can do in low precision, probed once per process.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The feature flags of this CPU (``/proc/cpuinfo``); empty where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (flags avx512_bf16 or amx_bf16); without it bf16
    is emulated and slower than fp32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX tiles for bf16 (flag amx_bf16), with which oneDNN's bf16 GEMMs
    outrun fp32 ones. With AVX512_BF16 alone they can be slower than fp32: 0.5-0.6x on one
    such machine (docs/performance.md, scripts/bench_bf16.py)."""
    return "amx_bf16" in cpu_flags()


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
