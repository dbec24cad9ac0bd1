"""The ``rnnlm`` console script: ``rnnlm train [overrides]``, ``rnnlm summary DIR...``,
``rnnlm eval RUN_DIR [KEY=VALUE...]`` and ``rnnlm generate RUN_DIR [options]``.

Hydra lives in this package and nowhere else: ``train`` composes and validates
the config with Hydra and hands a plain :class:`~rnnlm.config.RunConfig` and the
run directory to :func:`rnnlm.run.train`. ``summary`` is plain argparse.
"""

from __future__ import annotations

import os
import sys

USAGE = """\
usage: rnnlm train [OVERRIDE ...]        train a language model (Hydra overrides; --help lists all keys)
       rnnlm train resume=RUN_DIR [...]  continue an interrupted run in its own directory
       rnnlm summary DIR [DIR ...]       tables and plots of finished runs (--help for options)
       rnnlm eval RUN_DIR [KEY=VALUE]    score a run: standard, MC dropout, pointer, dynamic eval; tune on valid (--help)
       rnnlm generate RUN_DIR [...]      sample text from a run (--help for options)
"""


def fix_cublas_workspace() -> None:
    """Set ``CUBLAS_WORKSPACE_CONFIG`` (unless set) before anything in this process uses cuBLAS,
    which reads it once, at initialisation: deterministic runs need a fixed workspace (CUDA
    docs, "cuBLAS reproducibility"), and under Hydra's basic launcher several jobs share the
    process, so a deterministic job may follow one that already initialised cuBLAS."""
    from ..precision import CUBLAS_WORKSPACE

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("train", "eval", "generate"):
        fix_cublas_workspace()
    if command == "train":
        from .train import train_command

        return train_command(rest)
    if command == "summary":
        from ..summary.cli import main as summary_main

        return summary_main(rest)
    if command == "eval":
        from .eval import eval_command

        return eval_command(rest)
    if command == "generate":
        from .generate import generate_command

        return generate_command(rest)
    print(f"rnnlm: error: unknown command {command!r}; use 'rnnlm train', 'summary', 'eval' or 'generate'", file=sys.stderr)
    return 2
