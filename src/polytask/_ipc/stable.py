"""When a script's function may be pickled once (the by-value pickle cache).

cloudpickle sends a function defined in ``__main__`` by value, with the globals
it reads: 15-20 us in the parent and ~8 us to unpickle in the worker, on every
call, so ``pool.submit(f, x)`` from a script cost 2-4x what the same call of a
module's function costs. For a function whose pickle is made only of things
that cannot change without the parent seeing it, the pickle is made once and
the worker keeps its copy (it is told it may: the ``by_ref`` flag).

"Cannot change unseen" is checked, not assumed: a :class:`Snapshot` lists every
object the pickle was made from and :meth:`Snapshot.holds` compares each by
identity on every call (under 1 us for a function that reads a few atoms:
one ``attrgetter``, one ``itemgetter``, one identity loop). What may be in it:

- the function's code, names, defaults and annotations, where every default
  is an atom (int, str, ...; a tuple of atoms): those cannot change in place;
  ``__kwdefaults__`` and ``__annotations__`` are dicts, compared item by item;
- the globals it reads (present or absent): atoms, modules and builtins that
  cloudpickle sends by name, functions and classes importable by name, and
  other functions of the script that pass the same rules;
- nothing that writes a global (``global x; x = ...``) or reaches globals or
  frames by reflection (``globals()``, ``vars()``, ``exec``, ``__globals__``,
  ``sys._getframe``): the worker's kept copy would carry state from one call
  to the next, where a fresh copy starts from the parent's values each time.

What went by name is checked to be still found under that name: a module
still in ``sys.modules``, an imported function, class or builtin still the
attribute of its module (a monkeypatch, ``importlib.reload`` or a module
dropped from ``sys.modules`` makes a fresh pickle send it by value, or fail).

Two facts outside the function are part of every snapshot in which something
went by name: the loaded modules, by their count and the last one's name
(cloudpickle adds the submodules loaded *now* of the modules the function
reads, so an ``import xml.dom.minidom`` after the first call must reach the
worker, even if as many modules were dropped) and cloudpickle's set of modules
registered to go by value (it decides what goes by name). A pickle of nothing
but atoms and the script's own functions depends on neither: not checked.

The check costs about a cloudpickle (a walk, and a second pickle that proves
the snapshot is of the state the pickle was made from), so it is made from a
function's second call with an unchanged pickle, and ever more rarely after
failures (see :func:`remember`).

Refused (pickled every time, as before): closures, a function with attributes,
mutable globals or defaults (a list, a dict, an instance), bound methods of
objects (``cfg.get``, ``random.random``: they pickle their object), modules
copied by value, classes of the script, pickles over :data:`MAX_BYTES`. A forked
worker never uses this: it gets the script's functions by name (the very
object it inherited), see :mod:`.codec`.
"""

from __future__ import annotations

import sys
import types
import weakref
from collections.abc import Callable
from operator import attrgetter, is_, itemgetter
from typing import Any

__all__ = ["MAX_BYTES", "Guard", "Snapshot", "guard", "lookup", "remember"]

#: A pickle larger than this is not kept (a 100 KB default string in each of many
#: lambdas would otherwise be held by the parent and every worker).
MAX_BYTES = 16 * 1024
_MAX_ENTRIES = 256
#: Nested functions of the script followed (helpers calling helpers).
_MAX_FUNCTIONS = 32
_ATOM_TYPES = frozenset({int, float, complex, str, bytes, bool, type(None)})
_TUPLE_MAX = 64
_GLOBAL_WRITES = frozenset({"STORE_GLOBAL", "DELETE_GLOBAL"})
#: Names through which code reaches a function's globals (or a frame's) without
#: naming the global: a kept copy in the worker could then carry state.
_REFLECTION = frozenset(
    {
        "globals",
        "vars",
        "locals",
        "exec",
        "eval",
        "compile",
        "__import__",
        "__globals__",
        "__builtins__",
        "__dict__",
        "__code__",
        "__defaults__",
        "__kwdefaults__",
        "__closure__",
        "_getframe",
        "currentframe",
        "f_globals",
        "f_locals",
        "f_back",
        "gi_frame",
        "cr_frame",
        "tb_frame",
    }
)
_ABSENT = object()
_BASE_GLOBALS = ("__package__", "__name__", "__path__", "__file__")


