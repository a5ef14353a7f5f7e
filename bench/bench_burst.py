"""(g) A burst of 2,000 ``pt.spawn(tiny, backend="process")`` in a fresh script.

What a user sees: the wall time from the first spawn to the last result, how
many worker interpreters the burst started (the default backend's
``statistics()["started"]``), and how long the script takes to exit after its
last result (time.monotonic is one clock for every process of the machine).
Quiet and with one core busy, interleaved.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from bench.bench_latency import Busy

N = 2000

_SCRIPT = f"""
import time
import polytask as pt
from polytask.backends import get_backend

def tiny():
    return 1

if __name__ == "__main__":
    t0 = time.monotonic()
    tasks = [pt.spawn(tiny, backend="process") for _ in range({N})]
    for t in tasks:
        t.result()
    t1 = time.monotonic()
    print(t0, t1, get_backend("process").statistics()["started"], flush=True)
"""


def _once() -> tuple[float, int, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120
    )
    end = time.monotonic()
    if proc.returncode != 0:
        raise RuntimeError(f"the burst script failed: {proc.stderr[-2000:]}")
    t0, t1, started = proc.stdout.split()
    return float(t1) - float(t0), int(started), end - float(t1)


def run(quick: bool = False) -> str:
    rounds = 2 if quick else 4
    workers = len(os.sched_getaffinity(0))
    got: dict[str, list[tuple[float, int, float]]] = {"quiet": [], "busy": []}
    for r in range(rounds):
        for cond in ("quiet", "busy") if r % 2 == 0 else ("busy", "quiet"):
            if cond == "busy":
                with Busy():
                    got[cond].append(_once())
            else:
                got[cond].append(_once())
    lines = [
        f"## (g) Burst: {N:,} `pt.spawn(tiny, backend='process')`",
        "",
        f"A fresh script spawns {N:,} tiny tasks on the default process backend and "
        f"waits for them; {rounds} runs per condition, medians (and the most "
        "interpreters any run started).",
        "",
        "| condition | wall ms (first spawn to last result) | interpreters started (max) "
        "| exit after last result, ms |",
        "|---|---:|---:|---:|",
    ]
    checks = []
    for cond, label in (("quiet", "quiet"), ("busy", "one core busy")):
        rows = got[cond]
        wall = statistics.median(r[0] for r in rows) * 1e3
        started = max(r[1] for r in rows)
        exit_ms = statistics.median(r[2] for r in rows) * 1e3
        worst_exit = max(r[2] for r in rows)
        lines.append(f"| {label} | {wall:.0f} | {started} | {exit_ms:.0f} |")
        checks.append(
            (f"{label}: at most {workers} interpreters started ({started})", started <= workers)
        )
        checks.append(
            (
                f"{label}: exit within 1 s of the last result (worst {worst_exit:.2f} s)",
                worst_exit <= 1.0,
            )
        )
    lines.append("")
    lines += [f"- {text}: {'met' if ok else '**not met**'}" for text, ok in checks]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
