"""AWD-LSTM and its relatives: a word-level LSTM language model whose every dropout
is a configuration choice (Merity et al. 2017, arXiv 1708.02182).

Data flow, time-major::

    tokens (T, B)
      -> EmbeddingDropout (word types, p=dropout.embedding)     (T, B, E)
         (per minibatch, sequence or token: dropout.embedding_mask)
      -> SequenceDropout (dropout.input)                        (T, B, E)
      -> [recurrent layer l (+ its recurrent dropout)           (T, B, H_l)
          -> SequenceDropout (dropout.hidden) between layers] x L
      -> SequenceDropout (dropout.output) on the last layer     (T, B, H_L)
      -> decoder (tied to the embedding when H_L == E)          (T, B, V)

Each layer is a one-layer LSTM so dropout can sit between layers (never
``nn.LSTM(dropout=)``, which would drop twice). With tied weights the last layer
outputs ``emsize`` so the decoder can share the embedding matrix (Inan et al.
2016; Press & Wolf 2016).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..config import DropoutConfig, ModelConfig, WordMask
from ..dropout import EmbeddingDropout, SequenceDropout, recurrent_layer
from ..precision import to_fp32

Hidden = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (h, c), each (1, B, H_l)


class LMOutput(NamedTuple):
    logits: torch.Tensor  # (T, B, V)
    hidden: Hidden  # final state of each layer
    raw_output: torch.Tensor  # (T, B, H_L) last layer output before output dropout (TAR)
    output: torch.Tensor  # (T, B, H_L) after output dropout (AR)


class AWDLSTM(nn.Module):
    """Word-level LSTM language model with configurable dropout at every site."""

    def __init__(self, vocab_size: int, model: ModelConfig, dropout: DropoutConfig) -> None:
        super().__init__()
        E, H, L = model.emsize, model.nhid, model.nlayers
        self.sizes = [E] + [H] * (L - 1) + [E if model.tie_weights else H]  # layer widths
        self.encoder = nn.Embedding(vocab_size, E)
        self.embedding_dropout = EmbeddingDropout(
            self.encoder, dropout.embedding, mask=WordMask(dropout.embedding_mask).value)
        # Each layer's input rate: dropout.input for the first, dropout.hidden above. With
        # per-gate input masks (Gal untied) the layers draw them, so no shared mask here.
        input_rates = [dropout.input] + [dropout.hidden] * (L - 1)
        inside = dropout.recurrent.per_gate_input
        self.input_dropout = SequenceDropout(0.0 if inside else dropout.input, dropout.locked)
        self.hidden_dropout = SequenceDropout(0.0 if inside else dropout.hidden, dropout.locked)
        self.output_dropout = SequenceDropout(dropout.output, dropout.locked)
        self.rnns = nn.ModuleList(
            recurrent_layer(self.sizes[l], self.sizes[l + 1], dropout.recurrent, input_rates[l])
            for l in range(L)
        )
        self.decoder = nn.Linear(self.sizes[-1], vocab_size)
        if model.tie_weights:
            self.decoder.weight = self.encoder.weight
        if model.init_range is not None:  # Zaremba et al. 2014
            for p in self.parameters():
                nn.init.uniform_(p, -model.init_range, model.init_range)
        else:  # awd-lstm-lm
            nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
            if not model.tie_weights:
                nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
            nn.init.zeros_(self.decoder.bias)

    def init_hidden(self, batch_size: int) -> Hidden:
        w = self.encoder.weight
        return [
            (w.new_zeros(1, batch_size, h), w.new_zeros(1, batch_size, h)) for h in self.sizes[1:]
        ]

    def forward(self, tokens: torch.Tensor, hidden: Hidden) -> LMOutput:
        """``tokens (T, B)`` and the previous state -> logits ``(T, B, V)`` and the new state."""
        x = self.input_dropout(self.embedding_dropout(tokens))  # (T, B, E)
        new_hidden: Hidden = []
        for l, rnn in enumerate(self.rnns):
            x, state = rnn(x, hidden[l])  # (T, B, H_l)
            new_hidden.append(state)
            if l < len(self.rnns) - 1:
                x = self.hidden_dropout(x)
        output = self.output_dropout(x)
        # Logits in fp32 even when autocast computed the decoder in bf16/fp16: the loss and
        # every evaluation are computed from them.
        return LMOutput(to_fp32(self.decoder(output)), new_hidden, x, output)


def repackage_hidden(hidden: Hidden) -> Hidden:
    """Detach the state from its history (truncated BPTT)."""
    return [(h.detach(), c.detach()) for h, c in hidden]


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (a tied matrix counts once)."""
    return sum(p.numel() for p in model.parameters())
