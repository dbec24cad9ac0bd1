"""rnnlm: an experiment runner for dropout in recurrent language models."""

import importlib.util as _util
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.2.0"


def _checkout_configs() -> None:
    """Make ``rnnlm.configs`` importable from a source checkout.

    The Hydra configs live in the top-level ``configs/`` directory, which a wheel ships as the
    subpackage ``rnnlm.configs``. Run from a checkout (``python -m pytest``, ``python -c ...``
    in the repository root, with or without an installed rnnlm), this package is the source
    tree's ``rnnlm/`` and has no ``configs/`` inside: the module is then loaded from the
    directory beside it.
    """
    here = _Path(__file__).resolve().parent
    beside = here.parent / "configs" / "__init__.py"
    if (here / "configs").is_dir() or "rnnlm.configs" in _sys.modules or not beside.is_file():
        return
    spec = _util.spec_from_file_location("rnnlm.configs", beside, submodule_search_locations=[str(beside.parent)])
    module = _util.module_from_spec(spec)
    _sys.modules["rnnlm.configs"] = module
    spec.loader.exec_module(module)
    globals()["configs"] = module  # as the import system binds a loaded submodule to its parent


_checkout_configs()
