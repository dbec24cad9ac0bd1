"""A finished run, loaded for scoring or sampling: its config, vocabulary and weights.

Everything comes from the run directory that ``rnnlm train`` left::

    RUN_DIR/.hydra/config.yaml   the composed config (merged into the RunConfig schema)
    RUN_DIR/checkpoints/best.pt  {"model": state_dict}, best by validation
    RUN_DIR/checkpoints/last.pt  the trainer state of the last epoch; with ASGD, or with
                                 trainer.average, the averaged weights are what the run
                                 validated and tested, and what is loaded

The vocabulary is rebuilt from the run's corpus (``load_dataset(cfg.dataset)``:
``dataset.path``, else ``$RNNLM_DATA_DIR``, else its Hub source) and must have the
size the checkpoint was trained with. Checkpoints load with ``torch.load(weights_only=True)``. Nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .. import runtime
from ..config import ConfigError, RunConfig
from ..data import Corpus, DataError, Vocab, load_dataset, tokenize
from ..model import AWDLSTM
from ..training import CheckpointError, load_checkpoint

CONFIG = Path(".hydra") / "config.yaml"
CHECKPOINTS = {"best": Path("checkpoints") / "best.pt", "last": Path("checkpoints") / "last.pt"}
UNK = "<unk>"


class RunError(Exception):
    """A run directory, checkpoint or file that cannot be used; the message says why."""


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: RunConfig
    corpus: Corpus
    model: AWDLSTM  # in eval(), on ``device``
    checkpoint: str  # best | last
    device: torch.device

    @property
    def vocab(self) -> Vocab:
        return self.corpus.vocab


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_run_config(run_dir: Path, data_path: Optional[str] = None) -> RunConfig:
    """The run's saved config, validated by the schema; ``data_path`` replaces ``dataset.path``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a directory; give the directory of a run (it holds .hydra/config.yaml)")
    if not (run_dir / CONFIG).is_file():
        raise RunError(f"{run_dir} is not a run directory (no {CONFIG}); give the directory of a run")
    try:
        saved = OmegaConf.load(run_dir / CONFIG)
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), saved)
        if data_path is not None:
            merged.dataset.path = data_path
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (OSError, OmegaConfBaseException, ConfigError, ValueError) as exc:
        raise RunError(f"cannot read {run_dir / CONFIG}: {_first_line(exc)}") from None


def resolve_device(name: str) -> torch.device:
    """:func:`rnnlm.runtime.resolve_device`, its errors as RunError."""
    try:
        return runtime.resolve_device(name)
    except ConfigError as exc:
        raise RunError(str(exc).rstrip(".")) from None


def read_checkpoint(path: Path, device: torch.device) -> tuple[dict[str, torch.Tensor], Optional[dict],
                                                              Optional[list[torch.Tensor]]]:
    """The model weights of ``best.pt`` or ``last.pt``; for ``last.pt`` after the switch to
    ASGD the optimiser state holding the averaged iterate ``ax`` (else None); and for
    ``last.pt`` of a run with ``trainer.average`` its average, one tensor per parameter in
    ``model.parameters()`` order, once it holds an iterate (else None)."""
    payload = load_checkpoint(path, device)
    weights = payload.get("model")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} holds no model weights")
    asgd = payload.get("optimizer") if payload.get("optimizer_kind") == "asgd" else None
    average = payload.get("average") or {}
    return weights, asgd, average.get("average") if average.get("steps") else None


def use_asgd_average(model: AWDLSTM, optimizer_state: dict) -> None:
    """Load ASGD's ``ax`` into ``model``: what validation and ``eval.test_weights=last`` use.
    ``torch.optim.ASGD.state_dict()`` indexes its state by position in ``model.parameters()``."""
    state = optimizer_state.get("state", {})
    with torch.no_grad():
        for index, p in enumerate(model.parameters()):
            ax = state.get(index, {}).get("ax")
            if ax is not None:
                p.copy_(ax)


def load_run(
    run_dir: Path, checkpoint: str = "best", device: str = "auto", data_path: Optional[str] = None
) -> LoadedRun:
    """Config, corpus and weights of ``run_dir``; raises RunError with a one-line reason."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, data_path)
    if checkpoint not in CHECKPOINTS:
        raise RunError(f"checkpoint={checkpoint} is not a choice; use best or last")
    path = run_dir / CHECKPOINTS[checkpoint]
    if not path.is_file():
        other = "last" if checkpoint == "best" else "best"
        hint = f" (it has {other}.pt: use checkpoint={other})" if (run_dir / CHECKPOINTS[other]).is_file() else ""
        raise RunError(f"{run_dir} has no {CHECKPOINTS[checkpoint]}: the run has not saved that checkpoint yet{hint}")
    dev = resolve_device(device)
    try:
        corpus = load_dataset(cfg.dataset)
    except DataError as exc:
        raise RunError(f"cannot load the run's corpus for its vocabulary: {exc}") from None
    try:
        weights, asgd, average = read_checkpoint(path, dev)
    except CheckpointError as exc:
        raise RunError(str(exc)) from None
    encoder = weights.get("encoder.weight")
    if encoder is None or encoder.size(0) != len(corpus.vocab):
        size = "?" if encoder is None else encoder.size(0)
        raise RunError(
            f"{path} was trained with a vocabulary of {size} words but the run's corpus gives "
            f"{len(corpus.vocab)}; point data=DIR at the files the run was trained on"
        )
    model = AWDLSTM(len(corpus.vocab), cfg.model, cfg.dropout)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise RunError(f"{path} does not fit the run's model config: {_first_line(exc)}") from None
    model.to(dev)
    if asgd is not None:
        use_asgd_average(model, asgd)
    if average is not None:
        with torch.no_grad():
            for p, value in zip(model.parameters(), average):
                p.copy_(value)
    model.eval()
    return LoadedRun(run_dir, cfg, corpus, model, checkpoint, dev)


def encode_text(path: Path, vocab: Vocab) -> tuple[torch.Tensor, int]:
    """A user's text file as ids ``(N,)``, tokenised like the corpora (``line.split()`` +
    ``<eos>`` per line), and the number of words outside ``vocab`` mapped to ``<unk>``."""
    try:
        with open(path, encoding="utf-8") as f:
            words = tokenize(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"cannot read file={path}: {_first_line(exc)}") from None
    if len(words) < 2:
        raise RunError(f"file={path} holds fewer than two tokens; nothing to score")
    unknown = [w for w in words if w not in vocab.stoi]
    if unknown and UNK not in vocab.stoi:
        raise RunError(
            f"file={path} has {len(unknown)} words outside the run's vocabulary (e.g. {unknown[0]!r}) and the "
            f"vocabulary has no {UNK} to map them to"
        )
    unk = vocab.stoi.get(UNK, -1)
    return torch.tensor([vocab.stoi.get(w, unk) for w in words], dtype=torch.long), len(unknown)
