"""Pickling of functions, arguments, results and exceptions across processes.

The fast path is the C pickler (protocol 5). cloudpickle is used only where it
is needed: lambdas, closures, and anything defined in ``__main__`` (the worker
has a different ``__main__``, so such objects must travel by value). Whatever
fails to pickle is reported as :class:`SerializationError` naming the culprit.

This is the one place that rule lives: tasks, process channels and FIFOs all
pickle through it. A hot path that pickles by itself (a channel's put) keeps to
it with :func:`by_reference`: a plain pickle that passes it is what
:func:`dumps` would have returned.
"""

from __future__ import annotations

import io
import pickle
import sys
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._core.backend import fn_name
from .._core.errors import RemoteError, RemoteTraceback, SerializationError
from . import stable as _stable

__all__ = [
    "ATOMS",
    "MAIN_REF",
    "PROTOCOL",
    "STACK_GLOBAL",
    "by_reference",
    "describe",
    "dumps",
    "dumps_buffers",
    "dumps_call",
    "dumps_exception",
    "loads",
    "loads_exception",
]

PROTOCOL = 5
#: A plain pickle holding these bytes names something in ``__main__`` (see
#: :func:`by_reference`; a string that merely contains them costs a needless
#: cloudpickle, never a wrong result).
MAIN_REF = b"__main__"
_MAIN = MAIN_REF
#: The STACK_GLOBAL opcode: a protocol-5 pickle names a module (``__main__`` or
#: any) only with it. ``STACK_GLOBAL not in data`` is a memchr, ten times cheaper
#: than the search for ``MAIN_REF``, and settles most pickles at once (the hot
#: paths test it first: put_many lost a third of its speed to the search alone).
STACK_GLOBAL = pickle.STACK_GLOBAL[0]
#: Types whose plain pickle never refers to a module: a hot path may skip the
#: :func:`by_reference` check for them.
ATOMS: frozenset[type] = frozenset({int, float, complex, str, bytes, bool, type(None)})


def _cloudpickle_dumps(obj: Any) -> bytes:
    import cloudpickle

    data: bytes = cloudpickle.dumps(obj, protocol=PROTOCOL)
    return data


def by_reference(data: bytes) -> bool:
    """Whether a plain pickle ``data`` may go to another process as it is: it names
    nothing in ``__main__``, which is another module there. Otherwise :func:`dumps`
    sends the object by value (cloudpickle)."""
    return STACK_GLOBAL not in data or _MAIN not in data  # the hot paths inline this


def dumps(obj: Any, inherited: Mapping[str, Any] | None = None, names_main: bool = False) -> bytes:
    """Pickle ``obj`` for another process; raises the pickler's own error on failure.

    ``inherited``: the ``__main__`` objects the receiver holds already (a forked
    worker); those go by reference, not by value. ``names_main``: the caller
    knows ``obj`` holds something of ``__main__``, so the plain pickle, which
    would only be thrown away, is skipped (a map chunk of a script's function:
    its items were pickled twice).
    """
    if names_main:
        data = _dumps_inherited(obj, inherited) if inherited is not None else None
        return data if data is not None else _cloudpickle_dumps(obj)
    try:
        data = pickle.dumps(obj, protocol=PROTOCOL)
    except Exception:
        return _cloudpickle_dumps(obj)
    if not by_reference(data):
        if inherited is not None:
            by_name = _dumps_inherited(obj, inherited)
            if by_name is not None:
                return by_name
        return _cloudpickle_dumps(obj)
    return data


