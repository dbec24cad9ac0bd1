"""Word-level corpora as tensors of token ids, and the batching used to train on them.

Follows pytorch/examples ``word_language_model/data.py`` and ``main.py`` (``batchify``,
``get_batch``), which awd-lstm-lm (salesforce/awd-lstm-lm ``data.py``, ``utils.py``) also uses:

- ``tokenize``: every line, blank lines included, becomes ``line.split() + ['<eos>']``.
- The vocabulary lists words in order of first appearance: train, then valid, then test.
- ``Corpus.train/valid/test``: 1-D ``LongTensor`` of shape ``(N,)`` (N tokens of the split).
- ``batchify``: ``(N,)`` -> ``(N // B, B)``, time-major; column b is the b-th contiguous chunk
  of the stream, trailing ``N % B`` tokens dropped.
- ``get_batch``: ``(L, B)`` -> inputs ``(T, B)`` and targets ``(T, B)`` (inputs shifted by
  one step), with ``T = min(seq_len, L - 1 - i)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from typing import Iterable, Mapping

import torch

EOS = "<eos>"
UNK = "<unk>"  # the out-of-vocabulary word of PTB (Mikolov's preprocessing) and WikiText
SPLITS = ("train", "valid", "test")


def tokenize(lines: Iterable[str]) -> list[str]:
    """``line.split() + ['<eos>']`` for every line (a trailing newline is just whitespace)."""
    return [tok for line in lines for tok in (*line.split(), EOS)]


@dataclass
class Vocab:
    """Index <-> word maps; ``stoi`` is derived from ``itos``."""

    itos: list[str]
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)


@dataclass
class Corpus:
    """A vocabulary and the three splits as 1-D LongTensors of ids, each of shape ``(N,)``."""

    vocab: Vocab
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor

    @classmethod
    def from_lines(cls, splits: Mapping[str, Iterable[str]]) -> Corpus:
        """Tokenise ``splits['train'|'valid'|'test']`` and number words by first appearance."""
        tokens = {s: tokenize(splits[s]) for s in SPLITS}
        vocab = Vocab(list(dict.fromkeys(chain.from_iterable(tokens.values()))))
        ids = [[vocab.stoi[w] for w in tokens[s]] for s in SPLITS]
        return cls(vocab, *(torch.tensor(x, dtype=torch.long) for x in ids))

    def head_of_train(self, tokens: int) -> Corpus:
        """The same corpus with only the first ``tokens`` tokens of its training split.

        The vocabulary, validation and test splits are unchanged. ``tokens`` must be at least
        2 and at most the split's length.
        """
        n = self.train.numel()
        if not 2 <= tokens <= n:
            raise ValueError(f"cannot keep {tokens} of the {n} training tokens")
        return Corpus(self.vocab, self.train[:tokens], self.valid, self.test)

    def closed_to_train(self) -> Corpus:
        """The corpus over the words of its training split only: every other word, in every
        split, becomes ``<unk>`` (:data:`UNK`, added to the vocabulary if training lacks it).

        A word that never occurs in training only ever has its probability pushed down by
        the softmax, so on a short training split (:meth:`head_of_train`) such words come to
        dominate the validation loss. The vocabulary keeps the original order of the words it
        keeps (first appearance, train first).
        """
        seen = torch.zeros(len(self.vocab), dtype=torch.bool)
        seen[self.train] = True
        if UNK in self.vocab.stoi:
            seen[self.vocab.stoi[UNK]] = True
        itos = [w for w, keep in zip(self.vocab.itos, seen.tolist()) if keep]
        itos += [] if UNK in itos else [UNK]
        vocab = Vocab(itos)
        new_id = torch.full((len(self.vocab),), vocab.stoi[UNK], dtype=torch.long)
        new_id[seen] = torch.tensor([vocab.stoi[w] for w in itos if w in self.vocab.stoi], dtype=torch.long)
        return Corpus(vocab, *(new_id[getattr(self, s)] for s in SPLITS))

    @property
    def token_counts(self) -> dict[str, int]:
        """Tokens (``<eos>`` included) per split."""
        return {s: getattr(self, s).numel() for s in SPLITS}


def batchify(
    data: torch.Tensor, batch_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Cut the stream ``(N,)`` into ``batch_size`` columns: ``(N // batch_size, batch_size)``."""
    nbatch = data.size(0) // batch_size
    if nbatch == 0:
        raise ValueError(f"cannot batchify {data.size(0)} tokens into {batch_size} columns")
    return data[: nbatch * batch_size].view(batch_size, nbatch).t().contiguous().to(device)


def get_batch(source: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``i : i+T`` of ``source (L, B)`` as inputs, rows ``i+1 : i+1+T`` as targets; ``(T, B)``."""
    seq_len = min(seq_len, len(source) - 1 - i)
    if seq_len < 1:
        raise IndexError(f"get_batch: i={i} leaves no target in a source of length {len(source)}")
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len]
