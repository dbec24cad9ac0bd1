"""One random stream per source of randomness in a training run.

A run draws random numbers for four purposes, each from its own generator:

========== ============================================================ ===================
source     what it draws                                                 generator
========== ============================================================ ===================
init       the initial weights                                           torch's global one,
                                                                         seeded before the
                                                                         model is built
data       the variable-BPTT segment lengths (the stream's order is      a CPU generator
           fixed: a language model reads its corpus in order)
dropout    the embedding (word), input, hidden and output dropout masks  one on the device
recurrent  the recurrent dropout's masks, and the per-gate input masks   one on the device
           of Gal's untied variant
========== ============================================================ ===================

So two runs at one ``seed`` that differ only in their recurrent dropout start from the same
weights, read the same segments and draw the same shared dropout masks step for step: a
variant's extra draws come from its own stream and shift nothing else. A study can also
randomise one source while holding the others (Bouthillier et al., "Accounting for
variance in machine learning benchmarks", MLSys 2021) by setting ``seeds.<source>``.

Each seed left unset is derived from ``seed`` with NumPy's ``SeedSequence`` (the entropy
``seed``, the spawn key the source's index in :data:`SOURCES`), which is documented to stay
the same across NumPy versions, so a seed names the same streams on every machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import RunConfig

SOURCES = ("init", "data", "dropout", "recurrent")
MASK_SOURCES = ("dropout", "recurrent")


def derived_seed(seed: int, source: str) -> int:
    """The seed of ``source``'s stream for the run seed ``seed``: a 63-bit integer."""
    state = np.random.SeedSequence(seed, spawn_key=(SOURCES.index(source),)).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def stream_seeds(cfg: RunConfig) -> dict[str, int]:
    """Every source's seed: ``cfg.seeds.<source>`` where set, else derived from ``cfg.seed``."""
    return {source: getattr(cfg.seeds, source) if getattr(cfg.seeds, source) is not None
            else derived_seed(cfg.seed, source) for source in SOURCES}


def mask_modules(model: nn.Module, source: str) -> list[nn.Module]:
    """The stochastic modules of ``model`` whose masks come from ``source``'s stream: those of
    its recurrent layers (``model.rnns``) for ``recurrent``, every other one for ``dropout``."""
    from ..dropout import StochasticModule

    recurrent = {id(m) for rnn in model.rnns for m in rnn.modules()}
    return [m for m in model.modules() if isinstance(m, StochasticModule)
            and (id(m) in recurrent) == (source == "recurrent")]


class RandomStreams:
    """The ``data``, ``dropout`` and ``recurrent`` generators of one run (``init`` is used once,
    by :func:`seed_init`, before the model exists).

    :meth:`attach` gives each stochastic module of the model its stream; a model without
    attached streams draws its masks from torch's global generator (runs checkpointed before
    streams existed resume that way, with the masks they began with).
    """

    def __init__(self, seeds: dict[str, int], device: torch.device) -> None:
        self.seeds = dict(seeds)
        self.data = torch.Generator().manual_seed(seeds["data"])
        self.masks = {source: torch.Generator(device=device).manual_seed(seeds[source]) for source in MASK_SOURCES}

    def attach(self, model: nn.Module) -> None:
        for source, generator in self.masks.items():
            for module in mask_modules(model, source):
                module.generator = generator

    @staticmethod
    def detach(model: nn.Module) -> None:
        """Masks from torch's global generator again (for checkpoints made before streams)."""
        for source in MASK_SOURCES:
            for module in mask_modules(model, source):
                module.generator = None

    def state_dict(self) -> dict[str, Any]:
        return {source: g.get_state() for source, g in self.masks.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for source, g in self.masks.items():
            g.set_state(state[source])


def seed_init(seeds: dict[str, int]) -> None:
    """Seed torch's global generator with the ``init`` stream's seed: the model built next
    takes its initial weights from it."""
    torch.manual_seed(seeds["init"])
