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

    Masks come from ``generator`` (the run's stream for this module's source,
    :mod:`rnnlm.training.streams`), or from torch's global generator while it is None.
    """

    mc: bool = False
    _held: dict[str, torch.Tensor] | None = None
    generator: torch.Generator | None = None

    def dropout_mask(self, shape, p: float, like: torch.Tensor) -> torch.Tensor:
        """An inverted-dropout mask from this module's generator (:func:`bernoulli_mask`)."""
        return bernoulli_mask(shape, p, like, self.generator)

    def keep_mask(self, shape, z: float, like: torch.Tensor) -> torch.Tensor:
        """A {0, 1} mask of ``like``'s dtype and device, 1 with probability ``z`` (zoneout)."""
        return like.new_empty(shape).bernoulli_(z, generator=self.generator)

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
    one mask set per pass over the test stream. The masks come from torch's global generator
    (the caller seeds it), never from a training run's streams. On exit masks are off and
    released.
    """
    modules = [m for m in model.modules() if isinstance(m, StochasticModule) and not isinstance(m, skip)]
    streams = [m.generator for m in modules]
    for m in modules:
        m.mc, m._held, m.generator = True, {}, None
    try:
        yield
    finally:
        for m, generator in zip(modules, streams):
            m.mc, m._held, m.generator = False, None, generator


# Large CPU masks (numel >= _CHUNKED_MIN_NUMEL, e.g. the 4600 x 1150 W_hh of an AWD
# layer) are drawn as _CHUNKS consecutive chunks, each from a generator seeded by a draw
# from the mask's generator, so a seed gives the same masks whatever the chunking costs
# (docs/performance.md).
_CHUNKED_MIN_NUMEL = 1 << 20
_CHUNKS = 4


def bernoulli_mask(shape, p: float, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverted-dropout mask of ``shape`` (``like``'s dtype and device): 0 with
    probability p, else 1/(1-p), drawn from ``generator`` (None: torch's global one, on
    ``like``'s device). The draw is that of fp32 for bf16/fp16 ``like``.

    Drawn as ``U >= p`` with U ~ U[0, 1), i.e. Bernoulli(1 - p), which is faster on CPU
    than ``Tensor.bernoulli_``; large CPU masks are drawn in chunks (see above).
    Timings: docs/performance.md.
    """
    numel = math.prod(shape)
    if like.dtype in (torch.bfloat16, torch.float16):  # drawn as in fp32: the same mask under autocast
        return bernoulli_mask(shape, p, like.new_empty(0, dtype=torch.float32), generator).to(like.dtype)
    if like.device.type != "cpu" or numel < _CHUNKED_MIN_NUMEL:
        return torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator).ge_(p).div_(1.0 - p)
    out = torch.empty(shape, dtype=like.dtype)
    seeds = torch.randint(0, 2**62, (_CHUNKS,), generator=generator).tolist()
    for chunk, seed in zip(out.view(-1).chunk(_CHUNKS), seeds):
        torch.rand(chunk.shape, generator=torch.Generator().manual_seed(seed), dtype=chunk.dtype, out=chunk)
        chunk.ge_(p).div_(1.0 - p)
    return out
