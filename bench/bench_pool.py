"""Pool against multiprocessing.Pool, ProcessPoolExecutor, joblib (loky), mpire, pebble.

(a) submit N tiny tasks one by one, then gather; (b) map over N tiny tasks with
each tool's automatic chunking; (c) map over 40 tasks of uneven length (some
10x longer), wall time against the ideal schedule; (d) imap over an endless
generator: memory stays bounded. Every pool is started and warmed up before
it is timed (steady state: worker start-up is not measured).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Callable

import psutil

WORKERS = 2


def tiny(x):
    return x + 1


def nap(seconds):
    time.sleep(seconds)
    return seconds


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# ----------------------------------------------------------------------------- peers
class Peer:
    name = ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        pass

    submit_gather: Callable[[list], list] | None = None
    auto_map: Callable[[Callable, list], list] | None = None


class Polytask(Peer):
    name = "polytask Pool"

    def __init__(self):
        import polytask as pt

        self.pool = pt.Pool(WORKERS)
        self.pool.map(tiny, range(100))

    def submit_gather(self, items):
        tasks = [self.pool.submit(tiny, i) for i in items]
        return [t.result() for t in tasks]

    def auto_map(self, fn, items):
        return self.pool.map(fn, items)

    def close(self):
        self.pool.close()
        self.pool.join()


class MpPool(Peer):
    name = "multiprocessing.Pool"
    method = "spawn"

    def __init__(self):
        self.pool = multiprocessing.get_context(self.method).Pool(WORKERS)
        self.pool.map(tiny, range(100))

    def submit_gather(self, items):
        rs = [self.pool.apply_async(tiny, (i,)) for i in items]
        return [r.get() for r in rs]

    def auto_map(self, fn, items):
        return self.pool.map(fn, items)

    def close(self):
        self.pool.close()
        self.pool.join()


class MpPoolDefault(MpPool):
    """multiprocessing.Pool at this platform's default start method (fork on Linux
    before 3.14). Made before any polytask pool, while this process has one thread
    (a fork beside running threads can deadlock the child)."""

    method = multiprocessing.get_start_method()
    name = f"multiprocessing.Pool ({method})"


class Ppe(Peer):
    name = "ProcessPoolExecutor"

    def __init__(self):
        ctx = multiprocessing.get_context("spawn")
        self.ex = concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=ctx)
        list(self.ex.map(tiny, range(100)))

    def submit_gather(self, items):
        fs = [self.ex.submit(tiny, i) for i in items]
        return [f.result() for f in fs]

    def auto_map(self, fn, items):
        return list(self.ex.map(fn, items))  # chunksize=1 is its default

    def close(self):
        self.ex.shutdown()


class Joblib(Peer):
    name = "joblib (loky)"

    def __init__(self):
        import joblib

        self.joblib = joblib
        self.auto_map(tiny, list(range(100)))

    def auto_map(self, fn, items):
        j = self.joblib
        return j.Parallel(n_jobs=WORKERS, backend="loky")(j.delayed(fn)(x) for x in items)


class Mpire(Peer):
    name = "mpire"

    def __init__(self):
        from mpire import WorkerPool

        self.pool = WorkerPool(n_jobs=WORKERS, start_method="spawn", keep_alive=True)
        self.pool.map(tiny, range(100))

    def submit_gather(self, items):
        rs = [self.pool.apply_async(tiny, args=(i,)) for i in items]
        return [r.get() for r in rs]

    def auto_map(self, fn, items):
        return self.pool.map(fn, items)

    def close(self):
        self.pool.terminate()


class Pebble(Peer):
    name = "pebble"

    def __init__(self):
        from pebble import ProcessPool

        self.pool = ProcessPool(max_workers=WORKERS, context=multiprocessing.get_context("spawn"))
        list(self.pool.map(tiny, range(100)).result())

    def submit_gather(self, items):
        fs = [self.pool.schedule(tiny, args=(i,)) for i in items]
        return [f.result() for f in fs]

    def auto_map(self, fn, items):
        return list(self.pool.map(fn, items).result())  # chunksize=1 is its default

    def close(self):
        self.pool.close()
        self.pool.join()


PEERS = [Polytask, MpPool, Ppe, Joblib, Mpire, Pebble]


def _run_peer(cls, work):
    try:
        with cls() as peer:
            return work(peer)
    except Exception as exc:  # a peer missing or broken: say so in the table
        return exc


# ----------------------------------------------------------------------------- scenarios
def _uneven(n: int, unit: float) -> list[float]:
    # Every 10th task is 10x longer; the long ones are spread through the input.
    return [unit * 10 if i % 10 == 9 else unit for i in range(n)]


def _ideal(durations: list[float]) -> float:
    return max(sum(durations) / WORKERS, max(durations))


def _greedy(durations: list[float]) -> float:
    """Makespan of list scheduling in input order (what any FIFO pool can reach)."""
    import heapq

    free = [0.0] * WORKERS
    for d in durations:
        heapq.heapreplace(free, free[0] + d)
    return max(free)


def _rss_growth(cls_name: str, n: int) -> float:
    """Peak RSS growth (MiB) of this process while imap consumes n items of 10 kB."""
    me = psutil.Process()

    def gen():
        for _ in range(n):
            yield b"x" * 10_000

    base = me.memory_info().rss
    peak = base
    if cls_name == "polytask":
        import polytask as pt

        with pt.Pool(WORKERS) as pool:
            for i, _ in enumerate(pool.imap(len, gen())):
                if i % 1000 == 0:
                    peak = max(peak, me.memory_info().rss)
    else:
        with multiprocessing.get_context("spawn").Pool(WORKERS) as pool:
            for i, _ in enumerate(pool.imap(len, gen(), chunksize=100)):
                if i % 1000 == 0:
                    peak = max(peak, me.memory_info().rss)
    return (peak - base) / (1 << 20)


def _progress_cost(n: int, rounds: int) -> tuple[list[float], list[float]]:
    """(e) map over n tiny tasks without a bar and with one drawn on a terminal.

    stderr is swapped for a pseudo-terminal whose other end is drained by a
    thread, so rich really redraws (off a terminal it would draw only once).
    Both run on one warm pool, in rounds of six maps in turn (without, with,
    with, without, without, with; the next round the other way round), so a
    change in the machine's load between rounds moves both alike. A round's
    figure for each side is its fastest of three maps: a map's wall time on
    two cores shared by the caller, two workers and the bar's thread swings
    +-15 % from one map to the next, and its best is what the code costs (the
    median of the rounds' sums was the less stable estimate, measured). The
    best of each side over a whole run, as before, said +1.9 % one run and
    +8.1 % the next of the same code. Returns each round's (without, with).
    """
    import os
    import pty
    import sys
    import threading

    import polytask as pt

    master, slave = pty.openpty()
    drain = threading.Thread(target=lambda: _drain(master), daemon=True)
    drain.start()
    term = os.fdopen(slave, "w", buffering=1)
    items = list(range(n))

    def timed(pool, bar: bool) -> float:
        old = sys.stderr
        if bar:
            sys.stderr = term
        try:
            t = time.perf_counter()
            pool.map(tiny, items, progress=bar)
            return time.perf_counter() - t
        finally:
            sys.stderr = old

    plain, bar = [], []
    try:
        with pt.Pool(WORKERS) as pool:
            timed(pool, True)  # rich imported, pool warm
            for r in range(rounds):
                order = (False, True, True, False, False, True)
                got: dict[bool, list[float]] = {False: [], True: []}
                for with_bar in order if r % 2 == 0 else [not b for b in order]:
                    got[with_bar].append(timed(pool, with_bar))
                plain.append(min(got[False]))
                bar.append(min(got[True]))
    finally:
        term.close()
        drain.join(5)
    return plain, bar


FORK_JOIN = """
import json, multiprocessing as mp, os, sys, time
import polytask as pt

N, ROUNDS = int(sys.argv[1]), int(sys.argv[2])
DATA = list(range(N))  # the data the parent holds: a global of the user's script


def part(i):
    return sum(DATA[i::4])


def by_os_fork():
    fds = []
    for i in range(4):
        r, w = os.pipe()
        if os.fork() == 0:
            os.write(w, str(part(i)).encode())
            os._exit(0)
        os.close(w)
        fds.append(r)
    out = []
    for r in fds:
        out.append(int(os.read(r, 64)))
        os.close(r)
    for _ in fds:
        os.wait()
    return out


def by_pt_pool():
    with pt.Pool(4, start_method="fork") as pool:
        return pool.map(part, range(4))


def by_mp_pool():
    with mp.get_context("fork").Pool(4) as pool:
        return pool.map(part, range(4))


tools = {"os.fork + pipes": by_os_fork, "pt.Pool(start_method='fork').map": by_pt_pool,
         "multiprocessing.Pool (fork).map": by_mp_pool}
want = [sum(DATA[i::4]) for i in range(4)]
best = dict.fromkeys(tools, float("inf"))
for _ in range(ROUNDS):
    for name, fn in tools.items():
        t = time.perf_counter()
        got = fn()
        best[name] = min(best[name], time.perf_counter() - t)
        assert got == want, name
print(json.dumps(best))
"""


def _fork_join(quick: bool) -> tuple[int, dict[str, float]]:
    """(f) fork-join over a list the caller's script holds, split 4 ways: each tool
    from its start to the results, in a fresh interpreter where the function lives
    in ``__main__`` (as a user's script has it)."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    n = 1_000_000 if quick else 5_000_000
    with tempfile.TemporaryDirectory() as d:
        script = os.path.join(d, "fork_join.py")
        with open(script, "w") as f:
            f.write(FORK_JOIN)
        out = subprocess.run(
            [sys.executable, script, str(n), "2" if quick else "5"],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    return n, json.loads(out.stdout)


def _sweep(sizes: list[int], rounds: int) -> list[tuple[int, float, float, float]]:
    """(b) at every size: ``pool.map(tiny, range(n))`` of polytask and
    multiprocessing.Pool (spawn, and the platform's default start method if it
    differs: the faster of the two is kept), warm pools, alternate rounds; with
    the caller's RSS growth per result item for polytask (the results list
    itself is ~36 bytes an item: list slot plus a small int)."""
    import gc

    import polytask as pt

    out = []
    methods = list(dict.fromkeys([multiprocessing.get_start_method(), "spawn"]))
    with contextlib.ExitStack() as stack:
        # The default (fork) pool first, while this process has a single thread.
        mp_pools = [
            stack.enter_context(multiprocessing.get_context(m).Pool(WORKERS)) for m in methods
        ]
        pt_pool = stack.enter_context(pt.Pool(WORKERS))
        pt_pool.map(tiny, range(1000))
        for mp_pool in mp_pools:
            mp_pool.map(tiny, range(1000))
        me = psutil.Process()
        for n in sizes:
            best_pt = best_mp = float("inf")
            grew = 0.0
            # A map of 10,000 items takes a millisecond: a few rounds of it measure
            # the machine's noise, so small sizes get more (a second's worth of items).
            for _ in range(max(rounds, 1_000_000 // n)):
                gc.collect()
                before = me.memory_info().rss
                t = time.perf_counter()
                r = pt_pool.map(tiny, range(n))
                best_pt = min(best_pt, time.perf_counter() - t)
                grew = max(grew, (me.memory_info().rss - before) / n)
                assert len(r) == n and r[-1] == n
                del r
                for mp_pool in mp_pools:
                    t = time.perf_counter()
                    r = mp_pool.map(tiny, range(n))
                    best_mp = min(best_mp, time.perf_counter() - t)
                    del r
            out.append((n, best_pt, best_mp, grew))
    return out


def _drain(fd: int) -> None:
    import os

    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # the terminal's other end closed
        pass
    finally:
        os.close(fd)


def _fmt(x) -> str:
    if isinstance(x, Exception):
        return f"failed: {type(x).__name__}"
    if x < 0.01:  # (b) takes a few ms: whole milliseconds would hide the ratio
        return f"{x * 1000:,.2f} ms"
    return f"{x * 1000:,.0f} ms"


def _interleaved(peers: list[Peer], items: list, repeat: int, repeat_b: int) -> list[list]:
    """(a) and (b) of polytask and multiprocessing.Pool, round by round in turn.

    On a shared machine the load changes from one second to the next: timing
    the two pools alternately, each keeping its best round, compares them under
    the same conditions. (b) takes ~2 ms a round, so it gets many more rounds.
    The order turns each round: a pool timed right after another pool's map was
    50-200 us slower (the other's workers still winding down), and a fixed order
    always put the same pool there.
    """
    a: list[list[float]] = [[] for _ in peers]
    b: list[list[float]] = [[] for _ in peers]
    for r in range(max(repeat, repeat_b)):
        turn = r % len(peers)
        for i in [*range(turn, len(peers)), *range(turn)]:
            peer = peers[i]
            if r < repeat:
                a[i].append(best(lambda p=peer: p.submit_gather(items), 1))
            if r < repeat_b:
                b[i].append(best(lambda p=peer: p.auto_map(tiny, items), 1))
    return [[min(a[i]), min(b[i])] for i in range(len(peers))]


def run(quick: bool) -> str:
    # The sizes in both modes: (a) and (b) take well under a second a round.
    n = 20_000
    repeat = 3 if quick else 7
    repeat_b = 20 if quick else 50
    unit = 0.01 if quick else 0.02
    durations = _uneven(40, unit)
    items = list(range(n))

    rows = []
    # polytask and multiprocessing.Pool (spawn, as polytask starts its workers, and
    # the platform's default), which the targets compare, run side by side.
    mp_names = [MpPool.name]
    if MpPoolDefault.method != MpPool.method:
        mp_names.append(MpPoolDefault.name)
    try:
        with (
            MpPoolDefault() if len(mp_names) > 1 else contextlib.nullcontext() as mpd_peer,
            Polytask() as pt_peer,
            MpPool() as mp_peer,
        ):
            pair = [pt_peer, mp_peer] + ([mpd_peer] if mpd_peer is not None else [])
            ab = _interleaved(pair, items, repeat, repeat_b)
            for peer, res in zip(pair, ab, strict=True):
                res.append(best(lambda p=peer: p.auto_map(nap, durations), 1 if quick else 2))
                rows.append((peer.name, tuple(res)))
                print(f"  {peer.name}: {tuple(res)}", flush=True)
    except Exception as exc:
        rows += [(name, exc) for name in (Polytask.name, *mp_names)]
    for cls in PEERS:
        if cls in (Polytask, MpPool):
            continue

        def work(peer):
            a = (
                best(lambda: peer.submit_gather(items), repeat)
                if hasattr(peer, "submit_gather") and cls is not Joblib
                else None
            )
            b = best(lambda: peer.auto_map(tiny, items), repeat)
            c = best(lambda: peer.auto_map(nap, durations), 1 if quick else 2)
            return a, b, c

        res = _run_peer(cls, work)
        rows.append((cls.name, res))
        print(f"  {cls.name}: {res}", flush=True)

    def get(name, k):
        for nm, res in rows:
            if nm == name and not isinstance(res, Exception):
                return res[k]
        return None

    pt_a, pt_b, pt_c = (get("polytask Pool", k) for k in range(3))
    lines = [
        "## Pool: tiny tasks, automatic chunking, uneven tasks",
        "",
        f"{WORKERS} workers each, warmed up; best of {repeat} ((b): of {repeat_b} for "
        "polytask and multiprocessing.Pool, which are timed in alternate rounds in one "
        "run). multiprocessing.Pool at spawn (as polytask starts its workers) and at this "
        "platform's default start method; the other peers at spawn (a warm worker runs "
        f"the same however it started). (a) submit {n:,} tiny tasks "
        f"one by one, then gather; (b) map over {n:,} tiny tasks with each tool's own "
        f"automatic chunking; (c) map over 40 sleeps of {unit * 1000:.0f} ms, every 10th "
        f"10x longer (ideal {_ideal(durations) * 1000:,.0f} ms; greedy in input order, "
        f"the best a FIFO pool can do without knowing durations: "
        f"{_greedy(durations) * 1000:,.0f} ms). Ratio = peer time / "
        "polytask time (> 1: polytask is faster).",
        "",
        "| tool | (a) submit+gather | ratio | (b) auto map | ratio | (c) uneven map | vs ideal |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ideal = _ideal(durations)
    for name, res in rows:
        if isinstance(res, Exception):
            lines.append(f"| {name} | {_fmt(res)} | | | | | |")
            continue
        a, b, c = res
        ra = f"{a / pt_a:.1f}x" if a and pt_a else ""
        rb = f"{b / pt_b:.1f}x" if b and pt_b else ""
        lines.append(
            f"| {name} | {_fmt(a) if a else 'n/a'} | {ra} | {_fmt(b)} | {rb} | {_fmt(c)} | "
            f"{(c / ideal - 1) * 100:+.0f} % |"
        )
    mem_n = 20_000 if quick else 100_000
    pt_mem = _rss_growth("polytask", mem_n)
    mp_mem = _rss_growth("mp", mem_n)
    prog_n = 200_000 if quick else 1_000_000
    prog_rounds = 3 if quick else 7
    plain_s, bar_s = _progress_cost(prog_n, prog_rounds)
    costs = [(b / a - 1) * 100 for a, b in zip(plain_s, bar_s, strict=True)]
    bar_cost = statistics.median(costs)
    lines += [
        "",
        f"(e) map over {prog_n:,} tiny tasks with `progress=True` on a terminal: "
        f"{statistics.median(bar_s) * 1000:,.0f} ms against "
        f"{statistics.median(plain_s) * 1000:,.0f} ms without the bar; the bar costs "
        f"{bar_cost:+.1f} %, the median of {prog_rounds} rounds' costs ({min(costs):+.1f} % "
        f"to {max(costs):+.1f} %), each round three maps of each on one pool, in turn, "
        "its best with the bar against its best without.",
    ]
    lines += [
        "",
        f"(d) imap over a generator of {mem_n:,} items of 10 kB: peak RSS growth of the "
        f"caller: polytask {pt_mem:,.0f} MiB, multiprocessing.Pool.imap (chunksize=100) "
        f"{mp_mem:,.0f} MiB.",
        "",
    ]

    sizes = [10_000, 100_000, 1_000_000] + ([] if quick else [10_000_000])
    sweep = _sweep(sizes, 2 if quick else 3)
    lines += [
        "(b) at every size: `map(tiny, range(n))`, 2 workers each, warm; best of the "
        "alternate rounds (at least 3, and a million items' worth) (multiprocessing.Pool: the faster of its spawn and default "
        "start methods); the caller's RSS growth per item while polytask's results "
        "are held:",
        "",
        "| items | polytask s | multiprocessing.Pool s | ratio | polytask RSS bytes/item |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {n:,} | {a:.4f} | {b:.4f} | {b / a:.2f}x | {g:,.0f} |" for n, a, b, g in sweep),
        "",
    ]
    fj_n, fj = _fork_join(quick)
    base = fj["os.fork + pipes"]
    lines += [
        f"(f) fork-join over a list of {fj_n:,} ints the script holds (a global of "
        "`__main__`), split 4 ways; from the start of each tool to its results, best "
        "of the rounds:",
        "",
        "| tool | seconds | vs os.fork |",
        "|---|---:|---:|",
        *(f"| {k} | {v:.3f} | {v / base:.1f}x |" for k, v in fj.items()),
        "",
    ]

    def verdict(ok):
        return "met" if ok else "NOT met"

    def fastest(k):
        # The targets are against multiprocessing.Pool at its faster start method.
        vals = [v for v in (get(name, k) for name in mp_names) if v]
        return min(vals) if vals else None

    mp_a, mp_b = fastest(0), fastest(1)
    mpire_b, joblib_b = get("mpire", 1), get("joblib (loky)", 1)
    if pt_a and mp_a:
        lines.append(
            f"- Target (a) >= 5x multiprocessing.Pool.apply_async (the faster start method): "
            f"{mp_a / pt_a:.1f}x, "
            f"{verdict(mp_a / pt_a >= 5)}."
        )
    if pt_b and mp_b:
        lines.append(
            f"- Target (b) >= 1.2x multiprocessing.Pool.map (the faster start method; "
            f"issue 14): {mp_b / pt_b:.2f}x, "
            f"{verdict(mp_b / pt_b >= 1.2)}."
        )
    for peer, val in (("mpire", mpire_b), ("joblib", joblib_b)):
        if pt_b and val:
            lines.append(
                f"- Target (b) >= 10x {peer}: {val / pt_b:.1f}x, {verdict(val / pt_b >= 10)}."
            )
    if pt_c:
        lines.append(
            f"- Target (c) within 3 % of the greedy FIFO bound: "
            f"{(pt_c / _greedy(durations) - 1) * 100:+.1f} % "
            f"({(pt_c / ideal - 1) * 100:+.0f} % of the ideal), "
            f"{verdict(pt_c <= _greedy(durations) * 1.03)}."
        )
    lines.append(
        f"- (e) the progress bar costs at most 5 %: {bar_cost:+.1f} %, {verdict(bar_cost <= 5)}."
    )
    lines.append(
        f"- (d) bounded memory: {verdict(pt_mem < 64)} (polytask {pt_mem:,.0f} MiB for "
        f"{mem_n * 10_000 / (1 << 20):,.0f} MiB of input)."
    )
    worst = min(b / a for _, a, b, _ in sweep)
    lines.append(
        f"- Target (b) at least 1.0x multiprocessing.Pool.map at every size from "
        f"{sizes[0]:,} to {sizes[-1]:,}: worst {worst:.2f}x, {verdict(worst >= 1.0)}."
    )
    pt_f = fj["pt.Pool(start_method='fork').map"]
    lines.append(
        f"- Target (f) fork-join within 1.5x of os.fork + wait: {pt_f / base:.2f}x, "
        f"{verdict(pt_f <= 1.5 * base)}."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(run("--quick" in sys.argv))