_CP: Any = None


def _cloudpickle() -> Any:
    """cloudpickle's module if it has the private names this module relies on."""
    global _CP
    if _CP is None:
        try:
            from cloudpickle import cloudpickle as cp

            cp._extract_code_globals  # noqa: B018
            cp._should_pickle_by_reference  # noqa: B018
            cp._PICKLE_BY_VALUE_MODULES  # noqa: B018
        except (ImportError, AttributeError):  # pragma: no cover - another cloudpickle
            _CP = False
        else:
            _CP = cp
    return _CP or None


#: What a function's pickle takes from the function itself, compared by identity
#: (``__kwdefaults__`` too: a dict, whose items :class:`_Dict` compares besides).
#: One C call (``attrgetter``): a getattr each was a fifth of the check. Not
#: ``__closure__``: read-only, and None for every function kept (a new
#: ``__code__`` must then have no free variables either).
_ATTR_NAMES = (
    "__code__",
    "__defaults__",
    "__kwdefaults__",
    "__name__",
    "__qualname__",
    "__module__",
    "__doc__",
) + (("__type_params__",) if hasattr(types.FunctionType, "__type_params__") else ())
_attrs: Callable[[types.FunctionType], tuple[Any, ...]] = attrgetter(*_ATTR_NAMES)


class _Dict:
    """A dict's keys and values as they were: the same now means equal keys and,
    by identity, the same values (1, 1.0 and True are equal but pickle apart)."""

    __slots__ = ("keys", "values")

    def __init__(self, d: dict[str, Any] | None) -> None:
        self.keys = tuple(d) if d else ()
        self.values = tuple(d.values()) if d else ()

    def same(self, d: dict[str, Any] | None) -> bool:
        if not d:
            return not self.keys
        return (
            len(d) == len(self.keys)
            and all(map(is_, d.values(), self.values))
            and tuple(d) == self.keys
        )


#: :func:`_code_is_quiet` by code object: a script that rebinds a global its
#: function reads before every call makes a new snapshot per call, and the
#: disassembly alone cost 7x the cloudpickle the cache saves.
_QUIET: weakref.WeakKeyDictionary[types.CodeType, bool] = weakref.WeakKeyDictionary()


def _code_is_quiet(code: types.CodeType) -> bool:
    """No global written, no reflection, in ``code`` or the code defined in it."""
    quiet = _QUIET.get(code)
    if quiet is None:
        quiet = _QUIET[code] = _scan_code(code)
    return quiet


def _scan_code(code: types.CodeType) -> bool:
    if not _REFLECTION.isdisjoint(code.co_names):
        return False
    import dis  # only when a script's function is first sent: a 2 ms import

    if any(ins.opname in _GLOBAL_WRITES for ins in dis.get_instructions(code)):
        return False
    return all(_code_is_quiet(c) for c in code.co_consts if isinstance(c, types.CodeType))


def _no_reads(g: dict[str, Any]) -> tuple[Any, ...]:
    return ()


class _FnState:
    """What one by-value function's pickle was made from, laid out for the check
    on every call (:meth:`Snapshot.holds`, C-level loops): the function's
    attributes and the globals it reads that are present, in one tuple compared
    by identity (``expected``, read back by one ``attrgetter`` and one
    ``itemgetter``); the names it reads that are absent, which must still be;
    and the dicts whose items count (keyword defaults, annotations): None where
    there is none, or it was empty and must stay so.
    """

    __slots__ = ("absent", "annotations", "expected", "fn", "kwdefaults", "read", "refs")

    def __init__(self, fn: types.FunctionType, reads: tuple[tuple[str, Any], ...]) -> None:
        # Weak: the snapshot is the value of a dict whose entry goes when the first
        # of these functions dies; a strong reference would keep it forever.
        self.fn = weakref.ref(fn)
        self.absent = tuple(name for name, v in reads if v is _ABSENT)
        names = [name for name, v in reads if v is not _ABSENT]
        values = [v for _, v in reads if v is not _ABSENT]
        if len(names) == 1:  # itemgetter of one name gives the value, not a 1-tuple
            names *= 2
            values *= 2
        self.read: Callable[[dict[str, Any]], tuple[Any, ...]] = (
            itemgetter(*names) if names else _no_reads
        )
        attrs = _attrs(fn)
        # Functions read (helpers, itself) weakly too: their globals hold the key.
        # (``__globals__`` itself is read-only, so it need not be compared.)
        self.refs = tuple(
            len(attrs) + i for i, v in enumerate(values) if type(v) is types.FunctionType
        )
        self.expected = attrs + tuple(
            weakref.ref(v) if type(v) is types.FunctionType else v for v in values
        )
        kwdefaults = fn.__kwdefaults__
        self.kwdefaults = None if kwdefaults is None else _Dict(kwdefaults)
        annotations = fn.__annotations__
        self.annotations = _Dict(annotations) if annotations else None


