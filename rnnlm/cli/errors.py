"""One clear line for every bad input: what is wrong and how to fix it, no traceback."""

from __future__ import annotations

import sys

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

EXIT_USAGE = 2  # bad input
EXIT_INTERRUPTED = 130  # stopped by SIGINT/SIGTERM/SIGUSR2 after saving a resumable checkpoint


def fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"rnnlm: error: {message}", file=sys.stderr)
    return code


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def describe(exc: BaseException) -> str:
    """Hydra/OmegaConf composition errors as one line, from the exceptions' own fields."""
    if isinstance(exc, MissingConfigException) and exc.options and exc.missing_cfg_file:
        group, _, value = exc.missing_cfg_file.rpartition("/")
        return f"{group}={value} is not a known option; choose one of: {', '.join(exc.options)}"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the override {exc.override!r}: {_first_line(exc.message)}"
    cause = exc.__cause__ if isinstance(exc, ConfigCompositionException) else exc
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        key = cause.full_key
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            return f"{key} is not a config key; see `rnnlm train --help` for the keys"
        value = getattr(cause, "value", None)
        detail = _first_line(getattr(cause, "msg", "") or str(cause))
        return f"{key}={value}: {detail}" if value is not None else f"{key}: {detail}"
    return _first_line(str(exc)) or type(exc).__name__
