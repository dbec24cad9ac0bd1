"""A run's records to its trackers, off the training thread: :class:`Tracking`.

Which trackers a config chooses (:func:`chosen`) and whether they can start (:func:`check`)
are decided here too; each tracker's own module (``rnnlm.tracking.<name>``) is imported
only when that tracker is chosen.

Each tracker has a thread of its own that opens its run and delivers the records in order
from a bounded queue (:class:`_Channel`): a call of :class:`Tracking` only appends to that
queue, so a slow or unreachable server never delays a training step. A failed delivery is
retried with exponential back-off; the queue then holds at most :data:`QUEUE_LIMIT`
records and, when full, drops the oldest progress point (see :meth:`_Channel.put` for
why). A record the tracker refuses as such (a bad value) is left out and the next one
sent. At the end the run's result and its true status are delivered within
:data:`END_WAIT` seconds, and what could not be is said in one warning.
"""

from __future__ import annotations

import collections
import importlib
import importlib.util
import json
import logging
import math
import random
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

from ..checks import ConfigError
from .config import LoggerConfig

log = logging.getLogger(__package__)  # log lines name the package: rnnlm.tracking

STATE_FILE = "tracking.json"
# logger option -> the module it needs; the extra that installs it has the option's name
EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}

# Records a tracker's queue holds while its tracker cannot take them (about 900 epochs of
# progress points and epoch rows; a few MB): beyond that the oldest progress point goes.
QUEUE_LIMIT = 10_000
# Seconds between tries after a failed delivery: doubling from BACKOFF_FIRST up to
# BACKOFF_MAX (each drawn between half and all of that, so the jobs of a sweep do not retry
# in step); at the end of the run, every END_RETRY seconds until END_WAIT is spent.
BACKOFF_FIRST, BACKOFF_MAX, END_RETRY = 1.0, 60.0, 1.0
# The longest the end of a run (or of `rnnlm eval`) waits for its trackers, all together.
END_WAIT = 30.0
# An outage is a warning at most this often per tracker (a flapping server: the others are INFO lines).
WARN_EVERY = 600.0
# Consecutive epoch or progress records sent in one call where the tracker can (log_many):
# at most this many values together, so that one call (MLflow's log_batch) takes them all.
BATCH_VALUES = 1000


class Tracker(Protocol):
    """One tracker's run; every method may raise (:class:`Tracking` isolates failures). All
    calls of one tracker come from one thread (its channel's), one at a time."""

    def state(self) -> dict[str, Any]:
        """What ``tracking.json`` keeps to reopen this run (e.g. its id)."""

    def start(self, params: Mapping[str, Any], resumed: bool) -> None:
        """The run's config as parameters (a new run), or the same run continuing (``resumed``)."""

    def log_values(self, values: Mapping[str, Any], step_key: str, step: int) -> None:
        """Numbers (and a few strings: a row's ``stage``) at ``step`` of the axis ``step_key``."""

    def log_result(self, figures: Mapping[str, float], status: Mapping[str, str]) -> None: ...

    def close(self, status: str | None) -> None:
        """End this process's hold on the run; ``status`` is result.csv's, None after ``rnnlm eval``."""


def chosen(cfg: LoggerConfig) -> list[str]:
    """The trackers ``cfg`` asks for, in a fixed order."""
    return [f.name for f in fields(cfg) if getattr(cfg, f.name) is not None]


def missing_extra(cfg: LoggerConfig) -> str | None:
    """One line naming the extra to install, if a chosen tracker's package is missing."""
    for name in chosen(cfg):
        if importlib.util.find_spec(EXTRAS[name]) is None:
            return f'logger={name} needs the {name} package, which is not installed: pip install "rnnlm[{name}]"'
    return None


def check(cfg: LoggerConfig) -> None:
    """Refuse, with :class:`~rnnlm.config.ConfigError` (one line), what would keep a chosen
    tracker from ever starting: a missing package, or a configuration error that its
    module's ``check`` finds (an MLflow file store that MLflow 3 refuses, a URI scheme no
    tracking store has, W&B online without credentials, ...). Opens no tracker run,
    writes nothing and reaches no server: an unreachable server is not a configuration
    error, and the run retries it."""

    if missing := missing_extra(cfg):
        raise ConfigError(missing)
    for name in chosen(cfg):
        importlib.import_module(f"{__package__}.{name}").check(getattr(cfg, name))


