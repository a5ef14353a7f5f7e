"""``polytask up --tui``: a live view of the supervised programs, with keys to act on one.

::

    PROCESS  STATE    PID    UPTIME  RESTARTS  CPU%  RSS      READY    refreshed 4 times a
    > web.1  running  4711   1m02s   0         0.3   21 MiB   yes      second: Supervisor.status()
      web.2  running  4712   1m02s   0         0.0   20 MiB   yes      and psutil (the program's
    ┌ web.1 ─────────────────────────────────────────────────────┐     whole process tree)
    │ its last lines                                             │
    └────────────────────────────────────────────────────────────┘
    polytask: what the supervisor said last
    ↑/↓ select  r restart  s stop/start  l log only  q quit

The programs' output does not reach the terminal (it would tear the view):
it goes to /dev/null, and the view shows the last lines of the selected
program from the supervisor's log ring (the one ``polytask ctl logs`` reads). Keys are read by a thread in cbreak mode (Ctrl-C still sends
SIGINT, handled as without the view); an action waits for its program to stop
or start, so it runs on a thread of its own and the view stays live.
"""

from __future__ import annotations

import os
import queue
import select
import sys
import termios
import threading
import tty
from collections.abc import Sequence
from typing import Any

import psutil

from .._control import format_duration
from .._supervisor import ProcessStatus, Supervisor

__all__ = ["LiveView", "terminal_problem"]

_SYSTEM = "polytask"
_REFRESH = 0.25  # seconds between two frames
_ACTION_TIMEOUT = 120.0
_KEYS = {b"\x1b[A": "up", b"\x1bOA": "up", b"\x1b[B": "down", b"\x1bOB": "down"}


def terminal_problem() -> str | None:
    """Why the live view cannot run here (None: it can)."""
    for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout)):
        try:
            if stream is None or not stream.isatty():
                return f"--tui needs a terminal, and {name} is not one"
        except (AttributeError, ValueError):
            return f"--tui needs a terminal, and {name} is closed"
    return None


def _last(sup: Supervisor, name: str, n: int) -> list[str]:
    """The last ``n`` lines of program ``name`` (or polytask's own), from the run's log ring."""
    if n <= 0:
        return []
    lines, _, _ = sup._read_log([name], after=None, lines=n, wait=0.0)
    return [line.data.decode("utf-8", "replace") for line in lines]


