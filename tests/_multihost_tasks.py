"""What tests/test_multihost.py runs on its namespace hosts.

The hosts' Python path has polytask's ``src`` and nothing of ``tests/``: this
module reaches them only through ``py_modules=``, which is what the test
proves. The hosts share this machine's filesystem and pid namespace, so a task
can leave a file the test reads and name a pid the test can watch.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any


def my_address(head: str) -> str:
    """The address of the host this runs on: the source address of its route to ``head``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((head, 9))  # UDP: no packet is sent, the kernel only picks the route
        return str(s.getsockname()[0])


def where(head: str, x: int, seconds: float = 0.0) -> tuple[int, str]:
    """``x`` squared and the host that computed it."""
    time.sleep(seconds)
    return x * x, my_address(head)


def boom(head: str, x: int) -> None:
    raise ValueError(f"bad value {x} on {my_address(head)}")


def sleep_then_touch(seconds: float, path: str) -> str:
    """Leaves ``path.started`` holding this process's and its parent's pids, then naps."""
    Path(path + ".tmp").write_text(f"{os.getpid()} {os.getppid()}")
    os.replace(path + ".tmp", path + ".started")
    time.sleep(seconds)
    Path(path).write_text("ran to the end")
    return "done"


def meet(barrier: Any, head: str) -> tuple[int, str]:
    """Waits for the other party at ``barrier``: both must run at once, one per worker."""
    barrier.wait(timeout=60)
    return os.getpid(), my_address(head)
