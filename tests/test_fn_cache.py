"""The by-value pickle cache of a script's functions (`_ipc/stable.py`).

A function defined in ``__main__`` goes by value; one whose pickle cannot change
unseen is pickled once and kept by the worker. Every case here is one way such
a cache goes stale (a second review found them in a first attempt, reverted):
each must give what a fresh pickle per call gives, and the fork path must give
what multiprocessing's fork pool gives. Scripts run as real scripts (their own
``__main__``) in a subprocess.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import types
import weakref
from pathlib import Path
from typing import Any

import pytest

from polytask._ipc import stable
from polytask._ipc.codec import dumps_call, dumps_fn


def _script_function(source: str, name: str = "f") -> tuple[Any, dict[str, Any]]:
    """A function defined as a script's are: in a module named __main__ (by value)."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(textwrap.dedent(source), "<script>", "exec"), namespace)
    return namespace[name], namespace


def _kept(fn: Any) -> bool:
    """Whether ``fn`` is served from the cache now (same bytes object, cacheable)."""
    first, ok = dumps_fn(fn)
    second, ok2 = dumps_fn(fn)
    return ok and ok2 and second is first


# -- what is kept -----------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "def f(x): return x + 1",
        "import math\ndef f(x): return math.sqrt(x) + len([x])",
        "LIMIT = 10\nNAME = 'n'\nPAIR = (1, ('a', 2.5))\ndef f(x): return x + LIMIT, NAME, PAIR",
        "from collections import OrderedDict\ndef f(x): return OrderedDict(a=x)",
        "def helper(x): return x * 2\ndef f(x): return helper(x) + 1",
        "def f(n): return 1 if n <= 1 else n * f(n - 1)",  # recursion
        "def f(x, k=3, *, scale=2.0): return (x + k) * scale",
        "def f(x: int) -> int: return x",
    ],
)
def test_a_function_that_reads_only_stable_things_is_pickled_once(source):
    f, _ = _script_function(source)
    assert _kept(f)
    # ... and the kept pickle is the function, by value, as a fresh one is.
    g = __import__("pickle").loads(dumps_fn(f)[0])
    assert g is not f and g.__code__.co_code == f.__code__.co_code


@pytest.mark.parametrize(
    "source",
    [
        "SEEN = []\ndef f(x): SEEN.append(x); return len(SEEN)",  # a mutable global
        "N = 0\ndef f(x):\n    global N\n    N += x\n    return N",  # writes one
        "def f(x):\n    def g():\n        global N\n        N = 1\n    g()",  # nested write
        "def f(): globals()['n'] = 1",  # reflection
        "def f(): return vars()",
        "import sys\ndef f(): return sys._getframe().f_globals",
        "def f(): return f.__globals__",
        "def f(): return eval('1')",
        "class C: pass\ndef f(x): return C()",  # a class of the script
        "def f(x, box=[]): return box",  # a mutable default
        "cfg = {'a': 1}\nget = cfg.get\ndef f(): return get('a')",  # bound builtin
        "from random import random as draw\ndef f(): return draw()",  # bound to an instance
        "import types\nm = types.ModuleType('m')\ndef f(): return m",  # module by value
        "data = [1]\ndef helper(): return data\ndef f(): return helper()",  # via a helper
        "def f(x): return x\nf.tag = 'attr'",  # function attributes
        "def f(*, k=[]): return k",  # mutable kwdefault
        "class K:\n    pass\nk = K()\ndef f(): return k",  # an instance
    ],
)
def test_a_function_that_can_change_unseen_is_pickled_every_time(source):
    f, _ = _script_function(source)
    data, cacheable = dumps_fn(f)
    assert not cacheable
    assert dumps_fn(f)[0] is not data


def test_a_closure_is_pickled_every_time():
    limit = 3
    _, cacheable, _ = dumps_call(lambda: limit, (), {}, "l")
    assert not cacheable


