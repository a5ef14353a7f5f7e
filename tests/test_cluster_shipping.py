"""Code shipping: a function from a module that is importable in the driver but not
installed runs on every backend.

Each case runs a real script from a temporary folder, started from another working
directory; the module lives in a third folder that the script puts on its
``sys.path`` (as pytest does for test files), so the module is found only through
the driver's ``sys.path`` (Ray itself ships the script's folder and the working
directory, nothing else).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

HIDDEN = """
class Point:
    def __init__(self, x):
        self.x = x


def triple(p):
    return Point(p.x * 3)
"""

#: Runs the hidden module's function on each backend named on the command line.
EVERY_BACKEND = """
import sys
sys.path.insert(0, {lib!r})
import polytask as pt
import {mod} as hidden

if __name__ == "__main__":
    for backend in sys.argv[1:]:
        t = pt.spawn(hidden.triple, hidden.Point(2), backend=backend)
        assert t.result(timeout=120).x == 6, backend
        with pt.Pool(1, backend=backend) as pool:
            out = pool.map(hidden.triple, [hidden.Point(i) for i in range(5)])
        assert [p.x for p in out] == [0, 3, 6, 9, 12], backend
        print("OK", backend, flush=True)
"""

#: Joins a running cluster by address: the module is missing there until shipped.
JOINED = """
import sys
sys.path.insert(0, {lib!r})
import polytask as pt
import {mod} as hidden

if __name__ == "__main__":
    backend, address = sys.argv[1], sys.argv[2]
    with pt.Pool(1, backend=backend, address=address) as pool:
        try:
            pool.submit(hidden.triple, hidden.Point(1)).result(timeout=120)
        except pt.SerializationError as exc:
            print("MISSING", exc, flush=True)
    with pt.Pool(1, backend=backend, address=address, py_modules=[hidden]) as pool:
        assert pool.submit(hidden.triple, hidden.Point(1)).result(timeout=120).x == 3
        print("SHIPPED", flush=True)
"""


def _script(tmp_path: Path, code: str) -> tuple[Path, str]:
    mod = f"hidden_{uuid.uuid4().hex[:8]}"  # unique: an upload stays on a shared cluster
    folder, lib = tmp_path / "app", tmp_path / "lib"
    folder.mkdir()
    lib.mkdir()
    (lib / f"{mod}.py").write_text(HIDDEN)
    script = folder / "main.py"
    script.write_text(textwrap.dedent(code.format(mod=mod, lib=str(lib))))
    (tmp_path / "elsewhere").mkdir()
    return script, mod


def _run(tmp_path: Path, script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC, RAY_ADDRESS="")
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path / "elsewhere",
    )


@pytest.mark.parametrize("backend", ["thread", "process", "dask", "ray"])
def test_a_sibling_module_runs_on_every_backend(tmp_path: Path, backend: str) -> None:
    pytest.importorskip({"dask": "distributed", "ray": "ray"}.get(backend, "os"))
    script, _ = _script(tmp_path, EVERY_BACKEND)
    r = _run(tmp_path, script, backend)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert f"OK {backend}" in r.stdout


def test_joined_ray_names_the_missing_module_and_py_modules_ships_it(
    tmp_path: Path, ray_session: object
) -> None:
    import ray

    script, mod = _script(tmp_path, JOINED)
    r = _run(tmp_path, script, "ray", ray.get_runtime_context().gcs_address)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    missing = [line for line in r.stdout.splitlines() if line.startswith("MISSING")]
    assert missing, r.stdout
    assert repr(mod) in missing[0] and "py_modules=" in missing[0] and "working_dir=" in missing[0]
    assert "SHIPPED" in r.stdout


def test_joined_dask_names_the_missing_module_and_py_modules_ships_it(
    tmp_path: Path, dask_cluster: object
) -> None:
    script, mod = _script(tmp_path, JOINED)
    address = dask_cluster.scheduler.address  # type: ignore[attr-defined]
    r = _run(tmp_path, script, "dask", address)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    missing = [line for line in r.stdout.splitlines() if line.startswith("MISSING")]
    assert missing, r.stdout
    assert repr(mod) in missing[0] and "py_modules=" in missing[0]
    assert "SHIPPED" in r.stdout


def test_bad_shipping_options_fail_at_the_call(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    from polytask.backends.cluster.dask import DaskBackend

    with pytest.raises(ValueError, match="working_dir must be an existing folder"):
        DaskBackend(working_dir=str(tmp_path / "nope"))
    with pytest.raises(TypeError, match="list of modules"):
        DaskBackend(py_modules=os)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="neither a module nor an existing path"):
        DaskBackend(py_modules=[str(tmp_path / "nope.py")])
    with pytest.raises(TypeError, match="killable"):
        DaskBackend(killable="yes")  # type: ignore[arg-type]
