"""``polytask demo``: the promises, shown live on this machine in a few seconds.

Each scene runs real work (processes, crashes, timeouts, programs, channels)
and prints one line per fact, ticked only when what it states was measured or
checked in this run (a cross otherwise, and the demo exits 1). Scenes for
parts that are not installed (a cluster engine) say so instead of failing.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence

__all__ = ["main"]

#: Where to go next: printed at the end of the tour.
GUIDES = (
    "docs/commands.md",
    "docs/channels.md",
    "docs/pool.md",
    "docs/up.md",
    "docs/cluster.md",
)


# Task functions live at module level so worker processes import them by name,
# and so that what the tour prints names them as a user would write them.
def square(x: int) -> int:
    return x * x


def tiny(x: int) -> int:
    return x + 1


def crash() -> None:
    ctypes.string_at(0)  # a segmentation fault, as a broken C extension would


def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def fail(msg: str) -> None:
    raise ValueError(msg)


def whoami() -> int:
    return os.getpid()


def which_thread() -> int:
    return threading.get_ident()


def produce(ch: object, n: int) -> None:
    for i in range(n):
        ch.put(i)  # type: ignore[attr-defined]
    ch.close()  # type: ignore[attr-defined]


class Show:
    """Prints scene titles and facts with rich (a dependency); counts the facts that failed."""

    def __init__(self, plain: bool) -> None:
        from rich.console import Console

        self.console = Console(highlight=False, no_color=plain, force_terminal=None)
        self.failures = 0

    def scene(self, title: str) -> None:
        self.console.print(f"\n[bold cyan]▶ {title}[/]")

    def fact(self, ok: bool, text: str) -> None:
        """One line: a tick if ``ok`` (what ``text`` states was checked), else a cross."""
        mark = "[green]✔[/]" if ok else "[red]✘[/]"
        if not ok:
            self.failures += 1
        self.console.print(f"  {mark} {text}", markup=True)

    def note(self, text: str) -> None:
        self.console.print(f"  [dim]{text}[/]")


def latency_fact(ours_us: float, theirs_us: float) -> tuple[bool, str]:
    """The latency line and whether it holds: polytask's median below the peer's."""
    ok = ours_us < theirs_us
    if ok:
        compared = f"{theirs_us / ours_us:.1f}x lower latency"
    else:
        compared = f"{ours_us / theirs_us:.1f}x higher latency, not lower"
    return ok, (
        f"polytask p50 {ours_us:.0f} µs; ProcessPoolExecutor p50 {theirs_us:.0f} µs: {compared}"
    )


def _gone(pid: int, within: float = 5.0) -> bool:
    """True once process ``pid`` no longer runs (exited, or a zombie), within ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state in (b"Z", b"X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def _scene_spawn(show: Show) -> None:
    import polytask as pt

    show.scene("spawn: one call, on a thread or a warm process")
    t = pt.spawn(square, 12, backend="process")
    value = t.result(timeout=30)
    show.fact(value == 144, f"pt.spawn(square, 12, backend='process').result() = {value}")
    pids = {pt.spawn(whoami, backend="process").result(30) for _ in range(5)}
    show.fact(
        os.getpid() not in pids and len(pids) < 5,
        f"5 calls ran in worker process(es) {sorted(pids)}, kept warm between calls",
    )


def _scene_classics(show: Show) -> None:
    import polytask as pt

    show.scene("the classics, done safely: fork-join, a background thread and process")
    # fork-join: os.fork + os.wait, without zombies and with results and errors.
    with pt.TaskGroup(backend="process") as g:
        parts = [g.spawn(square, i) for i in range(8)]
    total = sum(t.result() for t in parts)
    show.fact(total == 140, f"fork-join over 8 processes: sum of squares = {total}")

    # threading.Thread, with a result and its exceptions
    ident = pt.background(which_thread)().result(30)
    show.fact(
        ident != threading.get_ident(),
        "@pt.background ran which_thread() on a thread of its own and returned its result",
    )
    # multiprocessing.Process, reaped
    pid = pt.background(backend="process", timeout=30)(whoami)().result(30)
    show.fact(pid != os.getpid(), f"@pt.background(backend='process') ran whoami() in pid {pid}")


def _scene_crash(show: Show) -> None:
    import polytask as pt

    show.scene("crash isolation: a segfault fails one task, not the program")
    t = pt.spawn(crash, backend="process", name="crashy")
    try:
        t.result(timeout=30)
        show.fact(False, "the crash went unnoticed")
    except pt.WorkerCrashed as exc:
        show.fact(exc.signal == 11, f"WorkerCrashed: {exc}")
    after = pt.spawn(square, 3, backend="process").result(30)
    show.fact(after == 9, f"the next task still runs: square(3) = {after}")


def _scene_timeout(show: Show) -> None:
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


def _scene_group(show: Show) -> None:
    import polytask as pt

    show.scene("TaskGroup: the first failure cancels the rest, errors arrive together")
    started = time.monotonic()
    sibling = None
    caught: BaseException | None = None
    try:
        with pt.TaskGroup(backend="process") as g:
            sibling = g.spawn(nap, 60)
            g.spawn(fail, "bad input")
    except* ValueError as eg:
        caught = eg.exceptions[0]
    took = time.monotonic() - started
    show.fact(
        isinstance(caught, ValueError) and str(caught) == "bad input",
        f"except* ValueError caught {caught!r}",
    )
    show.fact(
        sibling is not None and sibling.cancelled() and took < 30,
        f"the 60 s sibling was killed, not awaited: the group ended in {took:.2f} s",
    )


def _scene_latency(show: Show, n: int) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import polytask as pt

    show.scene(f"latency: {n} tiny tasks, one at a time, on a warm worker")

    def ours(i: int) -> object:
        return pt.spawn(tiny, i, backend="process").result(10)

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:

        def theirs(i: int) -> object:
            return ex.submit(tiny, i).result(10)

        samples: dict[Callable[[int], object], list[float]] = {ours: [], theirs: []}
        for call in samples:
            for i in range(50):  # warm up
                call(i)
        # Rounds in turn, so that both see the same machine (its load changes).
        rounds = 10
        for _ in range(rounds):
            for call, times in samples.items():
                for i in range(n // rounds):
                    t0 = time.perf_counter()
                    call(i)
                    times.append(time.perf_counter() - t0)
    ok, text = latency_fact(
        statistics.median(samples[ours]) * 1e6, statistics.median(samples[theirs]) * 1e6
    )
    show.fact(ok, text)
    if not ok:
        from polytask._os.proc import usable_cpus

        load = os.getloadavg()[0]
        show.note(f"measured with a load average of {load:.1f} on {usable_cpus()} core(s)")
    show.note("`make bench` measures every peer")


def _scene_commands(show: Show) -> None:
    import polytask as pt

    show.scene("programs: no shell injection, timeouts end the whole process tree")
    name = "x; echo INJECTED"
    res = pt.run(["echo", name])
    show.fact(res.stdout.strip() == name, f"pt.run(['echo', {name!r}]) printed it verbatim")
    try:
        pt.run("ls *.py")
        refused = False
    except ValueError as exc:
        refused = "shell=True" in str(exc)
    show.fact(refused, "pt.run('ls *.py') asks for shell=True instead of passing '*.py' to ls")
    started = time.monotonic()
    try:
        pt.run("sleep 60 & echo $!; sleep 60", shell=True, timeout=0.5)
        show.fact(False, "the command was not stopped")
    except pt.CommandTimeout as exc:
        took = time.monotonic() - started
        background = int(str(exc.stdout).split()[0])
        show.fact(
            took < 5 and _gone(background),
            f"CommandTimeout after {took:.2f} s; its background `sleep 60` was ended too",
        )


def _scene_channel(show: Show) -> None:
    import polytask as pt

    show.scene("channels: producer/consumer across processes over shared memory")
    channel: pt.Channel[int] = pt.Channel(maxsize=64, backend="process")
    with channel as ch:
        t = pt.spawn(produce, ch, 10_000, backend="process")
        total = sum(ch)
        t.result(30)
    show.fact(total == sum(range(10_000)), f"10,000 items received exactly once (sum {total})")


def _scene_pool(show: Show) -> None:
    import polytask as pt

    show.scene("Pool: map with automatic chunking")
    n = 100_000
    with pt.Pool(2) as pool:
        started = time.monotonic()
        out = pool.map(square, range(n))
        took = time.monotonic() - started
        chunks = pool.statistics()["chunks_sent"]
    show.fact(
        out == [i * i for i in range(n)] and 0 < chunks <= n // 100,
        f"{n:,} tiny tasks in {took:.2f} s, sent to the workers in {chunks} chunks",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="polytask demo", description=__doc__)
    parser.add_argument("--plain", action="store_true", help="no colour")
    parser.add_argument("--quick", action="store_true", help="fewer latency samples")
    args = parser.parse_args(argv)
    show = Show(args.plain or not sys.stdout.isatty())
    started = time.monotonic()
    show.console.print("[bold]polytask[/]: one toolkit for multitasking — a live tour")
    scenes: list[Callable[[], None]] = [
        lambda: _scene_spawn(show),
        lambda: _scene_classics(show),
        lambda: _scene_crash(show),
        lambda: _scene_timeout(show),
        lambda: _scene_group(show),
        lambda: _scene_latency(show, 300 if args.quick else 2000),
    ]
    import polytask as pt

    optional: list[tuple[str, Callable[[Show], None]]] = [
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
    show.console.print(
        "Next: the guides (README.md, section Guides), in the docs/ folder: " + ", ".join(GUIDES)
    )
    return 0 if not show.failures else 1
