"""Progress of a training epoch (and of a long scoring pass, :class:`WorkProgress`): a tqdm
bar on a terminal, a log line now and then elsewhere.

A bar redrawn many times a second is right on a terminal and wrong in a file: under
SLURM or ``> log 2>&1`` every redraw would be another carriage-return update in the log.
When stderr is not a terminal the epoch is reported as plain log lines, one per tenth of
the epoch.
"""

from __future__ import annotations

import logging
import math
import sys
import time
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


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class WorkProgress:
    """Progress of one long scoring pass (``rnnlm eval method=mc``), in units of ``total``
    (MC samples per token) with the rate in work items (token-samples) per second and an
    ETA: a tqdm bar on a terminal, else a line now and then (at the start, then at each
    tenth); nothing with ``enabled=False``. ``emit`` writes a line (default: stderr)."""

    def __init__(self, desc: str, total: float, unit: str, items_per_unit: float, item_unit: str,
                 enabled: bool = True, terminal: bool | None = None,
                 emit: Callable[[str], None] | None = None, detail: str = "") -> None:
        self.desc, self.total, self.unit = desc, float(total), unit
        self.items_per_unit, self.item_unit = float(items_per_unit), item_unit
        self.enabled = enabled
        self.emit = emit or (lambda line: print(line, file=sys.stderr, flush=True))
        self.items = 0
        self.start = time.monotonic()
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = None
        self.next_line = LOG_FRACTION
        if not enabled:
            return
        if terminal:
            self.bar = tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.1f}/{total:g} " + unit + " [{elapsed}<{remaining}{postfix}]")
        else:
            self.emit(f"{desc}: {self.total:g} {unit} of {self.items_per_unit:,.0f} tokens "
                      f"({self.total * self.items_per_unit:,.0f} {item_unit}){detail}")

    def rate(self) -> float:
        """Work items per second so far."""
        return self.items / max(time.monotonic() - self.start, 1e-9)

    def update(self, items: int) -> None:
        """Count ``items`` work items (token-samples) done."""
        if not self.enabled:
            return
        self.items += items
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.rate():,.0f} {self.item_unit}/s", refresh=False)
            self.bar.update(items / self.items_per_unit)
            return
        done = self.items / self.items_per_unit
        fraction = done / max(self.total, 1e-12)
        if fraction + 1e-9 >= self.next_line:
            elapsed = time.monotonic() - self.start
            left = elapsed * (1 - fraction) / max(fraction, 1e-12)
            self.emit(f"{self.desc}: {100 * min(fraction, 1):3.0f}% ({done:.1f}/{self.total:g} {self.unit}), "
                      f"{self.rate():,.0f} {self.item_unit}/s, {_clock(elapsed)} elapsed, about {_clock(left)} left")
            while self.next_line <= fraction + 1e-9:
                self.next_line += LOG_FRACTION

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
