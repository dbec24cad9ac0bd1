"""Experiment trackers beside a run's CSV files: TensorBoard, MLflow, Weights & Biases.

The CSV files stay the record (``rnnlm summary`` reads them); a tracker gets a copy of the
same numbers, where researchers watch and compare runs. :class:`Tracking` is what a run
calls, at four points:

* start: the flattened config (``dropout.recurrent.rate``, ...) as parameters;
* every tenth of an epoch: ``progress/train_loss`` (the epoch's mean training loss so
  far) and ``progress/tokens_per_second``, against ``progress/tokens`` (training tokens
  since the start of the run);
* each epoch's end: every column of its ``metrics.csv`` row, against ``epoch``;
* the end: the numbers of ``result.csv`` that are not settings as ``result/<column>``
  (``result/test_ppl``, ``result/train_split_tokens``: the training split's size, where
  an epoch's row has ``epoch_tokens``), with ``status`` and ``stop_reason``.

``rnnlm eval`` adds its rows to the same tracker run (``eval/<method>_<split>_ppl`` and
``_loss``). One module per tracker (:mod:`.tensorboard`, :mod:`.mlflow`, :mod:`.wandb`)
holds everything that knows that tracker; each is an optional extra of the package
(``pip install "rnnlm[mlflow]"``) and has ``check(cfg)``, which refuses a configuration
error before the run writes anything (:func:`check`).

Nothing a tracker does runs on the training thread: :class:`Tracking`
(:mod:`.dispatch`) gives each tracker a thread and a bounded queue of its own, retries a
failed delivery in the background and says in one warning at the end what did not arrive.
Training, the CSV files and the checkpoints never depend on a tracker.

``RUN_DIR/tracking.json`` keeps the run's name and group and each tracker's run id, so a
resumed run, and ``rnnlm eval``, log to the same tracker run.
"""

from .config import LoggerConfig
from .dispatch import EXTRAS, STATE_FILE, Tracker, Tracking, check, chosen, missing_extra, read_state

__all__ = ["EXTRAS", "LoggerConfig", "STATE_FILE", "Tracker", "Tracking", "check", "chosen", "missing_extra",
           "read_state"]