def test_a_pickle_over_the_size_cap_is_not_kept():
    f, ns = _script_function("def f(pad=None): return len(pad)")
    f.__defaults__ = ("x" * (stable.MAX_BYTES + 1),)
    assert not dumps_fn(f)[1]


# -- the kept pickle is dropped when what it read changes ----------------------


def _changes(f: Any, change: Any) -> None:
    before, ok = dumps_fn(f)
    assert ok and dumps_fn(f)[0] is before
    change()
    after, ok = dumps_fn(f)
    assert after is not before, "kept pickle used after a change"
    assert after == __import__("cloudpickle").dumps(f, protocol=5)


def test_a_rebound_global_is_seen():
    f, ns = _script_function("LIMIT = 10\ndef f(x): return x + LIMIT")
    _changes(f, lambda: ns.__setitem__("LIMIT", 20))


def test_a_global_defined_later_over_a_builtin_is_seen():
    f, ns = _script_function("def f(x): return len(x)")
    _changes(f, lambda: ns.__setitem__("len", lambda x: 0))


def test_a_rebound_helper_and_a_helper_s_global_are_seen():
    f, ns = _script_function("K = 1\ndef helper(x): return x * K\ndef f(x): return helper(x)")
    _changes(f, lambda: ns.__setitem__("K", 2))
    _changes(f, lambda: ns.__setitem__("helper", lambda x: -x))


def test_defaults_kwdefaults_and_annotations_changed_in_place_are_seen():
    f, _ = _script_function("def f(x=1, *, k=2) -> int: return x + k")
    _changes(f, lambda: setattr(f, "__defaults__", (5,)))
    _changes(f, lambda: f.__kwdefaults__.__setitem__("k", 3))
    _changes(f, lambda: f.__kwdefaults__.__setitem__("k", 3.0))  # == 3, pickles otherwise
    _changes(f, lambda: f.__annotations__.__setitem__("return", str))
    _changes(f, lambda: setattr(f, "__code__", (lambda x=1, *, k=2: x).__code__))
    _changes(f, lambda: setattr(f, "__doc__", "now documented"))


def test_an_attribute_set_later_is_seen():
    f, _ = _script_function("def f(x): return x")
    before, ok = dumps_fn(f)
    assert ok
    f.tag = 1
    assert dumps_fn(f) != (before, True)
    assert not dumps_fn(f)[1]


