"""A hyperparameter search with Optuna that keeps its study on disk, without Hydra (the core of
``hydra/sweeper=rnnlm_optuna``; ``hydra_plugins/rnnlm_optuna_sweeper`` launches its jobs).

- ``study``: the study's storage (a journal file in the sweep directory, or an RDB URL), how it
  is created or loaded, its sampler and pruner, and the constraint that makes a diverged trial
  infeasible.
- ``trials``: the search itself: which trials to run (new ones, and those a stopped search left
  running), how each job ended, what the study is told, and the best trial.
- ``locks``: which process runs which trial, so that several searches can share one study.
- ``space``: the search space and its check at its corners before anything is written.
- ``reporter``: what a training job reports to its trial at each epoch's end, and whether the
  pruner stops it there.
"""
