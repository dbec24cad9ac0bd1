"""What a run leaves on disk: crash-safe CSV files with documented columns."""

from .columns import (METRICS_COLUMNS, RESULT_COLUMNS, SETTING_COLUMNS, current_name, current_names,
                      current_status)
from .files import read_csv, write_csv

__all__ = [
    "METRICS_COLUMNS",
    "RESULT_COLUMNS",
    "SETTING_COLUMNS",
    "current_name",
    "current_names",
    "current_status",
    "read_csv",
    "write_csv",
]
