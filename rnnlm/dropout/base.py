"""What every dropout module in rnnlm shares: when its masks are on.

Masks are sampled in training mode, and also in eval mode while Monte-Carlo
dropout evaluation (Gal & Ghahramani 2016, arXiv 1506.02142) sets ``mc``.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn


class StochasticModule(nn.Module):
    """A module whose randomness is on in ``train()`` and, with ``mc=True``, in ``eval()``.

    Masks that are constant over time (locked, variational, WeightDrop, word-type) are
    drawn through :meth:`held_mask`: normally afresh each forward, but inside
    :func:`mc_pass` once per pass and then reused by every later forward of the pass.
    Per-time-step masks (standard dropout, zoneout) are drawn every step regardless.
    """

    mc: bool = False
    _held: dict[str, torch.Tensor] | None = None

    @property
    def stochastic(self) -> bool:
        return self.training or self.mc

    def held_mask(self, key: str, draw: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``draw()``, or inside an MC pass the mask drawn under ``key`` earlier in the pass."""
        if self._held is None:
            return draw()
        if key not in self._held:
            self._held[key] = draw()
        return self._held[key]


@contextmanager
def mc_pass(model: nn.Module, skip: tuple[type, ...] = ()) -> Iterator[None]:
    """One stochastic pass of MC-dropout evaluation (Gal & Ghahramani 2016, arXiv 1512.05287).

    Inside it every stochastic submodule of ``model`` except those of the ``skip`` types
    has its masks on in ``eval()``, and each mask is drawn once and held for the whole
    pass, however many forwards (BPTT segments) the pass takes, as Gal's LM code draws
    one mask set per pass over the test stream. On exit masks are off and released.
    """
    modules = [m for m in model.modules() if isinstance(m, StochasticModule) and not isinstance(m, skip)]
    for m in modules:
        m.mc, m._held = True, {}
    try:
        yield
    finally:
        for m in modules:
            m.mc, m._held = False, None


# Large CPU masks (W_hh of AWD-size layers: 4600 x 1150) are drawn in fixed chunks from
# independent generators on a thread pool: CPU torch.rand is a single-threaded Mersenne
# Twister, and drawing the WeightDrop masks is most of WeightDrop's cost per step
# (figures: docs/performance.md). The chunk seeds come from the global generator, so
# masks stay reproducible under torch.manual_seed and across resume, and do not depend
# on the thread count.
_PARALLEL_MIN_NUMEL = 1 << 20
_CHUNKS = 4


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rnnlm-rng")


def bernoulli_mask(shape, p: float, like: torch.Tensor) -> torch.Tensor:
    """Inverted-dropout mask of ``shape`` (``like``'s dtype and device): 0 with
    probability p, else 1/(1-p). The draw is that of fp32 for bf16/fp16 ``like``.

    Drawn as ``U >= p`` with U ~ U[0, 1), i.e. Bernoulli(1 - p), which is faster on CPU
    than ``Tensor.bernoulli_``; large CPU masks are drawn in parallel chunks (see above).
    Timings: docs/performance.md.
    """
    numel = math.prod(shape)
    if like.dtype in (torch.bfloat16, torch.float16):  # drawn as in fp32: the same mask under autocast
        return bernoulli_mask(shape, p, like.new_empty(0, dtype=torch.float32)).to(like.dtype)
    if like.device.type != "cpu" or numel < _PARALLEL_MIN_NUMEL:
        return torch.rand(shape, dtype=like.dtype, device=like.device).ge_(p).div_(1.0 - p)
    out = torch.empty(shape, dtype=like.dtype)
    seeds = torch.randint(0, 2**62, (_CHUNKS,)).tolist()

    def fill(chunk: torch.Tensor, seed: int) -> None:  # each chunk stays in its thread's cache
        torch.rand(chunk.shape, generator=torch.Generator().manual_seed(seed), dtype=chunk.dtype, out=chunk)
        chunk.ge_(p).div_(1.0 - p)

    workers = max(1, min(_CHUNKS, torch.get_num_threads()))
    list(_pool(workers).map(fill, out.view(-1).chunk(_CHUNKS), seeds))
    return out
