"""IPC throughput: pt.Channel(backend="process") against its peers, in one run.

One producer process sends N items to the consumer (this process); the clock
runs from the first item received to the last, so process start-up is not
counted. Peers: multiprocessing.Queue, multiprocessing.Pipe, faster-fifo (if
installed) and a raw os.pipe floor (fixed-size bytes, no pickling). Items: a
short tuple, 1 MiB bytes, 1 MiB and 8 MiB NumPy arrays; and pt.SharedArray
handed over without copying (1 MiB vs 64 MiB: the time must not grow).
Producers are forked (the same way for every peer). The machine may be shared
and busy: every measurement is repeated in interleaved rounds (each peer once
per round) and the best round of each is reported, so that a burst of someone
else's load does not land on one peer only.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

import polytask as pt
from bench.bench_latency import Busy

CTX = mp.get_context("fork")
SMALL = (12345, "hello", 1.5)
BATCH = 256

try:
    import faster_fifo
except ImportError:  # pragma: no cover - the bench extra installs it
    faster_fifo = None


# --------------------------------------------------------------------------- transports
# Each: make() -> (tx, rx); sender(tx) -> send(item), in the child; receiver(rx) ->
# recv(), here; close(tx, rx). send and recv are the transport's own bound methods
# (or a functools.partial of them, for a timeout), so the harness adds no Python
# call of its own per item, for any peer.


def _pt_make() -> tuple[Any, Any]:
    ch: pt.Channel[Any] = pt.Channel(backend="process")
    return ch, ch


def _pt_python_make() -> tuple[Any, Any]:
    """pt.Channel on its Python fast paths, as installed without a C compiler (the
    consumer's handle is the producer's: CTX forks)."""
    ch, _ = _pt_make()
    ch._lane = None
    return ch, ch


def _mpq_make() -> tuple[Any, Any]:
    q: Any = CTX.Queue()
    return q, q


def _pipe_make() -> tuple[Any, Any]:
    rx, tx = CTX.Pipe(duplex=False)
    return tx, rx


def _ff_make() -> tuple[Any, Any]:
    assert faster_fifo is not None
    q = faster_fifo.Queue(max_size_bytes=200 * 1024 * 1024)
    return q, q


def _close(tx: Any, rx: Any) -> None:
    for end in (tx, rx):
        close = getattr(end, "close", None)
        if close is not None:
            close()
    join = getattr(tx, "join_thread", None)
    if join is not None:
        join()


_Transport = tuple[
    Callable[[], tuple[Any, Any]],
    Callable[[Any], Callable[[Any], Any]],
    Callable[[Any], Callable[[], Any]],
]
TRANSPORTS: dict[str, _Transport] = {
    "pt.Channel": (_pt_make, lambda tx: tx.put, lambda rx: partial(rx.get, timeout=60)),
    "multiprocessing.Queue": (_mpq_make, lambda tx: tx.put, lambda rx: partial(rx.get, timeout=60)),
    "multiprocessing.Pipe": (_pipe_make, lambda tx: tx.send, lambda rx: rx.recv),
}
# Small items only (a big item does not take the C paths).
PT_PYTHON = "pt.Channel without its C extension (Python paths)"
SMALL_ONLY: dict[str, _Transport] = {
    PT_PYTHON: (_pt_python_make, lambda tx: tx.put, lambda rx: partial(rx.get, timeout=60)),
}
if faster_fifo is not None:
    TRANSPORTS["faster-fifo"] = (
        _ff_make,
        lambda tx: partial(tx.put, timeout=60),
        lambda rx: partial(rx.get, timeout=60),
    )


def _child(sender: Callable[[Any], Callable[[Any], Any]], tx: Any, item: Any, n: int) -> None:
    send = sender(tx)
    for _ in range(n):
        send(item)


def _measure(name: str, item: Any, n: int) -> float:
    """Seconds from the first item received to the n-th."""
    make, sender, receiver = TRANSPORTS.get(name) or SMALL_ONLY[name]
    tx, rx = make()
    p = CTX.Process(target=_child, args=(sender, tx, item, n))
    p.start()
    try:
        recv = receiver(rx)
        recv()
        t0 = time.perf_counter()
        for _ in range(n - 1):
            recv()
        return time.perf_counter() - t0
    finally:
        p.join(60)
        _close(tx, rx)


def _batched_child(tx: Any, item: Any, n: int, kind: str) -> None:
    batch = [item] * BATCH
    sent = 0
    while sent < n:
        k = min(BATCH, n - sent)
        tx.put_many(batch[:k], timeout=60)  # the same call on pt.Channel and faster-fifo
        sent += k


def _measure_batched(kind: str, item: Any, n: int) -> float:
    if kind == "pt":
        tx, rx = _pt_make()

        def get_many() -> int:
            return len(rx.get_many(BATCH, timeout=60))
    else:
        tx, rx = _ff_make()

        def get_many() -> int:
            return len(rx.get_many(max_messages_to_get=BATCH, timeout=60))

    p = CTX.Process(target=_batched_child, args=(tx, item, n, kind))
    p.start()
    try:
        got = get_many()
        t0 = time.perf_counter()
        first = got
        while got < n:
            got += get_many()
        return (time.perf_counter() - t0) * (n - 1) / max(1, n - first)
    finally:
        p.join(60)
        _close(tx, rx)


def _raw_child(fd: int, size: int, n: int) -> None:
    data = b"x" * size
    for _ in range(n):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]


def _measure_raw(size: int, n: int) -> float:
    """The floor: fixed-size frames through os.pipe, no pickling, no framing."""
    r, w = os.pipe()
    p = CTX.Process(target=_raw_child, args=(w, size, n))
    p.start()
    os.close(w)
    try:
        buf = bytearray(size)

        def read_one() -> None:
            view = memoryview(buf)
            while view:
                k = os.readv(r, [view])
                if k == 0:
                    raise EOFError
                view = view[k:]

        read_one()
        t0 = time.perf_counter()
        for _ in range(n - 1):
            read_one()
        return time.perf_counter() - t0
    finally:
        p.join(60)
        os.close(r)


# --------------------------------------------------------------------------- SharedArray


def _sa_child(ch: Any, nbytes: int, n: int, done: Any) -> None:
    sa = pt.SharedArray(nbytes, dtype="uint8")
    for _ in range(n):
        ch.put(sa)
    done.wait(60)  # the receiver needs the name until it has mapped every handle


def _measure_shared_array(nbytes: int, n: int) -> float:
    """Seconds per handoff of a SharedArray of nbytes (sent, mapped, first and last byte read)."""
    ch: pt.Channel[Any] = pt.Channel(backend="process")
    done = CTX.Event()
    p = CTX.Process(target=_sa_child, args=(ch, nbytes, n, done))
    p.start()
    try:
        sa = ch.get(timeout=60)
        t0 = time.perf_counter()
        for _ in range(n - 1):
            sa = ch.get(timeout=60)
            _ = int(sa.array[0]) + int(sa.array[-1])
            sa.close()
        return (time.perf_counter() - t0) / (n - 1)
    finally:
        done.set()
        p.join(60)
        ch.close()


# --------------------------------------------------------------------------- report


def _count_channel(ch: Any) -> int:
    """The consumer as a user writes it: drain the channel, return how many came."""
    n = 0
    for _ in ch:
        n += 1
    return n


def _count_queue(q: Any, out: Any) -> None:
    n = 0
    while q.get() is not None:
        n += 1
    out.put(n)


def _e2e_polytask(n: int) -> float:
    """The main process puts n items; a ``pt.spawn(..., backend="process")`` task
    consumes them. Clock: first put to the consumer's result (its worker is warm,
    as a program's second task finds it)."""
    pt.spawn(int, backend="process").result(timeout=60)  # a warm worker
    ch: Any = pt.Channel(backend="process")
    task = pt.spawn(_count_channel, ch, backend="process")
    t = time.perf_counter()
    for _ in range(n):
        ch.put(SMALL)
    ch.close()
    got = task.result(timeout=600)
    elapsed = time.perf_counter() - t
    assert got == n, got
    return elapsed


