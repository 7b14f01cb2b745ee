"""What the host did beside a benchmark: CPU steal on a virtual machine (used by the benchmarks
whose figures move with it: bench_generation.py, bench_embeddings.py)."""

from __future__ import annotations

from pathlib import Path


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat: on a virtual machine, time its CPUs were
    runnable but the host ran something else (the load average does not show it)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def steal_since(before: tuple[int, int]) -> float:
    """The share of CPU time stolen since `before` (a `cpu_ticks()` reading)."""
    steal, total = cpu_ticks()
    return (steal - before[0]) / max(1, total - before[1])
