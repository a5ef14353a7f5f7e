"""Where the time of the end-to-end channel case goes (issue 14): a diagnostic, not a bench.

``PYTHONPATH=src python -m bench.diag_channel_e2e [rounds]`` prints, each part
interleaved over the rounds (the machine may be shared: compare within a run):

1. the end-to-end ratio as ``bench_ipc`` measures it (pt.Channel + pt.spawn
   consumer vs multiprocessing.Queue + mp.Process consumer);
2. the producer's put loop, CPU time and wall time, with a consumer that drains
   live and with one that waits until the channel is closed (no contention on
   the ring at all). CPU(live) = CPU(late) says the consumer costs the producer
   nothing on the ring (no cache-line ping-pong worth measuring, no futex
   calls); wall > CPU says the producer was off its core (the machine is busy);
3. the producer's floor: put() against the least a put can do in Python
   (pickle, trylock, one struct call, two stores, unlock), in one process.

Not run by ``python -m bench`` (its name does not start with ``bench_``).
"""

from __future__ import annotations

import pickle
import sys
import time
from typing import Any

import polytask as pt
from polytask._ipc import channel as _chan
from polytask._ipc.shm import _mutex_trylock_ref, _mutex_unlock_ref

from .bench_ipc import SMALL, _e2e_mp_queue, _e2e_polytask


def _drain(ch: Any) -> int:
    n = 0
    for _ in ch:
        n += 1
    return n


def _drain_late(ch: Any) -> int:
    while not ch.closed:
        time.sleep(0.005)
    return _drain(ch)


def _producer(n: int, consumer: Any) -> tuple[float, float]:
    """(CPU, wall) seconds per item of the put loop, with ``consumer`` as a process task."""
    ch: Any = pt.Channel(backend="process")
    task = pt.spawn(consumer, ch, backend="process")
    time.sleep(0.05)  # the consumer is in its loop
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        ch.put(SMALL)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    ch.close()
    assert task.result(timeout=600) == n
    return cpu / n, wall / n


def _floor(k: int = 1000, reps: int = 50) -> tuple[float, float]:
    """(minimal put, real put) CPU seconds per item, one process, the ring drained between batches."""
    ch: Any = pt.Channel(backend="process")
    ch.put(SMALL)
    ch.get()
    n = len(pickle.dumps(SMALL, 5))
    pack, head, size = _chan._small_frame(n)  # put's ready-made frame header
    m, w, b, dumps = ch._p_ref, ch._w, ch._b, pickle.dumps

    def minimal(item: Any) -> None:
        data = dumps(item, 5)
        _mutex_trylock_ref(m)
        pos = w[8] & 0xFFF  # stays in the first page: nothing to drain
        pack(b, 4096 + pos, head, data)
        w[9] += 1
        w[12] = pos + size  # a spare word: the ring's real tail is left alone
        _mutex_unlock_ref(m)

    out = []
    for f in (minimal, ch.put):
        t = 0.0
        for _ in range(reps):
            c0 = time.process_time()
            for _ in range(k):
                f(SMALL)
            t += time.process_time() - c0
            if f is not minimal:
                ch.get_many(k)
        out.append(t / (k * reps))
    ch.close()
    return out[0], out[1]


def _med(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def main(rounds: int = 5) -> None:
    n = 50_000
    pt.spawn(int, backend="process").result(timeout=60)  # a warm worker
    e2e: dict[str, list[float]] = {"pt": [], "mp": []}
    prod: dict[str, list[tuple[float, float]]] = {"live": [], "late": []}
    floor: list[tuple[float, float]] = []
    for _ in range(rounds):
        e2e["pt"].append(_e2e_polytask(n) / n)
        e2e["mp"].append(_e2e_mp_queue(n) / n)
        prod["live"].append(_producer(n, _drain))
        prod["late"].append(_producer(n, _drain_late))
        floor.append(_floor())
    us = 1e6
    ratios = [m / p for p, m in zip(e2e["pt"], e2e["mp"], strict=True)]
    print(
        f"1. end to end, us/item: pt med {_med(e2e['pt']) * us:.2f} min {min(e2e['pt']) * us:.2f}; "
        f"mp.Queue med {_med(e2e['mp']) * us:.2f} min {min(e2e['mp']) * us:.2f}; "
        f"ratio per round {', '.join(f'{r:.2f}' for r in ratios)} (best-of ratio "
        f"{min(e2e['mp']) / min(e2e['pt']):.2f})"
    )
    for k, v in prod.items():
        cpu, wall = [c for c, _ in v], [x for _, x in v]
        print(
            f"2. producer, consumer {k}: CPU med {_med(cpu) * us:.2f} min {min(cpu) * us:.2f}, "
            f"wall med {_med(wall) * us:.2f} min {min(wall) * us:.2f} us/put"
        )
    lo, real = [a for a, _ in floor], [b for _, b in floor]
    print(
        f"3. floor: minimal put med {_med(lo) * us:.2f}, put() med {_med(real) * us:.2f} us "
        f"(put() is {_med(real) / _med(lo):.2f}x the floor)"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