def _e2e_mp_queue(n: int) -> float:
    """The same with multiprocessing.Queue and an mp.Process consumer, started first."""
    q: Any = CTX.Queue()
    out: Any = CTX.Queue()
    p = CTX.Process(target=_count_queue, args=(q, out))
    p.start()
    t = time.perf_counter()
    for _ in range(n):
        q.put(SMALL)
    q.put(None)
    got = out.get(timeout=600)
    elapsed = time.perf_counter() - t
    p.join()
    assert got == n, got
    return elapsed


def _produce(tx: Any, n: int) -> None:
    put = tx.put
    for _ in range(n):
        put(SMALL)


def _fan_in(make: Callable[[], Any], k: int, n: int) -> float:
    """k producer processes put n items in all into one channel or queue (``make``);
    this process drains it. Clock: the producers' start to the last item received."""
    rx: Any = make()
    t = time.perf_counter()
    procs = [CTX.Process(target=_produce, args=(rx, n // k)) for _ in range(k)]
    for p in procs:
        p.start()
    get = rx.get
    for _ in range((n // k) * k):
        get()
    elapsed = time.perf_counter() - t
    for p in procs:
        p.join()
    rx.close()
    return elapsed


def _busy(fn: Callable[[], float]) -> float:
    with Busy():
        return fn()


def _best_of(cases: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """The shortest of ``rounds`` timings of each case, the cases interleaved."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, fn in cases.items():
            t = fn()
            best[name] = min(t, best.get(name, t))
    return best


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def run(quick: bool = False) -> str:
    n_small = 20_000 if quick else 200_000
    n_big = 60 if quick else 400
    n_huge = 12 if quick else 60
    mib = 1 << 20
    arr1 = np.random.default_rng(0).integers(0, 255, size=mib, dtype=np.uint8)
    arr8 = np.random.default_rng(1).integers(0, 255, size=8 * mib, dtype=np.uint8)
    bytes1 = arr1.tobytes()

    rounds = 2 if quick else 3
    small_cases: dict[str, Callable[[], float]] = {
        name: partial(_measure, name, SMALL, n_small) for name in [*TRANSPORTS, *SMALL_ONLY]
    }
    small_cases["pt.Channel put_many/get_many"] = partial(_measure_batched, "pt", SMALL, n_small)
    if faster_fifo is not None:
        small_cases["faster-fifo put_many/get_many"] = partial(
            _measure_batched, "ff", SMALL, n_small
        )
    small_cases["os.pipe, 64 B raw frames (floor)"] = partial(_measure_raw, 64, n_small)
    small = {name: (n_small - 1) / t for name, t in _best_of(small_cases, rounds).items()}
    base_small = small["multiprocessing.Queue"]

    big: dict[str, dict[str, float]] = {}
    for label, item, n in (
        ("1 MiB bytes", bytes1, n_big),
        ("1 MiB NumPy", arr1, n_big),
        ("8 MiB NumPy", arr8, n_huge),
    ):
        size = item.nbytes if isinstance(item, np.ndarray) else len(item)
        cases: dict[str, Callable[[], float]] = {
            name: partial(_measure, name, item, n) for name in TRANSPORTS
        }
        cases["os.pipe raw (floor)"] = partial(_measure_raw, size, n)
        big[label] = {name: (n - 1) * size / t / 1e9 for name, t in _best_of(cases, rounds).items()}

    n_sa = 200 if quick else 2000
    sa_small = _measure_shared_array(mib, n_sa)
    sa_large = _measure_shared_array(64 * mib, n_sa)

    lines = [
        '## IPC: pt.Channel(backend="process") vs multiprocessing, faster-fifo, os.pipe',
        "",
        f"One producer process, one consumer; {n_small:,} small items "
        f"(the tuple {SMALL!r}), {n_big} x 1 MiB, {n_huge} x 8 MiB. "
        "Clock from the first item received to the last; "
        f"best of {rounds} interleaved rounds."
        + ("" if faster_fifo is not None else " faster-fifo: not installed."),
        "",
        "| transport | small items/s | vs mp.Queue |",
        "|---|---:|---:|",
    ]
    for name, rate in small.items():
        lines.append(f"| {name} | {_fmt_rate(rate)} | {rate / base_small:.2f}x |")
    lines += ["", "| transport | " + " | ".join(f"{k} GB/s" for k in big) + " |"]
    lines.append("|---|" + "---:|" * len(big))
    names = list(next(iter(big.values())))
    for name in names:
        cells = []
        for per in big.values():
            ratio = per[name] / per["multiprocessing.Queue"]
            cells.append(f"{per[name]:.2f} ({ratio:.1f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "(ratios against multiprocessing.Queue)",
        "",
        "| zero copy: pt.SharedArray through pt.Channel | seconds per handoff |",
        "|---|---:|",
        f"| 1 MiB array | {sa_small * 1e6:.1f} us |",
        f"| 64 MiB array | {sa_large * 1e6:.1f} us |",
        "",
    ]
    n_e2e = 20_000 if quick else 100_000
    e2e = _best_of(
        {
            "pt.Channel, consumer pt.spawn(backend='process')": partial(_e2e_polytask, n_e2e),
            "multiprocessing.Queue, consumer mp.Process": partial(_e2e_mp_queue, n_e2e),
        },
        rounds,
    )
    e2e_pt, e2e_mp = e2e.values()
    e2e_ratio = e2e_mp / e2e_pt
    e2e_busy = _best_of(
        {
            "pt.Channel, consumer pt.spawn(backend='process')": partial(
                _busy, partial(_e2e_polytask, n_e2e)
            ),
            "multiprocessing.Queue, consumer mp.Process": partial(
                _busy, partial(_e2e_mp_queue, n_e2e)
            ),
        },
        rounds,
    )
    busy_pt, busy_mp = e2e_busy.values()
    busy_ratio = busy_mp / busy_pt
    lines += [
        f"End to end, as a user writes it: the main process puts {n_e2e:,} small items, "
        "the consumer is a process that drains them and returns the count; clock from "
        "the first put to the consumer's result (best of the rounds), quiet and with one "
        "core busy (`yes > /dev/null` beside it):",
        "",
        "| producer -> consumer | quiet items/s | vs mp.Queue | one core busy items/s "
        "| vs mp.Queue |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {k} | {_fmt_rate(n_e2e / v)} | {e2e_mp / v:.2f}x "
            f"| {_fmt_rate(n_e2e / e2e_busy[k])} | {busy_mp / e2e_busy[k]:.2f}x |"
            for k, v in e2e.items()
        ),
        "",
    ]
    n_prod = 20_000 if quick else 100_000
    fan_in: dict[int, float] = {}
    for k in (1, 2, 4, 8):
        best = _best_of(
            {
                "pt": partial(_fan_in, partial(pt.Channel, backend="process"), k, n_prod),
                "mp": partial(_fan_in, CTX.Queue, k, n_prod),
            },
            rounds,
        )
        fan_in[k] = best["mp"] / best["pt"]
    lines += [
        f"Fan-in: k producer processes put {n_prod:,} small items in all into one "
        "channel (or one multiprocessing.Queue); this process drains it; clock from the "
        "producers' start to the last item (best of the rounds):",
        "",
        "| producers | pt.Channel vs mp.Queue |",
        "|---:|---:|",
        *(f"| {k} | {r:.2f}x |" for k, r in fan_in.items()),
        "",
    ]
    small_ratio = small["pt.Channel"] / base_small
    batched_ratio = small["pt.Channel put_many/get_many"] / base_small
    gbps = big["1 MiB NumPy"]["pt.Channel"]
    constant = sa_large < 3 * sa_small
    lines += [
        "Targets (issues 5 and 14):",
        f"- small messages at least 5x multiprocessing.Queue: "
        f"{'met' if small_ratio >= 5 else 'NOT met'} ({small_ratio:.1f}x with put/get per item, "
        f"{small['pt.Channel put_many/get_many'] / base_small:.1f}x batched)",
        f"- 1 MiB arrays at least 8 GB/s copied: {'met' if gbps >= 8 else 'NOT met'} "
        f"({gbps:.2f} GB/s; the raw os.pipe floor did "
        f"{big['1 MiB NumPy']['os.pipe raw (floor)']:.2f} GB/s on this machine)",
        f"- zero copy in constant time: {'met' if constant else 'NOT met'} "
        f"(64 MiB took {sa_large / sa_small:.2f}x the time of 1 MiB)",
        f"- end to end (issue 14), at least 5x multiprocessing.Queue, quiet: "
        f"{'met' if e2e_ratio >= 5 else 'NOT met'} ({e2e_ratio:.2f}x)",
        f"- end to end (issue 14), at least 5x multiprocessing.Queue, one core busy: "
        f"{'met' if busy_ratio >= 5 else 'NOT met'} ({busy_ratio:.2f}x)",
        f"- batched (issue 14), at least 10x multiprocessing.Queue: "
        f"{'met' if batched_ratio >= 10 else 'NOT met'} ({batched_ratio:.1f}x)",
        f"- 1 to 8 producers (issue 14), at least 5x multiprocessing.Queue each: "
        f"{'met' if min(fan_in.values()) >= 5 else 'NOT met'} "
        f"(worst {min(fan_in.values()):.2f}x)",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run(quick=True))
