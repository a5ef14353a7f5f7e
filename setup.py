"""The one C extension: the process channel's put and get fast paths.

Optional: without a C compiler the install still succeeds and polytask uses
the same paths written in Python (src/polytask/_ipc/channel.py), at about half
the speed. Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "polytask._ipc._lane",
            ["src/polytask/_ipc/_lane.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
