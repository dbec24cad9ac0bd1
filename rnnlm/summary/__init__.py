"""``rnnlm summary``: find runs, aggregate them over seeds, tabulate and plot.

- ``runs``: find run directories and load them into one DataFrame; filters; eval.csv pairs.
- ``tables``: metrics, grouping, mean/std per setting, best by validation, formatting.
- ``plots``: perplexity-vs-rate and learning-curve figures.
- ``cli``: ``main(argv)``, the ``rnnlm summary`` command.
"""

from .cli import main

__all__ = ["main"]
