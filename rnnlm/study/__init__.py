"""Statistics of a study's runs, without torch.

- ``stats``: each group against a baseline, with the seeds as blocks (two-way OLS on log
  perplexity, Dunnett-type max-t intervals; Welch with the Hasler-Hothorn adjustment where
  seeds are not shared), paired and sign-flip figures, and the seeds a study would need.
- ``maxt``: simultaneous critical values and adjusted p-values of the max-t statistic.
- ``sequential``: group-sequential bounds for looking at a study after every seed.
- ``blocks``: a sequential study on disk: which seed blocks are done, each look's analysis,
  and when to stop (the core of ``hydra/sweeper=rnnlm_blocks``).
"""
