/* polytask._ipc._lane: the process channel's two hot paths in C.
 *
 * A Lane is one handle's view of a channel ring (see ring.py for the layout
 * and the protocol). Its put() and take() do exactly what the inlined fast
 * paths of ProcessChannel.put and .get do in Python -- the same words, the
 * same stores in the same order -- and give up (returning an int) on
 * everything else, which the Python code then does under the lock: wrapping,
 * a full ring, sleepers to wake, a closed ring, big frames, a dead holder.
 * Why C: at a million items a second, the Python version's ctypes calls to
 * the mutex and its bytecode were two thirds of a put's cost.
 *
 * Results of put(data, w0) and take():
 *   0 (put)        the frame is in the ring and published;
 *   bytes (take)   the payload of the oldest frame, now claimed and released;
 *   -1             nothing done, no lock held: take the general path;
 *   > 0            pthread_mutex_trylock's error (EBUSY after BUSY_TRIES tries),
 *                  the lock left as it left it
 *                  (EOWNERDEAD: held, the caller repairs), nothing done;
 *   -2 (take)      frames are held by this handle (the `held` flag).
 */
#define _GNU_SOURCE /* gettid */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdint.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

/* Word indexes, offsets and codes: ring.py's and channel.py's (LAYOUT: checked there). */
#define TAIL 8
#define NRES 9
#define WAIT_DATA 10
#define HEAD 16
#define READ 17
#define NCLAIM 18
#define WAIT_SPACE 19
#define P_MUTEX_OFFSET 256
#define C_MUTEX_OFFSET 320
#define DATA_OFFSET 4096
#define HEADER 16
#define ALIGN 32
#define SMALL (64 * 1024)
#define READY 2
#define K_PICKLE 0
#define PAD 5

/* Retries of a busy mutex before giving up to the Python path's wait: its holder
 * keeps it for a few dozen nanoseconds (one of these paths), so with several
 * writers on one ring the next try usually wins; a holder that was preempted is
 * waited for by the Python path, which sleeps. */
#define BUSY_TRIES 64

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int
lock_soon(pthread_mutex_t *m)
{
    int rc = pthread_mutex_trylock(m);
    for (int i = 0; rc == EBUSY && i < BUSY_TRIES; i++) {
        cpu_relax();
        rc = pthread_mutex_trylock(m);
    }
    return rc;
}

typedef struct {
    PyObject_HEAD
    char *base;
    uint64_t *w;
    pthread_mutex_t *pm;
    pthread_mutex_t *cm;
    uint64_t mask;
    uint64_t maxsize;
    uint64_t limit;        /* put's fast path stops here (ProcessChannel._set_limit) */
    uint64_t claimed_seen; /* the readers' count at that look, for maxsize */
    uint64_t tail_seen;    /* take's: frames before it stay published */
    int held;
} Lane;

