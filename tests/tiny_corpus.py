"""A tiny word-level corpus for end-to-end tests: a few KB, made by the tests themselves.

The text is drawn from a small stochastic grammar, so a language model can learn
something from it (perplexity falls during a short run), yet it is fixed for a given
seed and needs neither network nor the benchmark corpora. ``write_tiny_corpus(DIR)``
writes ``DIR/ptb/`` and ``DIR/wikitext-2/`` in the layout ``RNNLM_DATA_DIR`` expects,
each with ``train.txt``, ``valid.txt`` and ``test.txt``, one sentence per line.
"""

from __future__ import annotations

import random
from pathlib import Path

SUBJECTS = ("the cat", "a dog", "the old man", "my sister", "the bank", "a bird", "the market")
VERBS = ("sees", "likes", "buys", "sells", "finds", "watches", "follows")
OBJECTS = ("the fish", "a house", "the shares", "some bread", "the river", "a car", "the news")
TAILS = ("", "today", "in the morning", "again", "for N dollars", "and then leaves")

# The layouts the dataset presets read from $RNNLM_DATA_DIR.
DIRNAMES = ("ptb", "wikitext-2")
SPLIT_LINES = {"train": 240, "valid": 40, "test": 40}


def sentence(rng: random.Random) -> str:
    words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(TAILS)]
    return " ".join(w for w in words if w)


def tiny_splits(seed: int = 0) -> dict[str, list[str]]:
    """The lines of each split; every valid/test word also occurs in train."""
    rng = random.Random(seed)
    return {split: [sentence(rng) for _ in range(n)] for split, n in SPLIT_LINES.items()}


def write_split_files(directory: Path, seed: int = 0) -> Path:
    """``directory/{train,valid,test}.txt``; returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, lines in tiny_splits(seed).items():
        (directory / f"{split}.txt").write_text("".join(f" {line} \n" for line in lines), encoding="utf-8")
    return directory


def write_tiny_corpus(root: Path, seed: int = 0) -> Path:
    """A data root with the tiny corpus under every dataset directory name; returns ``root``."""
    for name in DIRNAMES:
        write_split_files(Path(root) / name, seed)
    return Path(root)