def test_a_module_loaded_later_is_seen(tmp_path, monkeypatch):
    # cloudpickle adds the submodules loaded now that the code names.
    f, _ = _script_function("import json\ndef f(x): return json.dumps(x)")
    (tmp_path / "pt_probe_late_mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        _changes(f, lambda: __import__("pt_probe_late_mod"))
    finally:
        sys.modules.pop("pt_probe_late_mod", None)


def test_a_module_registered_by_value_later_is_seen(tmp_path, monkeypatch):
    import cloudpickle

    (tmp_path / "pt_probe_reg_mod.py").write_text("VALUE = 10\ndef helper(): return VALUE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = __import__("pt_probe_reg_mod")
    try:
        f, _ = _script_function(
            "import pt_probe_reg_mod\nfrom pt_probe_reg_mod import helper\n"
            "def f(): return pt_probe_reg_mod.VALUE, helper()"
        )
        _changes(f, lambda: cloudpickle.register_pickle_by_value(mod))
        # By value now: the module's dict goes with the pickle, so never kept.
        assert not dumps_fn(f)[1]
    finally:
        try:
            cloudpickle.unregister_pickle_by_value(mod)
        except ValueError:
            pass
        sys.modules.pop("pt_probe_reg_mod", None)


def test_the_cache_keeps_no_function_alive():
    f, ns = _script_function("def f(x): return x")
    assert dumps_fn(f)[1]
    ref, key = weakref.ref(f), id(f)
    assert key in stable._ENTRIES
    del f, ns
    gc.collect()
    assert ref() is None
    assert key not in stable._ENTRIES


def test_a_forked_worker_never_gets_a_kept_copy():
    # With fork the worker must get the very object by name, or a fresh copy.
    f, ns = _script_function("LIMIT = 10\ndef f(): return LIMIT")
    assert dumps_fn(f)[1]  # kept for spawn workers
    fn_bytes, cacheable, _ = dumps_call(f, (), {}, "f", inherited={"f": f})
    assert not cacheable
    assert fn_bytes != dumps_fn(f)[0]


def test_the_parent_keeps_a_bounded_number_of_pickles():
    fns = [_script_function(f"def f(x): return x + {i}")[0] for i in range(600)]
    assert all(dumps_fn(f)[1] for f in fns)
    assert len(stable._ENTRIES) <= 256


# -- scripts, end to end ----------------------------------------------------

_SCRIPTS = {
    "bound_builtin": (
        """
        cfg = {"limit": 10}
        get = cfg.get
        def f():
            return get("limit")
        if __name__ == "__main__":
            with pt.Pool(workers=1) as pool:
                a = pool.submit(f).result(60)
                cfg["limit"] = 20
                print(a, pool.submit(f).result(60))
        """,
        "10 20",
    ),
    "module_by_value": (
        """
        import types
        settings = types.ModuleType("settings")
        settings.limit = 10
        def f():
            return settings.limit
        if __name__ == "__main__":
            with pt.Pool(workers=1) as pool:
                a = pool.submit(f).result(60)
                settings.limit = 20
                print(a, pool.submit(f).result(60))
        """,
        "10 20",
    ),
    "submodule_later": (
        """
        import xml
        def f(x):
            if x == 0:
                return "none"
            return xml.dom.minidom.parseString("<a/>").documentElement.tagName
        if __name__ == "__main__":
            with pt.Pool(workers=1) as pool:
                a = pool.submit(f, 0).result(60)
                import xml.dom.minidom
                print(a, pool.submit(f, 1).result(60))
        """,
        "none a",
    ),
    "globals_write": (
        """
        def f():
            globals()["n"] = globals().get("n", 0) + 1
            return n
        if __name__ == "__main__":
            with pt.Pool(workers=1) as pool:
                print(*[pool.submit(f).result(60) for _ in range(4)])
        """,
        "1 1 1 1",
    ),
    "kwdefaults_in_place": (
        """
        def f(*, limit=10):
            return limit
        if __name__ == "__main__":
            with pt.Pool(workers=1) as pool:
                a = pool.submit(f).result(60)
                f.__kwdefaults__["limit"] = 20
                print(a, pool.submit(f).result(60))
        """,
        "10 20",
    ),
    "random_state": (
        """
        import random
        from random import random as draw
        def f():
            return draw()
        if __name__ == "__main__":
            random.seed(1)
            with pt.Pool(workers=1) as pool:
                got = [pool.submit(f).result(60) for _ in range(3)]
            print(len(set(got)))
        """,
        "1",  # the parent's state goes with every call
    ),
    "rebound_global": (
        """
        base = 1
        def f(x):
            return x + base
        if __name__ == "__main__":
            with pt.Pool(workers=1) as pool:
                got = [pool.submit(f, 10).result(60) for _ in range(3)]
                base = 5
                got.append(pool.submit(f, 10).result(60))
                globals()["base"] = 7
                got.append(pool.submit(f, 10).result(60))
            print(*got)
        """,
        "11 11 11 15 17",
    ),
    "nested_mutable": (
        """
        data = [1]
        def outer():
            def inner():
                return len(data)
            return inner()
        if __name__ == "__main__":
            with pt.Pool(workers=1) as pool:
                a = pool.submit(outer).result(60)
                data.append(2)
                print(a, pool.submit(outer).result(60))
        """,
        "1 2",
    ),
    "fork_rebound_after_fork": (
        """
        limit = 10
        def f():
            return limit
        if __name__ == "__main__":
            with pt.Pool(workers=1, start_method="fork") as pool:
                a = pool.submit(f).result(60)
                limit = 20
                print(a, pool.submit(f).result(60))
        """,
        "10 10",  # multiprocessing's fork pool: the worker's own copy
    ),
    "fork_worker_state": (
        """
        cache = None
        def warm():
            global cache
            cache = "warm"
        def read():
            return cache
        if __name__ == "__main__":
            with pt.Pool(workers=1, start_method="fork") as pool:
                pool.submit(warm).result(60)
                print(pool.submit(read).result(60))
        """,
        "warm",
    ),
    "fork_initializer": (
        """
        conn = None
        def init(v):
            global conn
            conn = v
        def task():
            return conn
        if __name__ == "__main__":
            with pt.Pool(1, init, ("worker-conn",), start_method="fork") as pool:
                print(*[pool.submit(task).result(60) for _ in range(2)])
        """,
        "worker-conn worker-conn",
    ),
}


@pytest.mark.parametrize("case", sorted(_SCRIPTS))
def test_a_script_gets_what_a_fresh_pickle_gives(case, tmp_path: Path):
    body, expected = _SCRIPTS[case]
    script = tmp_path / f"{case}.py"
    script.write_text("import polytask as pt\n" + textwrap.dedent(body))
    r = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected


def test_multiprocessing_fork_agrees_on_the_fork_cases(tmp_path: Path):
    # The reference the fork cases follow, run here so the claim can fail.
    script = tmp_path / "mp_fork.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing as mp
            conn = None
            limit = 10
            def init(v):
                global conn
                conn = v
            def task():
                return conn
            def f():
                return limit
            if __name__ == "__main__":
                with mp.get_context("fork").Pool(1, init, ("worker-conn",)) as pool:
                    a = pool.apply(f)
                    limit = 20
                    print(pool.apply(task), a, pool.apply(f))
            """
        )
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "worker-conn 10 10"


def test_a_kept_function_runs_in_the_worker_from_its_cache():
    # The worker keeps the by-value function it may cache: the same object each call.
    import polytask as pt

    f, _ = _script_function("def f(x): return id(f), x")
    assert isinstance(f, types.FunctionType)
    with pt.Pool(workers=1) as pool:
        ids = {pool.submit(f, i).result(60)[0] for i in range(5)}
    assert len(ids) == 1


def test_a_kept_copy_is_one_object_in_the_worker(tmp_path: Path):
    # Kept: the worker runs the same copy every call (the copies are held in a
    # list, so no address is reused).
    script = tmp_path / "kept.py"
    script.write_text(
        textwrap.dedent(
            """
            import polytask as pt
            def f():
                import sys
                seen = getattr(sys, "pt_seen", None)
                if seen is None:
                    seen = sys.pt_seen = []
                seen.append(f)
                return len({id(x) for x in seen})
            if __name__ == "__main__":
                with pt.Pool(workers=1) as pool:
                    print(*[pool.submit(f).result(60) for _ in range(3)])
            """
        )
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1 1 1"


def test_a_call_that_changes_its_kept_copy_drops_it(tmp_path: Path):
    # A fresh copy per call never shows a change to the next call; the kept one
    # must not either (function attributes, a helper's defaults).
    script = tmp_path / "change.py"
    script.write_text(
        textwrap.dedent(
            """
            import polytask as pt
            def helper(k=1):
                return k
            def f():
                f.n = getattr(f, "n", 0) + 1
                return f.n
            def g():
                was = helper()
                helper.__kwdefaults__ = None
                return was
            def h():
                import functools
                functools.update_wrapper(helper, len)
                return helper.__name__
            if __name__ == "__main__":
                with pt.Pool(workers=1) as pool:
                    print(*[pool.submit(f).result(60) for _ in range(3)])
                    print(*[pool.submit(h).result(60) for _ in range(2)], helper.__name__)
            """
        )
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == ["1 1 1", "len len helper"]
