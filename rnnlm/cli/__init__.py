"""The ``rnnlm`` console script: ``rnnlm train [overrides]`` and ``rnnlm summary DIR...``.

Hydra lives in this package and nowhere else: ``train`` composes and validates
the config with Hydra and hands a plain :class:`~rnnlm.config.RunConfig` and the
run directory to :func:`rnnlm.run.train`. ``summary`` is plain argparse.
"""

from __future__ import annotations

import sys

USAGE = """\
usage: rnnlm train [OVERRIDE ...]        train a language model (Hydra overrides; --help lists all keys)
       rnnlm train resume=RUN_DIR [...]  continue an interrupted run in its own directory
       rnnlm summary DIR [DIR ...]       tables and plots of finished runs (--help for options)
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        from .train import train_command

        return train_command(rest)
    if command == "summary":
        from ..summary.cli import main as summary_main

        return summary_main(rest)
    print(f"rnnlm: error: unknown command {command!r}; use 'rnnlm train' or 'rnnlm summary'", file=sys.stderr)
    return 2
