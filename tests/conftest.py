"""Shared test fixtures. Tests never touch the network."""

import os
from pathlib import Path

import pytest

# huggingface_hub and datasets read this once, at import: set it before anything imports them.
os.environ["HF_HUB_OFFLINE"] = "1"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (ptb/ and wikitext-2/ with train/valid/test.txt)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark corpora not found at {SHARED_DATA}")
    return SHARED_DATA
