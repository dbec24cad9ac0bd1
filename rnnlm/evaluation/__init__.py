"""Scoring a trained model after training (``rnnlm eval``) and sampling from it
(``rnnlm generate``).

- ``scoring``: :class:`Score`, the mean per-token loss every method returns.
- ``pointer``: the continuous cache pointer (Grave et al. 2017), vectorised.
- ``dynamic``: dynamic evaluation (Krause et al. 2018), RMS rule with decay, or SGD.
- ``runs``: a finished run's config, vocabulary and checkpoint, loaded for scoring.
- ``rows``: the rows of ``RUN_DIR/eval.csv``, appended atomically.
- ``runner``: one method on one split of a loaded run, timed, as an eval.csv row.
- ``generate``: sampling text from a run.
"""

from .dynamic import DynamicSettings, GradientStats, evaluate_dynamic, gradient_statistics
from .pointer import PointerSettings, evaluate_pointer, pointer_log_probs
from .scoring import Score

__all__ = [
    "DynamicSettings",
    "GradientStats",
    "PointerSettings",
    "Score",
    "evaluate_dynamic",
    "evaluate_pointer",
    "gradient_statistics",
    "pointer_log_probs",
]
