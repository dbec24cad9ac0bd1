"""WeightDrop: DropConnect on the recurrent weight W_hh (Wan et al. 2013; Merity et al.
2017, arXiv 1708.02182, Sec. 2), keeping the fused LSTM kernel (cuDNN / ATen).

``W_hh`` has shape (4H, H): four gate blocks (i, f, g, o) of (H, H); column j is
everything unit j of h_{t-1} sends back. One mask is drawn per forward
(minibatch) and applied to the weight, never to activations:

=============  ===========  =====================================================
mask           shape        meaning
=============  ===========  =====================================================
element        (4H, H)      AWD default: each recurrent connection independently
row            (4H, 1)      AWD ``variational=True``: a gate row of one unit
                            loses all its recurrent input
column         (1, H)       unit j's recurrent output is cut from all gates
                            (= Gal's tied mask on h_{t-1}, but per minibatch)
gate_column    (4, 1, H)    a column mask per gate block (= Gal untied, per
                            minibatch)
=============  ===========  =====================================================

The raw weight stays an ordinary ``nn.LSTM`` Parameter (no ``del _parameters``
monkey-patch, no ``parametrize``). Each training forward writes the layer's weights, with
``W_hh * mask`` in place of ``W_hh``, into one persistent buffer (:class:`FlatWeights`) laid
out as the fused LSTM kernel wants them, and calls the kernel (``torch.lstm``, the op
``nn.LSTM.forward`` calls) on views of it; the gradient reaches the raw weights through
:class:`_DropIntoFlat`. On CUDA that layout is cuDNN's: the kernel uses the buffer as its
weight buffer instead of copying the weights into a new one each forward (cuDNN's "weights
are not part of single contiguous chunk of memory" path), and the addresses stay the same
from step to step, as CUDA graphs need. The ``nn.LSTM`` module itself is never handed other
weights: swapping them in (``torch.func.functional_call``) makes its forward see changed
weights and re-flatten them into a new buffer (``flatten_parameters``), on that call and
again on the next one with its own. All masks, row included, are off in ``eval()``
(awd-lstm-lm's ``WeightDrop(variational=True)`` keeps its row masks on at test time).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..cpu_kernels import lstm_kernel
from ..base import StochasticModule
from ..scheme import RecurrentScheme

# Each mask as a shape that broadcasts against W_hh viewed as (4, H, H): gate, row, column.
MASK_SHAPES = {
    "element": lambda H: (4, H, H),
    "row": lambda H: (4, H, 1),
    "column": lambda H: (1, 1, H),
    "gate_column": lambda H: (4, 1, H),
}


def drop_connect(w_hh: torch.Tensor, mask: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``W_hh * mask`` as a (4H, H) tensor (into ``out`` if given): ``w_hh (4H, H)`` viewed as
    (4, H, H), gate block by row by column, times a mask of :data:`MASK_SHAPES`."""
    H = w_hh.shape[1]
    view = w_hh.view(4, H, H)
    if out is None:
        return (view * mask).view(4 * H, H)
    torch.mul(view, mask, out=out.view(4, H, H))
    return out


class WeightDrop(RecurrentScheme):
    name = "weight_drop"
    masks = tuple(MASK_SHAPES)

    @classmethod
    def build(cls, input_size: int, hidden_size: int, rate: float, mask: str, cell_rate: float = 0.0,
              input_rate: float = 0.0) -> "WeightDropLSTM":
        return WeightDropLSTM(input_size, hidden_size, rate, mask)


class FlatWeights:
    """One buffer holding an ``nn.LSTM`` layer's weights (``w_ih``, ``w_hh``, ``b_ih``, ``b_hh``)
    where the fused kernel expects them: at the offsets of the layer's own parameters when
    those are views of one flat storage (what ``nn.LSTM.flatten_parameters`` makes on CUDA,
    in cuDNN's layout), else one after the other."""

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self.key = self.layout_key(params)
        self.shapes = [(p.shape, p.stride()) for p in params]
        self.offsets = self.key[2]
        self.buffer = torch.empty(self.key[3], dtype=params[0].dtype, device=params[0].device)

    @staticmethod
    def layout_key(params: Sequence[torch.Tensor]) -> tuple:
        """(device, dtype, element offsets, buffer size) of ``params``' flat layout."""
        p0 = params[0]
        storage = p0.untyped_storage()
        shared = all(p.untyped_storage().data_ptr() == storage.data_ptr() for p in params)
        size = sum(p.numel() for p in params)
        if shared and storage.nbytes() == size * p0.element_size():
            offsets = tuple(p.storage_offset() for p in params)
        else:
            offsets, start = [], 0
            for p in params:
                offsets.append(start)
                start += p.numel()
            offsets = tuple(offsets)
        return p0.device, p0.dtype, offsets, size

    def views(self) -> list[torch.Tensor]:
        """The four weights as views of the buffer (new view objects, the same memory)."""
        return [self.buffer.as_strided(shape, stride, offset)
                for (shape, stride), offset in zip(self.shapes, self.offsets)]


