"""The configuration error and the value checks that every layer's settings share.

It imports nothing of rnnlm, so the config schema (:mod:`rnnlm.config`), the recurrent
dropout schemes, the runtime and the trackers all import it from below and no import runs
in a circle.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says how to fix it."""


def check_rate(key: str, value: float) -> None:
    """ConfigError unless ``value`` is a drop probability in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(
            f"{key}={value} is outside [0, 1): a dropout rate is a drop probability; "
            f"use e.g. {key}=0.3 (0 switches it off)."
        )


def check_positive(key: str, value: float | int | None, allow_none: bool = False) -> None:
    """ConfigError unless ``value`` is a positive number (or None, where ``allow_none``)."""
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{key}={value} must be a positive number, e.g. {key}=10.")
