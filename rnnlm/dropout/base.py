"""What every dropout module in rnnlm shares: when its masks are on.

Masks are sampled in training mode, and also in eval mode while Monte-Carlo
dropout evaluation (Gal & Ghahramani 2016, arXiv 1506.02142) sets ``mc``.
"""

from __future__ import annotations

import math
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


# Large CPU masks (numel >= _CHUNKED_MIN_NUMEL, e.g. the 4600 x 1150 W_hh of an AWD
# layer) are drawn as _CHUNKS consecutive chunks, each from its own generator seeded from
# the global one. The chunks once filled in parallel on a thread pool; it gained less than
# the 5 % it had to earn (docs/performance.md) and is gone, but the chunked draw stays so
# that a seed gives the same masks as before (and a resumed run those of the original).
# The seeds come from the global generator: masks stay reproducible under
# torch.manual_seed and across resume.
_CHUNKED_MIN_NUMEL = 1 << 20
_CHUNKS = 4


def bernoulli_mask(shape, p: float, like: torch.Tensor) -> torch.Tensor:
    """Inverted-dropout mask of ``shape`` (``like``'s dtype and device): 0 with
    probability p, else 1/(1-p). The draw is that of fp32 for bf16/fp16 ``like``.

    Drawn as ``U >= p`` with U ~ U[0, 1), i.e. Bernoulli(1 - p), which is faster on CPU
    than ``Tensor.bernoulli_``; large CPU masks are drawn in chunks (see above).
    Timings: docs/performance.md.
    """
    numel = math.prod(shape)
    if like.dtype in (torch.bfloat16, torch.float16):  # drawn as in fp32: the same mask under autocast
        return bernoulli_mask(shape, p, like.new_empty(0, dtype=torch.float32)).to(like.dtype)
    if like.device.type != "cpu" or numel < _CHUNKED_MIN_NUMEL:
        return torch.rand(shape, dtype=like.dtype, device=like.device).ge_(p).div_(1.0 - p)
    out = torch.empty(shape, dtype=like.dtype)
    seeds = torch.randint(0, 2**62, (_CHUNKS,)).tolist()
    for chunk, seed in zip(out.view(-1).chunk(_CHUNKS), seeds):
        torch.rand(chunk.shape, generator=torch.Generator().manual_seed(seed), dtype=chunk.dtype, out=chunk)
        chunk.ge_(p).div_(1.0 - p)
    return out
