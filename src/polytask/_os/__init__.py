"""Processes and the kernel, above ``_core`` and below everything that starts one.

- ``proc``: process groups, pidfd waits, tree markers (a job's every descendant
  carries ``POLYTASK_TREE_*`` in its environment, so one that detached is still
  found), and the one kill policy (TERM, grace, KILL of a whole tree).
- ``guardian``: a small program run as ``polytask-guardian`` that ends what its
  owner registered when the owner dies, even by SIGKILL.
- ``childloop``: the loop over pidfds and pipes that runs many commands at once
  (``pt.run_many``, ``polytask parallel``).
"""
