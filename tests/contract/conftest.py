"""The contract suites: the same promises asserted on every backend.

A test in this folder takes the ``backend_name`` fixture and runs once per
backend listed in ``CONTRACT_BACKENDS``; a new backend joins by being added here.
The cluster backends run on the session's one Dask cluster and one local Ray
(see tests/_engines.py): their default backends borrow them.
"""

from __future__ import annotations

import pytest

CONTRACT_BACKENDS = ["thread", "process", "dask", "ray"]

#: The session fixture each cluster backend needs before its first task.
_ENGINE_FIXTURE = {"dask": "dask_cluster", "ray": "ray_session"}


@pytest.fixture(params=CONTRACT_BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name in _ENGINE_FIXTURE:
        request.getfixturevalue(_ENGINE_FIXTURE[name])
    return name
