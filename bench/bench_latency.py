"""Latency of one tiny task on a warm process worker, as users call it.

Rows: the calls users write (``pt.spawn(f, x, backend="process")``,
``pt.Pool(workers=1).submit``, ``pt.Executor(1).submit``), the backend used
directly, and every peer at its default start method on this platform (fork
on Linux with Python 3.11; loky its own). Each is measured quiet and with one
core busy (``yes > /dev/null`` beside it), in interleaved rounds so that the
machine's changing load moves every row alike; ratios are of one run. The
function defined in a script runs in a script of its own (a fresh interpreter
whose ``__main__`` defines it); its target is judged against the ``pt.spawn``
calls that script makes in alternating blocks beside it, round by round (the
median of the rounds' ratios), not against a ``pt.spawn`` run in another
process seconds apart.

The floor is a raw round trip over two pipes to a child process that echoes a
few bytes back (no pickling, no bookkeeping), each end sleeping in a blocking
read; the second floor row polls (spins) 100 us at both ends before it sleeps,
as a spinning implementation would. Spinning pays when a wake-up is slow and a
core is free for each side; on a busy machine it costs the peer its core.
"""

from __future__ import annotations

import contextlib
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


def _polytask_pool(n: int) -> list[float]:
    with pt.Pool(workers=1) as pool:
        return _measure(lambda i: pool.submit(_tiny, i).result(10), n)


def _polytask_executor(n: int) -> list[float]:
    with pt.Executor(1) as ex:
        return _measure(lambda i: ex.submit(_tiny, i).result(10), n)


# Every peer at its default start method on this platform (fork on Linux, Python
# 3.11), as a user who writes the one-liner gets it.
def _mp_pool(n: int) -> list[float]:
    import multiprocessing

    with multiprocessing.Pool(1) as pool:
        return _measure(lambda i: pool.apply(_tiny, (i,)), n)


def _ppe(n: int) -> list[float]:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1) as ex:
        return _measure(lambda i: ex.submit(_tiny, i).result(10), n)


def _pebble(n: int) -> list[float]:
    from pebble import ProcessPool

    with ProcessPool(1) as pool:
        return _measure(lambda i: pool.schedule(_tiny, (i,)).result(10), n)


def _mpire(n: int) -> list[float]:
    from mpire import WorkerPool

    with WorkerPool(1) as pool:
        return _measure(lambda i: pool.apply(_tiny, (i,)), n)


def _loky(n: int) -> list[float]:
    from loky import get_reusable_executor

    ex = get_reusable_executor(1)
    try:
        return _measure(lambda i: ex.submit(_tiny, i).result(10), n)
    finally:
        ex.shutdown(wait=True, kill_workers=True)


# The same calls with the function defined in the script itself, as a user's
# script defines it: a function of ``__main__`` travels by value to a worker that
# does not inherit it (polytask's default start method), by name to a forked one.
#
# The polytask script also calls the reference, ``pt.spawn`` of this module's
# ``_tiny`` (the SPAWN row's very function, imported by name), in the same
# process: blocks of BLOCK calls alternate between the two (ABBA: neither always
# follows the other), and the ratio of their p50s is one round's. Comparing the
# script against pt.spawn run elsewhere (another interpreter, seconds apart)
# measured the machine as much as the code: 1.01x one run, 1.37x the next.
BLOCK = 50
_SCRIPT = """\
import json, sys, time

def tiny(x):
    return x + 1

def measure(call, n):
    for i in range(min(200, n)):
        call(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        out.append(time.perf_counter() - t0)
    return out

def alternate(calls, n, block):
    for call in calls:  # warm up: workers started, code paths hot
        for i in range(min(200, n)):
            call(i)
    out = [[] for _ in calls]
    perf = time.perf_counter
    for b in range(0, n, block):
        order = range(len(calls)) if b // block % 2 == 0 else reversed(range(len(calls)))
        for k in order:
            call, got = calls[k], out[k]
            for i in range(b, min(n, b + block)):
                t0 = perf()
                call(i)
                got.append(perf() - t0)
    return out

if __name__ == "__main__":
    kind, n, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if kind == "pool":
        import polytask as pt
        from bench.bench_latency import _tiny  # the reference: a module's function
        with pt.Pool(workers=1) as pool:
            got, ref = alternate(
                [lambda i: pool.submit(tiny, i).result(10),
                 lambda i: pt.spawn(_tiny, i, backend="process").result(10)],
                n, block,
            )
        print(json.dumps({"pool": got, "spawn": ref}))
    else:
        import multiprocessing
        with multiprocessing.Pool(1) as pool:
            got = measure(lambda i: pool.apply(tiny, (i,)), n)
        print(json.dumps({"mp": got}))
"""