class _DropIntoFlat(torch.autograd.Function):
    """``(w_ih, w_hh * mask, b_ih, b_hh)`` written into ``flat``'s buffer, returned as views of it.
    Backward: the incoming gradients, with ``d w_hh = d(dropped) * mask``."""

    @staticmethod
    def forward(ctx, flat: FlatWeights, mask, w_ih, w_hh, b_ih, b_hh):
        views = flat.views()
        views[0].copy_(w_ih)
        drop_connect(w_hh, mask, out=views[1])
        views[2].copy_(b_ih)
        views[3].copy_(b_hh)
        ctx.save_for_backward(mask)
        return tuple(views)

    @staticmethod
    def backward(ctx, d_ih, d_hh, d_bih, d_bhh):
        (mask,) = ctx.saved_tensors
        d_w_hh = None if d_hh is None else drop_connect(d_hh, mask)
        return None, None, d_ih, d_w_hh, d_bih, d_bhh


class WeightDropLSTM(StochasticModule):
    """A one-layer LSTM ``(T, B, I) -> (T, B, H)`` with DropConnect on ``weight_hh_l0``."""

    def __init__(self, input_size: int, hidden_size: int, p: float, mask: str = "element") -> None:
        WeightDrop.validate(p, mask)
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size)
        self.p = p
        self.mask = mask
        self.flat: Optional[FlatWeights] = None  # made at the first masked forward

    @property
    def flat_buffer(self) -> Optional[torch.Tensor]:
        """The persistent buffer the masked forward calls the LSTM kernel on (None before one)."""
        return None if self.flat is None else self.flat.buffer

    def flat_weights(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """The layer's weights with ``W_hh * mask``, as views of the persistent buffer, made (or
        remade, after a move to another device or dtype) to the parameters' current layout."""
        lstm = self.lstm
        params = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
        if self.flat is None or self.flat.key != FlatWeights.layout_key(params):
            self.flat = FlatWeights(params)
        return list(_DropIntoFlat.apply(self.flat, mask.to(params[1].dtype), *params))

    def sample_mask(self) -> torch.Tensor:
        """A mask that broadcasts against W_hh viewed as (4, H, H); values in {0, 1/(1-p)}."""
        shape = MASK_SHAPES[self.mask](self.lstm.hidden_size)
        return self.dropout_mask(shape, self.p, self.lstm.weight_hh_l0)

    def dropped_weight(self, mask: torch.Tensor) -> torch.Tensor:
        """W_hh * mask as a (4H, H) tensor, differentiable w.r.t. the raw weight."""
        return drop_connect(self.lstm.weight_hh_l0, mask)

    def forward(self, x: torch.Tensor, hx=None, mask: torch.Tensor | None = None):
        """``x (T, B, I)``, ``hx`` = (h0, c0) each (1, B, H) -> (out (T, B, H), (h_n, c_n))."""
        if mask is None:
            if not self.stochastic or self.p == 0:
                return lstm_kernel(self.lstm, x, hx)
            mask = self.held_mask("mask", self.sample_mask)
        weights = self.flat_weights(mask)

        def kernel(x: torch.Tensor, hx):
            if hx is None:
                zeros = x.new_zeros(1, x.size(1), self.lstm.hidden_size)
                hx = (zeros, zeros)
            out, h_n, c_n = torch.lstm(x, hx, weights, True, 1, 0.0, self.training, False, False)
            return out, (h_n, c_n)

        return lstm_kernel(kernel, x, hx)

    def extra_repr(self) -> str:
        return f"p={self.p}, mask={self.mask}"
