"""rnnlm.data: tokenising, batching, sources (files, $RNNLM_DATA_DIR, Hub offline), cache, errors."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # read when datasets/huggingface_hub are imported; conftest too

import pandas as pd
import pytest
import torch
from helpers import config_options

from rnnlm.config import DatasetConfig
from rnnlm.data import (
    HUB_SPLITS,
    SPLITS,
    Corpus,
    DataError,
    DatasetSource,
    batchify,
    corpus as corpus_module,
    get_batch,
    load_corpus,
    load_dataset,
    load_hub_splits,
    sources,
    tokenize,
)

# The real benchmark files (tests marked ``corpus``): tokens per split with one <eos> per line
# (pytorch/examples word_language_model/data.py, awd-lstm-lm data.py) and vocabulary size.
# PTB is Mikolov's preprocessing (Mikolov et al. 2011, 10k vocabulary): 887,521 words in
# 42,068 lines of train.txt. WikiText-2 v1 tokens and vocabulary as in Table 1 of Merity et
# al. 2017, "Pointer Sentinel Mixture Models" (arXiv 1609.07843).
EXPECTED = {  # name -> ($RNNLM_DATA_DIR subdirectory, tokens per split, vocabulary size)
    "ptb": ("ptb", {"train": 929_589, "valid": 73_760, "test": 82_430}, 10_000),
    "wikitext2": ("wikitext-2", {"train": 2_088_628, "valid": 217_646, "test": 245_569}, 33_278),
}

# Blank lines, leading/trailing/inner whitespace, a tab, a no-break space, non-ASCII.
LINES = {
    "train": [" the cat sat ", "", " = Heading = ", "on\tthe mat", " "],
    "valid": [" the dog\u00a0barked ", "", "café"],
    "test": ["a  cat", "ünïcode"],
}


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("RNNLM_CACHE_DIR", str(tmp_path / "rnnlm-cache"))
    monkeypatch.delenv("RNNLM_DATA_DIR", raising=False)


@pytest.fixture
def no_tokenize(monkeypatch):
    """Make any tokenisation fail: a load must come from the cache."""

    def fail(lines):
        raise AssertionError("re-tokenised a cached corpus")

    monkeypatch.setattr(corpus_module, "tokenize", fail)


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus-cache")


@pytest.fixture(scope="module")
def real(corpus_data, corpus_cache):
    """Both benchmark corpora, tokenised once per module into a temporary cache."""
    return {
        name: load_corpus(name, corpus_data / sub, cache_dir=corpus_cache)
        for name, (sub, _, _) in EXPECTED.items()
    }


def write_dir(directory, lines=LINES):
    directory.mkdir(parents=True, exist_ok=True)
    for split, split_lines in lines.items():
        text = "".join(f"{line}\n" for line in split_lines)
        (directory / f"{split}.txt").write_text(text, encoding="utf-8")
    return directory


def assert_same(a: Corpus, b: Corpus):
    assert a.vocab.itos == b.vocab.itos
    for s in SPLITS:
        assert torch.equal(getattr(a, s), getattr(b, s)), s


def data_error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- tokenisation and batching ---------------------------------------------------------


def test_tokenize_rule():
    assert tokenize([" the cat ", "", "sat\n"]) == ["the", "cat", "<eos>", "<eos>", "sat", "<eos>"]


def test_vocab_in_order_of_first_appearance():
    c = Corpus.from_lines({"train": ["b a"], "valid": ["c a", ""], "test": ["d b"]})
    assert c.vocab.itos == ["b", "a", "<eos>", "c", "d"]
    assert len(c.vocab) == 5 and c.vocab.stoi["c"] == 3
    assert c.train.tolist() == [0, 1, 2]
    assert c.valid.tolist() == [3, 1, 2, 2]
    assert c.test.tolist() == [4, 0, 2]
    assert c.train.dtype == torch.long
    assert c.token_counts == {"train": 3, "valid": 4, "test": 3}


def test_batchify_and_get_batch():
    source = batchify(torch.arange(11), 3, device="cpu")  # 11 // 3 = 3 rows; 9 and 10 dropped
    assert source.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    assert source.is_contiguous()

    inputs, targets = get_batch(source, 0, 2)
    assert inputs.tolist() == [[0, 3, 6], [1, 4, 7]]
    assert targets.tolist() == [[1, 4, 7], [2, 5, 8]]

    inputs, targets = get_batch(source, 1, 5)  # T = min(5, 3 - 1 - 1) = 1
    assert inputs.shape == targets.shape == (1, 3)
    assert inputs.tolist() == [[1, 4, 7]] and targets.tolist() == [[2, 5, 8]]

    with pytest.raises(IndexError):
        get_batch(source, 2, 5)
    with pytest.raises(ValueError):
        batchify(torch.arange(2), 3)


# --- the benchmark corpora (marker ``corpus``: deselected when they are not found) -------


@pytest.mark.corpus
@pytest.mark.parametrize("name", EXPECTED)
def test_real_corpus_counts(real, name):
    _, counts, vocab_size = EXPECTED[name]
    corpus = real[name]
    assert corpus.token_counts == counts
    assert len(corpus.vocab) == vocab_size == len(corpus.vocab.stoi)
    # First appearance order: new ids appear as 0, 1, 2, ...; train alone covers the vocabulary.
    running_max = corpus.train.cummax(0).values
    assert running_max[0] == 0 and bool((running_max.diff() <= 1).all())
    assert running_max[-1] == vocab_size - 1
    assert corpus.vocab.itos[corpus.train[-1]] == "<eos>"


@pytest.mark.corpus
@pytest.mark.parametrize("name", EXPECTED)
def test_real_corpus_cache_hit(real, corpus_data, corpus_cache, name, no_tokenize):
    corpus = load_corpus(name, corpus_data / EXPECTED[name][0], cache_dir=corpus_cache)
    assert_same(corpus, real[name])


@pytest.mark.corpus
@pytest.mark.parametrize("name", EXPECTED)
def test_data_dir_env(real, corpus_data, corpus_cache, monkeypatch, name, no_tokenize):
    monkeypatch.setenv("RNNLM_DATA_DIR", str(corpus_data))
    assert_same(load_corpus(name, cache_dir=corpus_cache), real[name])


# --- small generated corpora: sources and cache ----------------------------------------


def test_path_wins_over_data_dir_env(tmp_path, monkeypatch):
    other = {s: ["other words"] for s in SPLITS}
    monkeypatch.setenv("RNNLM_DATA_DIR", str(tmp_path / "env"))
    write_dir(tmp_path / "env" / "ptb", other)
    assert load_corpus("ptb").vocab.itos == ["other", "words", "<eos>"]
    assert_same(load_corpus("ptb", write_dir(tmp_path / "files")), Corpus.from_lines(LINES))


def test_cache_dir_env_and_atomic_write(tmp_path):
    load_corpus("ptb", write_dir(tmp_path / "files"))
    cache = tmp_path / "rnnlm-cache"  # $RNNLM_CACHE_DIR, set by _isolated_env
    (file,) = cache.glob("*.pt")
    assert list(cache.iterdir()) == [file]  # no temporary file left behind
    saved = torch.load(file, weights_only=True)
    assert saved["itos"] == Corpus.from_lines(LINES).vocab.itos


def test_cache_is_keyed_by_content(tmp_path):
    directory = write_dir(tmp_path / "files")
    assert load_corpus("ptb", directory).token_counts["train"] == 14
    (directory / "train.txt").write_text("one two\n", encoding="utf-8")
    assert load_corpus("ptb", directory).token_counts["train"] == 3


@pytest.mark.parametrize(
    "damage",
    [lambda b: b"not a torch file", lambda b: b[: len(b) // 2]],
    ids=["garbage", "truncated"],
)
def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, damage):
    directory = write_dir(tmp_path / "files")
    expected = load_corpus("ptb", directory)
    (file,) = (tmp_path / "rnnlm-cache").glob("*.pt")
    file.write_bytes(damage(file.read_bytes()))

    calls = []
    monkeypatch.setattr(corpus_module, "tokenize", lambda lines: calls.append(1) or tokenize(lines))
    assert_same(load_corpus("ptb", directory), expected)
    assert len(calls) == 3
    torch.load(file, weights_only=True)  # repaired


# --- the Hub code path, offline, on files written here ---------------------------------


def write_parquet(directory, column, newline):
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for s in SPLITS:
        files[HUB_SPLITS[s]] = str(directory / f"{s}.parquet")
        rows = [line + newline for line in LINES[s]]
        pd.DataFrame({column: rows}).to_parquet(files[HUB_SPLITS[s]])
    return files


def test_hub_text_builder_matches_files(tmp_path):
    directory = write_dir(tmp_path / "files")
    data_files = {HUB_SPLITS[s]: str(directory / f"{s}.txt") for s in SPLITS}
    lines = load_hub_splits("text", data_files=data_files, cache_dir=str(tmp_path / "hf"))
    assert lines == LINES
    assert_same(Corpus.from_lines(lines), load_corpus("ptb", directory))


@pytest.mark.parametrize(
    "column, newline",
    # Salesforce/wikitext rows keep the "\n"; ptb_text_only rows have none.
    [("text", "\n"), ("sentence", "")],
)
def test_hub_parquet_matches_files(tmp_path, column, newline):
    files = write_parquet(tmp_path / "parquet", column, newline)
    lines = load_hub_splits("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))
    assert_same(Corpus.from_lines(lines), load_corpus("ptb", write_dir(tmp_path / "files")))


def test_load_corpus_through_hub_path_uses_cache(tmp_path, monkeypatch):
    files = write_parquet(tmp_path / "parquet", "text", "\n")
    hub = {"path": "parquet", "data_files": files, "cache_dir": str(tmp_path / "hf")}
    source = DatasetSource("wikitext2", "wikitext-2", hub)
    expected = load_corpus("ptb", write_dir(tmp_path / "files"))
    assert_same(load_corpus(source), expected)
    monkeypatch.setattr(corpus_module, "tokenize", lambda lines: pytest.fail("re-tokenised"))
    assert_same(load_corpus(source), expected)


def test_train_tokens_keeps_the_head_of_train_and_everything_else(tmp_path):
    full = Corpus.from_lines(LINES)
    cfg = DatasetConfig(path=str(write_dir(tmp_path / "files")), train_tokens=5)
    head = load_dataset(cfg)
    assert torch.equal(head.train, full.train[:5])
    assert head.vocab.itos == full.vocab.itos  # words seen only later in train keep their ids
    assert torch.equal(head.valid, full.valid) and torch.equal(head.test, full.test)
    every = DatasetConfig(path=cfg.path, train_tokens=full.train.numel())
    assert torch.equal(load_dataset(every).train, full.train)


def test_closed_vocab_keeps_the_training_words_and_maps_the_rest_to_unk(tmp_path):
    lines = {"train": ["a b <unk> a", "c"], "valid": ["a d", "e c"], "test": ["b e f"]}
    full = Corpus.from_lines(lines)
    closed = full.closed_to_train()
    assert closed.vocab.itos == ["a", "b", "<unk>", "<eos>", "c"]  # train's words, in their order
    words = lambda split: [closed.vocab.itos[i] for i in getattr(closed, split)]  # noqa: E731
    assert words("train") == ["a", "b", "<unk>", "a", "<eos>", "c", "<eos>"]
    assert words("valid") == ["a", "<unk>", "<eos>", "<unk>", "c", "<eos>"]
    assert words("test") == ["b", "<unk>", "<unk>", "<eos>"]
    # a training split without <unk> gets one, at the end
    no_unk = Corpus.from_lines({"train": ["a"], "valid": ["z"], "test": ["a"]}).closed_to_train()
    assert no_unk.vocab.itos == ["a", "<eos>", "<unk>"] and no_unk.valid.tolist() == [2, 1]
    # through the config, after the head of train is taken
    cfg = DatasetConfig(path=str(write_dir(tmp_path / "files", lines)), train_tokens=3, closed_vocab=True)
    assert load_dataset(cfg).vocab.itos == ["a", "b", "<unk>"]


# --- errors ------------------------------------------------------------------------------


def test_error_train_tokens_beyond_the_split(tmp_path):
    n = Corpus.from_lines(LINES).train.numel()
    cfg = DatasetConfig(path=str(write_dir(tmp_path / "files")), train_tokens=n + 1)
    message = data_error(load_dataset, cfg)
    assert f"dataset.train_tokens={n + 1} exceeds the {n} tokens" in message and f"at most {n}" in message


def test_error_path_does_not_exist(tmp_path):
    missing = tmp_path / "nope"
    assert f"dataset.path={missing} does not exist" in data_error(load_corpus, "ptb", missing)


def test_error_split_file_missing(tmp_path):
    directory = write_dir(tmp_path / "files")
    (directory / "test.txt").unlink()
    message = data_error(load_corpus, "ptb", directory)
    assert f"dataset.path={directory}" in message and "test.txt is missing" in message


def test_error_split_file_missing_in_data_dir_env(tmp_path, monkeypatch):
    write_dir(tmp_path / "env" / "wikitext-2", {"train": ["a"], "valid": ["b"]})
    monkeypatch.setenv("RNNLM_DATA_DIR", str(tmp_path / "env"))
    message = data_error(load_corpus, "wikitext2")
    assert f"RNNLM_DATA_DIR={tmp_path / 'env'}" in message and "test.txt is missing" in message


def test_error_empty_split(tmp_path):
    directory = write_dir(tmp_path / "files", {**LINES, "valid": []})
    assert "valid.txt is empty" in data_error(load_corpus, "ptb", directory)


def test_error_unknown_dataset():
    message = data_error(load_corpus, "imdb")
    assert "unknown dataset.name='imdb'; choose one of: " in message
    assert all(name in message for name in config_options("dataset"))


@pytest.mark.parametrize("name", config_options("dataset"))
def test_error_offline_without_local_data(tmp_path, monkeypatch, name):
    monkeypatch.setenv("RNNLM_DATA_DIR", str(tmp_path))  # exists, but has no dataset directory
    message = data_error(load_corpus, name)
    assert f"no local {name} data" in message
    assert f"RNNLM_DATA_DIR={tmp_path} has no {sources.packaged_source(name).dirname}/" in message
    assert "dataset.path=DIR" in message and "train.txt, valid.txt, test.txt" in message
    assert not list(tmp_path.glob("rnnlm-cache/*"))


def test_error_hub_bad_column_empty_and_missing_split(tmp_path):
    files = write_parquet(tmp_path / "parquet", "body", "")
    message = data_error(load_hub_splits, "parquet", data_files=files)
    assert "no 'text' or 'sentence' column (it has: body)" in message

    directory = write_dir(tmp_path / "files", {**LINES, "test": []})
    files = {HUB_SPLITS[s]: str(directory / f"{s}.txt") for s in SPLITS}
    message = data_error(load_hub_splits, "text", data_files=files)
    assert "cannot load text with datasets.load_dataset" in message
    assert '"test" corresponds to no data' in message

    files = {"train": files["train"]}
    assert "has no split 'validation'" in data_error(load_hub_splits, "text", data_files=files)

    missing = {"train": str(tmp_path / "missing.txt")}
    message = data_error(load_hub_splits, "text", data_files=missing)
    assert "cannot load text with datasets.load_dataset" in message
