"""The config of ``hydra/sweeper=rnnlm_blocks``, registered in Hydra's ConfigStore.

Hydra imports every module of the ``hydra_plugins`` namespace package at start-up (where an
editable install hides them from that scan, :func:`rnnlm.cli.sweepers.ensure_sweepers` imports
this one), which registers this node.
"""

from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class RnnlmBlocksSweeperConf:
    _target_: str = "hydra_plugins.rnnlm_blocks_sweeper.blocks_sweeper.BlocksSweeper"
    # {label: [override, ...]} in study order (the order numbers the jobs): each variant's own
    # Hydra overrides; the command line's overrides apply to every job. On the command line:
    # hydra.sweeper.variants="{none:['dropout.recurrent.rate=0'],wd:['dropout.recurrent.rate=0.3']}"
    variants: Any = None
    baseline: Optional[str] = None  # the label every variant is compared with; null: the first variant
    block_key: str = "seed"  # the key each block sets, one value per block
    # The block key's values, block after block: a list, or a sweep in Hydra's syntax
    # ('range(1,21)', '1,2,3'); null: 1..max_blocks.
    seeds: Any = None
    min_blocks: int = 3  # blocks before the first look (at least 2)
    max_blocks: int = 10  # the study stops after this many blocks at the latest
    max_minutes: Optional[float] = None  # no new block after this many minutes of this session; null: no limit
    alpha: float = 0.05  # error rate of all looks' intervals together (alpha spending)
    effect: float = 0.03  # the equivalence margin: within ±3 % of the baseline resolves a comparison
    metric: str = "test_ppl"  # the result.csv column compared


ConfigStore.instance().store(group="hydra/sweeper", name="rnnlm_blocks", node=RnnlmBlocksSweeperConf,
                             provider="rnnlm")