def _open(name: str, cfg: Any, run_dir: Path, run_name: str, group: str | None, saved: dict | None,
          purge_step: int | None) -> Tracker:
    """Open (``saved``: reopen) a tracker run. ``purge_step``, for a reopened run that trains
    on: the ``progress/tokens`` step from which what was logged before is replaced by what
    this process logs (None: nothing is replaced, as for ``rnnlm eval``)."""
    module = importlib.import_module(f"{__package__}.{name}")
    return module.open_run(cfg, run_dir=run_dir, name=run_name, group=group, saved=saved, purge_step=purge_step)


def _permanent(name: str, exc: BaseException) -> bool:
    """Whether ``exc`` says that retrying the same call cannot help (the tracker module's
    ``permanent(exc)``; by default a bad value or a bug: TypeError, ValueError, ...).
    Everything else (a connection, a timeout, a full disk, a server error, expired
    credentials) is retried."""
    module = importlib.import_module(f"{__package__}.{name}")
    judge = getattr(module, "permanent", None)
    if judge is not None:
        return bool(judge(exc))
    return isinstance(exc, (TypeError, ValueError, KeyError, AttributeError, NotImplementedError))


def read_state(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a row (booleans and empty values left out)."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


@dataclass
class _Record:
    method: str  # a Tracker method
    args: tuple
    droppable: bool = False  # a progress point: the first to go when the queue is full


class _Channel:
    """One tracker served by a thread of its own: it opens the tracker's run (retrying while
    that fails transiently), then delivers the queued records in order."""

    def __init__(self, key: str, opener: Callable[[], Tracker], on_open: Callable[[str, Tracker], None]) -> None:
        self.key = key
        self._opener, self._on_open = opener, on_open
        self._cond = threading.Condition()
        self._queue: collections.deque[_Record] = collections.deque()
        self._closing = False  # the run has ended: no more records; retry at once until END_WAIT
        self._abandoned = False  # the end stopped waiting: discard everything, end the thread
        self._done = False
        self.tracker: Tracker | None = None
        self.dead = False  # the tracker cannot start (a permanent failure): it is left out
        self.sent = 0  # records delivered
        self.dropped = 0  # records dropped because the queue was full
        self.refused = 0  # records the tracker refused (permanent failures)
        self.failing_since: float | None = None  # monotonic time of the first failure of an outage
        self.last_error = ""
        self._said_refused = False
        self._warned_at: float | None = None  # monotonic time of the last outage warning
        self._thread = threading.Thread(target=self._serve, name=f"rnnlm-tracker-{key}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ training thread
    def put(self, method: str, *args: Any, droppable: bool = False) -> None:
        """Queue a record; never waits for the tracker.

        When the queue is full the oldest progress point is dropped (and counted), else the
        oldest epoch record: drop-oldest, because while a tracker is unreachable the queue
        fills with old records, and once it is back the newest ones are what describes the
        run now; every epoch's figures stay in metrics.csv, and the progress points are a
        finer view of the same epochs. Dropping the newest instead would freeze the
        tracker's view of the run at the moment the queue filled."""
        with self._cond:
            if self.dead or self._abandoned or self._closing:
                return
            self._queue.append(_Record(method, args, droppable))
            self._trim()
            self._cond.notify()

    def _trim(self) -> None:
        """Keep at most QUEUE_LIMIT epoch and progress records (start, result and close, one
        each at most, are never dropped and do not count)."""
        fixed = sum(1 for r in self._queue if r.method != "log_values") if len(self._queue) > QUEUE_LIMIT else 0
        while len(self._queue) > QUEUE_LIMIT + fixed:
            victim = next((i for i, r in enumerate(self._queue) if r.droppable), None)
            if victim is None:
                victim = next((i for i, r in enumerate(self._queue) if r.method == "log_values"), None)
            if victim is None:
                return  # only the start, result and close records: never dropped
            del self._queue[victim]
            self.dropped += 1

    def finish(self) -> None:
        """No more records: deliver the queue, retrying at once rather than after a back-off."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """Whether the thread has ended (everything delivered, or the tracker left out) within ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done, max(timeout, 0.0))

    def abandon(self) -> int:
        """Stop: the records still queued are discarded (returns how many)."""
        with self._cond:
            self._abandoned = True
            left = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            return left

    # ------------------------------------------------------------------ the channel's thread
    def _serve(self) -> None:
        try:
            failures = 0
            while True:
                with self._cond:
                    while (self.tracker is not None and not self._queue and not self._closing
                           and not self._abandoned):
                        self._cond.wait()
                    if self._abandoned or (self.tracker is not None and not self._queue):
                        return
                    batch = [] if self.tracker is None else self._take()
                try:
                    if self.tracker is None:
                        tracker = self._opener()
                        self._on_open(self.key, tracker)
                        self.tracker = tracker
                    else:
                        self._deliver(batch)
                except Exception as exc:  # noqa: BLE001 - any tracker failure: never the run's
                    if _permanent(self.key, exc):
                        if self.tracker is None:
                            self._give_up(exc)
                            return
                        self._refuse(batch, exc)
                        continue
                    failures += 1
                    self._failed(batch, exc, opening=self.tracker is None)
                    self._pause(failures)
                    continue
                self.sent += len(batch)
                if self.failing_since is not None:
                    log.info("logger=%s reached again after %.0f s; delivering what was queued", self.key,
                             time.monotonic() - self.failing_since)
                    self.failing_since = None
                failures = 0
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _take(self) -> list[_Record]:
        """The next record, or the next run of epoch and progress records where the tracker
        takes several at once (its queue lock is held)."""
        first = self._queue.popleft()
        batch = [first]
        if first.method == "log_values" and hasattr(self.tracker, "log_many"):
            size = len(first.args[0])
            while (self._queue and self._queue[0].method == "log_values"
                   and size + len(self._queue[0].args[0]) <= BATCH_VALUES):
                size += len(self._queue[0].args[0])
                batch.append(self._queue.popleft())
        return batch

    def _deliver(self, batch: list[_Record]) -> None:
        if len(batch) > 1:
            self.tracker.log_many([r.args for r in batch])  # type: ignore[union-attr]
        else:
            getattr(self.tracker, batch[0].method)(*batch[0].args)

    def _failed(self, batch: list[_Record], exc: Exception, opening: bool) -> None:
        with self._cond:
            self._queue.extendleft(reversed(batch))  # back in front, in order
            self._trim()
        self.last_error = _describe(exc)
        if self.failing_since is None:
            now = self.failing_since = time.monotonic()
            quiet = self._warned_at is not None and now - self._warned_at < WARN_EVERY
            if not quiet:
                self._warned_at = now
            log.log(logging.INFO if quiet else logging.WARNING,
                    "logger=%s %s failed (%s); retrying in the background (every %g s at most), keeping up to %d "
                    "records meanwhile; the run goes on (CSV files and checkpoints are unaffected)",
                    self.key, "start" if opening else "logging", self.last_error, BACKOFF_MAX, QUEUE_LIMIT)

    def _refuse(self, batch: list[_Record], exc: Exception) -> None:
        self.refused += len(batch)
        self.last_error = _describe(exc)
        if not self._said_refused:
            self._said_refused = True
            log.warning("logger=%s refused a record (%s); it is left out and the next ones are sent (CSV files "
                        "are unaffected)", self.key, self.last_error)

    def _give_up(self, exc: Exception) -> None:
        self.last_error = _describe(exc)
        with self._cond:
            self.dead = True
            self._queue.clear()
        log.warning("logger=%s start failed (%s); the run goes on without it (CSV files and checkpoints are "
                    "unaffected)", self.key, self.last_error)

    def _pause(self, failures: int) -> None:
        """Wait before the next try: the back-off, or END_RETRY once the run has ended."""
        with self._cond:
            if self._closing:
                delay = END_RETRY
            else:
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures - 1, 30))
                delay *= random.uniform(0.5, 1.0)
            self._cond.wait_for(lambda: self._abandoned or (self._closing and delay > END_RETRY), delay)


