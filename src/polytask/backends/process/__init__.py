"""The process backend: warm worker processes reached over pipes.

``backend`` is the parent's side (launching, the collector, kills and their
tree clean-up), ``worker`` the worker's main loop (it imports only what it runs),
``wire`` the frame protocol both speak, sans-IO.
"""
