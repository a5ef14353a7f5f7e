"""The contract suites: the same promises asserted on every backend.

A test in this folder takes the ``backend_name`` fixture and runs once per
backend listed in ``CONTRACT_BACKENDS``; a new backend joins by being added here.
"""

from __future__ import annotations

import pytest

CONTRACT_BACKENDS = ["thread", "process"]


@pytest.fixture(params=CONTRACT_BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)
