"""rnnlm's Optuna sweeper for Hydra: a search that keeps its study on disk and continues
where it stopped (``hydra/sweeper=rnnlm_optuna``; see :mod:`.optuna_sweeper`). Its core, which
knows nothing of Hydra, is :mod:`rnnlm.search`."""
