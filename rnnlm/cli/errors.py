"""One clear line for every bad input: what is wrong and how to fix it, no traceback."""

from __future__ import annotations

import re
import sys

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException


EXIT_USAGE = 2  # bad input
EXIT_INTERRUPTED = 130  # stopped by SIGINT/SIGTERM after saving a resumable checkpoint


class UsageError(Exception):
    """A bad command line; the message is shown as it is."""


def fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"rnnlm: error: {message}", file=sys.stderr)
    return code


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def describe(exc: BaseException) -> str:
    """Hydra/OmegaConf composition errors, shortened to one line."""
    if isinstance(exc, MissingConfigException):
        text = str(exc)
        found = re.search(r"Could not find '([^']+)'", text)
        options = re.search(r"Available options in '([^']+)':\n((?:\t.*\n?)+)", text)
        if found and options:
            choices = ", ".join(o.strip() for o in options.group(2).splitlines() if o.strip())
            group = options.group(1)
            value = found.group(1).split("/")[-1]
            return f"{group}={value} is not a known option; choose one of: {choices}"
        return _first_line(text)
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        head = _first_line(str(exc))
        override = re.search(r"override '([^']+)'", head) or re.search(r"override (\S+)", head)
        if cause is not None:
            detail = _first_line(str(cause))
            key = getattr(cause, "full_key", None)
            if "Could not override" in head or "ConfigKeyError" in type(cause).__name__ or "Key '" in detail:
                name = override.group(1) if override else key
                return f"{name} is not a config key; see `rnnlm train --help` for the keys"
            where = override.group(1) if override else (key or "")
            return f"{where}: {detail}"
        return head
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the overrides: {_first_line(str(exc))}"
    return _first_line(str(exc)) or type(exc).__name__
