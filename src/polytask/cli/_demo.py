"""``polytask demo``: the promises, shown live on this machine in under 30 seconds.

Each scene runs real work (processes, crashes, timeouts, programs, channels),
checks what it shows, and prints one line per fact. Scenes for parts that are
not installed (a cluster engine) say so instead of failing.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

__all__ = ["main"]


# Task functions live at module level so worker processes import them by name.
def square(x: int) -> int:
    return x * x


def crash() -> None:
    ctypes.string_at(0)  # a segmentation fault, as a broken C extension would


def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def fail(msg: str) -> None:
    raise ValueError(msg)


def whoami() -> int:
    return os.getpid()


class _Show:
    """Prints scene titles and facts with rich when available (it is a dependency)."""

    def __init__(self, plain: bool) -> None:
        from rich.console import Console

        self.console = Console(highlight=False, no_color=plain, force_terminal=None)
        self.failures = 0

    def scene(self, title: str) -> None:
        self.console.print(f"\n[bold cyan]▶ {title}[/]")

    def fact(self, ok: bool, text: str) -> None:
        mark = "[green]✔[/]" if ok else "[red]✘[/]"
        if not ok:
            self.failures += 1
        self.console.print(f"  {mark} {text}")

    def note(self, text: str) -> None:
        self.console.print(f"  [dim]{text}[/]")


def _scene_spawn(show: _Show) -> None:
    import polytask as pt

    show.scene("spawn: one call, on a thread or a warm process")
    t = pt.spawn(square, 12, backend="process")
    value = t.result(timeout=30)
    show.fact(value == 144, f"pt.spawn(square, 12, backend='process').result() = {value}")
    pids = {pt.spawn(whoami, backend="process").result(30) for _ in range(5)}
    show.fact(os.getpid() not in pids, f"ran in worker process(es) {sorted(pids)}, kept warm")


def _scene_seed(show: _Show) -> None:
    import threading

    import polytask as pt

    show.scene("the classics, done safely: fork-join, a background thread and process")
    # fork-join: os.fork + os.wait, without zombies and with results and errors.
    with pt.TaskGroup(backend="process") as g:
        parts = [g.spawn(square, i) for i in range(8)]
    total = sum(t.result() for t in parts)
    show.fact(total == 140, f"fork-join over 8 processes: sum of squares = {total}")

    @pt.background  # threading.Thread, with a result and its exceptions
    def count_threads() -> int:
        return threading.active_count()

    t = count_threads()
    show.fact(t.result(30) >= 2, f"@pt.background thread returned {t.result()} ({t!r})")

    @pt.background(backend="process", timeout=30)  # multiprocessing.Process, reaped
    def pid_of_worker() -> int:
        return os.getpid()

    pid = pid_of_worker().result(30)
    show.fact(pid != os.getpid(), f"@pt.background(backend='process') ran in pid {pid}")


def _scene_crash(show: _Show) -> None:
    import polytask as pt

    show.scene("crash isolation: a segfault fails one task, not the program")
    t = pt.spawn(crash, backend="process", name="crashy")
    try:
        t.result(timeout=30)
        show.fact(False, "the crash went unnoticed")
    except pt.WorkerCrashed as exc:
        show.fact(exc.signal == 11, f"WorkerCrashed: {exc}")
    after = pt.spawn(square, 3, backend="process").result(30)
    show.fact(after == 9, "the next task runs on a fresh worker")


def _scene_timeout(show: _Show) -> None:
    import polytask as pt

    show.scene("timeouts that kill: the late worker is SIGTERMed, then SIGKILLed")
    started = time.monotonic()
    t = pt.spawn(nap, 60, backend="process", timeout=0.5)
    try:
        t.result(timeout=30)
        show.fact(False, "the task was not stopped")
    except pt.TaskTimeout as exc:
        took = time.monotonic() - started
        show.fact(took < 5, f"TaskTimeout after {took:.2f} s: {exc}")


def _scene_group(show: _Show) -> None:
    import polytask as pt

    show.scene("TaskGroup: the first failure cancels the rest, errors arrive together")
    started = time.monotonic()
    sibling = None
    try:
        with pt.TaskGroup(backend="process") as g:
            sibling = g.spawn(nap, 60)
            g.spawn(fail, "bad input")
    except* ValueError as eg:
        took = time.monotonic() - started
        show.fact(True, f"except* ValueError caught {eg.exceptions[0]!r} in {took:.2f} s")
    show.fact(
        sibling is not None and sibling.cancelled(), "the 60 s sibling was killed, not awaited"
    )


def _tiny(x: int) -> int:
    return x + 1


def _scene_latency(show: _Show, n: int) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from polytask.backends.process import ProcessBackend

    show.scene(f"latency: {n} tiny tasks, one at a time, on one warm worker")

    def measure(call: Callable[[int], object]) -> float:
        for i in range(50):
            call(i)
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            call(i)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples) * 1e6

    be = ProcessBackend(1)
    try:
        ours = measure(lambda i: be.spawn(_tiny, (i,), {}).result(10))
    finally:
        be.shutdown()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        theirs = measure(lambda i: ex.submit(_tiny, i).result(10))
    show.fact(True, f"polytask p50 {ours:.0f} µs; ProcessPoolExecutor p50 {theirs:.0f} µs")
    show.note(f"{theirs / ours:.1f}x lower latency here (`make bench` for every peer)")


def _scene_commands(show: _Show) -> None:
    import polytask as pt

    show.scene("programs: no shell injection, timeouts end the whole process tree")
    name = "x; echo INJECTED"
    res = pt.run(["echo", name])
    show.fact(res.stdout.strip() == name, f"pt.run(['echo', {name!r}]) printed it verbatim")
    started = time.monotonic()
    try:
        pt.run("sleep 60 & sleep 60; wait", shell=True, timeout=0.5)
        show.fact(False, "the command was not stopped")
    except pt.CommandTimeout:
        show.fact(
            True, f"CommandTimeout after {time.monotonic() - started:.2f} s, process group killed"
        )


def _scene_channel(show: _Show) -> None:
    import polytask as pt

    show.scene("channels: producer/consumer across processes over shared memory")
    channel: pt.Channel[int] = pt.Channel(maxsize=64, backend="process")
    with channel as ch:
        t = pt.spawn(_produce, ch, 10_000, backend="process")
        total = sum(ch)
        t.result(30)
    show.fact(total == sum(range(10_000)), f"10,000 items received exactly once (sum {total})")


def _produce(ch: object, n: int) -> None:
    for i in range(n):
        ch.put(i)  # type: ignore[attr-defined]
    ch.close()  # type: ignore[attr-defined]


def _scene_pool(show: _Show) -> None:
    import polytask as pt

    show.scene("Pool: map with automatic chunking, crash-proof")
    with pt.Pool(2) as pool:
        started = time.monotonic()
        out = pool.map(square, range(100_000))
        took = time.monotonic() - started
    show.fact(out[:4] == [0, 1, 4, 9], f"100,000 tiny tasks in {took:.2f} s, chunked for you")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="polytask demo", description=__doc__)
    parser.add_argument("--plain", action="store_true", help="no colour")
    parser.add_argument("--quick", action="store_true", help="fewer latency samples")
    args = parser.parse_args(argv)
    show = _Show(args.plain or not sys.stdout.isatty())
    started = time.monotonic()
    show.console.print("[bold]polytask[/]: one toolkit for multitasking — a live tour")
    scenes: list[Callable[[], None]] = [
        lambda: _scene_spawn(show),
        lambda: _scene_seed(show),
        lambda: _scene_crash(show),
        lambda: _scene_timeout(show),
        lambda: _scene_group(show),
        lambda: _scene_latency(show, 300 if args.quick else 2000),
    ]
    import polytask as pt

    optional: list[tuple[str, Callable[[_Show], None]]] = [
        ("run", _scene_commands),
        ("Pool", _scene_pool),
        ("Channel", _scene_channel),
    ]
    for name, part in optional:
        if hasattr(pt, name):
            scenes.append(functools.partial(part, show))
    for scene in scenes:
        scene()
    took = time.monotonic() - started
    verdict = "every promise held" if not show.failures else f"{show.failures} promise(s) broken"
    show.console.print(f"\n[bold]{verdict}[/] in {took:.1f} s")
    return 0 if not show.failures else 1
