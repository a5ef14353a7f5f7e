"""Moving data between processes, above ``_os`` and below the backends.

- ``ring``: the channel ring's protocol, sans-IO (offsets and rules, no memory
  of its own); ``shm``: segments and futexes; ``spin``: the spin-before-sleep
  budget the channel and the workers share.
- ``codec``: the one serializer (pickle, cloudpickle by value for what lives in
  ``__main__`` or has no importable name), for task arguments and channel items.
- ``channel``: the process Channel over a ring; ``sync``: process-shared Lock,
  Event, Condition, Semaphore, Barrier; ``filelock``: FileLock; ``fifo``: named
  pipes that refuse FIFOs other users could write.
"""