static int
Lane_init(Lane *self, PyObject *args, PyObject *kwds)
{
    unsigned long long base, capacity, maxsize;
    static char *kwlist[] = {"base", "capacity", "maxsize", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KKK", kwlist, &base, &capacity, &maxsize))
        return -1;
    if (base == 0 || capacity == 0 || (capacity & (capacity - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError, "Lane(base, capacity, maxsize): a mapped ring of a power-of-two capacity");
        return -1;
    }
    self->base = (char *)(uintptr_t)base;
    self->w = (uint64_t *)self->base;
    self->pm = (pthread_mutex_t *)(self->base + P_MUTEX_OFFSET);
    self->cm = (pthread_mutex_t *)(self->base + C_MUTEX_OFFSET);
    self->mask = capacity - 1;
    self->maxsize = maxsize;
    self->limit = 0;
    self->claimed_seen = 0;
    self->tail_seen = 0;
    self->held = 0;
    return 0;
}

static inline uint64_t
frame_size(Py_ssize_t n)
{
    return ((uint64_t)n + HEADER + ALIGN - 1) & ~(uint64_t)(ALIGN - 1);
}

/* Whether the fast path may write a frame of ``size`` at ``pos`` (P lock held):
 * before put's limit, no reader asleep nor the ring closed (both in WAIT_DATA),
 * and room under maxsize at the last look. */
static inline int
fits(Lane *self, uint64_t pos, uint64_t size, uint64_t nres)
{
    return size <= SMALL && pos + size <= self->limit &&
           !__atomic_load_n(&self->w[WAIT_DATA], __ATOMIC_RELAXED) &&
           !(self->maxsize && nres - self->claimed_seen >= self->maxsize);
}

/* Write a small pickle's frame at ``pos`` and publish it (P lock held; fits()). */
static inline void
write_frame(Lane *self, uint64_t pos, uint64_t w0, PyObject *data, uint64_t size)
{
    uint64_t *w = self->w;
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    char *p = self->base + DATA_OFFSET + (pos & self->mask);
    uint64_t hdr[2] = {w0, size | ((uint64_t)n << 32)};
    memcpy(p, hdr, HEADER);
    memcpy(p + HEADER, PyBytes_AS_STRING(data), (size_t)n);
    w[NRES] += 1;
    /* Publishes the frame: readers load the tail with acquire, under the other lock. */
    __atomic_store_n(&w[TAIL], pos + size, __ATOMIC_RELEASE);
}

/* Whether a frame's header words say: a small pickle, written in full (READY, kind
 * K_PICKLE, no out-of-band buffers), which get's fast path copies out. */
static inline int
small_pickle(const uint64_t hdr[2])
{
    return (hdr[0] & 0xFFFFFFFFu) == (READY | (K_PICKLE << 8)) && (hdr[1] & 0xFFFFFFFFu) <= SMALL;
}

/* A Lane made by Lane.__new__ alone points nowhere: an error, not a crash. */
static int
not_ready(Lane *self)
{
    if (self->w != NULL)
        return 0;
    PyErr_SetString(PyExc_ValueError, "Lane: not initialised (Lane(base, capacity, maxsize))");
    return 1;
}

/* put(data: bytes, w0: int) -> int: a small pickle's frame, by the fast path. */
static PyObject *
Lane_put(Lane *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "Lane.put(data: bytes, w0: int)");
        return NULL;
    }
    if (not_ready(self))
        return NULL;
    uint64_t w0 = PyLong_AsUnsignedLongLong(args[1]);
    if (w0 == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    uint64_t size = frame_size(PyBytes_GET_SIZE(args[0]));
    if (size > SMALL)
        return PyLong_FromLong(-1);
    int rc = lock_soon(self->pm);
    if (rc)
        return PyLong_FromLong(rc);
    uint64_t pos = self->w[TAIL]; /* ours: written only under this lock */
    if (!fits(self, pos, size, self->w[NRES])) {
        pthread_mutex_unlock(self->pm);
        return PyLong_FromLong(-1);
    }
    write_frame(self, pos, w0, args[0], size);
    pthread_mutex_unlock(self->pm);
    return PyLong_FromLong(0);
}

/* take() -> bytes | int: the oldest frame's payload, if it is a small ready pickle. */
static PyObject *
Lane_take(Lane *self, PyObject *Py_UNUSED(ignored))
{
    if (not_ready(self))
        return NULL;
    if (self->held)
        return PyLong_FromLong(-2);
    int rc = lock_soon(self->cm);
    if (rc)
        return PyLong_FromLong(rc);
    uint64_t *w = self->w;
    uint64_t read = w[READ];
    if (read >= self->tail_seen)
        self->tail_seen = __atomic_load_n(&w[TAIL], __ATOMIC_ACQUIRE);
    if (read == self->tail_seen) {
        pthread_mutex_unlock(self->cm);
        return PyLong_FromLong(-1);
    }
    char *p = self->base + DATA_OFFSET + (read & self->mask);
    uint64_t hdr[2];
    memcpy(hdr, p, HEADER);
    uint64_t size = hdr[1] & 0xFFFFFFFFu;
    if (!small_pickle(hdr) || __atomic_load_n(&w[WAIT_SPACE], __ATOMIC_RELAXED) ||
        w[HEAD] != read) {
        pthread_mutex_unlock(self->cm);
        return PyLong_FromLong(-1);
    }
    PyObject *out = PyBytes_FromStringAndSize(p + HEADER, (Py_ssize_t)(hdr[1] >> 32));
    if (out == NULL) {
        pthread_mutex_unlock(self->cm);
        return NULL;
    }
    w[READ] = read + size; /* READ first, then HEAD (ring.py's order) */
    __atomic_store_n(&w[HEAD], read + size, __ATOMIC_RELEASE);
    w[NCLAIM] += 1;
    pthread_mutex_unlock(self->cm);
    return out;
}

/* write(pending, i, w0) -> int, P lock held by the caller: put_many's frames.
 *
 * Writes pending[i], pending[i + 1], ... (each a (kind, payload) tuple) while
 * each is a small pickle the fast path takes, publishing each frame as put()
 * does; returns the index of the first one it left (len(pending) if none). */
static PyObject *
Lane_write(Lane *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "Lane.write(pending: list, i: int, w0: int)");
        return NULL;
    }
    if (not_ready(self))
        return NULL;
    PyObject *pending = args[0];
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    uint64_t w0 = PyLong_AsUnsignedLongLong(args[2]);
    if (w0 == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    uint64_t pos = self->w[TAIL];
    Py_ssize_t count = PyList_GET_SIZE(pending);
    for (; i >= 0 && i < count; i++) {
        PyObject *entry = PyList_GET_ITEM(pending, i);
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2)
            break;
        PyObject *kind = PyTuple_GET_ITEM(entry, 0);
        PyObject *data = PyTuple_GET_ITEM(entry, 1);
        if (!PyLong_CheckExact(kind) || !PyBytes_CheckExact(data))
            break;
        long k = PyLong_AsLong(kind);
        if (k != K_PICKLE) {
            PyErr_Clear(); /* (an int past a long: not a pickle either) */
            break;
        }
        uint64_t size = frame_size(PyBytes_GET_SIZE(data));
        if (!fits(self, pos, size, self->w[NRES]))
            break;
        write_frame(self, pos, w0, data, size);
        pos += size;
    }
    return PyLong_FromSsize_t(i);
}

