"""Corpora, batching and data sources (see ``corpus`` and ``sources``)."""

from .corpus import EOS, SPLITS, Corpus, Vocab, batchify, get_batch, tokenize
from .sources import DATASETS, HUB_SPLITS, DataError, DatasetSource, load_corpus, load_hub_splits

__all__ = [
    "EOS",
    "SPLITS",
    "Corpus",
    "Vocab",
    "batchify",
    "get_batch",
    "tokenize",
    "DATASETS",
    "HUB_SPLITS",
    "DataError",
    "DatasetSource",
    "load_corpus",
    "load_hub_splits",
]
