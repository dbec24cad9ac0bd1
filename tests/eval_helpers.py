"""Tiny trained runs for the tests of ``rnnlm eval`` and ``rnnlm generate``.

A run is trained with :func:`rnnlm.run.train` (no Hydra) on the tiny corpus and given
the ``.hydra/config.yaml`` that ``rnnlm train`` would have written, so it is a run
directory like any other. A few seconds on one CPU thread.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from tiny_corpus import write_split_files

from rnnlm.config import DatasetConfig, EvalConfig, ModelConfig, RunConfig, TrainerConfig
from rnnlm.run import train


def tiny_config(data: Path, **changes) -> RunConfig:
    """A tiny AWD-style run on the split files in ``data``: 2 epochs of a 2-layer 16-unit model."""
    cfg = RunConfig(
        dataset=DatasetConfig(path=str(data), batch_size=4, eval_batch_size=5, test_batch_size=2,
                              cache_dir=str(data / ".cache")),
        model=ModelConfig(emsize=16, nhid=16, nlayers=2),
        trainer=TrainerConfig(bptt=10, max_epochs=2, progress=False),
        eval=EvalConfig(),
        device="cpu",
        seed=3,
    )
    cfg.optim.lr = 5.0
    for key, value in changes.items():
        node, _, leaf = key.rpartition(".")
        setattr(eval(f"cfg.{node}") if node else cfg, leaf, value)  # e.g. "eval.mc_samples": 2
    return cfg


def make_run(root: Path, unk: bool = False, **changes) -> Path:
    """Train a tiny run under ``root/run``; ``unk`` adds ``<unk>`` to the vocabulary."""
    data = write_split_files(root / "data")
    if unk:
        with open(data / "train.txt", "a", encoding="utf-8") as f:
            f.write(" the <unk> sees a dog \n")
    cfg = tiny_config(data, **changes)
    run_dir = root / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.structured(cfg), run_dir / ".hydra" / "config.yaml")
    result = train(cfg, run_dir)
    assert result["status"] == "completed", result
    return run_dir