/* take_many(limit) -> list[bytes], C lock held by the caller: get_many's frames.
 *
 * Ring.take_many's common case: with nothing claimed before the read position,
 * the small ready pickles (and pads) in a row, up to ``limit`` items; stops at
 * anything else, which Ring.take_many then takes. Call wake_writers after. */
static PyObject *
Lane_take_many(Lane *self, PyObject *arg)
{
    if (not_ready(self))
        return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    uint64_t *w = self->w;
    uint64_t read = w[READ];
    if (w[HEAD] != read)
        return out; /* frames claimed before: Ring.take_many's way */
    uint64_t tail = __atomic_load_n(&w[TAIL], __ATOMIC_ACQUIRE);
    Py_ssize_t claimed = 0;
    while (read != tail && claimed < limit) {
        char *p = self->base + DATA_OFFSET + (read & self->mask);
        uint64_t hdr[2];
        memcpy(hdr, p, HEADER);
        uint64_t size = hdr[1] & 0xFFFFFFFFu;
        if (small_pickle(hdr)) {
            PyObject *data = PyBytes_FromStringAndSize(p + HEADER, (Py_ssize_t)(hdr[1] >> 32));
            if (data == NULL || PyList_Append(out, data) < 0) {
                /* Out of memory: this frame stays in the ring; the ones taken are
                 * returned (claimed: they must not be lost), else the error. */
                Py_XDECREF(data);
                break;
            }
            Py_DECREF(data);
            claimed++;
            read += size;
        } else if ((hdr[0] & 0xFF) == PAD) {
            read += size;
        } else {
            break;
        }
    }
    w[READ] = read;
    w[NCLAIM] += (uint64_t)claimed;
    __atomic_store_n(&w[HEAD], read, __ATOMIC_RELEASE);
    if (PyErr_Occurred()) {
        if (claimed == 0) {
            Py_DECREF(out);
            return NULL;
        }
        PyErr_Clear();
    }
    return out;
}

