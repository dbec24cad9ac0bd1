"""Progress of a training epoch: a tqdm bar on a terminal, a log line now and then elsewhere.

A bar redrawn many times a second is right on a terminal and wrong in a file: under
SLURM or ``> log 2>&1`` every redraw would be another carriage-return update in the log.
When stderr is not a terminal the epoch is reported as plain log lines, one per tenth of
the epoch.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Callable

from tqdm import tqdm

from .evaluate import perplexity

log = logging.getLogger(__name__)

LOG_FRACTION = 0.1  # without a terminal: one log line per this fraction of the epoch


class EpochProgress:
    """Counts the training tokens of one epoch out of ``total_tokens``."""

    def __init__(self, desc: str, total_tokens: int, done_tokens: int = 0, enabled: bool = True,
                 terminal: bool | None = None, on_mark: Callable[[], None] | None = None) -> None:
        self.desc, self.total, self.done = desc, total_tokens, done_tokens
        self.on_mark = on_mark  # called at every tenth of the epoch, bar or not (experiment trackers)
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = None
        self.log_lines = enabled and not terminal
        if enabled and terminal:
            self.bar = tqdm(total=total_tokens, initial=done_tokens, desc=desc, unit="tok",
                            unit_scale=True, leave=False, dynamic_ncols=True)
        self.log_step = max(1, math.ceil(total_tokens * LOG_FRACTION))
        self.next_log = self._next_mark(done_tokens)

    def _next_mark(self, done: int) -> int:
        return (done // self.log_step + 1) * self.log_step

    def update(self, tokens: int) -> bool:
        """Count ``tokens``; True when a mark (a tenth of the epoch) is reached: the caller
        then reads its loss and calls :meth:`mark` (the loop reads the loss only there)."""
        self.done += tokens
        if self.bar is not None:
            self.bar.update(tokens)
        return self.done >= self.next_log

    def mark(self, loss: float, tokens_per_second: float) -> None:
        """Report the epoch's mean training ``loss`` so far, on the bar or as a log line, and
        call ``on_mark``."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", ppl=f"{perplexity(loss):.1f}",
                                 tok_s=f"{tokens_per_second:.0f}", refresh=False)
        if self.log_lines:
            log.info("%s | %3.0f%% | loss %.3f | ppl %.1f | %.0f tok/s", self.desc,
                     100.0 * self.done / max(self.total, 1), loss, perplexity(loss),
                     tokens_per_second)
        if self.on_mark is not None:
            self.on_mark()
        self.next_log = self._next_mark(self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
