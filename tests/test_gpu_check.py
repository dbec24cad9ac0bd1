"""``scripts/gpu_check.py``, the CUDA acceptance run, on the CPU: its dry run end to end (every
check present and none failed, the report written), and its deadline: an item that cannot get
its minimum is skipped, one that overruns its grant is stopped, and a call that never returns
ends the process before the deadline with the report written."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
CHECKS = {"set_device", "weight_drop", "precision", "no_sync", "resume", "deterministic", "smoke", "pytest_gpu"}


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def env(cwd: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "RNNLM_CACHE_DIR": str(cwd / ".cache")}


def test_the_dry_run_reports_every_check_and_fails_none(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--no-compile", "--skip-pytest", "--out", "tmp/x.json"],
        cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = tmp_path / "tmp" / "x.json"
    assert path.is_file()
    report = json.loads(path.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == report
    assert report["complete"] is True
    assert {"cpu_model", "cpu_isa", "cpu_count", "threads", "torch_version"} <= set(report["machine"])
    checks = report["checks"]
    assert set(checks) == CHECKS
    assert {name: c["status"] for name, c in checks.items() if c["status"] not in ("pass", "skipped")} == {}
    assert checks["smoke"]["status"] == "pass" and checks["smoke"]["device"] == "cpu"
    assert checks["resume"]["status"] == "pass" and checks["deterministic"]["status"] == "pass"
    assert checks["set_device"]["reason"] == "dry run: needs CUDA"
    assert checks["pytest_gpu"]["reason"] == "--skip-pytest"
    assert checks["weight_drop"]["parts"]["cudnn_kernel"]["reason"] == "dry run: needs CUDA"
    assert checks["no_sync"]["parts"]["fp16_sgd"]["reason"] == checks["no_sync"]["parts"]["fp16_asgd"]["reason"] == "dry run: needs CUDA"
    measurements = report["measurements"]
    assert {m["status"] for m in measurements.values()} <= {"done", "skipped"}
    assert measurements["gal_tied_compiled"]["reason"] == "--no-compile"
    assert measurements["awd_fp32"]["step_ms"] > 0
    assert report["summary"]["fail"] == report["summary"]["pending"] == 0
    assert not list(path.parent.glob(".*.tmp"))  # written by replacing, no temporary left


def test_an_item_that_would_exceed_the_time_left_is_skipped(gpu_check):
    now = [0.0]
    deadline = gpu_check.Deadline(100, clock=lambda: now[0])
    assert deadline.grant(share=30, need=5) == 30
    now[0] = 80.0
    assert deadline.grant(share=30, need=5) == 100 - 80 - gpu_check.RESERVE_S
    now[0] = 95.0
    ran = []
    item = gpu_check.Item("slow", "check", lambda budget: ran.append(budget) or {"ok": True}, share=30, need=10)
    entry = gpu_check.run_item(item, deadline)
    assert entry["status"] == "skipped" and "deadline" in entry["reason"] and not ran


def test_an_item_that_overruns_its_grant_is_stopped(gpu_check):
    def sleeper(budget: float) -> dict:
        time.sleep(30)
        return {"ok": True}

    t = time.monotonic()
    over_share = gpu_check.run_item(gpu_check.Item("hang", "check", sleeper, share=0.5, need=0.1),
                                    gpu_check.Deadline(100))
    assert over_share["status"] == "fail" and over_share["error"].startswith("deadline")
    cut_by_deadline = gpu_check.run_item(gpu_check.Item("hang", "check", sleeper, share=60, need=0.1),
                                         gpu_check.Deadline(gpu_check.RESERVE_S + 0.5))
    assert cut_by_deadline["status"] == "skipped" and cut_by_deadline["reason"].startswith("deadline")
    assert time.monotonic() - t < 5


HANG = """
import importlib.util, signal, sys, time
spec = importlib.util.spec_from_file_location("gpu_check", sys.argv[1])
gc = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(gc)
def hang(budget):
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])  # as a call that never returns to Python
    time.sleep(60)
gc.items = lambda ctx: [gc.Item("hang", "check", hang, share=600, need=0)]
sys.exit(gc.main(["--dry-run", "--deadline", sys.argv[2], "--out", sys.argv[3]]))
"""


def test_the_watchdog_ends_a_hung_run_before_the_deadline_with_the_report(tmp_path):
    deadline = 5.0
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", HANG, str(SCRIPT), str(deadline), str(tmp_path / "r.json")],
                          cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t < deadline + 2  # interpreter start-up included
    assert proc.returncode == 1, proc.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == report
    assert report["complete"] is False
    assert report["checks"]["hang"]["status"] == "fail" and "watchdog" in report["checks"]["hang"]["error"]
