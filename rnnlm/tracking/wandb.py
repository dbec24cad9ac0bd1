"""Weights & Biases: one W&B run per rnnlm run, in ``logger.wandb.project``.

The jobs of a sweep share a W&B group (the sweep directory's name); each run is named
after its overrides. Parameters go to ``run.config``; each logged key is tied to its own
x-axis with ``define_metric`` (``epoch``, ``progress/tokens``, ``eval/row``), and the
result figures and status go to ``run.summary``. A resumed run reopens the same id
(``resume="allow"``). With ``logger.wandb.mode=offline`` (or ``WANDB_MODE=offline``) the
run stays in ``<dir>/wandb/offline-run-*`` until ``wandb sync``.

A run resumed after a hard kill logs its progress points again from its checkpoint on;
W&B keeps both (the killed process's points past the checkpoint and the new ones) against
``progress/tokens``. W&B's "rewind" (``resume_from``) could drop the old ones, but it needs
a server (not offline mode) and the W&B step of the checkpoint, which rnnlm does not keep.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import wandb

from ..checks import ConfigError
from .config import WandbConfig

DEFAULT_HOST = "https://api.wandb.ai"


def permanent(exc: BaseException) -> bool:
    """Whether retrying cannot help: W&B refusing the call as such (a usage error, a bad
    value). Network errors and W&B's communication errors are retried."""
    errors = getattr(wandb, "errors", None)
    usage = getattr(errors, "UsageError", None)
    if usage is not None and isinstance(exc, usage):
        return True
    return isinstance(exc, (TypeError, ValueError, KeyError, AttributeError))


def _settings(key: str) -> str | None:
    """``key`` from W&B's settings files, as `wandb offline` or `wandb login` leave them: the
    working directory's ``wandb/settings`` first, then the global one."""
    import configparser

    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
    for path in (Path(os.environ.get("WANDB_DIR") or ".") / "wandb" / "settings", config_dir / "settings"):
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        if parser.has_option("default", key):
            return parser.get("default", key).strip()
    return None


def _has_credentials() -> bool:
    """Whether W&B will find an API key without asking: WANDB_API_KEY, an identity token
    file, a .netrc entry for the W&B host, or a key in W&B's settings file."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname or ""
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        if netrc.netrc(path).authenticators(host):
            return True
    except (OSError, netrc.NetrcParseError):
        pass
    return bool(_settings("api_key"))


def check(cfg: WandbConfig) -> None:
    """Refuse what keeps W&B from ever starting, before the run writes anything: no project,
    a WANDB_MODE it does not know, or online mode without credentials (W&B would ask for a
    key on a terminal, or fail)."""

    if not (cfg.project or "").strip():
        raise ConfigError("logger.wandb.project is empty; name the W&B project, e.g. logger.wandb.project=dropout")
    if cfg.entity is not None and not cfg.entity.strip():
        raise ConfigError("logger.wandb.entity is empty; give the entity, or null for the account's default")
    mode = cfg.mode or os.environ.get("WANDB_MODE") or _settings("mode") or "online"
    if mode == "online" and (_settings("disabled") or "").lower() == "true":
        mode = "disabled"
    known = ("online", "offline", "disabled", "dryrun", "run", "shared")
    if mode not in known:
        raise ConfigError(f"WANDB_MODE={mode} is not one of {', '.join(known)}")
    if mode in ("online", "run", "shared") and not _has_credentials():
        raise ConfigError("logger=wandb is online but no W&B API key is set up: run `wandb login` (or set "
                          "WANDB_API_KEY), or use logger.wandb.mode=offline and `wandb sync` later")


class WandbRun:
    def __init__(self, run: Any) -> None:
        self.run = run
        self.axes: set[str] = set()

    def state(self) -> dict[str, Any]:
        return {"id": self.run.id, "project": self.run.project}

    def start(self, params: Mapping[str, Any], resumed: bool) -> None:
        self.run.config.update(dict(params), allow_val_change=True)  # offline, a resumed run's file needs it too

    def log_values(self, values: Mapping[str, Any], step_key: str, step: int) -> None:
        if step_key not in self.axes:
            self.run.define_metric(step_key)
            self.axes.add(step_key)
        for key in values:
            if key not in self.axes:
                self.run.define_metric(key, step_metric=step_key)
                self.axes.add(key)
        self.run.log({step_key: step, **values})

    def log_result(self, figures: Mapping[str, float], status: Mapping[str, str]) -> None:
        self.run.summary.update({**figures, **status})

    def close(self, status: str | None) -> None:
        if status == "interrupted":
            self.run.mark_preempting()
        self.run.finish(exit_code=0 if status in (None, "completed", "pruned") else 1)


def open_run(cfg: WandbConfig, run_dir: Path, name: str, group: str | None, saved: dict | None,
             purge_step: int | None = None) -> WandbRun:
    run = wandb.init(
        project=(saved or {}).get("project", cfg.project), entity=cfg.entity, dir=str(cfg.dir or run_dir),
        mode=cfg.mode, name=name, group=group, id=(saved or {}).get("id"), resume="allow" if saved else None,
        reinit="create_new",
    )
    return WandbRun(run)
