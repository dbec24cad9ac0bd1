"""Sampling text from a trained model (awd-lstm-lm ``generate.py``, made reproducible).

Starting from ``<eos>`` (a sentence boundary), or from the state after reading
``<eos>`` and a prompt, each next word is drawn from ``softmax(logits / temperature)`` and fed back
in. Masks are off (``eval()``). Draws come from a ``torch.Generator`` seeded with
``seed`` on the CPU, so the same run, seed and settings give the same words on any
device and the global RNG is untouched. Only vocabulary words can be drawn;
``<eos>`` is written as a line break.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..data import EOS, Vocab
from ..model import AWDLSTM


@torch.no_grad()
def sample_words(
    model: AWDLSTM,
    vocab: Vocab,
    words: int,
    temperature: float = 1.0,
    seed: int = 0,
    prompt: Optional[Sequence[int]] = None,
) -> list[int]:
    """``words`` ids drawn one by one; ``prompt`` (ids) conditions the hidden state first."""
    if words < 1:
        raise ValueError(f"words={words} must be >= 1")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    model.eval()
    device = model.encoder.weight.device
    generator = torch.Generator().manual_seed(seed)
    context = [vocab.stoi[EOS], *(prompt or ())]  # a prompt is read as the start of a sentence
    hidden = model.init_hidden(1)
    out = model(torch.tensor(context, device=device).view(-1, 1), hidden)  # (T, 1) -> logits (T, 1, V)
    drawn: list[int] = []
    for _ in range(words):
        logits = out.logits[-1, 0].float().cpu() / temperature  # (V,)
        probs = torch.softmax(logits, dim=-1)
        word = int(torch.multinomial(probs, 1, generator=generator))
        drawn.append(word)
        out = model(torch.tensor([[word]], device=device), out.hidden)
    return drawn


def render(ids: Sequence[int], vocab: Vocab) -> str:
    """Words separated by spaces, one line per ``<eos>``; ends with a newline."""
    lines, line = [], []
    for i in ids:
        word = vocab.itos[i]
        if word == EOS:
            lines.append(" ".join(line))
            line = []
        else:
            line.append(word)
    if line:
        lines.append(" ".join(line))
    return "\n".join(lines) + "\n"
