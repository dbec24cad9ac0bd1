"""A source checkout imports itself: ``configs/`` sits beside ``rnnlm/`` and is still
``rnnlm.configs``, with or without an installed rnnlm (``python -m pytest`` and
``python -c`` in the repository root put the source tree first on ``sys.path``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_checkout_alone_provides_rnnlm_configs():
    # -S: no site-packages at all, so no installed rnnlm and no editable-install finder
    code = "import rnnlm.configs, rnnlm; print(rnnlm.configs.__file__); print(rnnlm.configs is rnnlm.configs)"
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    path, same = out.stdout.split()
    assert Path(path) == REPO / "configs" / "__init__.py" and same == "True"


def test_the_configs_are_found_as_package_resources_from_the_checkout():
    code = ("import importlib.resources as r, rnnlm.configs; "
            "print(r.files('rnnlm.configs').joinpath('config.yaml').is_file())")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