class _ByName:
    """A module, function, class or builtin cloudpickle sent by name: it still must
    be found under that name (else a fresh pickle sends it by value, or fails)."""

    __slots__ = ("module", "obj", "parts", "qualname", "strong")

    def __init__(self, obj: Any, module: str, qualname: str) -> None:
        # A function weakly, as in _FnState; modules, classes and builtins live in
        # their modules anyway.
        self.strong = type(obj) is not types.FunctionType
        self.obj: Any = obj if self.strong else weakref.ref(obj)
        self.module = module
        self.qualname = qualname
        self.parts = qualname.split(".")

    def holds(self) -> bool:
        obj = self.obj if self.strong else self.obj()
        if type(obj) is types.ModuleType:  # by name while it is in sys.modules
            return obj.__name__ == self.module and self.module in sys.modules
        if obj is None or obj.__module__ != self.module:
            return False
        if type(obj) is not types.BuiltinFunctionType and obj.__qualname__ != self.qualname:
            return False
        found: Any = sys.modules.get(self.module)
        for part in self.parts:
            found = getattr(found, part, _ABSENT)
        return found is obj


def _last_module() -> Any:
    return next(reversed(sys.modules))


class Snapshot:
    """A by-value pickle and everything it was made from (see the module's text)."""

    __slots__ = (
        "__weakref__",
        "by_name",
        "data",
        "fn",
        "functions",
        "last_module",
        "n_modules",
        "probes",
        "registry",
    )

    def __init__(
        self,
        data: bytes,
        functions: list[_FnState],
        by_name: list[_ByName],
        registry: frozenset[str],
    ) -> None:
        self.data = data
        self.functions = functions
        #: The function pickled, weakly (the first of ``functions``).
        self.fn = functions[0].fn
        # What holds() reads of each function, one tuple each (unpacked at once:
        # an attribute read each was a fifth of the check).
        self.probes = tuple(
            (f.fn, f.read, f.expected, f.refs, f.absent, f.kwdefaults, f.annotations)
            for f in functions
        )
        self.by_name = by_name
        self.registry = registry
        # The count alone missed a module deleted and another loaded; a module
        # loaded goes last in the dict, so it also changes the last name.
        self.n_modules = len(sys.modules)
        self.last_module = _last_module()

    def holds(self) -> bool:
        """Whether a fresh pickle now would be :attr:`data` (nothing it read changed)."""
        # The hot path of every call of a kept function: C-level loops, few reads.
        if self.by_name and not self._by_name_holds():
            return False
        for ref, read, expected, refs, absent, kwdefaults, notes in self.probes:
            fn = ref()
            if fn is None or fn.__dict__:
                return False
            g = fn.__globals__
            try:
                now = _attrs(fn) + read(g)
            except KeyError:  # a global it read was deleted
                return False
            if refs:
                expected = _resolved(expected, refs)
            if not all(map(is_, now, expected)):
                return False
            for name in absent:  # usually one: __path__, which __main__ has not
                if name in g:
                    return False
            if kwdefaults is not None and not kwdefaults.same(fn.__kwdefaults__):
                return False
            if notes is None:
                if fn.__annotations__:
                    return False
            elif not notes.same(fn.__annotations__):
                return False
        return True

    def _by_name_holds(self) -> bool:
        """Whether what went by name still would: the loaded modules and
        cloudpickle's registry matter only then (a pickle of nothing but atoms
        and the script's own functions does not depend on them)."""
        modules = sys.modules
        if len(modules) != self.n_modules or next(reversed(modules)) != self.last_module:
            return False
        cp = _CP  # set: a snapshot is made only with cloudpickle's names found
        if not cp or self.registry != cp._PICKLE_BY_VALUE_MODULES:
            return False
        return all(map(_ByName.holds, self.by_name))


