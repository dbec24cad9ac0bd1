"""Training: the AWD schedule, regularisers, evaluation, optimisers, checkpoints."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .evaluate import evaluate, evaluate_mc, perplexity
from .trainer import Diverged, Trainer, TrainState

__all__ = [
    "CheckpointError",
    "Diverged",
    "TrainState",
    "Trainer",
    "evaluate",
    "evaluate_mc",
    "load_checkpoint",
    "perplexity",
    "save_checkpoint",
]
