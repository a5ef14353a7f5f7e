"""Latency of one tiny task on a warm process worker: submit, run, get the result.

The floor is a raw round trip over two pipes to a child process that echoes a
few bytes back (no pickling, no bookkeeping), each end sleeping in a blocking
read: nothing built on pipes that sleeps while it waits can beat it. Where waking
a sleeping process is slow (a virtual machine whose idle CPU must be woken, tens
of microseconds each way), that wake-up is most of the floor; polytask's ends
poll briefly before they sleep, so the second floor row (both ends of the raw
round trip polling the same way) is the one to compare its cost of pickling and
bookkeeping against. Every peer runs the same task (``_tiny``) on a pool of one
warm worker.
"""

from __future__ import annotations

import os
import select
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import polytask as pt
from polytask.backends.process.backend import ProcessBackend


def _tiny(x: int) -> int:
    return x + 1


_ECHO = (
    "import os\n"
    "r, w = 0, 1\n"
    "while True:\n"
    "    b = os.read(r, 64)\n"
    "    if not b: break\n"
    "    os.write(w, b)\n"
)


# The same echo, but both ends poll (non-blocking) for up to 100 us before they
# sleep, as polytask's worker and waiting caller do.
_ECHO_SPIN = (
    "import os, select, time\n"
    "r, w = 0, 1\n"
    "p = select.poll()\n"
    "p.register(r, select.POLLIN)\n"
    "while True:\n"
    "    end = time.monotonic() + 100e-6\n"
    "    while not p.poll(0) and time.monotonic() < end: pass\n"
    "    b = os.read(r, 64)\n"
    "    if not b: break\n"
    "    os.write(w, b)\n"
)


def _measure(call: Callable[[int], object], n: int) -> list[float]:
    for i in range(min(200, n)):  # warm up: workers started, code paths hot
        call(i)
    out = []
    perf = time.perf_counter
    for i in range(n):
        t0 = perf()
        call(i)
        out.append(perf() - t0)
    return out


def _pipe_floor(n: int, *, spin: bool = False) -> list[float]:
    """Raw round trips to an echo child; with ``spin``, both ends poll before they sleep."""
    child = subprocess.Popen(
        [sys.executable, "-S", "-c", _ECHO_SPIN if spin else _ECHO],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    wfd, rfd = child.stdin.fileno(), child.stdout.fileno()
    poller = select.poll()
    poller.register(rfd, select.POLLIN)
    monotonic = time.monotonic

    def call(i: int) -> object:
        os.write(wfd, b"x" * 16)
        if spin:
            end = monotonic() + 100e-6
            while not poller.poll(0) and monotonic() < end:
                pass
        return os.read(rfd, 64)

    try:
        return _measure(call, n)
    finally:
        child.stdin.close()
        child.wait(10)
        child.stdout.close()


def _pipe_floor_spin(n: int) -> list[float]:
    return _pipe_floor(n, spin=True)


def _polytask(n: int) -> list[float]:
    be = ProcessBackend(1)
    try:
        return _measure(lambda i: be.spawn(_tiny, (i,), {}).result(10), n)
    finally:
        be.shutdown()


def _polytask_spawn(n: int) -> list[float]:
    # The public one-liner on the shared default backend.
    return _measure(lambda i: pt.spawn(_tiny, i, backend="process").result(10), n)


def _mp_pool(n: int) -> list[float]:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return _measure(lambda i: pool.apply(_tiny, (i,)), n)


def _ppe(n: int) -> list[float]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        return _measure(lambda i: ex.submit(_tiny, i).result(10), n)


def _pebble(n: int) -> list[float]:
    import multiprocessing

    from pebble import ProcessPool

    with ProcessPool(1, context=multiprocessing.get_context("spawn")) as pool:
        return _measure(lambda i: pool.schedule(_tiny, (i,)).result(10), n)


def _mpire(n: int) -> list[float]:
    from mpire import WorkerPool

    with WorkerPool(1, start_method="spawn") as pool:
        return _measure(lambda i: pool.apply(_tiny, (i,)), n)


def _loky(n: int) -> list[float]:
    from loky import get_reusable_executor

    ex = get_reusable_executor(1)
    try:
        return _measure(lambda i: ex.submit(_tiny, i).result(10), n)
    finally:
        ex.shutdown(wait=True, kill_workers=True)


PEERS: list[tuple[str, Callable[[int], list[float]]]] = [
    ("raw pipe round trip (floor)", _pipe_floor),
    ("raw pipe round trip, both ends poll first", _pipe_floor_spin),
    ("**polytask** ProcessBackend", _polytask),
    ("**polytask** pt.spawn(backend='process')", _polytask_spawn),
    ("multiprocessing.Pool.apply", _mp_pool),
    ("ProcessPoolExecutor.submit", _ppe),
    ("pebble ProcessPool.schedule", _pebble),
    ("mpire WorkerPool.apply", _mpire),
    ("loky reusable executor", _loky),
]


def run(quick: bool = False) -> str:
    n = 500 if quick else 3000
    rows: list[tuple[str, float | None, float | None, str]] = []
    for label, fn in PEERS:
        try:
            samples = fn(n)
        except ImportError as exc:
            rows.append((label, None, None, f"not installed ({exc.name})"))
            continue
        q = statistics.quantiles(samples, n=100)
        rows.append((label, statistics.median(samples) * 1e6, q[98] * 1e6, ""))
    floor = rows[0][1] or 1.0
    spin_floor = rows[1][1] or 1.0
    ours = rows[2][1] or 0.0
    peers = [r[1] for r in rows[4:] if r[1] is not None]
    best = min(peers) if peers else float("nan")
    lines = [
        "## Latency: one tiny task on a warm worker",
        "",
        f"{n} sequential calls of `x + 1` on a pool of one warm process; "
        "p50 and p99 in microseconds.",
        "",
        "| implementation | p50 µs | p99 µs | p50 vs polytask |",
        "|---|---:|---:|---:|",
    ]
    for label, p50, p99, note in rows:
        if p50 is None or p99 is None:
            lines.append(f"| {label} | – | – | {note} |")
        else:
            lines.append(f"| {label} | {p50:.0f} | {p99:.0f} | {p50 / ours:.2f}x |")
    lines += [
        "",
        f"polytask p50 is {ours / floor:.1f}x the raw pipe floor (target ≤ 3x: "
        f"{'met' if ours <= 3 * floor else 'not met'}) and {best / ours:.1f}x faster than "
        f"the best peer (target ≥ 6x: {'met' if best >= 6 * ours else 'not met'}); it is "
        f"{ours / spin_floor:.1f}x the round trip whose ends poll before they sleep, as "
        "polytask's do.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