def _resolved(expected: tuple[Any, ...], refs: tuple[int, ...]) -> tuple[Any, ...]:
    """``expected`` with the functions it holds weakly (at ``refs``) in their places."""
    out = list(expected)
    for i in refs:
        out[i] = out[i]()
    return tuple(out)


class _Checker:
    """Walks a function and what it reads; :attr:`functions` gets every by-value
    function met. ``ok`` turns False at the first thing that could change unseen."""

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self.functions: dict[int, _FnState] = {}
        self.by_name: dict[int, _ByName] = {}

    def function(self, fn: types.FunctionType) -> bool:
        if id(fn) in self.functions:  # recursion, or a helper read twice
            return True
        if len(self.functions) >= _MAX_FUNCTIONS:
            return False
        if fn.__closure__ or fn.__dict__ or getattr(fn, "__type_params__", None):
            return False
        if type(fn.__globals__) is not dict:  # a subclass may answer a deleted name
            return False
        if not _code_is_quiet(fn.__code__):
            return False
        g = fn.__globals__
        names = sorted(self.cp._extract_code_globals(fn.__code__))
        reads = tuple((name, g.get(name, _ABSENT)) for name in [*names, *_BASE_GLOBALS])
        self.functions[id(fn)] = _FnState(fn, reads)
        values: list[Any] = [v for _, v in reads if v is not _ABSENT]
        values += list(fn.__defaults__ or ())
        values += list((fn.__kwdefaults__ or {}).values())
        values += list(fn.__annotations__.values())
        return all(self.value(v, 0) for v in values)

    def value(self, v: Any, depth: int) -> bool:
        t = type(v)
        if t in _ATOM_TYPES:
            return True
        if t is tuple or t is frozenset:
            return depth < 4 and len(v) <= _TUPLE_MAX and all(self.value(x, depth + 1) for x in v)
        by_reference = self.cp._should_pickle_by_reference
        if t is types.ModuleType:
            if v.__name__ == "__main__" or not by_reference(v):
                return False
            return self._note(v, v.__name__, v.__name__)
        if t is types.BuiltinFunctionType:
            # len, math.sqrt: their __self__ is their module, and they go by name.
            # A bound builtin (cfg.get, random.random) pickles its object: refused.
            owner: Any = getattr(v, "__self__", None)
            return (
                type(owner) is types.ModuleType
                and getattr(owner, v.__name__, None) is v
                and self.value(owner, depth)
                and self._note(v, getattr(v, "__module__", None), getattr(v, "__name__", None))
            )
        if t is types.FunctionType:
            if self._by_name(v):
                return self._note(v, v.__module__, v.__qualname__)
            return self.function(v)
        if isinstance(v, type):
            return (
                v.__module__ != "__main__"
                and self._by_name(v)
                and self._note(v, v.__module__, v.__qualname__)
            )
        return False

    def _by_name(self, v: Any) -> bool:
        try:
            return bool(self.cp._should_pickle_by_reference(v))
        except Exception:  # cloudpickle could not tell: not by name, then
            return False

    def _note(self, v: Any, module: Any, qualname: Any) -> bool:
        """Record that ``v`` went by name (a monkeypatch, a reload or a module
        dropped from sys.modules later makes a fresh pickle send it by value)."""
        if type(module) is not str or type(qualname) is not str:
            return False
        if id(v) not in self.by_name:
            self.by_name[id(v)] = _ByName(v, module, qualname)
        return True


# The parent's entries, by the function's id (a plain dict: this lookup is on
# every call). The entry holds the function weakly and goes when it dies.
_ENTRIES: dict[int, Snapshot] = {}


class _Seen:
    """A function sent by value and not kept (yet): its last pickle, and how many
    checks it failed (see :func:`remember`)."""

    __slots__ = ("data", "failed", "skip")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.failed = 0
        self.skip = 0

    def back_off(self) -> None:
        """One more failed check (refused, or the kept pickle went stale): wait
        twice as many agreeing calls before the next (up to 255)."""
        self.failed = min(self.failed + 1, 9)
        self.skip = (1 << (self.failed - 1)) - 1