static PyObject *
Lane_look(Lane *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* look(limit, claimed_seen): put's fresh look at the ring (ProcessChannel._set_limit). */
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "Lane.look(limit: int, claimed_seen: int)");
        return NULL;
    }
    uint64_t limit = PyLong_AsUnsignedLongLong(args[0]);
    if (limit == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    uint64_t claimed = PyLong_AsUnsignedLongLong(args[1]);
    if (claimed == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    self->limit = limit;
    self->claimed_seen = claimed;
    Py_RETURN_NONE;
}

static PyObject *
Lane_hold(Lane *self, PyObject *arg)
{
    /* hold(flag): while true, take() returns -2 (frames held by this handle come first). */
    int flag = PyObject_IsTrue(arg);
    if (flag < 0)
        return NULL;
    self->held = flag;
    Py_RETURN_NONE;
}

static PyMethodDef Lane_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Lane_put, METH_FASTCALL,
     "put(data, w0) -> int: a small pickle's frame by the fast path (0), or why not."},
    {"take", (PyCFunction)Lane_take, METH_NOARGS,
     "take() -> bytes | int: the oldest small pickle's payload, or why not."},
    {"write", (PyCFunction)(void (*)(void))Lane_write, METH_FASTCALL,
     "write(pending, i, w0) -> int: put_many's small pickles from i on (P lock held)."},
    {"take_many", (PyCFunction)Lane_take_many, METH_O,
     "take_many(limit) -> list: get_many's small pickles in a row (C lock held)."},
    {"look", (PyCFunction)(void (*)(void))Lane_look, METH_FASTCALL,
     "look(limit, claimed_seen): where put's fast path stops."},
    {"hold", (PyCFunction)Lane_hold, METH_O,
     "hold(flag): take() gives -2 while this handle holds frames."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "polytask._ipc._lane.Lane",
    .tp_doc = "One handle's fast paths into a channel ring (see _ipc/channel.py).",
    .tp_basicsize = sizeof(Lane),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_methods = Lane_methods,
};

/* let_go(base, owed): unlock the ring's mutexes this thread holds (see
 * channel._let_go). One C call, so that an interrupt cannot land half-way:
 * a signal handler runs only after it returns. glibc keeps a robust mutex's
 * owner's thread id in __data.__owner; while a holder that found the previous
 * one dead (EOWNERDEAD) has not marked it consistent, __owner is
 * PTHREAD_MUTEX_INCONSISTENT and the futex word __lock has the holder's tid.
 * Such a mutex is noted in the set ``owed`` as (address, thread ident): its
 * repair is owed (see channel._owed); then marked consistent (unlocked as it
 * was, it would be unusable for good: ENOTRECOVERABLE) and unlocked. */
#define MUTEX_INCONSISTENT 0x7FFFFFFF /* glibc's PTHREAD_MUTEX_INCONSISTENT */

/* The calling thread's id, kept per thread: gettid is a system call, and
 * let_go_mutex runs at the end of every critical section of the process
 * primitives. A fork's child (one thread, a new id) forgets it (pthread_atfork). */
static __thread int lane_tid;

static void
lane_forget_tid(void)
{
    lane_tid = 0;
}

static inline int
my_tid(void)
{
    int t = lane_tid;
    if (t == 0)
        t = lane_tid = (int)gettid();
    return t;
}
#ifndef FUTEX_TID_MASK
#define FUTEX_TID_MASK 0x3FFFFFFF
#endif

