"""Where and with what a run or an evaluation executes: its device, its CPU threads, its
numerics, and the code that ran it. Training (:mod:`rnnlm.run`), evaluation
(:mod:`rnnlm.evaluation`, ``rnnlm eval``) and the CLI all take these from here, so a device
string is parsed in one place and a run and an evaluation execute in the same
:func:`execution` context.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from . import __version__
from .checks import ConfigError

if TYPE_CHECKING:
    from .config import Precision

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def is_device_name(name: str) -> bool:
    """Whether ``name`` is one of :data:`DEVICE_FORMS`."""
    return bool(_DEVICE.fullmatch(name))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` / ``cuda:N`` must exist here.

    ConfigError (one line, saying what to use instead) for anything else."""
    if not is_device_name(name):
        raise ConfigError(f"device={name} is not a device; use {DEVICE_FORMS}.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or device=auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={name} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}."
            )
    return device


def sweep_device(name: str, job: int, gpus: int) -> str:
    """The device of job ``job`` (0-based) of a sweep on a machine with ``gpus`` visible GPUs:
    ``cuda`` (or ``auto`` when there are GPUs) becomes ``cuda:{job mod gpus}``, so the jobs of a
    joblib sweep spread over the GPUs; a pinned ``cuda:N``, and ``cpu``, stay as they are.
    Under SLURM each job sees only the GPU it was given, so it runs on ``cuda:0`` of its own."""
    if gpus > 0 and name in ("cuda", "auto"):
        return f"cuda:{job % gpus}"
    return name


@contextlib.contextmanager
def execution(device: torch.device, precision: "Precision | str" = "fp32", deterministic: bool = False,
              threads: int | None = None) -> Iterator[None]:
    """The context a run or an evaluation executes in, the caller's settings restored on exit:
    torch's CPU threads (:func:`cpu_threads`), ``device`` as the current CUDA device (so
    current-device APIs, cuBLAS handles and the caching allocator of a job on ``cuda:k`` stay
    on GPU k), and the numerics of ``precision`` and ``deterministic``
    (:func:`rnnlm.precision.numerics`). ConfigError, in one line, for a precision the device
    cannot run (:func:`rnnlm.precision.check_device`)."""
    from .precision import check_device, numerics  # precision imports the config, which imports this

    check_device(precision, device)
    cuda = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with cpu_threads(threads), cuda, numerics(precision, deterministic, device):
        yield


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``n`` inside (None: left as it is); the caller's count
    is restored afterwards, so a run or an evaluation in a notebook leaves it alone."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def git_revision(package_dir: Path = Path(__file__).resolve().parent) -> str:
    """The commit of the checkout rnnlm runs from, ``-dirty`` when tracked files differ from
    it; empty when rnnlm is installed (a wheel in site-packages) rather than run from its
    own git checkout, so that no other repository's HEAD is ever recorded."""
    root = package_dir.parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    if not (root / "pyproject.toml").is_file():
        return ""
    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or Path(top).resolve() != root.resolve():
            return ""
        return git("describe", "--always", "--dirty", "--abbrev=7")
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.cache
def source_hash() -> str:
    """The first 12 hex digits of a SHA-256 over rnnlm's source as it is installed: every
    ``.py`` file of the package and every ``.yaml`` of its configs, each with its path relative
    to its root, in sorted order. It names the code that made a run whether rnnlm runs from a
    checkout or from a wheel, where no commit is known."""
    import importlib

    digest = hashlib.sha256()
    configs = Path(importlib.import_module("rnnlm.configs").__file__).resolve().parent
    roots = [(Path(__file__).resolve().parent, "*.py"), (configs, "*.yaml")]
    for root, pattern in roots:
        # configs/ sits inside the package in a wheel and beside it in a checkout: hashed once, as configs
        for path in sorted(p for p in root.rglob(pattern)
                           if "__pycache__" not in p.parts and (root == configs or configs not in p.parents)):
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def provenance() -> dict[str, str]:
    """What ran: ``rnnlm_version`` and ``source_hash`` always, ``git_revision`` from a checkout
    of rnnlm (else empty)."""
    return {"rnnlm_version": __version__, "git_revision": git_revision(), "source_hash": source_hash()}


def portable_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (a run's directory as
    Hydra's relative ``outputs/...`` names it), else as it is: no machine's layout above the
    working directory ends up in a result file."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)