#: Functions sent by value and not kept. The check costs about a cloudpickle
#: (walk, then a second pickle), so it is made only for a function seen before
#: whose pickle has not changed since, and ever more rarely after failures:
#: without this a function made per call (``lambda x, k=k: ...``), a refused one
#: (it reads a list) or one whose global is rebound before every call (``lr *=
#: 0.9``) cost 2-6x what no cache costs.
_SEEN: weakref.WeakKeyDictionary[Callable[..., Any], _Seen] = weakref.WeakKeyDictionary()


def lookup(fn: types.FunctionType) -> bytes | None:
    """The kept pickle of ``fn`` if nothing it was made from changed, else None."""
    entry = _ENTRIES.get(id(fn))
    if entry is None:
        return None
    try:
        held = entry.fn() is fn and entry.holds()
    except Exception:  # a module's __getattr__ that raises: a fresh pickle tells
        held = False
    if held:
        return entry.data
    # pop, not del: another thread may have dropped it (or cleared all) meanwhile.
    if _ENTRIES.get(id(fn)) is entry:
        _ENTRIES.pop(id(fn), None)
    if entry.fn() is not fn:  # another function's, at a reused id
        return None
    seen = _SEEN.get(fn)
    if seen is None:
        if len(_SEEN) >= _MAX_ENTRIES:
            _SEEN.clear()
        seen = _SEEN[fn] = _Seen(entry.data)
    seen.data = entry.data
    seen.back_off()
    return None


def remember(fn: types.FunctionType, data: bytes, dumps: Callable[[Any], bytes]) -> bool:
    """Keep ``data`` (``fn``'s fresh by-value pickle, made by ``dumps``) if it passes
    the rules; whether it did. ``dumps`` makes the second pickle that proves the
    snapshot (the caller's own, so both pickles are made alike).

    Checked only from the second call whose pickle equals the one before, and
    after ``n`` failed checks (refused, or gone stale) only after ``2**(n-1) - 1``
    more such calls (at most 255): the check costs about a cloudpickle, and is
    wasted on a function that is sent once or keeps changing.
    """
    if len(data) > MAX_BYTES:
        return False
    seen = _SEEN.get(fn)
    if seen is None:
        if len(_SEEN) >= _MAX_ENTRIES:
            _SEEN.clear()
        _SEEN[fn] = _Seen(data)
        return False
    if seen.data != data:  # changed since the last call: wait for it to settle
        seen.data = data
        return False
    if seen.skip:
        seen.skip -= 1
        return False
    cp = _cloudpickle()
    if cp is None:  # pragma: no cover - another cloudpickle
        return False
    snapshot = _check(cp, fn, data, dumps)
    if snapshot is None:
        seen.back_off()
        return False
    if len(_ENTRIES) >= _MAX_ENTRIES:
        _ENTRIES.clear()
    key = id(fn)
    # The first state is ``fn``'s own; its weak reference drops the entry when
    # ``fn`` dies (only if it is still this entry: the id may be reused).
    snapshot.fn = weakref.ref(fn, lambda _ref: _forget(key, snapshot))
    _ENTRIES[key] = snapshot
    return True


def _forget(key: int, entry: Snapshot) -> None:
    if _ENTRIES.get(key) is entry:
        _ENTRIES.pop(key, None)


def _check(
    cp: Any, fn: types.FunctionType, data: bytes, dumps: Callable[[Any], bytes]
) -> Snapshot | None:
    """A snapshot of what ``data`` (made by ``dumps``) was made from, or None if it
    could change unseen."""
    registry = frozenset(cp._PICKLE_BY_VALUE_MODULES)
    checker = _Checker(cp)
    try:
        if not checker.function(fn):
            return None
        snapshot = Snapshot(
            data, list(checker.functions.values()), list(checker.by_name.values()), registry
        )
        # ``data`` was made before the walk: a global rebound in between (another
        # thread; code the pickling ran) would pair the new state with the old
        # pickle for every later call. A pickle made after the walk, which still
        # holds after it, is the pickle of the state the snapshot describes.
        if dumps(fn) != data or not snapshot.holds():
            return None
    except Exception:  # an object that fails to answer (a hostile __eq__): not kept
        return None
    return snapshot