static PyObject *
lane_let_go(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PySet_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "let_go(base, owed): an address and a set");
        return NULL;
    }
    unsigned long long base = PyLong_AsUnsignedLongLong(args[0]);
    if (base == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (base == 0) {
        PyErr_SetString(PyExc_ValueError, "let_go(base, owed): a mapped ring");
        return NULL;
    }
    int me = my_tid();
    int freed = 0, failed = 0;
    unsigned long long offs[2] = {P_MUTEX_OFFSET, C_MUTEX_OFFSET};
    for (int k = 0; k < 2; k++) {
        pthread_mutex_t *m = (pthread_mutex_t *)(uintptr_t)(base + offs[k]);
        int owner = __atomic_load_n(&m->__data.__owner, __ATOMIC_RELAXED);
        if (owner == me) {
            pthread_mutex_unlock(m);
            freed++;
        } else if (owner == MUTEX_INCONSISTENT &&
                   (int)(__atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED) &
                         FUTEX_TID_MASK) == me) {
            /* After a failure an exception is set: no more Python calls, but the
               mutex is still made consistent and let go. */
            if (!failed) {
                PyObject *key =
                    Py_BuildValue("(Kk)", base + offs[k], PyThread_get_thread_ident());
                if (key == NULL || PySet_Add(args[1], key) < 0)
                    failed = 1;
                Py_XDECREF(key);
            }
            pthread_mutex_consistent(m);
            pthread_mutex_unlock(m);
            freed++;
        }
    }
    if (failed)
        return NULL;
    return PyLong_FromLong(freed);
}

/* let_go_mutex(address): unlock the robust mutex at ``address`` if this thread
 * holds it (one marked inconsistent is made consistent first: the process
 * primitives keep their guarded words harmless at every step); 1 if it did,
 * else 0. The process primitives' (sync.py) exception handlers and finally
 * clauses: one C call, so an interrupt cannot keep it (see let_go). */
static PyObject *
lane_let_go_mutex(PyObject *Py_UNUSED(module), PyObject *arg)
{
    unsigned long long addr = PyLong_AsUnsignedLongLong(arg);
    if (addr == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (addr == 0) {
        PyErr_SetString(PyExc_ValueError, "let_go_mutex(address): a mapped mutex");
        return NULL;
    }
    pthread_mutex_t *m = (pthread_mutex_t *)(uintptr_t)addr;
    int me = my_tid();
    int owner = __atomic_load_n(&m->__data.__owner, __ATOMIC_RELAXED);
    if (owner == MUTEX_INCONSISTENT &&
        (int)(__atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED) & FUTEX_TID_MASK) == me) {
        pthread_mutex_consistent(m);
        owner = me;
    }
    if (owner != me)
        return PyLong_FromLong(0);
    pthread_mutex_unlock(m);
    return PyLong_FromLong(1);
}

static PyMethodDef lane_functions[] = {
    {"let_go", (PyCFunction)(void (*)(void))lane_let_go, METH_FASTCALL,
     "let_go(base, owed) -> int: unlock the ring's mutexes this thread holds; how many."},
    {"let_go_mutex", (PyCFunction)lane_let_go_mutex, METH_O,
     "let_go_mutex(address) -> int: unlock that robust mutex if this thread holds it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef lanemodule = {
    PyModuleDef_HEAD_INIT,
    .m_name = "polytask._ipc._lane",
    .m_doc = "The process channel's put and get fast paths in C (optional).",
    .m_size = -1,
    .m_methods = lane_functions,
};

PyMODINIT_FUNC
PyInit__lane(void)
{
    if (PyType_Ready(&LaneType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&lanemodule);
    if (m == NULL)
        return NULL;
    if (pthread_atfork(NULL, NULL, lane_forget_tid) != 0) {
        Py_DECREF(m);
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(m);
        return NULL;
    }
    /* What its functions take, checked at import in channel.py (a stale in-place
     * build failed in every exception handler of put and get): 2 = let_go(base, owed),
     * 3 = let_go_mutex(address). */
    if (PyModule_AddIntConstant(m, "API", 3) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    /* What this file assumes of ring.py and channel.py: checked at import there. */
    PyObject *layout = Py_BuildValue(
        "(iiiiiiiiiiiiiiii)", TAIL, NRES, WAIT_DATA, HEAD, READ, NCLAIM, WAIT_SPACE,
        P_MUTEX_OFFSET, C_MUTEX_OFFSET, DATA_OFFSET, HEADER, ALIGN, SMALL, READY, K_PICKLE, PAD);
    if (layout == NULL || PyModule_AddObject(m, "LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
