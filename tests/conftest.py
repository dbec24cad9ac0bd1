"""Shared test fixtures. Tests never touch the network.

Every end-to-end test (CLI, sweeps, resume, presets, summary) runs on the tiny generated
corpus of ``tests/tiny_corpus.py``: the session fixture ``tiny_data`` writes it once and
points ``$RNNLM_DATA_DIR`` (and ``$RNNLM_CACHE_DIR``) at temporary directories for the
whole session, so a fresh clone with no data directory runs every test.

Tests marked ``corpus`` check exact counts of the real PTB and WikiText-2 files. They run
when the corpora are found -- ``$RNNLM_DATA_DIR`` if set, else ``../shared/data`` beside
the repository -- and are deselected (not skipped) when they are not.

Tests that take the ``device`` fixture run on the CPU and, when CUDA is available, again on
the GPU; the GPU instances are marked ``gpu`` (``pytest -m gpu`` runs only them) and are
deselected where there is no GPU.

Tests marked ``compile`` run ``torch.compile``, minutes on a CPU: their CPU instances run only
when asked for (``pytest -m compile``); their GPU instances run with the other GPU tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tiny_corpus import DIRNAMES, write_tiny_corpus

# huggingface_hub and datasets read this once, at import: set it before anything imports them.
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]


def find_corpora() -> Path | None:
    """The directory holding ``ptb/`` and ``wikitext-2/``, or None."""
    env = os.environ.get("RNNLM_DATA_DIR")
    root = Path(env).expanduser() if env else REPO.parent / "shared" / "data"
    return root if all((root / name).is_dir() for name in DIRNAMES) else None


# Read at import, before the tiny_data fixture replaces $RNNLM_DATA_DIR.
CORPUS_DATA = find_corpora()


HAS_CUDA = torch.cuda.is_available()


def pytest_report_header(config):
    gpu = (f"CUDA: {torch.cuda.get_device_name()} (tests marked 'gpu' run)" if HAS_CUDA
           else "CUDA: not available; tests marked 'gpu' are deselected")
    if CORPUS_DATA is not None:
        return [f"benchmark corpora: {CORPUS_DATA} (tests marked 'corpus' run)", gpu]
    return ["benchmark corpora: not found ($RNNLM_DATA_DIR, ../shared/data); tests marked 'corpus' are deselected", gpu]


def pytest_collection_modifyitems(config, items):
    compile_asked = "compile" in (config.getoption("markexpr") or "")

    def unavailable(item) -> bool:
        marked = lambda name: item.get_closest_marker(name) is not None  # noqa: E731
        return ((CORPUS_DATA is None and marked("corpus"))
                or (not HAS_CUDA and marked("gpu"))
                or (marked("compile") and not marked("gpu") and not compile_asked))

    deselected = [item for item in items if unavailable(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not unavailable(item)]


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> torch.device:
    """The CPU, and the GPU where there is one (that instance marked ``gpu``)."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def corpus_data() -> Path:
    """The real benchmark corpora (only tests marked ``corpus`` ask for it)."""
    assert CORPUS_DATA is not None, "tests marked 'corpus' are deselected when the corpora are not found"
    return CORPUS_DATA


@pytest.fixture(scope="session", autouse=True)
def tiny_data(tmp_path_factory) -> Path:
    """The tiny corpus under ``ptb/`` and ``wikitext-2/``; $RNNLM_DATA_DIR points here."""
    root = write_tiny_corpus(tmp_path_factory.mktemp("tiny-data"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNNLM_DATA_DIR", str(root))
        mp.setenv("RNNLM_CACHE_DIR", str(tmp_path_factory.mktemp("corpus-cache")))
        yield root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a 2-core machine where another process
    holds a core, 2 OpenMP threads make every small GEMM far slower (spin-waits). Modules of
    small-tensor tests use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def root_logging_restored():
    """In-process ``rnnlm train`` lets Hydra configure the root logger, whose console handler
    binds the stream of that moment: pytest's capture of one test. Each test leaves the root
    logger as it found it, so a later test never logs into a closed capture."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
