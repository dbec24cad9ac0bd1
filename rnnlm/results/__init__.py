"""What a run leaves on disk: crash-safe CSV files with documented columns."""

from .columns import METRICS_COLUMNS, RESULT_COLUMNS, SETTING_COLUMNS
from .files import read_csv, write_csv

__all__ = [
    "METRICS_COLUMNS",
    "RESULT_COLUMNS",
    "SETTING_COLUMNS",
    "read_csv",
    "write_csv",
]