class Tracking:
    """The trackers of one run (possibly none), each on a thread of its own.

    ``name`` and ``group`` label a new tracker run (a sweep's jobs share the group); a run
    directory whose ``tracking.json`` exists continues the tracker runs it names.
    ``attach_only`` (``rnnlm eval``) opens only tracker runs that already exist.
    ``resume_step`` is where a continued run resumes training on the ``progress/tokens``
    axis (the training tokens of its checkpoint; None: training starts from scratch):
    records that a killed process logged past it are replaced where the tracker can
    (TensorBoard's ``purge_step``; see each module).
    """

    def __init__(self, cfg: LoggerConfig, run_dir: Path, name: str, group: str | None = None,
                 attach_only: bool = False, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        saved = read_state(self.run_dir)
        self.name, self.group = saved.get("name", name), saved.get("group", group)
        self.attach_only = attach_only
        self.reopened = {key for key in chosen(cfg) if key in saved}
        self._state_lock = threading.Lock()
        # Every tracker saved before, opened now or not: a tracker that cannot start in this
        # process keeps its run id for the next one.
        self._states: dict[str, Any] = {k: v for k, v in saved.items() if k in EXTRAS}
        self.channels: dict[str, _Channel] = {}
        purge = None if attach_only else (resume_step or 0)
        for key in chosen(cfg):
            if attach_only and key not in saved:
                continue
            opener = (lambda k=key: _open(k, getattr(cfg, k), self.run_dir, self.name, self.group, saved.get(k),
                                          purge))
            self.channels[key] = _Channel(key, opener, self._opened)

    def __bool__(self) -> bool:
        return any(not c.dead for c in self.channels.values())

    @property
    def trackers(self) -> dict[str, Tracker]:
        """The trackers whose runs are open now."""
        return {k: c.tracker for k, c in self.channels.items() if c.tracker is not None and not c.dead}

    def _opened(self, key: str, tracker: Tracker) -> None:
        """On a channel's thread, once its tracker's run is open: keep its id."""
        if self.attach_only:
            return
        self._states[key] = tracker.state()
        self._save_state()

    def _save_state(self) -> None:
        from ..atomic import atomic_write_text

        with self._state_lock:
            state = {"name": self.name, "group": self.group, **self._states}
            try:
                atomic_write_text(self.run_dir / STATE_FILE, json.dumps(state, indent=1) + "\n")
            except Exception as exc:  # noqa: BLE001 - a full disk must not stop the run here
                log.warning("cannot write %s (%s); a resumed run will start new tracker runs", STATE_FILE, exc)

    def _each(self, method: str, *args: Any, droppable: bool = False) -> None:
        for channel in self.channels.values():
            channel.put(method, *args, droppable=droppable)

    def start(self, params: Mapping[str, Any]) -> None:
        """The config as parameters of each new tracker run; a reopened one continues."""
        for key, channel in self.channels.items():
            channel.put("start", dict(params), key in self.reopened)

    def progress(self, tokens: int, train_loss: float, tokens_per_second: float) -> None:
        values = {"progress/train_loss": train_loss, "progress/tokens_per_second": tokens_per_second}
        self._each("log_values", values, "progress/tokens", tokens, droppable=True)

    def epoch(self, row: Mapping[str, Any]) -> None:
        """One ``metrics.csv`` row, every column, at its epoch."""
        values = {k: v for k, v in row.items() if k != "epoch" and v is not None}  # None: a column not computed
        self._each("log_values", values, "epoch", int(row["epoch"]))

    def end(self, result: Mapping[str, Any], settings: Iterable[str]) -> None:
        """``result.csv``'s figures (its numbers that are not ``settings``, as ``result/<column>``)
        and status; closes the tracker runs with that status (waits at most END_WAIT s)."""
        skip = {*settings, "seed"}
        figures = numbers({f"result/{k}": v for k, v in result.items() if k not in skip})
        status = {k: str(result.get(k) or "") for k in ("status", "stop_reason")}
        self._each("log_result", figures, status)
        self.close(str(result.get("status")))

    def eval_rows(self, rows: Iterable[Mapping[str, Any]], step: int) -> None:
        """``rnnlm eval`` rows as ``eval/<method>_<split>_{ppl,loss}`` at ``step``."""
        values: dict[str, float] = {}
        for row in rows:
            prefix = f"eval/{row['method']}_{row['split']}"
            values.update({f"{prefix}_ppl": float(row["ppl"]), f"{prefix}_loss": float(row["loss"])})
        self._each("log_values", values, "eval/row", step)

    def close(self, status: str | None = None, wait: float | None = None) -> None:
        """Close each tracker run with ``status`` after what is queued, waiting at most ``wait``
        seconds (default END_WAIT) for all trackers together; then say, in one warning per
        tracker, what did not arrive."""
        self._each("close", status)
        for channel in self.channels.values():
            channel.finish()
        deadline = time.monotonic() + (END_WAIT if wait is None else wait)
        for channel in self.channels.values():
            done = channel.wait(deadline - time.monotonic())
            left = 0 if done else channel.abandon()
            self._report(channel, done, left, status)
        self.channels.clear()

    def _report(self, channel: _Channel, done: bool, left: int, status: str | None) -> None:
        key = channel.key
        if channel.dead:
            return  # said when it could not start
        lost = []
        if channel.dropped:
            lost.append(f"{channel.dropped} dropped while the queue was full")
        if channel.refused:
            lost.append(f"{channel.refused} refused ({channel.last_error})")
        if not done:
            what = "its start and " if channel.tracker is None else ""
            end = f", with the run's end (status {status})" if status is not None else ""
            lost.append(f"{what}{left} records left undelivered{end}: {channel.last_error or 'no answer'} "
                        f"at the end of the {END_WAIT:.0f} s wait")
        if lost:
            detail = ""
            if not done and key == "mlflow" and channel.tracker is not None and status is not None:
                detail = "; the MLflow run may still show RUNNING"
            log.warning("logger=%s: %d records delivered, %s%s (the CSV files have every epoch and the result)",
                        key, channel.sent, "; ".join(lost), detail)

