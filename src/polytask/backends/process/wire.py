"""The process backend's wire protocol: frames, without any I/O.

Parent -> worker (request)::

    | task id u64 | kind u8 | fn length u32 | payload length u32 | fn bytes | payload |

Worker -> parent (response)::

    | task id u64 | status u8 | payload length u32 | payload |

Both sides read with one large ``os.read`` and feed what they got to a
:class:`FrameDecoder`, which returns every complete frame and keeps the rest:
one system call per wake-up however many frames arrived, and no blocking on a
half-written frame.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "REQUEST",
    "RESPONSE",
    "FrameDecoder",
    "encode_request",
    "encode_response",
]

REQUEST: Final = struct.Struct("<QBII")
RESPONSE: Final = struct.Struct("<QBI")

# request kinds
K_RUN: Final = 1  # the function travels by value: unpickle it every time
K_RUN_REF: Final = 4  # the function travels by reference: the worker may cache it
K_INIT: Final = 2
# (3 was K_EXIT: a worker exits when its request pipe closes, so none is sent.)

#: Or-ed into a request's kind: after this task's result, poll for the next
#: request for a short while before sleeping in read (see _worker.serve). The
#: parent sets it only while the busy workers and the caller fit on the cores.
F_SPIN: Final = 0x80

# response statuses
S_OK: Final = 0  # payload: the pickled result
S_ERROR: Final = 1  # payload: pickled (exception, traceback text)
S_ERROR_TEXT: Final = 2  # payload: pickled (type name, repr, traceback text, why)
S_BAD_RESULT: Final = 3  # payload: pickled message: the result could not be pickled
S_BAD_CALL: Final = 4  # payload: pickled message: the call could not be unpickled
S_INIT_FAILED: Final = 5  # payload: like S_ERROR_TEXT, for the initializer
S_READY: Final = 6  # no payload: the worker finished its start-up and initializer

#: Or-ed into a status: the worker exits after this response (it asked to be
#: recycled, e.g. it grew past a memory limit); send it no more tasks.
F_RETIRE: Final = 0x80

MAX_PART: Final = 0xFFFF_FFFF


def encode_request(task_id: int, kind: int, fn: bytes, payload: bytes) -> bytes:
    if len(fn) > MAX_PART or len(payload) > MAX_PART:
        raise OverflowError("a task's function or arguments pickle to more than 4 GiB")
    return b"".join((REQUEST.pack(task_id, kind, len(fn), len(payload)), fn, payload))


def encode_response(task_id: int, status: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PART:
        raise OverflowError("a task's result pickles to more than 4 GiB")
    return RESPONSE.pack(task_id, status, len(payload)) + payload


class FrameDecoder:
    """Split a byte stream into frames.

    ``feed(data)`` returns the list of complete frames as ``(header, body)``,
    where ``header`` is the unpacked struct tuple and ``body`` the bytes that
    follow (for requests, the fn bytes and payload concatenated; split them
    with the lengths in the header).
    """

    __slots__ = ("_buf", "_header", "_lengths")

    def __init__(self, header: struct.Struct) -> None:
        self._header = header
        self._buf = bytearray()
        # Where the body length is in the header tuple: the sum of fields 2.. for
        # a request (fn length + payload length), field 2 for a response.
        self._lengths = slice(2, None)

    def feed(self, data: bytes) -> list[tuple[tuple[int, ...], bytes]]:
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        hsize = self._header.size
        frames: list[tuple[tuple[int, ...], bytes]] = []
        pos = 0
        end = len(view)
        while end - pos >= hsize:
            header = self._header.unpack_from(view, pos)
            blen = sum(header[self._lengths])
            if end - pos - hsize < blen:
                break
            start = pos + hsize
            frames.append((header, bytes(view[start : start + blen])))
            pos = start + blen
        if view is buf:
            del buf[:pos]
        elif pos < end:
            buf += view[pos:]
        return frames
