"""rnnlm.runtime: device names, and provenance that never names another repository."""

import shutil
import subprocess
from pathlib import Path

import pytest

from rnnlm import __version__, runtime
from rnnlm.config import ConfigError


@pytest.mark.parametrize("name,ok", [("auto", True), ("cpu", True), ("cuda", True), ("cuda:3", True),
                                     ("cuda:", False), ("cuda:x", False), ("tpu", False), ("CPU", False)])
def test_device_names(name, ok):
    assert runtime.is_device_name(name) is ok
    if not ok:
        with pytest.raises(ConfigError, match=f"device={name} is not a device; use auto, cpu, cuda or cuda:N"):
            runtime.resolve_device(name)


def git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_revision_only_from_its_own_checkout_and_marked_dirty(tmp_path):
    checkout = tmp_path / "rnnlm-src"
    package = checkout / "rnnlm"
    package.mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("[project]\nname = 'rnnlm'\n")
    (package / "__init__.py").write_text("")
    git(checkout, "init", "-q")
    git(checkout, "add", ".")
    git(checkout, "commit", "-q", "-m", "x")
    head = git(checkout, "rev-parse", "--short=7", "HEAD")
    assert runtime.git_revision(package) == head
    (package / "__init__.py").write_text("# changed\n")
    assert runtime.git_revision(package) == f"{head}-dirty"
    # installed inside another repository (a virtualenv in a project's tree): not its HEAD
    site = checkout / "venv" / "site-packages" / "rnnlm"
    site.mkdir(parents=True)
    assert runtime.git_revision(site) == ""
    assert runtime.git_revision(tmp_path / "elsewhere" / "rnnlm") == ""  # no checkout at all


def test_provenance_always_has_the_version():
    assert runtime.provenance()["rnnlm_version"] == __version__


def test_the_version_is_the_one_in_pyproject():
    """One version number, so a result row's rnnlm_version names the presets' form (docs/reproduction.md)."""
    import re

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"$', pyproject, re.M).group(1) == __version__


def test_source_hash_names_the_installed_source_and_configs():
    import hashlib
    import importlib
    from pathlib import Path

    digest = hashlib.sha256()
    configs = Path(importlib.import_module("rnnlm.configs").__file__).resolve().parent
    for root, pattern in ((Path(runtime.__file__).resolve().parent, "*.py"), (configs, "*.yaml")):
        for path in sorted(p for p in root.rglob(pattern)
                           if "__pycache__" not in p.parts and (root == configs or configs not in p.parents)):
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode() + path.read_bytes())
    assert runtime.source_hash() == digest.hexdigest()[:12]
    assert runtime.provenance()["source_hash"] == runtime.source_hash()


def test_run_dirs_below_the_working_directory_are_recorded_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runtime.portable_path(tmp_path / "outputs" / "runs" / "x") == "outputs/runs/x"
    assert runtime.portable_path(tmp_path.parent / "elsewhere") == str(tmp_path.parent / "elsewhere")


def test_a_run_flushes_subnormal_floats_on_the_cpu_and_restores_the_default():
    import torch

    from rnnlm.config import Precision
    from rnnlm.precision import numerics

    subnormal = torch.tensor([1e-39], dtype=torch.float32)
    assert (subnormal * 1.0).item() != 0.0
    with numerics(Precision.fp32, False, torch.device("cpu")):
        assert (subnormal * 1.0).item() == 0.0  # DAZ: a subnormal input reads as zero
        assert (torch.tensor([1e-20]) * 1e-20).item() == 0.0  # FTZ: a subnormal result is zero
    assert (subnormal * 1.0).item() != 0.0


def test_execution_sets_threads_device_and_numerics_and_restores_them(monkeypatch):
    """One context for runs and evaluations: CPU threads, the run's GPU as the current CUDA
    device (recorded here through a stand-in for torch.cuda.device), and the numerics."""
    import contextlib

    import torch

    from rnnlm.checks import ConfigError

    entered = []

    @contextlib.contextmanager
    def current(device):
        entered.append(device)
        yield

    monkeypatch.setattr(torch.cuda, "device", current)
    before = torch.get_num_threads()
    subnormal = torch.tensor([1e-39])
    with runtime.execution(torch.device("cpu"), "fp32", False, threads=1):
        assert torch.get_num_threads() == 1 and (subnormal * 1.0).item() == 0.0
    assert torch.get_num_threads() == before and (subnormal * 1.0).item() != 0.0
    assert entered == []  # a CPU run touches no CUDA device
    with runtime.execution(torch.device("cuda:1"), "tf32"):
        assert entered == [torch.device("cuda:1")]
    with pytest.raises(ConfigError, match="^precision=fp16 needs a CUDA device"):
        with runtime.execution(torch.device("cpu"), "fp16"):
            pass


def test_the_cli_fixes_the_cublas_workspace_before_any_job(monkeypatch):
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG once per process: the CLI sets it (unless set) before
    a command can touch CUDA, so a deterministic job after another in one process still has it."""
    import os

    from rnnlm.cli import main
    from rnnlm.precision import CUBLAS_WORKSPACE

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    main(["eval", "--help"])
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    main(["eval", "--help"])
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
