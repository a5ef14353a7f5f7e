"""Pool.submit alone vs beside pt.spawn in one process (issue 14): a diagnostic, not a bench.

``PYTHONPATH=src python -m bench.diag_spin_mixed [--rounds 8] [--busy]
[--tree old=/path/to/src --tree new=/path/to/src]`` runs, in a fresh process
each (a process settles in a waiting mode, so runs, not calls, are the
samples), 2,000 sequential ``pool.submit(f, x).result()`` of a
``pt.Pool(workers=1)``:

- ``alone``: nothing else in the process;
- ``blocks``: taking turns with ``pt.spawn(f, x, backend="process")`` in blocks
  of 50 (ABBA), the bench's old one-process layout;
- ``percall``: the two alternating call by call.

Per mode and tree: the median, range and count of runs in the spinning regime
(p50 < 25 us) of the runs' p50s, and of each process backend's SpinChoice:
its blocking epochs, and how many of them measured under 5 us. Before the fix
of the spin choice's measure most did: a pipe write wakes a sleeping worker
with a sync wake-up, which Linux may run on the writer's core inside the
write, and the wait alone (all that was timed) was then ~2 us, so spinning
could not win again. Trees run in alternating order, round by round; with
``--busy`` a ``yes > /dev/null`` runs beside them (and is killed after).

Not run by ``python -m bench`` (its name does not start with ``bench_``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("alone", "blocks", "percall")
N = 2000
BLOCK = 50

# One run: the child prints a JSON line. The SpinChoice of each backend is
# watched by wrapping its record() (epoch ends and the way each one measured).
_CHILD = """\
import json, statistics, sys, time
import polytask as pt
from polytask._ipc import spin
from polytask.backends import get_backend

def tiny(x):
    return x + 1

epochs = {}
record = spin.SpinChoice.record

def watched(self, seconds, *args, **kwargs):
    was, n = self.spin, self._epochs
    record(self, seconds, *args, **kwargs)
    if self._epochs != n:
        e = epochs.setdefault(id(self), [0, 0, 0])  # spin epochs, block epochs, tiny
        e[0 if was else 1] += 1
        if not was:
            e[2] += self._block_cost < 5e-6

spin.SpinChoice.record = watched
mode, n, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
perf = time.perf_counter
with pt.Pool(workers=1) as pool:
    calls = [lambda i: pool.submit(tiny, i).result(10)]
    if mode != "alone":
        calls.append(lambda i: pt.spawn(tiny, i, backend="process").result(10))
    for call in calls:
        for i in range(200):
            call(i)
    if mode == "percall":
        block = 1
    out = [[] for _ in calls]
    for b in range(0, n, block):
        order = calls if b // block % 2 == 0 else calls[::-1]
        for call in order:
            got = out[calls.index(call)]
            for i in range(b, min(n, b + block)):
                t0 = perf()
                call(i)
                got.append(perf() - t0)
    res = {"pool": statistics.median(out[0])}
    be = [pool._backend]
    if mode != "alone":
        res["spawn"] = statistics.median(out[1])
        be.append(get_backend("process"))
    res["epochs"] = [epochs.get(id(b._spin_choice), [0, 0, 0]) for b in be]
print(json.dumps(res))
"""


def _run(src: str, mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(N), str(BLOCK)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if out.returncode:
        raise RuntimeError(f"the {mode} run failed: {out.stderr[-500:]}")
    got: dict = json.loads(out.stdout)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--busy", action="store_true", help="run `yes > /dev/null` beside")
    ap.add_argument("--tree", action="append", default=[], help="name=path/to/src (A/B)")
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args()
    here = str(Path(__file__).resolve().parents[1] / "src")
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": here}
    modes = args.modes.split(",")
    p50: dict[tuple[str, str, str], list[float]] = {}
    epochs: dict[tuple[str, str, str], list[int]] = {}
    yes = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if args.busy else None
    try:
        if yes is not None:
            time.sleep(0.2)
        for r in range(args.rounds):
            for name in list(trees) if r % 2 == 0 else list(trees)[::-1]:
                for mode in modes:
                    got = _run(trees[name], mode)
                    for i, side in enumerate(("pool", "spawn")):
                        if side in got:
                            p50.setdefault((name, mode, side), []).append(got[side] * 1e6)
                            tot = epochs.setdefault((name, mode, side), [0, 0, 0])
                            for k in range(3):
                                tot[k] += got["epochs"][i][k]
    finally:
        if yes is not None:
            yes.kill()
            yes.wait()
    print(
        f"p50 us of {N} calls per run, {args.rounds} runs each ({'busy' if args.busy else 'quiet'})"
    )
    for key, v in sorted(p50.items()):
        s, b, tiny = epochs[key]
        print(
            f"{' '.join(key):28} median {statistics.median(v):6.1f}  range {min(v):6.1f}-"
            f"{max(v):6.1f}  spinning runs {sum(x < 25 for x in v)}/{len(v)}  "
            f"epochs spin {s} block {b} (< 5 us: {tiny})"
        )


if __name__ == "__main__":
    main()
