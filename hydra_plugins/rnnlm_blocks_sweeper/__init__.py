"""rnnlm's sequential sweeper for Hydra: a study in blocks of seeds that stops when its
comparisons with the baseline resolve (``hydra/sweeper=rnnlm_blocks``; see :mod:`.blocks_sweeper`)."""
