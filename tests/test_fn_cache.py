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


def _run_script(script: Path) -> str:
    """Run ``script`` as a user runs it (its own ``__main__``); its stdout, stripped."""
    r = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=script.parent,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _script_function(source: str, name: str = "f") -> tuple[Any, dict[str, Any]]:
    """A function defined as a script's are: in a module named __main__ (by value)."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(textwrap.dedent(source), "<script>", "exec"), namespace)
    return namespace[name], namespace


def _kept(fn: Any) -> bool:
    """Whether ``fn`` is served from the cache by its third call (same bytes
    object, cacheable): the first call only notes it (a function made per call
    is never checked), the second checks and keeps it."""
    first, ok = dumps_fn(fn)
    assert not ok
    second, ok2 = dumps_fn(fn)
    third, ok3 = dumps_fn(fn)
    return ok2 and ok3 and third is second


def _never_kept(fn: Any) -> None:
    """``fn`` is pickled afresh on each of many calls (the checks back off, but
    are made on calls 2, 3, 5, 9, 17)."""
    datas = [dumps_fn(fn) for _ in range(20)]
    assert not any(ok for _, ok in datas)
    assert len({id(data) for data, _ in datas}) == len(datas)


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
    _never_kept(f)


def test_a_closure_is_pickled_every_time():
    limit = 3
    fn = lambda: limit  # noqa: E731
    assert not any(dumps_call(fn, (), {}, "l")[1] for _ in range(20))


def test_a_pickle_over_the_size_cap_is_not_kept():
    f, ns = _script_function("def f(pad=None): return len(pad)")
    f.__defaults__ = ("x" * (stable.MAX_BYTES + 1),)
    _never_kept(f)


# -- the kept pickle is dropped when what it read changes ----------------------


def _settled(f: Any) -> bytes:
    """The kept pickle of ``f``, after the calls a function whose pickle went stale
    waits before it is kept again (longer each time: see stable.remember)."""
    for _ in range(600):
        data, ok = dumps_fn(f)
        if ok and dumps_fn(f)[0] is data:
            return data
    raise AssertionError("never kept again")


def _changes(f: Any, change: Any) -> None:
    before = _settled(f)
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


def test_names_a_rebound_kwdefaults_and_a_deleted_global_are_seen():
    # The check reads a function's attributes with one attrgetter and the globals
    # it read with one itemgetter: each of them, and a read global gone.
    f, ns = _script_function("LIMIT = 1\nSTEP = 2\ndef f(x, *, k=2): return x + LIMIT + STEP + k")
    _changes(f, lambda: setattr(f, "__name__", "renamed"))
    _changes(f, lambda: setattr(f, "__qualname__", "Outer.renamed"))
    _changes(f, lambda: setattr(f, "__module__", "pt_probe_elsewhere"))
    _changes(f, lambda: setattr(f, "__kwdefaults__", None))
    _changes(f, lambda: ns.pop("LIMIT"))
    only, only_ns = _script_function("LIMIT = 1\ndef f(x): return x + LIMIT")
    _changes(only, lambda: only_ns.pop("LIMIT"))  # the one global it reads


class _Answering(dict):  # type: ignore[type-arg]
    """Globals that answer a name they lack (as a script's globals never do)."""

    def __missing__(self, key: str) -> int:
        return 1


def test_a_global_deleted_from_globals_that_answer_missing_names_is_seen():
    # ``globals[name]`` would answer the deleted LIMIT with the very 1 it was:
    # such a function is not kept (pickled each time), so nothing goes stale.
    ns = _Answering(__name__="__main__")
    exec(compile("LIMIT = 1\ndef f(): return LIMIT", "<script>", "exec"), ns)
    f = ns["f"]
    for _ in range(5):
        dumps_fn(f)
    del ns["LIMIT"]
    assert dumps_fn(f)[0] == __import__("cloudpickle").dumps(f, protocol=5)


def test_an_attribute_set_later_is_seen():
    f, _ = _script_function("def f(x): return x")
    before = _settled(f)
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
    _settled(f)
    ref, key = weakref.ref(f), id(f)
    assert key in stable._ENTRIES
    del f, ns
    gc.collect()
    assert ref() is None
    assert key not in stable._ENTRIES


def test_a_forked_worker_never_gets_a_kept_copy():
    # With fork the worker must get the very object by name, or a fresh copy.
    f, ns = _script_function("LIMIT = 10\ndef f(): return LIMIT")
    _settled(f)  # kept for spawn workers
    fn_bytes, cacheable, _ = dumps_call(f, (), {}, "f", inherited={"f": f})
    assert not cacheable
    assert fn_bytes != dumps_fn(f)[0]


def test_the_parent_keeps_a_bounded_number_of_pickles():
    fns = [_script_function(f"def f(x): return x + {i}")[0] for i in range(600)]
    assert all(_settled(f) for f in fns)
    assert len(stable._ENTRIES) <= 256
    assert len(stable._SEEN) <= 256


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
    assert _run_script(script) == expected


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
    assert _run_script(script) == "worker-conn 10 10"


def test_a_kept_function_runs_in_the_worker_from_its_cache():
    # The worker keeps the by-value function it may cache: the same object each call.
    import polytask as pt

    f, _ = _script_function("def f(x): return id(f), x")
    assert isinstance(f, types.FunctionType)
    with pt.Pool(workers=1) as pool:
        ids = [pool.submit(f, i).result(60)[0] for i in range(5)]
    # The first call is pickled afresh (and not kept); the second is kept.
    assert len(set(ids[1:])) == 1


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
                    print(*[pool.submit(f).result(60) for _ in range(4)])
            """
        )
    )
    # The first call's copy is not kept (a function is checked from its second
    # call); the second call's is, and serves the third and fourth.
    assert _run_script(script) == "1 2 2 2"


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
    assert _run_script(script).splitlines() == ["1 1 1", "len len helper"]


# -- a third review: what a fresh pickle decides by name, races, cost ----------

_MYMOD = "VALUE = 1\ndef helper():\n    return VALUE\n"
_RACEMOD = """
import sys
armed = False
class _Meta(type):
    fired = False
    def __getattribute__(cls, name):
        # Stands for another thread of the script: rebinds a global of the
        # script while the parent pickles a function that reads this class.
        if name == "Inner" and armed and not _Meta.fired:
            _Meta.fired = True
            sys.modules["__main__"].LIMIT = 20
        return type.__getattribute__(cls, name)
class Outer(metaclass=_Meta):
    class Inner:
        pass
"""

_WARM = "for _ in range(4):\n                    first = pool.submit(f).result(60)"

_BY_NAME_SCRIPTS = {
    # cloudpickle sends an imported function by name only while its module still
    # has it under that name; else by value, with the globals it reads now.
    "monkeypatched": (
        f"""
        import mymod
        from mymod import helper
        def f():
            return helper()
        if __name__ == "__main__":
            with pt.Pool(workers=1) as pool:
                {_WARM}
                mymod.VALUE = 2
                mymod.helper = lambda: 0
                print(first, pool.submit(f).result(60))
        """,
        "1 2",
    ),
    "reloaded": (
        """
        import importlib
        import mymod
        from mymod import helper
        def f():
            return helper()
        if __name__ == "__main__":
            with pt.Pool(workers=1) as pool:
                {warm}
                importlib.reload(mymod)
                mymod.VALUE = 3
                print(first, pool.submit(f).result(60))
        """.replace("{warm}", _WARM),
        "1 3",
    ),
    # A module dropped from sys.modules goes by value (another was loaded: the
    # count of modules is the same).
    "module_dropped": (
        f"""
        import sys, types
        import mymod
        def f():
            return mymod.VALUE
        if __name__ == "__main__":
            with pt.Pool(workers=1) as pool:
                {_WARM}
                mymod.VALUE = 2
                del sys.modules["mymod"]
                sys.modules["pt_other"] = types.ModuleType("pt_other")
                print(first, pool.submit(f).result(60))
        """,
        "1 2",
    ),
    # A builtin rebound in its module no longer pickles (it is not found by name).
    "builtin_rebound": (
        f"""
        import math
        from math import sqrt
        def f():
            return sqrt(4.0)
        if __name__ == "__main__":
            with pt.Pool(workers=1) as pool:
                {_WARM}
                math.sqrt = lambda x: -1.0
                try:
                    pool.submit(f).result(60)
                except pt.SerializationError:
                    print(first, "SerializationError")
        """,
        "2.0 SerializationError",
    ),
    # cloudpickle sends the submodules loaded now that the code names: one loaded
    # while as many other modules were dropped must still reach the worker.
    "submodule_same_count": (
        """
        import sys, types
        import xml
        def f(x=0):
            if x == 0:
                return "none"
            return xml.dom.minidom.parseString("<a/>").documentElement.tagName
        if __name__ == "__main__":
            for i in range(40):
                sys.modules[f"pt_dummy{i}"] = types.ModuleType(f"pt_dummy{i}")
            with pt.Pool(workers=1) as pool:
                {warm}
                n = len(sys.modules)
                import xml.dom.minidom
                for i in range(len(sys.modules) - n):
                    del sys.modules[f"pt_dummy{i}"]
                assert len(sys.modules) == n
                print(first, pool.submit(f, 1).result(60))
        """.replace("{warm}", _WARM),
        "none a",
    ),
    # A global rebound while the function is pickled (by another thread: here by
    # code the pickling runs) must not pair the old pickle with the new state.
    "rebound_while_pickled": (
        """
        import racemod
        from racemod import Outer
        Inner = Outer.Inner
        LIMIT = 10
        def f():
            return LIMIT, Inner.__name__
        if __name__ == "__main__":
            with pt.Pool(workers=1) as pool:
                racemod.armed = True
                print(*[pool.submit(f).result(60)[0] for _ in range(4)], LIMIT)
        """,
        "10 20 20 20 20",
    ),
}


@pytest.mark.parametrize("case", sorted(_BY_NAME_SCRIPTS))
def test_a_script_gets_what_a_fresh_pickle_gives_by_name(case, tmp_path: Path):
    body, expected = _BY_NAME_SCRIPTS[case]
    (tmp_path / "mymod.py").write_text(_MYMOD)
    (tmp_path / "racemod.py").write_text(_RACEMOD)
    script = tmp_path / f"{case}.py"
    script.write_text("import polytask as pt\n" + textwrap.dedent(body))
    assert _run_script(script) == expected


def test_two_threads_that_find_the_same_stale_entry_both_pickle_afresh(monkeypatch):
    # Thread A finds the entry stale, and is held until thread B has found it
    # stale too, dropped it and pickled afresh; A must not fail on the entry B
    # dropped.
    import threading

    f, ns = _script_function("LIMIT = 10\ndef f(): return LIMIT")
    _settled(f)
    real = stable.Snapshot.holds
    entered: list[str] = []
    b_done = threading.Event()

    def holds(self: Any) -> bool:
        entered.append(threading.current_thread().name)
        if len(entered) == 1:
            assert b_done.wait(30)
        return real(self)

    monkeypatch.setattr(stable.Snapshot, "holds", holds)
    ns["LIMIT"] = [20]  # refused now: B keeps nothing in the dropped entry's place
    got: dict[str, Any] = {}

    def send(then: threading.Event | None) -> None:
        try:
            got[threading.current_thread().name] = dumps_fn(f)[0]
        except BaseException as exc:
            got[threading.current_thread().name] = exc
        if then is not None:
            then.set()

    a = threading.Thread(target=send, args=(None,), name="A")
    a.start()
    while not entered:  # A is in the check
        a.join(0.01)
    b = threading.Thread(target=send, args=(b_done,), name="B")
    b.start()
    for t in (a, b):
        t.join(60)
    fresh = __import__("cloudpickle").dumps(f, protocol=5)
    assert got == {"A": fresh, "B": fresh}


class _Walks:
    """Counts the checks of a function (walks of what it reads)."""

    def __init__(self, monkeypatch: Any) -> None:
        self.n = 0
        real = stable._Checker.function

        def function(checker: Any, fn: Any) -> bool:
            self.n += 1
            return real(checker, fn)  # type: ignore[no-any-return]

        monkeypatch.setattr(stable._Checker, "function", function)


def test_a_function_made_per_call_is_not_checked(monkeypatch):
    # `lambda x, k=k: ...` per call: never sent twice, so a check (about the cost
    # of a pickle) would be wasted on every call.
    make, _ = _script_function("def make(k):\n    return lambda x, k=k: x + k", "make")
    walks = _Walks(monkeypatch)
    assert not any(dumps_fn(make(i))[1] for i in range(50))
    assert walks.n == 0


def test_a_refused_function_is_not_checked_on_every_call(monkeypatch):
    f, _ = _script_function("SEEN = []\ndef f(x): return len(SEEN)")
    walks = _Walks(monkeypatch)
    for _ in range(300):
        assert not dumps_fn(f)[1]
    assert 1 <= walks.n <= 10  # calls 2, 3, 5, 9, 17, 33, 65, 129, 257


@pytest.mark.parametrize("equal", [False, True])
def test_a_global_rebound_before_every_call_is_not_checked_on_every_call(monkeypatch, equal):
    # `lr *= 0.9` before each submit: the kept pickle goes stale every call. With
    # `equal`, rebound to a new object that pickles the same (the check passes).
    f, ns = _script_function("lr = 0.5\ndef f(x): return x * lr")
    _settled(f)
    walks = _Walks(monkeypatch)
    for i in range(300):
        ns["lr"] = float("0.5") if equal else float(i)
        data, _ = dumps_fn(f)
        assert data == __import__("cloudpickle").dumps(f, protocol=5)
    assert walks.n <= 10


def test_code_is_disassembled_once(monkeypatch):
    f, ns = _script_function("def f(x): return ('disassembled once', x)")
    import dis

    calls = []
    real = dis.get_instructions
    monkeypatch.setattr(dis, "get_instructions", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(40):
        stable._code_is_quiet(f.__code__)
    assert len(calls) == 1


def test_a_call_that_changes_a_function_it_reaches_through_a_tuple_drops_it(tmp_path: Path):
    # The worker watches every function of a kept copy: in a tuple global, a
    # keyword default, a tuple default (a fresh copy per call starts clean).
    script = tmp_path / "reach.py"
    script.write_text(
        textwrap.dedent(
            """
            import polytask as pt
            def step(x):
                return x
            def kw(x):
                return x
            STEPS = (step,)
            def f():
                s = STEPS[0]
                s.calls = getattr(s, "calls", 0) + 1
                return s.calls
            def g(*, h=kw):
                h.calls = getattr(h, "calls", 0) + 1
                return h.calls
            if __name__ == "__main__":
                with pt.Pool(workers=1) as pool:
                    print(*[pool.submit(f).result(60) for _ in range(5)])
                    print(*[pool.submit(g).result(60) for _ in range(5)])
            """
        )
    )
    assert _run_script(script).splitlines() == ["1 1 1 1 1", "1 1 1 1 1"]


def test_the_worker_watches_a_function_in_a_nested_tuple_default():
    import pickle

    d, _ = _script_function("def kw(x):\n    return x\ndef d(x=((kw,),)):\n    return x[0][0]", "d")
    data = _settled(d)
    copy = pickle.loads(data)
    watch = stable.guard(copy)
    assert watch is not None and watch.intact()
    copy()(1)
    assert watch.intact()
    copy().__defaults__ = (2,)
    assert not watch.intact()


def test_the_worker_watches_the_globals_of_a_copy_that_names_no_function():
    # A callee can reach the copy's globals through its caller's frame
    # (``sys._getframe(1).f_globals``): a value rebound or a name added drops it.
    import pickle

    f, _ = _script_function("LIMIT = 1\ndef f(x): return x + LIMIT")
    data = _settled(f)
    for change in (lambda g: g.__setitem__("LIMIT", 2), lambda g: g.__setitem__("extra", 0)):
        copy = pickle.loads(data)
        watch = stable.guard(copy)
        assert watch is not None and watch.intact()
        assert copy(1) == 2 and watch.intact()
        change(copy.__globals__)
        assert not watch.intact()


def test_the_worker_watches_a_copy_that_names_itself():
    import pickle

    f, _ = _script_function("def f(x):\n    return f.__doc__, x")
    copy = pickle.loads(_settled(f))
    watch = stable.guard(copy)
    assert watch is not None and watch.intact()
    copy.__doc__ = "changed by a call"
    assert not watch.intact()


def test_a_callee_that_writes_its_caller_s_globals_drops_the_kept_copy(tmp_path: Path):
    # What a fresh copy per call gives: the name the callee added is gone again.
    (tmp_path / "injector.py").write_text(
        "import sys\ndef inject():\n    sys._getframe(1).f_globals['marker'] = 'set'\n"
    )
    script = tmp_path / "inject.py"
    script.write_text(
        textwrap.dedent(
            """
            import polytask as pt
            import injector
            def f():
                try:
                    seen = marker
                except NameError:
                    seen = None
                injector.inject()
                return seen
            if __name__ == "__main__":
                with pt.Pool(workers=1) as pool:
                    print(*[pool.submit(f).result(60) for _ in range(4)])
            """
        )
    )
    assert _run_script(script) == "None None None None"


class _Counted:
    """Counts how often it is pickled: a pass over a map chunk's items."""

    pickled = 0

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        _Counted.pickled += 1
        return (_Counted, ())


@pytest.mark.parametrize("fork", [False, True], ids=["spawn", "fork"])
def test_a_chunk_of_a_scripts_function_is_pickled_once(
    fork: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A map's chunk carries its function among the arguments of the chunk runner:
    # a script's function makes the call go by value (or as inherited, forked), and
    # the plain pickle tried first, whose result was thrown away, cost a whole
    # second pass over the chunk's items.
    import pickle

    f, _ns = _script_function("def f(x): return x + 1")
    monkeypatch.setattr(sys.modules["__main__"], "f", f, raising=False)
    _Counted.pickled = 0
    _, _, payload = dumps_call(
        len, (f, [_Counted(), 3]), {}, "c", inherited={"f": f} if fork else None
    )
    assert _Counted.pickled == 1
    name, (g, items), kwargs = pickle.loads(payload)
    assert (name, kwargs, g(items[1]), type(items[0])) == ("c", {}, 4, _Counted)