def _in_script(kind: str, n: int) -> dict[str, list[float]]:
    """Run the script (``kind`` "pool" or "mp"); its samples by side."""
    import json
    import tempfile

    # The script imports the reference function by name, as its workers do.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "script.py")
        with open(path, "w") as f:
            f.write(_SCRIPT)
        out = subprocess.run(
            [sys.executable, path, kind, str(n), str(BLOCK)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
    if out.returncode != 0:
        raise RuntimeError(f"the {kind} script failed: {out.stderr[-500:]}")
    samples: dict[str, list[float]] = json.loads(out.stdout)
    return samples


def _polytask_pool_script(n: int) -> dict[str, list[float]]:
    """Pool.submit of the script's function, and the pt.spawn calls beside it."""
    got = _in_script("pool", n)
    return {POOL_SCRIPT: got["pool"], SCRIPT_SPAWN: got["spawn"]}


def _mp_pool_script(n: int) -> list[float]:
    return _in_script("mp", n)["mp"]


FLOOR = "raw pipe round trip (floor)"
SPIN_FLOOR = "raw pipe round trip, both ends poll first"
BACKEND = "**polytask** ProcessBackend"
SPAWN = "**polytask** pt.spawn(f, x, backend='process')"
POOL = "**polytask** pt.Pool(workers=1).submit(f, x)"
EXECUTOR = "**polytask** pt.Executor(1).submit(f, x)"
POOL_SCRIPT = "**polytask** pt.Pool(workers=1).submit(f, x), f defined in the script"
SCRIPT_SPAWN = "**polytask** pt.spawn(f, x, backend='process') in that script, alternating"
MP_SCRIPT = "multiprocessing.Pool(1).apply (fork), f defined in the script"
# A row's function returns its samples, or (a script measuring two rows in one
# process) the samples of each of its rows.
PEERS: list[tuple[str, Callable[[int], list[float] | dict[str, list[float]]]]] = [
    (FLOOR, _pipe_floor),
    (SPIN_FLOOR, _pipe_floor_spin),
    (BACKEND, _polytask),
    (SPAWN, _polytask_spawn),
    (POOL, _polytask_pool),
    (EXECUTOR, _polytask_executor),
    (POOL_SCRIPT, _polytask_pool_script),
    ("multiprocessing.Pool(1).apply (fork)", _mp_pool),
    (MP_SCRIPT, _mp_pool_script),
    ("ProcessPoolExecutor(1).submit (fork)", _ppe),
    ("pebble ProcessPool.schedule (fork)", _pebble),
    ("mpire WorkerPool.apply (fork)", _mpire),
    ("loky reusable executor (loky)", _loky),
]
OURS = {FLOOR, SPIN_FLOOR, BACKEND, SPAWN, POOL, EXECUTOR, POOL_SCRIPT, SCRIPT_SPAWN}
# The table's rows in order: the script's pt.spawn right under the script's Pool.
ROWS = [label for label, _ in PEERS]
ROWS.insert(ROWS.index(POOL_SCRIPT) + 1, SCRIPT_SPAWN)


class Busy:
    """One core kept busy by ``yes > /dev/null`` while the block runs (the load case)."""

    def __enter__(self) -> Busy:
        self.proc = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
        time.sleep(0.2)  # let the scheduler see it
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def measure(rounds: int, n: int) -> dict[str, dict[str, list[float]]]:
    """p50 (seconds) of each row, per round and condition.

    The rounds interleave the rows and the two conditions (quiet, one core
    busy), so a change in the machine's load moves every row alike; the report
    takes the median over the rounds.
    """
    out: dict[str, dict[str, list[float]]] = {"quiet": {}, "busy": {}}
    for r in range(rounds):
        for cond in ("quiet", "busy") if r % 2 == 0 else ("busy", "quiet"):
            with contextlib.ExitStack() as stack:
                if cond == "busy":
                    stack.enter_context(Busy())
                for label, fn in PEERS:
                    try:
                        got = fn(n)
                    except ImportError:
                        continue
                    for row, samples in (got if isinstance(got, dict) else {label: got}).items():
                        out[cond].setdefault(row, []).append(statistics.median(samples))
    return out


def script_ratios(p50: dict[str, dict[str, list[float]]], cond: str) -> list[float]:
    """Per round: the script's Pool.submit p50 over the p50 of the pt.spawn calls
    alternating with it in the same process (one script run is one round)."""
    rows = p50[cond]
    return [a / b for a, b in zip(rows[POOL_SCRIPT], rows[SCRIPT_SPAWN], strict=True)]


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(p50: dict[str, dict[str, list[float]]], rounds: int, n: int) -> tuple[str, bool]:
    """The Markdown section, and whether every target was met."""
    med = {c: {k: statistics.median(v) * 1e6 for k, v in rows.items()} for c, rows in p50.items()}
    lines = [
        "## Latency: one tiny task on a warm worker, as users call it",
        "",
        f"p50 in microseconds of sequential calls of `x + 1` on a pool of one warm "
        f"process: the median over {rounds} interleaved runs of {n} calls each, quiet "
        "and with one core busy (`yes > /dev/null` beside it). Every peer at its default "
        "start method; ratios against `pt.spawn` of the same condition, except the "
        "script's Pool.submit (†): the median of its rounds' ratios against the pt.spawn "
        f"calls alternating with it in the same script (blocks of {BLOCK} calls), with "
        "their range.",
        "",
        "| implementation | quiet p50 µs | vs pt.spawn | one core busy p50 µs | vs pt.spawn |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in ROWS:
        cells = []
        for cond in ("quiet", "busy"):
            v = med[cond].get(label)
            ref = med[cond].get(SPAWN)
            if v is None or not ref:
                cells += ["–", "not installed"]
            elif label == POOL_SCRIPT:
                r = script_ratios(p50, cond)
                cells += [f"{v:.0f}", f"{statistics.median(r):.2f}x † ({min(r):.2f}-{max(r):.2f})"]
            else:
                cells += [f"{v:.0f}", f"{v / ref:.2f}x"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    checks: list[tuple[str, bool]] = []
    for cond in ("quiet", "busy"):
        m = med[cond]
        peers = [v for k, v in m.items() if k not in OURS]
        best = min(peers) if peers else float("nan")
        spawn = m[SPAWN]
        for label, short in (
            (POOL, "Pool.submit"),
            (EXECUTOR, "Executor.submit"),
            (POOL_SCRIPT, "Pool.submit of a script's function"),
        ):
            ours = m[label]
            if label == POOL_SCRIPT:
                r = script_ratios(p50, cond)
                ratio = statistics.median(r)
                checks.append(
                    (
                        f"{cond}: {short} {ratio:.2f}x the pt.spawn calls alternating with it "
                        f"(median of {len(r)} rounds' ratios, {min(r):.2f}-{max(r):.2f}x) "
                        "(target ≤ 1.25x)",
                        ratio <= 1.25,
                    )
                )
            else:
                checks.append(
                    (
                        f"{cond}: {short} {ours / spawn:.2f}x pt.spawn (target ≤ 1.25x)",
                        ours <= 1.25 * spawn,
                    )
                )
            if cond == "quiet":
                checks.append(
                    (
                        f"quiet: {short} {best / ours:.1f}x lower than the best peer (target ≥ 4x)",
                        best >= 4 * ours,
                    )
                )
            else:
                checks.append(
                    (
                        f"one core busy: {short} {ours / best:.2f}x the best peer (target ≤ 1x)",
                        ours <= best,
                    )
                )
        checks.append(
            (
                f"{cond}: pt.spawn {best / spawn:.1f}x lower than the best peer (target ≥ 4x quiet, ≥ 1x busy)",
                best >= (4 if cond == "quiet" else 1) * spawn,
            )
        )
    quiet = med["quiet"]
    lines += [
        "",
        f"ProcessBackend p50 is {quiet[BACKEND] / quiet[FLOOR]:.1f}x the raw blocking pipe "
        f"floor and {quiet[BACKEND] / quiet[SPIN_FLOOR]:.1f}x the round trip whose ends poll "
        "before they sleep, as polytask's do (quiet).",
        "",
    ]
    lines += [f"- {text}: {_verdict(ok)}" for text, ok in checks]
    lines.append("")
    return "\n".join(lines), all(ok for _, ok in checks)


def run(quick: bool = False) -> str:
    rounds, n = (2, 400) if quick else (4, 1500)
    section, _ = report(measure(rounds, n), rounds, n)
    return section


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
