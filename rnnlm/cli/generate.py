"""``rnnlm generate RUN_DIR [--words N] [--temperature T] [--seed S] [--prompt TEXT] [--out FILE]``.

Samples text from a run's checkpoint (:mod:`rnnlm.evaluation.generate`). Bad input
(no run, no checkpoint, a bad option, a prompt the vocabulary cannot read) gives one
line on stderr and exit 2, with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..atomic import atomic_write_text
from ..evaluation.generate import render, sample_words
from ..evaluation.runs import UNK, RunError, load_run
from .errors import fail

PROG = "rnnlm generate"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the usage too)
        raise SystemExit(fail(f"{message}; see `{PROG} --help`"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Sample text from a trained run (its checkpoint and vocabulary).")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (holds .hydra/config.yaml)")
    parser.add_argument("--words", type=int, default=100, help="number of words to draw (default 100)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="softmax temperature; below 1 is more conservative (default 1.0)")
    parser.add_argument("--seed", type=int, default=1111, help="random seed; same seed, same text (default 1111)")
    parser.add_argument("--prompt", default=None, help="text read before sampling (it conditions the state)")
    parser.add_argument("--out", type=Path, default=None, help="write to FILE instead of stdout")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best", help="weights (default best)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    return parser


def generate_command(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if args.words < 1:
        return fail(f"--words {args.words} must be >= 1")
    if not args.temperature > 0 or args.temperature == float("inf"):
        return fail(f"--temperature {args.temperature} must be a positive number, e.g. 0.8")
    if args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):
        return fail(f"--out {args.out}: not a writable file path (its directory must exist)")
    try:
        run = load_run(Path(args.run_dir), args.checkpoint, args.device)
    except RunError as exc:
        return fail(str(exc))
    prompt = None
    if args.prompt is not None:
        words = args.prompt.split()
        unknown = [w for w in words if w not in run.vocab.stoi]
        if unknown and UNK not in run.vocab.stoi:
            return fail(f"--prompt word {unknown[0]!r} is not in the run's vocabulary (which has no {UNK})")
        prompt = [run.vocab.stoi.get(w, run.vocab.stoi.get(UNK, 0)) for w in words]
        if unknown:
            print(f"{PROG}: note: {len(unknown)} prompt words read as {UNK}: {' '.join(unknown[:5])}", file=sys.stderr)
    ids = sample_words(run.model, run.vocab, args.words, args.temperature, args.seed, prompt)
    text = render(ids, run.vocab)
    if args.out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(args.out, text)
        print(f"{PROG}: wrote {args.words} words to {args.out}", file=sys.stderr)
    return 0
