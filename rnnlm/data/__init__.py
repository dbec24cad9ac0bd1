"""Corpora, batching and data sources (see ``corpus`` and ``sources``)."""

from .corpus import EOS, SPLITS, Corpus, Vocab, batchify, get_batch, tokenize
from .sources import (
    HUB_SPLITS,
    DataError,
    DatasetSource,
    load_corpus,
    load_dataset,
    load_hub_splits,
    packaged_datasets,
    packaged_source,
)

__all__ = [
    "EOS",
    "SPLITS",
    "Corpus",
    "Vocab",
    "batchify",
    "get_batch",
    "tokenize",
    "HUB_SPLITS",
    "DataError",
    "DatasetSource",
    "load_corpus",
    "load_dataset",
    "load_hub_splits",
    "packaged_datasets",
    "packaged_source",
]
