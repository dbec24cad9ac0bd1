"""What a benchmark figure was measured on: CPU model, vector ISA, threads, torch version.

Timings of the same code differ by 1.7x between 2-core machines with AVX2 and with AVX-512
(docs/performance.md), and several-fold when another process is busy, so the benchmark
scripts print :func:`machine_line` above their tables and put :func:`machine` into their
JSON result, with the load average at the start. docs/performance.md quotes figures with it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; ("", set()) elsewhere."""
    model, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 / ARM
            flags = set(value.split())
    return model, flags


def vector_isa(flags: set[str]) -> str:
    """The widest SIMD extension in the CPU flags: AVX-512, AVX2, AVX, NEON/SVE, or none."""
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    if "avx" in flags:
        return "AVX"
    if "sve" in flags:
        return "SVE"
    if "asimd" in flags:
        return "NEON"
    return "none found" if flags else "unknown"


def machine(device: torch.device | str = "cpu") -> dict:
    model, flags = _cpuinfo()
    out = {
        "cpu_model": model or platform.processor() or platform.machine() or "unknown",
        "cpu_isa": vector_isa(flags),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "load_avg_before": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if torch.device(device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def machine_line(info: dict) -> str:
    line = (f"machine: {info['cpu_model']} ({info['cpu_isa']}), {info['cpu_count']} CPUs, "
            f"{info['threads']} torch threads, torch {info['torch_version']}")
    line += f", GPU {info['gpu']}" if "gpu" in info else ""
    load = info.get("load_avg_before")
    line += f"; load average {load}" if load is not None else ""
    if load is not None and load > 0.5:
        line += " (not idle: the figures will be low and noisy)"
    return line


if __name__ == "__main__":
    print(machine_line(machine()))