class _Keys:
    """Reads keys from the terminal on a thread (cbreak mode: no echo, no line buffering)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self.queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="polytask-tui-keys", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self._fd, 64)
            except OSError:
                return
            if not data:
                return
            i = 0
            while i < len(data):
                for seq, key in _KEYS.items():
                    if data.startswith(seq, i):
                        self.queue.put(key)
                        i += len(seq)
                        break
                else:
                    self.queue.put(chr(data[i]))
                    i += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)


class _Usage:
    """CPU % and RSS of each program's process tree, from psutil (kept per pid for CPU
    deltas; :meth:`frame` drops the processes the last frame did not see)."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._seen: set[int] = set()

    def frame(self) -> None:
        """A frame was drawn: forget the processes that have ended since."""
        for pid in set(self._procs) - self._seen:
            del self._procs[pid]
        self._seen = set()

    def of(self, pid: int | None) -> tuple[float, int] | None:
        if pid is None:
            return None
        try:
            root = self._proc(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        cpu, rss = 0.0, 0
        for p in tree:
            try:
                p = self._proc(p.pid)
                cpu += p.cpu_percent(None)
                rss += p.memory_info().rss
            except psutil.Error:
                self._procs.pop(p.pid, None)
        return cpu, rss

    def _proc(self, pid: int) -> psutil.Process:
        self._seen.add(pid)
        p = self._procs.get(pid)
        if p is None or not p.is_running():
            p = self._procs[pid] = psutil.Process(pid)
            p.cpu_percent(None)  # the baseline: the next call measures from here
        return p


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


class LiveView:
    """The view over one :class:`Supervisor`; :meth:`step` is called until the run ends."""

    def __init__(self, sup: Supervisor) -> None:
        from rich.console import Console

        self.sup = sup
        self.names = [i.name for i in sup.instances]
        self.selected = 0
        self.log_only = False
        self.message = ""
        self.console = Console()
        self._usage = _Usage()
        self._actions: list[threading.Thread] = []
        self._keys: _Keys | None = None
        self._live: Any = None

    def open(self) -> None:
        from rich.live import Live

        self._keys = _Keys(sys.stdin.fileno())
        self._live = Live(
            self.render(), console=self.console, screen=True, auto_refresh=False, transient=True
        )
        self._live.start()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._keys is not None:
            self._keys.close()
            self._keys = None
        for t in self._actions:
            t.join(_ACTION_TIMEOUT)
        # What the supervisor said stays readable once the view is gone.
        for line in _last(self.sup, _SYSTEM, 20):
            print(f"{_SYSTEM} | {line}")

    def step(self) -> bool:
        """Handle the keys pressed, draw a frame; True once the run has ended."""
        if self._keys is not None:
            while True:
                try:
                    self.key(self._keys.queue.get_nowait())
                except queue.Empty:
                    break
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
        return self.sup.wait(timeout=_REFRESH)

    def key(self, key: str) -> None:
        name = self.names[self.selected]
        if key in ("up", "k"):
            self.selected = (self.selected - 1) % len(self.names)
        elif key in ("down", "j"):
            self.selected = (self.selected + 1) % len(self.names)
        elif key == "l":
            self.log_only = not self.log_only
        elif key == "q":
            self.message = "stopping (q)"
            self.sup.request_stop("q pressed in the live view")
        elif key == "r":
            self._act("restart", name)
        elif key == "s":
            state = next((s.state for s in self.sup.status() if s.name == name), "")
            self._act("start" if state in ("stopped", "exited", "failed") else "stop", name)

    def _act(self, op: str, name: str) -> None:
        self.message = f"{op} {name}..."

        def run() -> None:
            try:
                getattr(self.sup, f"{op}_program")(name, timeout=_ACTION_TIMEOUT)
                self.message = f"{op} {name}: done"
            except Exception as exc:
                self.message = f"{op} {name}: {exc}"

        t = threading.Thread(target=run, name=f"polytask-tui-{op}", daemon=True)
        self._actions = [a for a in self._actions if a.is_alive()]
        self._actions.append(t)
        t.start()

    def render(self) -> Any:
        from rich import box
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        statuses = self.sup.status()
        height = self.console.size.height
        parts: list[Any] = []
        if not self.log_only:
            table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
            for col in ("PROCESS", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS", "READY"):
                table.add_column(col, no_wrap=True)
            for i, st in enumerate(statuses):
                table.add_row(*self._row(st), style="reverse" if i == self.selected else None)
            self._usage.frame()
            parts.append(table)
        name = self.names[self.selected]
        room = height - (0 if self.log_only else len(statuses) + 4) - 5
        lines = _last(self.sup, name, max(room, 1))
        parts.append(
            Panel(
                Text("\n".join(lines), no_wrap=True, overflow="ellipsis"),
                title=name,
                height=max(room, 1) + 2,
            )
        )
        said = self.message or (_last(self.sup, _SYSTEM, 1) or [""])[0]
        parts.append(Text(f"{_SYSTEM}: {said}", no_wrap=True, overflow="ellipsis"))
        parts.append(Text("↑/↓ select  r restart  s stop/start  l log only  q quit", style="dim"))
        return Group(*parts)

    def _row(self, st: ProcessStatus) -> Sequence[str]:
        usage = self._usage.of(st.pid)
        ready = "-" if st.ready is None else ("yes" if st.ready else "no")
        return (
            ("> " if st.name == self.names[self.selected] else "  ") + st.name,
            st.state,
            "-" if st.pid is None else str(st.pid),
            format_duration(st.uptime) if st.pid is not None else "-",
            str(st.restarts),
            "-" if usage is None else f"{usage[0]:.1f}",
            "-" if usage is None else _mib(usage[1]),
            ready,
        )