def dumps_buffers(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """:func:`dumps` with large buffers out of band (PEP 574): ``(pickle, buffers)``,
    for :func:`loads` ``(pickle, buffers=...)``. Raises the pickler's own error."""
    bufs: list[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=bufs.append)
    except Exception:
        pass
    else:
        if by_reference(data):
            return data, bufs
    import cloudpickle

    bufs = []
    data = cloudpickle.dumps(obj, protocol=PROTOCOL, buffer_callback=bufs.append)
    return data, bufs


# Functions pickled by reference, by the function object: a module-level function
# pickles to the same bytes every time, so a hot loop of spawn() pickles it once.
_BY_REF: dict[Any, bytes] = {}
_BY_REF_MAX = 512


def dumps_fn(fn: Callable[..., Any], by_value_cache: bool = True) -> tuple[bytes, bool]:
    """Pickle a function; the flag says the worker may cache it by its bytes: it went
    by reference, or by value with nothing in it that can change unseen (a script's
    function that passes :mod:`.stable`'s rules, when ``by_value_cache``)."""
    try:
        cached = _BY_REF.get(fn)
    except TypeError:  # an unhashable callable object
        cached = None
    if cached is not None:
        return cached, True
    plain_py = by_value_cache and type(fn) is types.FunctionType
    if plain_py:
        kept = _stable.lookup(fn)  # type: ignore[arg-type]
        if kept is not None:
            return kept, True
    data, by_ref = _dumps_fn(fn)
    # Only a plain function is the same thing every time it is unpickled: a bound
    # method, a partial or a callable object carries state, which a worker must not
    # cache across calls.
    if by_ref and _is_plain_function(fn):
        if len(_BY_REF) >= _BY_REF_MAX:
            _BY_REF.clear()
        _BY_REF[fn] = data
        return data, True
    if plain_py and not by_ref:
        return data, _stable.remember(fn, data, _cloudpickle_dumps)  # type: ignore[arg-type]
    return data, False


def _is_plain_function(fn: Any) -> bool:
    # Only functions and builtins: their pickle is their qualified name, which cannot
    # change. A callable instance pickles its state, which may.
    return isinstance(fn, (types.FunctionType, types.BuiltinFunctionType))


def _dumps_fn(fn: Callable[..., Any]) -> tuple[bytes, bool]:
    try:
        data = pickle.dumps(fn, protocol=PROTOCOL)
    except Exception:
        return _cloudpickle_dumps(fn), False
    if not by_reference(data):
        return _cloudpickle_dumps(fn), False
    return data, True


class _NotInherited(Exception):
    pass


#: The ``__main__`` objects sent to forked workers as references, by id, kept alive:
#: a worker forked after the reference was made finds the very object here (its
#: copy of this dict), whatever its name is bound to by then.
_SENT: dict[int, Any] = {}
_SENT_MAX = 10_000


def _inherited(qualname: str, ident: int) -> Any:
    """In a forked worker: the caller's object ``ident`` (see :class:`_InheritedPickler`)."""
    obj = _SENT.get(ident)
    if obj is None:
        # Forked before the reference was made: the object existed at the fork
        # (the parent checked), at the same address, under this name.
        main = sys.modules.get("__main__")
        obj = main
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
        if obj is None or id(obj) != ident:
            raise pickle.UnpicklingError(
                f"{qualname!r} of the caller's __main__ is not the object this worker "
                "inherited (rebound after the worker was forked)"
            )
    return obj


class _InheritedPickler(pickle.Pickler):
    """Pickles ``__main__`` functions and classes as references to the very object
    when the receiver inherited it (a forked worker: its memory is the parent's
    copy at the fork), so a function of the caller's script does not travel by
    value with the globals it uses, as with multiprocessing's fork. The
    reference is the object's id: exact even if the name is rebound later."""

    def __init__(self, file: io.BytesIO, main: Mapping[str, Any]) -> None:
        super().__init__(file, protocol=PROTOCOL)
        self._main = main

    def reducer_override(self, obj: Any) -> Any:
        if getattr(obj, "__module__", None) == "__main__" and isinstance(
            obj, (type, types.FunctionType)
        ):
            name = obj.__qualname__
            if "<" in name or self._main.get(name.partition(".")[0]) is None:
                raise _NotInherited(name)
            owner = self._main[name.partition(".")[0]]
            for part in name.split(".")[1:]:
                owner = getattr(owner, part, None)
            if owner is not obj:
                raise _NotInherited(name)
            if id(obj) not in _SENT:
                if len(_SENT) >= _SENT_MAX:
                    raise _NotInherited(name)
                _SENT[id(obj)] = obj
            return _inherited, (name, id(obj))
        return NotImplemented


def _dumps_inherited(obj: Any, main: Mapping[str, Any]) -> bytes | None:
    """A pickle of ``obj`` whose ``__main__`` objects are references to objects in
    ``main``; None if it names another (it must then travel by value)."""
    f = io.BytesIO()
    try:
        _InheritedPickler(f, main).dump(obj)
    except Exception:
        return None
    data = f.getvalue()
    # Something of __main__ went by name without the check (an object whose
    # __reduce__ returns a global's name): by value, then.
    return data if by_reference(data) else None


loads = pickle.loads


def describe(obj: Any) -> str:
    """A short description of an object for error messages: its type and a clipped repr."""
    try:
        text = repr(obj)
    except Exception:
        text = "<unrepresentable>"
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(obj).__module__}.{type(obj).__qualname__} {text}"