class Guard:
    """In a worker: what a kept by-value function was unpickled as, to check after
    each call that the call left it so.

    The parent's rules leave only one kind of mutable thing in a kept copy: the
    copied functions themselves and the globals dicts cloudpickle made for them
    (``f.count = 1``, or a library that sets an attribute on the function it is
    given). A fresh copy per call would never show such a change to the next
    call; so a call that made one drops the copy, and the next call unpickles
    afresh. Functions of real modules are not watched: they are the worker's
    own, the same object with or without the cache.

    Watched is what the call can reach: the globals dicts (a callee reaches
    them through frames, ``sys._getframe(1).f_globals``) and the copied
    functions its code can name (in a global, a tuple, a default, an
    annotation; the function itself if it names itself). The function called
    is otherwise held only by the worker's cache: nothing the call runs can
    name it (frames carry code and globals, not the function) short of a walk
    of the collector's referrers, so its attributes are not compared (for a
    function that names no function, that is most of the check).
    """

    __slots__ = ("dicts", "functions")

    def __init__(self, fn: types.FunctionType) -> None:
        functions: list[types.FunctionType] = []
        dicts: dict[int, dict[str, Any]] = {}
        seen: set[int] = set()
        stack: list[types.FunctionType] = []

        def reach(f: types.FunctionType) -> None:
            """Add what ``f``'s code can name: its globals and the functions in
            them, in its defaults, keyword defaults and annotations (tuples too:
            ``STEPS = (step,)``), wherever the parent's rules let a function be."""
            g = f.__globals__
            if id(g) not in dicts:
                dicts[id(g)] = g
                _functions_in(g.values(), stack)
            _functions_in(f.__defaults__ or (), stack)
            _functions_in((f.__kwdefaults__ or {}).values(), stack)
            _functions_in(f.__annotations__.values(), stack)

        reach(fn)
        while stack:
            f = stack.pop()
            if id(f) in seen:
                continue
            seen.add(id(f))
            if _is_real(f):
                continue  # a real module's function, not a copy
            functions.append(f)
            reach(f)
        # Each as it is now, laid out for C-level loops (this runs after every
        # call): a dict's keys and its values by identity; a function's
        # attributes by identity, and the dicts whose items count (None where
        # there is none, or it was empty and must stay so).
        self.dicts = tuple((g, tuple(g), tuple(g.values())) for g in dicts.values())
        self.functions = tuple(
            (
                f,
                _attrs(f),
                None if f.__kwdefaults__ is None else _Dict(f.__kwdefaults__),
                _Dict(f.__annotations__) if f.__annotations__ else None,
            )
            for f in functions
        )

    def intact(self) -> bool:
        """Whether every watched function and globals dict is as unpickled."""
        for g, keys, values in self.dicts:
            # The same keys make both of one length (map stops at the shorter).
            if tuple(g) != keys or not all(map(is_, g.values(), values)):
                return False
        for f, attrs, kwdefaults, notes in self.functions:
            if f.__dict__ or not all(map(is_, _attrs(f), attrs)):
                return False
            if kwdefaults is not None and not kwdefaults.same(f.__kwdefaults__):
                return False
            if notes is None:
                if f.__annotations__:
                    return False
            elif not notes.same(f.__annotations__):
                return False
        return True


def _is_real(f: types.FunctionType) -> bool:
    """Whether ``f`` is a function of a module this process has loaded (not a copy)."""
    return getattr(sys.modules.get(f.__module__), "__dict__", None) is f.__globals__


def _functions_in(values: Any, out: list[types.FunctionType]) -> None:
    """Add to ``out`` the functions among ``values`` and in their tuples and
    frozensets (the only containers a kept function may read)."""
    for v in values:
        t = type(v)
        if t is types.FunctionType:
            out.append(v)
        elif t is tuple or t is frozenset:
            _functions_in(v, out)


def guard(fn: Any) -> Guard | None:
    """A :class:`Guard` for a by-value function the worker keeps; None for anything
    else (a function of a real module, a builtin: the worker's own objects)."""
    if type(fn) is not types.FunctionType or _is_real(fn):
        return None
    return Guard(fn)
