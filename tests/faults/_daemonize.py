"""A classic daemon, for tests: double fork, new session, then sleep argv[1] seconds.

The first process returns at once, as a daemonizing program's does; what is
left runs in its own session, reparented away from whoever started it.
"""

import os
import sys
import time

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(float(sys.argv[1]))
    os._exit(0)
os.wait()