def dumps_call(
    fn: Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    name: str = "",
    inherited: Mapping[str, Any] | None = None,
    keep_by_value: bool = True,
) -> tuple[bytes, bool, bytes]:
    """Pickle a call for a worker: ``(fn bytes, fn cacheable by the worker?, payload)``.

    The payload is ``(name, args, kwargs)``. ``inherited``: the ``__main__``
    objects the worker holds already (forked workers); those go by reference.
    ``keep_by_value``: a script's function may be kept by the worker when
    nothing in it can change unseen (:mod:`.stable`); False where the worker
    cannot watch its copy (threads of a cluster worker share it).

    Raises :class:`SerializationError` naming the function or the argument that
    could not be pickled, and why.
    """
    try:
        by_name = None
        if inherited is not None and getattr(fn, "__module__", None) == "__main__":
            by_name = _dumps_inherited(fn, inherited)
        if by_name is not None:
            # By name, but not cached by bytes in the worker: a later worker may be
            # forked after the name was bound to another function.
            fn_bytes, by_ref = by_name, False
        else:
            # A forked worker must get the very object it inherited, by name, or
            # else a fresh copy: never a copy kept from an earlier call.
            fn_bytes, by_ref = dumps_fn(fn, by_value_cache=keep_by_value and inherited is None)
    except Exception as exc:
        raise SerializationError(
            f"the function {fn_name(fn)!r} cannot be pickled for the process backend: "
            f"{type(exc).__name__}: {exc}. Define it at module level, or use backend='thread'."
        ) from exc
    call = (name, tuple(args), dict(kwargs))
    try:
        payload = dumps(call, inherited, any(map(_of_main, args)))
    except Exception as exc:
        raise _argument_error(fn, args, kwargs, exc) from exc
    return fn_bytes, by_ref, payload


def _of_main(arg: Any) -> bool:
    """Whether ``arg`` is a function or class of ``__main__`` (which a plain pickle
    names, so the call goes by value or as inherited): a map's chunk carries the
    map's function among its arguments."""
    return (type(arg) is types.FunctionType or isinstance(arg, type)) and (
        arg.__module__ == "__main__"
    )


def _argument_error(
    fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any], exc: Exception
) -> SerializationError:
    culprit = "an argument"
    for i, arg in enumerate(args):
        try:
            dumps(arg)
        except Exception as e:
            culprit, exc = f"argument {i + 1} ({describe(arg)})", e
            break
    else:
        for key, arg in kwargs.items():
            try:
                dumps(arg)
            except Exception as e:
                culprit, exc = f"keyword argument {key!r} ({describe(arg)})", e
                break
    return SerializationError(
        f"{culprit} of {fn_name(fn)!r} cannot be pickled to send to a worker process: "
        f"{type(exc).__name__}: {exc}. Pass a picklable value (or create the object inside "
        "the task), or use backend='thread'."
    )


def dumps_exception(exc: BaseException) -> tuple[bool, bytes]:
    """Pickle an exception raised by a task, with its formatted traceback.

    Returns ``(True, pickle of (exc, tb))`` when the exception survives a round
    trip, else ``(False, pickle of (type name, repr, tb, why))`` so the parent
    can raise a :class:`RemoteError` carrying the same facts.
    """
    tb = "".join(traceback.format_exception(exc))
    try:
        data = dumps((exc, tb))
        pickle.loads(data)  # an exception that pickles may still fail to unpickle
        return True, data
    except Exception as why:
        try:
            text = repr(exc)
        except Exception:
            text = f"<{type(exc).__name__} with an unrepresentable value>"
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        return False, pickle.dumps((name, text, tb, f"{type(why).__name__}: {why}"), PROTOCOL)


def loads_exception(ok: bool, data: bytes) -> BaseException:
    """Rebuild what :func:`dumps_exception` made, with the remote traceback as ``__cause__``."""
    if ok:
        try:
            exc, tb = pickle.loads(data)
        except Exception as why:  # pragma: no cover - checked in the worker already
            return RemoteError(f"a task's exception could not be unpickled: {why!r}")
        exc.__cause__ = RemoteTraceback(tb)
        return exc  # type: ignore[no-any-return]
    name, text, tb, reason = pickle.loads(data)
    err = RemoteError(
        f"the task raised {text} ({name}), which could not be sent back from the worker "
        f"process ({reason}); its traceback is attached",
        type_name=name,
        traceback_text=tb,
    )
    err.__cause__ = RemoteTraceback(tb)
    return err
