"""``x @ w.T (+ b)`` for the fused LSTM loop: oneDNN's linear where it applies, ``torch.mm`` otherwise.

The fast path uses two private ops that CPU builds of torch with oneDNN (mkldnn) register
for Inductor's CPU lowering of ``nn.Linear``. They are not public API and carry no
stability promise, so they are used in this module only:

- ``torch.ops.mkldnn._reorder_linear_weight(w, batch_size)``: ``w (N, K)`` fp32 -> the same
  matrix as an opaque oneDNN tensor (``layout=torch._mkldnn``), reordered into the blocked
  layout oneDNN's matmul wants for inputs of ``batch_size`` rows. Done once per weight
  and reused by many GEMMs.
- ``torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")``: ``x (M, K)``, ``w (N, K)``
  (dense, or prepacked as above), ``b (N,)`` or None -> ``x @ w.T + b``, ``(M, N)``, as
  ``torch.nn.functional.linear``; ``"none", [], ""`` select no fused post-op.

Why: the fused loop's per-step GEMMs (h_{t-1} @ W_hh^T forward, dgates_t @ W_hh backward)
are skinny, B (~20) rows against a 4H x H weight. oneDNN with the weight prepacked once per
forward/backward runs them several times faster than ``torch.mm`` (MKL's sgemm), the way
oneDNN's RNN primitive makes ``nn.LSTM`` fast on CPU (figures: docs/performance.md,
``scripts/bench_step_lstm.py``). Given an operand that is neither row- nor column-major,
oneDNN falls onto a much slower reference kernel, hence :func:`dense`.

The fallback is the same computation in plain PyTorch (``torch.mm`` / ``torch.addmm``).
:func:`use_mkldnn` is the one place that chooses: the ops for CPU fp32 weights while
``torch.backends.mkldnn.enabled`` and :func:`ops_available`; the fallback on CUDA, for
other dtypes (float64, bf16, fp16), with oneDNN switched off, and on a build whose ops are
missing or broken; in that last case it logs a warning once, at first use, since the loop
then runs several times slower on CPU. ``tests/test_mkldnn_linear.py`` fails if a CPU build
with oneDNN lacks the ops, and checks that both paths give the same numbers.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Optional

import torch
from torch import Tensor

log = logging.getLogger(__name__)


@functools.cache
def ops_available() -> bool:
    """Whether this build has oneDNN's prepacked linear and it computes ``x @ w.T``."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        # fixed values: drawing from the global RNG here would shift every later mask
        w = torch.arange(32.0).view(8, 4) / 32
        x = torch.arange(12.0).view(3, 4) / 12
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.allclose(y, x @ w.t(), atol=1e-5))
    except (RuntimeError, AttributeError, TypeError):
        return False


def use_mkldnn(w: Tensor) -> bool:
    """Whether GEMMs with the weight ``w`` take the oneDNN ops (else the ``torch.mm`` fallback)."""
    if not (w.device.type == "cpu" and w.dtype == torch.float32 and torch.backends.mkldnn.enabled):
        return False
    if ops_available():
        return True
    _warn_missing_ops()
    return False


@functools.cache
def _warn_missing_ops() -> None:
    """Say once per process that a oneDNN build lacks the ops (the loop falls back to torch.mm)."""
    if torch.backends.mkldnn.is_available():
        log.warning("this torch build has oneDNN but not its prepacked linear ops (torch.ops.mkldnn."
                    "_reorder_linear_weight/_linear_pointwise), or they compute wrong values: the step loop "
                    "of step-loop recurrent dropouts uses torch.mm instead, several times slower on CPU "
                    "(docs/performance.md)")


def dense(t: Tensor) -> Tensor:
    """A 2-D operand oneDNN multiplies fast: row- or column-major. Other strides (e.g. a column
    block of a wider matrix) fall onto a much slower reference kernel (docs/performance.md)."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def prepacked_linear(w: Tensor, batch: int) -> Callable[[Tensor], Tensor]:
    """``x -> x @ w.T`` for many calls on ``(batch, K)`` inputs; ``w (N, K)`` is prepared once."""
    if use_mkldnn(w):
        packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), batch)
        return lambda x: torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), packed, None, "none", [], "")
    wt = w.t()
    return lambda x: torch.mm(x, wt)


def linear(x: Tensor, w: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``x (M, K) @ w (N, K).T (+ bias (N,))`` -> ``(M, N)``, for the once-per-sequence GEMMs."""
    if use_mkldnn(w):
        return torch.ops.mkldnn._linear_pointwise(dense(x), dense(w), bias, "none", [], "")
    return torch.mm(x, w.t()) if bias is None else torch.addmm(bias, x, w.t())
