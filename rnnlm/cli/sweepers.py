"""Makes Hydra see rnnlm's sweepers (``hydra/sweeper=rnnlm_optuna``, ``rnnlm_blocks``) however
rnnlm is installed.

Hydra finds plugins by walking the ``hydra_plugins`` namespace package with ``pkgutil``
(``Plugins._scan_all_plugins``), importing every module it lists, which registers each
sweeper's class and its config node. A wheel installs ``hydra_plugins/rnnlm_*`` as plain
directories in site-packages, and that walk finds them. An editable install (setuptools'
PEP 660 import hook) puts a placeholder entry on ``hydra_plugins.__path__`` that imports
through the hook but that ``pkgutil`` cannot list, so the walk finds the sweepers only when
the source checkout itself is on ``sys.path`` (``python`` started in its root); the ``rnnlm``
command, run from anywhere, does not see them. :func:`ensure_sweepers` imports the sweepers
that the walk did not find and registers them with ``Plugins.register``, Hydra's public
fallback; the ones it found are left as Hydra has them.
"""

from __future__ import annotations

import importlib

# (package, the module with the Sweeper class, the class): each package's config module
# registers its config node.
SWEEPERS = (
    ("hydra_plugins.rnnlm_optuna_sweeper", "optuna_sweeper", "OptunaSweeper"),
    ("hydra_plugins.rnnlm_blocks_sweeper", "blocks_sweeper", "BlocksSweeper"),
)


def ensure_sweepers() -> None:
    """Register with Hydra each of rnnlm's sweepers that its plugin scan did not find."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    plugins = Plugins.instance()  # the first call scans hydra_plugins
    found = {f"{c.__module__}.{c.__name__}" for c in plugins.discover(Sweeper)}
    for package, module, name in SWEEPERS:
        if f"{package}.{module}.{name}" not in found:
            importlib.import_module(f"{package}.config")
            plugins.register(getattr(importlib.import_module(f"{package}.{module}"), name))
