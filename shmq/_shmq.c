/*
 * shmq._shmq: the CPython binding over the C core in csrc/.
 *
 * Only binding work lives here: argument parsing, the buffer protocol, GIL
 * release and signal handling while waiting, mapping error codes to
 * exceptions, and object lifetime. The queue protocol is entirely in csrc/.
 *
 * Multi-phase init; the types are heap types and, with the exceptions, live in
 * the module state.
 *
 * WAITING. A blocking call is one call into the core with the whole timeout,
 * made without the GIL. For its duration the handle is busy: another thread
 * that uses it gets RuntimeError, and close() (from another thread, or from a
 * signal handler that runs during the wait) only interrupts the wait
 * (shmq_*_interrupt) and marks the close pending; the waiting thread closes
 * the handle once it has left the core, so nothing is ever freed under it.
 * The core calls a wait check between its sleeps (see WAITING in shmq.h):
 * ours takes the GIL back, runs the Python signal handlers (Ctrl-C) and lets
 * go again; a handler that raised ends the wait with -EINTR.
 *
 * Publish and the non-blocking polls hold the GIL throughout, so they need no
 * mark of their own: their fast path tests one word.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "shmq.h"

/* Most messages one poll_many_into call returns. */
#define POLL_MANY_MAX 65536
/* Most entries Producer.consumers and inspect() report (max_consumers is at
 * most 1024). */
#define SHMQ_CONSUMER_LIST_MAX 1024
/* Where the core keeps its segments (shmq_region.h); only for messages. */
#define SHM_DIR "/dev/shm"

typedef struct {
    PyTypeObject *producer_type;
    PyTypeObject *consumer_type;
    PyObject *ShmqError;
    PyObject *QueueNotFound;
    PyObject *IncompatibleQueue;
    PyObject *MessageTooLarge;
    PyObject *ProducerBusy;
    PyObject *CorruptSlot;
    PyObject *Full;
    PyObject *TooManyConsumers;
    PyObject *Overwritten;
    PyTypeObject *lease_type;
    PyObject *release_name; /* "release", interned */
} module_state;

static inline module_state *state_of_module(PyObject *module)
{
    return (module_state *)PyModule_GetState(module);
}

static struct PyModuleDef shmq_module;

static inline module_state *state_of_type(PyTypeObject *type)
{
    return state_of_module(PyType_GetModuleByDef(type, &shmq_module));
}

/* Raises kind(errno, text, filename), the way OSError and its subclasses
 * take them, so that .errno and .filename are set (filename: the queue
 * name, or None). */
static PyObject *raise_os_error(PyObject *kind, int errnum, const char *text, PyObject *filename)
{
    PyObject *exc = PyObject_CallFunction(kind, "isO", errnum, text, filename ? filename : Py_None);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* Raises the exception that matches a negative code from the core. */
static PyObject *raise_code(module_state *st, int code, PyObject *name)
{
    const char *why = shmq_strerror(code);
    PyObject *kind;
    switch (code) {
    case -ENOENT:
        return raise_os_error(st->QueueNotFound, -code, why, name);
    case -EPROTO: case -ENODATA: case -EPROTONOSUPPORT: case -EBADMSG: case -EMEDIUMTYPE:
        kind = st->IncompatibleQueue;
        break;
    case -EMSGSIZE:
        kind = st->MessageTooLarge;
        break;
    case -EBUSY: case -ECHILD:
        kind = st->ProducerBusy;
        break;
    case -EUCLEAN:
        kind = st->CorruptSlot;
        break;
    case -EUSERS:
        kind = st->TooManyConsumers;
        break;
    case -EINPROGRESS:
        kind = PyExc_RuntimeError;
        break;
    case -EFBIG:
        kind = PyExc_ValueError;
        break;
    case -EPERM: case -EACCES:
        return raise_os_error(PyExc_PermissionError, -code, why, name);
    case -EINVAL: case -ENAMETOOLONG:
        kind = PyExc_ValueError;
        break;
    case -ENOMEM:
        return PyErr_NoMemory();
    default:
        /* OSError picks the subclass that matches the errno (TimeoutError,
         * InterruptedError, ...). */
        return raise_os_error(PyExc_OSError, -code, why, name);
    }
    if (name)
        PyErr_Format(kind, "%s: %R", why, name);
    else
        PyErr_SetString(kind, why);
    return NULL;
}

/* Validates and converts a queue name; sets ValueError/TypeError on failure. */
static const char *queue_name(module_state *st, PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "queue name must be str, not %.100s", Py_TYPE(name)->tp_name);
        return NULL;
    }
    const char *utf8 = PyUnicode_AsUTF8(name);
    if (utf8 == NULL)
        return NULL;
    int rc = shmq_name_validate(utf8);
    if (rc < 0 || strlen(utf8) != (size_t)PyUnicode_GET_LENGTH(name)) {
        raise_code(st, rc < 0 ? rc : -EINVAL, name);
        return NULL;
    }
    return utf8;
}

/* Reads an optional non-negative size argument that must fit in uint32. */
static int optional_u64(PyObject *value, const char *what, uint64_t max, uint64_t *out)
{
    *out = 0;
    if (value == NULL || value == Py_None)
        return 0;
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be int or None, not %.100s", what,
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a positive integer, not %R", what, value);
        return -1;
    }
    if (v == 0 || v > max) {
        PyErr_Format(PyExc_ValueError, "%s must be from 1 to %llu, not %llu", what,
                     (unsigned long long)max, v);
        return -1;
    }
    *out = v;
    return 0;
}

static int optional_u32(PyObject *value, const char *what, uint32_t *out)
{
    uint64_t wide;
    int rc = optional_u64(value, what, UINT32_MAX, &wide);
    *out = (uint32_t)wide;
    return rc;
}

/* Gets a writable buffer; a read-only or non-buffer object is a TypeError. */
static int writable_buffer(PyObject *obj, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE) == 0)
        return 0;
    if (PyErr_ExceptionMatches(PyExc_BufferError) || PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "a writable bytes-like object is required, not '%.100s'",
                     Py_TYPE(obj)->tp_name);
    }
    return -1;
}

/* The queue geometry a caller asked for, checked here so that the error
 * names the argument rather than the queue. */
static int check_geometry(const struct shmq_config *config)
{
    uint32_t capacity = config->capacity, slot_size = config->slot_size;
    if (capacity != 0 && (capacity < 2 || capacity > SHMQ_CAPACITY_MAX || (capacity & (capacity - 1)))) {
        PyErr_Format(PyExc_ValueError, "capacity must be a power of two from 2 to %u, not %u",
                     SHMQ_CAPACITY_MAX, capacity);
        return -1;
    }
    if (slot_size > SHMQ_SLOT_SIZE_MAX) {
        PyErr_Format(PyExc_ValueError, "slot_size must be at most %u bytes, not %u",
                     SHMQ_SLOT_SIZE_MAX, slot_size);
        return -1;
    }
    return 0;
}

static PyObject *closed_error(const char *what)
{
    PyErr_Format(PyExc_ValueError, "I/O operation on closed %s", what);
    return NULL;
}

/* Shared by both types; defined with the Consumer. */
static int parse_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      const char *const *names, int required, PyObject **out, int count);
static int parse_seconds(PyObject *value, const char *what, int64_t *ns);
#define parse_timeout(value, ns) parse_seconds((value), "timeout", (ns))
static int64_t monotonic_ns(void);
static PyObject *Producer_loan(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames);
static PyObject *Consumer_view(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames);
/* A poll or publish result meaning "a Python exception is set". */
#define PYTHON_ERROR INT32_MIN
/* A PYTHON_ERROR (ValueError set): close() came while the call waited, and
 * the handle is now closed. Iteration ends on it quietly. */
#define CLOSED_WHILE_WAITING (INT32_MIN + 1)

/* ------------------------------------------------------------- waiting */

/* The thread state a waiting call saved when it let go of the GIL. */
struct released_gil {
    PyThreadState *tstate;
};

/* The wait check (shmq_*_set_wait_check, options.wait_check): called by the
 * core on the waiting thread, without the GIL, between sleeps. Runs the
 * Python signal handlers; non-zero (the core then returns -EINTR) when one
 * raised. A handler that closed the handle has interrupted the wait instead,
 * and the core returns SHMQ_INTERRUPTED. */
static int run_signal_handlers(void *context)
{
    struct released_gil *gil = context;
    PyEval_RestoreThread(gil->tstate);
    int raised = PyErr_CheckSignals() < 0;
    gil->tstate = PyEval_SaveThread();
    return raised;
}

/* After a wait the core ended with -EINTR: the check's exception is set
 * (never otherwise, since our check is always installed; should the core
 * report a bare signal, it becomes InterruptedError). */
static int interrupted_by_python(void)
{
    if (!PyErr_Occurred()) {
        errno = EINTR;
        PyErr_SetFromErrno(PyExc_OSError);
    }
    return PYTHON_ERROR;
}

/* Adds attribute `name` = value to the exception being raised (best effort:
 * an exception that takes no attributes goes out as it is). */
static void annotate_exception(const char *name, size_t value)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    PyObject *count = PyLong_FromSize_t(value);
    if (count == NULL || exc == NULL || PyObject_SetAttrString(exc, name, count) < 0)
        PyErr_Clear();
    Py_XDECREF(count);
    if (tb != NULL && exc != NULL)
        PyException_SetTraceback(exc, tb);
    PyErr_Restore(type, exc, tb);
}

/* ------------------------------------------------------------- Producer */

typedef struct {
    PyObject_HEAD
    struct shmq_producer *producer;
    PyObject *name;
    int busy;             /* a blocking call has released the GIL with this handle */
    pid_t busy_pid;       /* ... in this process (a forked child never finishes it) */
    int close_pending;    /* close() was called while busy */
    int lent;             /* a loan() holds the core's claim */
    int stuck;            /* ... whose buffer outlived its with-block (see Lease) */
    Py_ssize_t exports;   /* buffers of loans still exported */
} ProducerObject;

/* Explains -EMEDIUMTYPE: which of slot_size, capacity and lossless differ
 * from what the caller asked for (the generic message where the queue
 * cannot be inspected). Returns NULL with the exception set. */
static PyObject *incompatible_error(module_state *st, PyObject *name, const char *cname,
                                    const struct shmq_config *asked)
{
    struct shmq_queue_info info;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = shmq_inspect(cname, &info, NULL, 0);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return raise_code(st, -EMEDIUMTYPE, name);
    uint32_t slot_size = info.slot_size, capacity = info.capacity;
    int lossless = info.lossless;
    char text[256];
    size_t used = 0;
    if (asked->slot_size != 0 && asked->slot_size != slot_size)
        used += (size_t)snprintf(text + used, sizeof text - used, ", slot_size %u (not %u)",
                                 slot_size, asked->slot_size);
    if (asked->capacity != 0 && asked->capacity != capacity)
        used += (size_t)snprintf(text + used, sizeof text - used, ", capacity %u (not %u)",
                                 capacity, asked->capacity);
    if (asked->max_message_size != 0 && asked->max_message_size != info.max_message_size)
        used += (size_t)snprintf(text + used, sizeof text - used,
                                 ", max_message_size %llu (not %llu)",
                                 (unsigned long long)info.max_message_size,
                                 (unsigned long long)asked->max_message_size);
    if (asked->delivery != SHMQ_DELIVERY_ANY && (asked->delivery == SHMQ_LOSSLESS) != !!lossless)
        used += (size_t)snprintf(text + used, sizeof text - used, ", lossless=%s (not %s)",
                                 lossless ? "True" : "False", lossless ? "False" : "True");
    if (used == 0) /* it changed meanwhile */
        return raise_code(st, -EMEDIUMTYPE, name);
    return PyErr_Format(st->IncompatibleQueue, "queue %R exists with %s", name, text + 2);
}

/* Explains -ENOSPC at creation: how much the queue needed and how much
 * /dev/shm had. Returns NULL with OSError(ENOSPC, text, name) set. */
static PyObject *no_space_error(PyObject *name, const struct shmq_config *config)
{
    int64_t needed = shmq_queue_size(config);
    struct statvfs fs;
    PyObject *text;
    if (needed >= 0 && statvfs(SHM_DIR, &fs) == 0)
        text = PyUnicode_FromFormat("not enough space in " SHM_DIR ": the queue needs %llu bytes "
                                    "(%llu MiB), " SHM_DIR " has %llu bytes (%llu MiB) free",
                                    (unsigned long long)needed,
                                    (unsigned long long)needed >> 20,
                                    (unsigned long long)fs.f_bavail * fs.f_frsize,
                                    ((unsigned long long)fs.f_bavail * fs.f_frsize) >> 20);
    else
        text = PyUnicode_FromString(shmq_strerror(-ENOSPC));
    if (text == NULL)
        return NULL;
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iOO", ENOSPC, text, name);
    Py_DECREF(text);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* Explains -EINVAL at creation with a max_message_size: the bound. */
static PyObject *too_large_max_error(const struct shmq_config *config)
{
    uint64_t slot_size = config->slot_size ? config->slot_size : SHMQ_DEFAULT_SLOT_SIZE;
    uint64_t capacity = config->capacity ? config->capacity : SHMQ_DEFAULT_CAPACITY;
    return PyErr_Format(PyExc_ValueError,
                        "max_message_size must be at most slot_size * capacity = %llu * %llu = "
                        "%llu bytes, not %llu",
                        (unsigned long long)slot_size, (unsigned long long)capacity,
                        (unsigned long long)(slot_size * capacity),
                        (unsigned long long)config->max_message_size);
}

static PyObject *Producer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"name", "slot_size", "capacity", "mode", "unlink_on_close",
                               "max_consumers", "lossless", "max_message_size", NULL};
    module_state *st = state_of_type(type);
    PyObject *name, *slot_size = NULL, *capacity = NULL, *max_consumers = NULL, *lossless = NULL;
    PyObject *max_message_size = NULL;
    int mode = 0600, unlink_on_close = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OO$ipOOO:Producer", keywords, &name,
                                     &slot_size, &capacity, &mode, &unlink_on_close,
                                     &max_consumers, &lossless, &max_message_size))
        return NULL;
    const char *cname = queue_name(st, name);
    if (cname == NULL)
        return NULL;
    struct shmq_config config = {0};
    if (optional_u32(slot_size, "slot_size", &config.slot_size) < 0 ||
        optional_u32(capacity, "capacity", &config.capacity) < 0 ||
        optional_u32(max_consumers, "max_consumers", &config.max_consumers) < 0 ||
        optional_u64(max_message_size, "max_message_size", SHMQ_MESSAGE_SIZE_MAX,
                     &config.max_message_size) < 0 ||
        check_geometry(&config) < 0)
        return NULL;
    if (lossless != NULL && lossless != Py_None) {
        int truth = PyObject_IsTrue(lossless);
        if (truth < 0)
            return NULL;
        config.delivery = truth ? SHMQ_LOSSLESS : SHMQ_LOSSY;
    }
    if (config.max_consumers > 1024) {
        PyErr_Format(PyExc_ValueError, "max_consumers must be from 1 to 1024, not %u",
                     config.max_consumers);
        return NULL;
    }
    if (mode <= 0 || mode > 0777) {
        PyErr_SetString(PyExc_ValueError, "mode must be permission bits between 0o001 and 0o777");
        return NULL;
    }
    config.mode = (mode_t)mode;
    ProducerObject *self = (ProducerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = shmq_producer_open(&self->producer, cname, &config,
                            SHMQ_CREATE | (unlink_on_close ? SHMQ_UNLINK_ON_CLOSE : 0));
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        Py_DECREF(self);
        if (rc == -EMEDIUMTYPE)
            return incompatible_error(st, name, cname, &config);
        if (rc == -ENOSPC)
            return no_space_error(name, &config);
        if (rc == -EINVAL && config.max_message_size != 0)
            return too_large_max_error(&config);
        return raise_code(st, rc, name);
    }
    self->name = Py_NewRef(name);
    return (PyObject *)self;
}

/* Closes the handle, or, while a call of this process waits with it,
 * interrupts that wait and leaves the closing to it. Async-signal-safe in
 * the sense that matters here: a signal handler may call it during the wait. */
static void Producer_close_handle(ProducerObject *self)
{
    if (self->producer == NULL)
        return;
    if (self->busy && self->busy_pid == getpid()) {
        if (!self->close_pending) {
            self->close_pending = 1;
            shmq_producer_interrupt(self->producer);
        }
        return;
    }
    self->busy = 0;
    self->close_pending = 0;
    /* The core ends the stream and unlinks (unlink_on_close) only where
     * this process is the producer, never in a child after fork(). */
    shmq_producer_close(self->producer);
    self->producer = NULL;
}

static void Producer_dealloc(ProducerObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    Producer_close_handle(self);
    Py_XDECREF(self->name);
    type->tp_free(self);
    Py_DECREF(type);
}

/* Checks the handle is open and not in use by a thread that released the GIL. */
static int producer_usable_slow(ProducerObject *self)
{
    /* A thread that was waiting when another thread called fork() does not
     * exist in the child: the mark it left there is stale. */
    if (self->busy && self->busy_pid != getpid()) {
        self->busy = 0;
        if (self->close_pending)
            Producer_close_handle(self);
    }
    if (self->producer == NULL || self->close_pending) {
        closed_error("Producer");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Producer is in use by another thread (a blocking "
                        "publish or loan is waiting for room)");
        return 0;
    }
    return 1;
}

/* The usual answer, yes, in one test; the rest only when something is set. */
static inline int producer_usable(ProducerObject *self)
{
    if (self->producer != NULL && self->busy == 0)
        return 1;
    return producer_usable_slow(self);
}

/* One blocking call of the producer, run by the core with the whole timeout. */
enum producer_call { CALL_PUBLISH, CALL_PUBLISH_MANY, CALL_CLAIM };

struct producer_wait {
    enum producer_call call;
    const void *data;               /* CALL_PUBLISH */
    size_t length;
    uint64_t sequence;
    const void *const *messages;    /* CALL_PUBLISH_MANY */
    const size_t *lengths;
    size_t count;
    size_t published;
    size_t size;                    /* CALL_CLAIM */
    void *claimed;
};

/*
 * Makes the call without the GIL, the handle busy, and our wait check
 * installed. Returns the core's result (0, SHMQ_FULL, -ETIMEDOUT, ...), or
 * PYTHON_ERROR (a signal handler raised), or CLOSED_WHILE_WAITING: close()
 * came meanwhile; the handle is closed now (after abandoning what the call
 * claimed), and ValueError is set, unless the call had already published
 * (then it returns 0 and the caller reports its success).
 */
static int producer_wait(ProducerObject *self, struct producer_wait *w, int64_t timeout_ns)
{
    struct released_gil gil;
    int rc;
    self->busy = 1;
    self->busy_pid = getpid();
    shmq_producer_set_wait_check(self->producer, run_signal_handlers, &gil);
    gil.tstate = PyEval_SaveThread();
    switch (w->call) {
    case CALL_PUBLISH:
        rc = shmq_producer_publish_wait(self->producer, w->data, w->length, &w->sequence,
                                        timeout_ns);
        break;
    case CALL_PUBLISH_MANY:
        rc = shmq_producer_publish_many_wait(self->producer, w->messages, w->lengths, w->count,
                                             &w->published, timeout_ns);
        break;
    default:
        rc = shmq_producer_claim_wait(self->producer, w->size, &w->claimed, timeout_ns);
        break;
    }
    PyEval_RestoreThread(gil.tstate);
    shmq_producer_set_wait_check(self->producer, NULL, NULL);
    self->busy = 0;
    if (w->call == CALL_PUBLISH_MANY && w->published > 0)
        w->sequence = shmq_producer_next_sequence(self->producer) - 1;
    if (rc == -EINTR)
        rc = interrupted_by_python();
    if (!self->close_pending)
        return rc;
    if (w->call == CALL_CLAIM && rc == 0)
        shmq_producer_abort(self->producer);
    Producer_close_handle(self);
    if (rc == 0 && w->call != CALL_CLAIM)
        return 0;
    if (rc != PYTHON_ERROR)
        PyErr_SetString(PyExc_ValueError, w->call == CALL_CLAIM
                        ? "Producer was closed while the loan waited for room; nothing was lent"
                        : "Producer was closed while waiting for room");
    return CLOSED_WHILE_WAITING;
}

/* The exception for a publish result; published: how many of a batch went
 * out before it stopped (Full.published). Returns NULL. */
static PyObject *publish_error(ProducerObject *self, int rc, size_t length, size_t published)
{
    module_state *st = state_of_type(Py_TYPE(self));
    if (rc == PYTHON_ERROR || rc == CLOSED_WHILE_WAITING)
        return NULL;
    if (rc == SHMQ_FULL || rc == -ETIMEDOUT) {
        PyObject *exc = PyObject_CallFunction(st->Full, "s", "no room in the lossless queue: a "
                                              "registered consumer has not read what the next "
                                              "message would overwrite");
        if (exc == NULL)
            return NULL;
        PyObject *count = PyLong_FromSize_t(published);
        if (count == NULL || PyObject_SetAttrString(exc, "published", count) < 0) {
            Py_XDECREF(count);
            Py_DECREF(exc);
            return NULL;
        }
        Py_DECREF(count);
        PyErr_SetObject(st->Full, exc);
        Py_DECREF(exc);
        return NULL;
    }
    if (rc == -EMSGSIZE && self->producer != NULL)
        return PyErr_Format(st->MessageTooLarge,
                            "message of %zu bytes exceeds max_message_size %llu of queue %R",
                            length,
                            (unsigned long long)shmq_producer_max_message_size(self->producer),
                            self->name);
    if (rc == -EINPROGRESS) {
        PyErr_SetString(PyExc_RuntimeError, self->stuck
                        ? "the buffer of an earlier loan is still exported (a memoryview or array "
                          "made from it is alive): it can still write into its slot, so nothing "
                          "is published until it is released"
                        : "a loan is open on this Producer: leave its with-block first");
        return NULL;
    }
    return raise_code(st, rc, self->name);
}

/* The rest of publish() once the first attempt found a full lossless queue:
 * wait for room, and turn the result into a sequence or an error. */
static PyObject *publish_finish(ProducerObject *self, int rc, const void *bytes, size_t length,
                                uint64_t sequence, PyObject *timeout)
{
    if (rc == SHMQ_FULL) {
        int64_t timeout_ns;
        if (parse_timeout(timeout ? timeout : Py_None, &timeout_ns) < 0)
            return NULL;
        if (timeout_ns != 0) {
            struct producer_wait w = {.call = CALL_PUBLISH, .data = bytes, .length = length};
            rc = producer_wait(self, &w, timeout_ns);
            sequence = w.sequence;
        }
    }
    if (rc < 0)
        return publish_error(self, rc, length, 0);
    return PyLong_FromUnsignedLongLong(sequence);
}

/* publish(data, timeout=None): one message; on a lossless queue waits up
 * to timeout for room. publish(bytes) is the hot path: no parsing, no
 * buffer export. */
static PyObject *Producer_publish(ProducerObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    static const char *const names[] = {"data", "timeout"};
    PyObject *argv[2] = {NULL, NULL};
    if (!producer_usable(self))
        return NULL;
    if (nargs == 1 && kwnames == NULL)
        argv[0] = args[0];
    else if (parse_args(args, nargs, kwnames, names, 1, argv, 2) < 0)
        return NULL;
    uint64_t sequence = 0;
    /* A timeout given is checked even where a lossy queue never waits. */
    int64_t unused_ns;
    if (argv[1] != NULL && parse_timeout(argv[1], &unused_ns) < 0)
        return NULL;
    if (PyBytes_CheckExact(argv[0])) {
        size_t length = (size_t)PyBytes_GET_SIZE(argv[0]);
        const char *bytes = PyBytes_AS_STRING(argv[0]);
        int rc = shmq_producer_publish(self->producer, bytes, length, &sequence);
        if (rc == 0)
            return PyLong_FromUnsignedLongLong(sequence);
        return publish_finish(self, rc, bytes, length, sequence, argv[1]);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(argv[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (!producer_usable(self)) { /* a __buffer__ in Python may have closed us */
        PyBuffer_Release(&view);
        return NULL;
    }
    int rc = shmq_producer_publish(self->producer, view.buf, (size_t)view.len, &sequence);
    PyObject *result = publish_finish(self, rc, view.buf, (size_t)view.len, sequence, argv[1]);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *Producer_publish_many(ProducerObject *self, PyObject *const *args,
                                       Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"messages", "timeout"};
    PyObject *argv[2];
    int64_t timeout_ns;
    if (!producer_usable(self))
        return NULL;
    if (parse_args(args, nargs, kwnames, names, 1, argv, 2) < 0 ||
        parse_timeout(argv[1] ? argv[1] : Py_None, &timeout_ns) < 0)
        return NULL;
    /* A tuple, not PySequence_Fast's list: an item's __buffer__ could
     * mutate a list while we hold pointers into it. */
    PyObject *seq = PySequence_Tuple(argv[0]);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    PyObject **items = &PyTuple_GET_ITEM(seq, 0);
    PyObject *result = NULL;
    const void **pointers = PyMem_New(const void *, (size_t)(n ? n : 1));
    size_t *lengths = PyMem_New(size_t, (size_t)(n ? n : 1));
    Py_buffer *views = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Py_buffer));
    Py_ssize_t held = 0;
    if (pointers == NULL || lengths == NULL || views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = items[i];
        if (PyBytes_CheckExact(item)) {
            /* Kept alive by seq; no buffer export needed. */
            pointers[i] = PyBytes_AS_STRING(item);
            lengths[i] = (size_t)PyBytes_GET_SIZE(item);
            continue;
        }
        if (PyObject_GetBuffer(item, &views[held], PyBUF_SIMPLE) < 0)
            goto done;
        pointers[i] = views[held].buf;
        lengths[i] = (size_t)views[held].len;
        held++;
    }
    /* An item's __buffer__ may have run Python code that closed us. */
    if (!producer_usable(self))
        goto done;
    /* First without waiting (and with the GIL): the usual case fits. */
    size_t done = 0;
    int rc = shmq_producer_publish_many_wait(self->producer, pointers, lengths, (size_t)n, &done, 0);
    uint64_t last = done > 0 ? shmq_producer_next_sequence(self->producer) - 1 : 0;
    if (rc == SHMQ_FULL && timeout_ns != 0) {
        struct producer_wait w = {.call = CALL_PUBLISH_MANY, .messages = pointers + done,
                                  .lengths = lengths + done, .count = (size_t)n - done};
        rc = producer_wait(self, &w, timeout_ns);
        done += w.published;
        last = w.published > 0 ? w.sequence : last;
    }
    if (rc == -EMSGSIZE) {
        size_t longest = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            longest = lengths[i] > longest ? lengths[i] : longest;
        publish_error(self, rc, longest, 0);
    } else if (rc == PYTHON_ERROR || rc == CLOSED_WHILE_WAITING)
        annotate_exception("published", done); /* how many went out before it */
    else if (rc < 0)
        publish_error(self, rc, 0, done);
    else if (n == 0)
        result = Py_NewRef(Py_None);
    else /* the handle may be closed by now, after the batch went out */
        result = PyLong_FromUnsignedLongLong(last);
done:
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(pointers);
    PyMem_Free(lengths);
    PyMem_Free(views);
    Py_DECREF(seq);
    return result;
}

/* close() refuses while memory of the segment is lent out, as mmap.close()
 * does with live exports: unmapping it would pull it from under the user. */
static int lent_out(int lent, Py_ssize_t exports, const char *what)
{
    if (!lent && exports == 0)
        return 0;
    PyErr_Format(PyExc_BufferError, "cannot close the %s: %s", what,
                 exports > 0 ? "a buffer from a loan or view is still exported"
                             : "a loan or view is open");
    return -1;
}

static PyObject *Producer_close(ProducerObject *self, PyObject *Py_UNUSED(ignored))
{
    if (lent_out(self->lent, self->exports, "Producer") < 0)
        return NULL;
    Producer_close_handle(self);
    Py_RETURN_NONE;
}

static PyObject *return_self(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self);
}

static PyObject *Producer_exit(ProducerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    return Producer_close(self, NULL);
}

static PyObject *Producer_reduce(ProducerObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyErr_Format(PyExc_TypeError,
                        "a shmq.Producer cannot be pickled: a queue has exactly one producer, held "
                        "by a lock of this process. Pass the queue name %R to the other process "
                        "and open a Producer there after closing this one, or pass a Consumer.",
                        self->name);
}

static PyObject *Producer_repr(ProducerObject *self)
{
    if (self->producer == NULL || self->close_pending)
        return PyUnicode_FromFormat("<shmq.Producer name=%R closed>", self->name);
    if (self->busy) /* its sequence moves under another thread */
        return PyUnicode_FromFormat("<shmq.Producer name=%R slot_size=%u capacity=%u waiting>",
                                    self->name, shmq_producer_slot_size(self->producer),
                                    shmq_producer_capacity(self->producer));
    return PyUnicode_FromFormat("<shmq.Producer name=%R slot_size=%u capacity=%u next_sequence=%llu>",
                                self->name, shmq_producer_slot_size(self->producer),
                                shmq_producer_capacity(self->producer),
                                (unsigned long long)shmq_producer_next_sequence(self->producer));
}

/* One consumer entry as a dict (Producer.consumers, inspect()). */
static PyObject *consumer_info_dict(const struct shmq_consumer_info *info)
{
    /* uid None: the entry's page is not ours to read (another user's). */
    PyObject *uid = info->uid == (uid_t)-1 ? Py_NewRef(Py_None)
                                           : PyLong_FromUnsignedLong((unsigned long)info->uid);
    if (uid == NULL)
        return NULL;
    PyObject *d = Py_BuildValue("{sIsIsOsOsKsKsKsO}", "index", info->index, "pid", info->pid,
                                "uid", uid, "registered", info->registered ? Py_True : Py_False,
                                "position", (unsigned long long)info->position,
                                "lag", (unsigned long long)info->lag,
                                "lost", (unsigned long long)info->lost,
                                "unclear", info->unclear ? Py_True : Py_False);
    Py_DECREF(uid);
    return d;
}

static PyObject *consumer_info_list(const struct shmq_consumer_info *info, int n)
{
    PyObject *list = PyList_New(n);
    for (int i = 0; list != NULL && i < n; i++) {
        PyObject *d = consumer_info_dict(&info[i]);
        if (d == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, d);
    }
    return list;
}

/* Producer.consumers: one dict per live consumer holding an entry. */
static PyObject *consumer_list(ProducerObject *self)
{
    if (!producer_usable(self))
        return NULL;
    struct shmq_consumer_info *info = PyMem_New(struct shmq_consumer_info, SHMQ_CONSUMER_LIST_MAX);
    if (info == NULL)
        return PyErr_NoMemory();
    int n = shmq_producer_consumers(self->producer, info, SHMQ_CONSUMER_LIST_MAX);
    PyObject *list = n < 0 ? raise_code(state_of_type(Py_TYPE(self)), n, self->name)
                           : consumer_info_list(info, n < SHMQ_CONSUMER_LIST_MAX ? n : SHMQ_CONSUMER_LIST_MAX);
    PyMem_Free(info);
    return list;
}

/* Getters of what the core can change under a waiting thread refuse while
 * it waits; the geometry is fixed and always readable. */
#define PRODUCER_GETTER(field, expr)                                             \
    static PyObject *Producer_get_##field(ProducerObject *self, void *closure) \
    {                                                                            \
        (void)closure;                                                           \
        if (self->producer == NULL || self->close_pending)                       \
            return closed_error("Producer");                                     \
        return expr;                                                             \
    }
#define PRODUCER_MOVING_GETTER(field, expr)                                      \
    static PyObject *Producer_get_##field(ProducerObject *self, void *closure) \
    {                                                                            \
        (void)closure;                                                           \
        if (!producer_usable(self))                                              \
            return NULL;                                                         \
        return expr;                                                             \
    }
PRODUCER_GETTER(slot_size, PyLong_FromUnsignedLong(shmq_producer_slot_size(self->producer)))
PRODUCER_GETTER(capacity, PyLong_FromUnsignedLong(shmq_producer_capacity(self->producer)))
PRODUCER_GETTER(max_message_size,
                PyLong_FromUnsignedLongLong(shmq_producer_max_message_size(self->producer)))
PRODUCER_GETTER(lossless, PyBool_FromLong(shmq_producer_lossless(self->producer)))
PRODUCER_MOVING_GETTER(next_sequence,
                       PyLong_FromUnsignedLongLong(shmq_producer_next_sequence(self->producer)))
PRODUCER_MOVING_GETTER(wakeups, PyLong_FromUnsignedLongLong(shmq_producer_wakeups(self->producer)))
PRODUCER_MOVING_GETTER(last_sequence, shmq_producer_next_sequence(self->producer) == 0
                                          ? Py_NewRef(Py_None)
                                          : PyLong_FromUnsignedLongLong(
                                                shmq_producer_next_sequence(self->producer) - 1))

static PyObject *Producer_get_consumers(ProducerObject *self, void *closure)
{
    (void)closure;
    return consumer_list(self);
}

static PyObject *Producer_get_name(ProducerObject *self, void *closure)
{
    (void)closure;
    return Py_NewRef(self->name);
}

static PyObject *Producer_get_closed(ProducerObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->producer == NULL || self->close_pending);
}


/* n for wait_consumers: an int from 0 to 2^32-1. */
static int consumer_count(PyObject *value, uint32_t *out)
{
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "n must be int, not %.100s", Py_TYPE(value)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    if ((v == (unsigned long long)-1 && PyErr_Occurred()) || v > UINT32_MAX) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "n must be an integer from 0 to max_consumers");
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* wait_consumers(n, timeout=None): see the docstring in Producer_methods. */
static PyObject *Producer_wait_consumers(ProducerObject *self, PyObject *const *args,
                                         Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"n", "timeout"};
    PyObject *argv[2];
    if (!producer_usable(self))
        return NULL;
    if (parse_args(args, nargs, kwnames, names, 1, argv, 2) < 0)
        return NULL;
    uint32_t n;
    if (consumer_count(argv[0], &n) < 0)
        return NULL;
    int64_t timeout_ns;
    if (parse_timeout(argv[1] ? argv[1] : Py_None, &timeout_ns) < 0)
        return NULL;
    int now = shmq_producer_wait_consumers(self->producer, n, 0);
    if (now == -ERANGE)
        return PyErr_Format(PyExc_ValueError, "n=%u is more than the %R queue's max_consumers: "
                            "that many can never attach", (unsigned)n, self->name);
    if (now >= 0 || timeout_ns == 0) {
        if (now == -ETIMEDOUT)
            return PyErr_Format(PyExc_TimeoutError, "fewer than %u consumers attached to %R",
                                (unsigned)n, self->name);
        return now < 0 ? raise_code(state_of_type(Py_TYPE(self)), now, self->name)
                       : PyLong_FromLong(now);
    }
    struct released_gil gil;
    self->busy = 1;
    self->busy_pid = getpid();
    shmq_producer_set_wait_check(self->producer, run_signal_handlers, &gil);
    gil.tstate = PyEval_SaveThread();
    int rc = shmq_producer_wait_consumers(self->producer, n, timeout_ns);
    PyEval_RestoreThread(gil.tstate);
    shmq_producer_set_wait_check(self->producer, NULL, NULL);
    self->busy = 0;
    if (rc == -EINTR)
        rc = interrupted_by_python();
    if (self->close_pending) {
        Producer_close_handle(self);
        if (rc != PYTHON_ERROR)
            PyErr_SetString(PyExc_ValueError, "Producer was closed while waiting for consumers");
        return NULL;
    }
    if (rc == PYTHON_ERROR)
        return NULL;
    if (rc == -ETIMEDOUT)
        return PyErr_Format(PyExc_TimeoutError, "fewer than %u consumers attached to %R in time",
                            (unsigned)n, self->name);
    if (rc < 0)
        return raise_code(state_of_type(Py_TYPE(self)), rc, self->name);
    return PyLong_FromLong(rc);
}

/* For shmq._aio: the count now, without waiting (wait_consumers_async). */
static PyObject *Producer_count_consumers(ProducerObject *self, PyObject *n)
{
    if (!producer_usable(self))
        return NULL;
    uint32_t want;
    if (consumer_count(n, &want) < 0)
        return NULL;
    int rc = shmq_producer_wait_consumers(self->producer, want, 0);
    if (rc == -ETIMEDOUT)
        Py_RETURN_NONE;
    if (rc == -ERANGE)
        return PyErr_Format(PyExc_ValueError, "n=%u is more than the %R queue's max_consumers: "
                            "that many can never attach", (unsigned)want, self->name);
    if (rc < 0)
        return raise_code(state_of_type(Py_TYPE(self)), rc, self->name);
    return PyLong_FromLong(rc);
}

/* For shmq._aio (publish_async): the descriptor that turns readable when
 * consumers free room. */
static PyObject *Producer_room_fileno(ProducerObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!producer_usable(self))
        return NULL;
    int fd = shmq_producer_fileno(self->producer);
    if (fd < 0)
        return raise_code(state_of_type(Py_TYPE(self)), fd, self->name);
    return PyLong_FromLong(fd);
}

/* For shmq._aio: True if a publish would find room now; otherwise arms the
 * room descriptor (and asks the kernel about dead consumers, at most once
 * per 10 ms) and returns False. */
static PyObject *Producer_room_or_arm(ProducerObject *self, PyObject *arg)
{
    if (!producer_usable(self))
        return NULL;
    Py_ssize_t length = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (length == -1 && PyErr_Occurred())
        return NULL;
    if (length < 0)
        return PyErr_Format(PyExc_ValueError, "length must be >= 0");
    int rc = shmq_producer_wait_room_for(self->producer, (size_t)length, 0);
    if (rc == -EMSGSIZE)
        return PyErr_Format(state_of_type(Py_TYPE(self))->MessageTooLarge,
                            "message of %zd bytes exceeds max_message_size %llu of queue %R",
                            length,
                            (unsigned long long)shmq_producer_max_message_size(self->producer),
                            self->name);
    if (rc == 0)
        Py_RETURN_TRUE;
    if (rc == SHMQ_FULL)
        Py_RETURN_FALSE;
    return raise_code(state_of_type(Py_TYPE(self)), rc, self->name);
}

static PyMethodDef Producer_methods[] = {
    {"wait_consumers", (PyCFunction)(void (*)(void))Producer_wait_consumers,
     METH_FASTCALL | METH_KEYWORDS,
     "wait_consumers($self, /, n, timeout=None)\n--\n\nBlock (GIL released) until at least n "
     "consumers are attached, and return how many are: registered consumers on a lossless "
     "queue (the ones every message will reach), consumers holding an entry on a lossy one. "
     "Raises TimeoutError when timeout seconds pass first (None: wait forever). A barrier "
     "for lossless fan-out: publish only once every worker will see the first message."},
    {"_count_consumers", (PyCFunction)Producer_count_consumers, METH_O,
     "For shmq._aio: the count if at least n are attached, else None."},
    {"_room_fileno", (PyCFunction)Producer_room_fileno, METH_NOARGS,
     "For shmq._aio: a descriptor that turns readable when consumers free room."},
    {"_room_or_arm", (PyCFunction)Producer_room_or_arm, METH_O,
     "For shmq._aio: True if there is room for a message of that length; otherwise arms "
     "_room_fileno() and returns False."},
    {"publish", (PyCFunction)(void (*)(void))Producer_publish, METH_FASTCALL | METH_KEYWORDS,
     "publish($self, /, data, timeout=None)\n--\n\nPublish one message (any C-contiguous "
     "bytes-like object) and return its sequence number. Raises MessageTooLarge if it exceeds "
     "max_message_size. On a lossless queue, waits up to timeout seconds (None: forever; 0: not at all) "
     "for every registered consumer to have room, without the GIL, and raises Full (also a "
     "queue.Full; .published is 0) when the time runs out. Ctrl-C interrupts the wait. close() "
     "from another thread or from a signal handler ends the wait with ValueError (\"Producer "
     "was closed while waiting for room\"); nothing was published then. Raises RuntimeError "
     "while another thread waits with this producer, or while the buffer of an earlier loan "
     "is still exported (see loan)."},
    {"publish_many", (PyCFunction)(void (*)(void))Producer_publish_many,
     METH_FASTCALL | METH_KEYWORDS,
     "publish_many($self, /, messages, timeout=None)\n--\n\nPublish every message of an "
     "iterable in order and return the last sequence number (None if empty). All sizes are "
     "checked first: on MessageTooLarge nothing is published. On a lossless queue, waits for "
     "room as publish does. Whatever ends the batch early carries .published, how many of its "
     "first messages went out: Full when the timeout runs out, the exception of a signal "
     "handler (KeyboardInterrupt from Ctrl-C), and the ValueError of a close() meanwhile."},
    {"close", (PyCFunction)Producer_close, METH_NOARGS,
     "close($self, /)\n--\n\nEnd the stream (consumers that have read everything stop "
     "iterating) and release the queue (idempotent). Unlinks it if unlink_on_close. In a "
     "child after fork() it only releases the child's copy. Called from another thread, or "
     "from a signal handler, while a publish or loan waits for room, it interrupts that wait, "
     "which then closes the handle and raises ValueError. Raises BufferError while a loan or a "
     "buffer made from one is alive."},
    {"__enter__", return_self, METH_NOARGS, "__enter__($self, /)\n--\n\n"},
    {"__exit__", (PyCFunction)(void (*)(void))Producer_exit, METH_FASTCALL, "__exit__($self, exc_type, exc, tb, /)\n--\n\n"},
    {"__reduce__", (PyCFunction)Producer_reduce, METH_NOARGS, NULL},
    {"loan", (PyCFunction)(void (*)(void))Producer_loan, METH_FASTCALL | METH_KEYWORDS,
     "loan($self, /, size, timeout=None)\n--\n\nLend out the next slot for writing in place: "
     "`with producer.loan(size) as buf:` gives a writable memoryview of exactly size bytes; "
     "leaving the block publishes it (its sequence is then last_sequence), leaving it by an "
     "exception abandons it (nothing is published; the next publish takes its sequence). "
     "Raises MessageTooLarge over max_message_size; on a lossless queue waits for room like publish "
     "(Full when the timeout runs out). A buffer made from the memoryview (a numpy array, a "
     "slice) that outlives the block could still write into the slot: then leaving the block "
     "raises BufferError, nothing is published, and until that buffer is released the "
     "producer publishes nothing (publish, publish_many and loan raise RuntimeError); its "
     "release abandons the loan. A loan opened before fork() cannot be published in the "
     "child (ProducerBusy)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Producer_getset[] = {
    {"name", (getter)Producer_get_name, NULL, "Queue name.", NULL},
    {"slot_size", (getter)Producer_get_slot_size, NULL,
     "Bytes per slot (and the largest message, unless max_message_size says more).", NULL},
    {"max_message_size", (getter)Producer_get_max_message_size, NULL,
     "Largest message in bytes, fixed for the queue's life.", NULL},
    {"capacity", (getter)Producer_get_capacity, NULL, "Number of slots in the ring.", NULL},
    {"next_sequence", (getter)Producer_get_next_sequence, NULL,
     "Sequence number the next message will get.", NULL},
    {"lossless", (getter)Producer_get_lossless, NULL,
     "Whether registered consumers hold this producer back.", NULL},
    {"last_sequence", (getter)Producer_get_last_sequence, NULL,
     "Sequence number of the last message published (None before the first).", NULL},
    {"consumers", (getter)Producer_get_consumers, NULL,
     "The live consumers that hold an entry: dicts of index, pid (display only), uid, "
     "registered, position, lag and lost. The broadcast analogue of qsize().", NULL},
    {"wakeups", (getter)Producer_get_wakeups, NULL,
     "FUTEX_WAKE calls made so far to wake sleeping consumers (one per sleep episode).", NULL},
    {"closed", (getter)Producer_get_closed, NULL,
     "True after close() (also while a waiting call is about to close the handle).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Producer_doc,
"Producer(name, slot_size=None, capacity=None, *, mode=0o600, unlink_on_close=False,\n"
"         max_consumers=None, lossless=None, max_message_size=None)\n"
"--\n\n"
"The single producer of queue `name`.\n\n"
"Creates the queue if it does not exist (slot_size bytes per slot, default\n"
"1024; capacity slots, a power of two, default 8192; max_consumers listed\n"
"consumers, default 64), or attaches to it and continues its sequence.\n"
"max_message_size (default: slot_size) is the largest message: a message takes\n"
"as many consecutive slots as it needs, so it may be up to slot_size * capacity\n"
"bytes and 2**32 - 1 (more raises ValueError); the ring stays capacity slots of\n"
"slot_size rounded up to 16 bytes, plus a 16-byte index record per slot. A\n"
"given slot_size, capacity, max_message_size or lossless that differs from an\n"
"existing queue raises IncompatibleQueue, which says which one differs. Raises ProducerBusy while\n"
"another live producer holds the queue, PermissionError for a queue owned by\n"
"another user or open wider than `mode`, and OSError(ENOSPC) when /dev/shm has\n"
"no room for the ring (the message says how much it needed and how much was\n"
"free). OSErrors carry errno and, as filename, the queue name.");

static PyType_Slot Producer_slots[] = {
    {Py_tp_new, Producer_new},
    {Py_tp_dealloc, Producer_dealloc},
    {Py_tp_repr, Producer_repr},
    {Py_tp_methods, Producer_methods},
    {Py_tp_getset, Producer_getset},
    {Py_tp_doc, (void *)Producer_doc},
    {0, NULL},
};

static PyType_Spec Producer_spec = {
    .name = "shmq.Producer",
    .basicsize = sizeof(ProducerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_BASETYPE,
    .slots = Producer_slots,
};

/* ------------------------------------------------------------- Consumer */

typedef struct {
    PyObject_HEAD
    struct shmq_consumer *consumer;
    PyObject *name;
    int busy;          /* a blocking call has released the GIL with this handle */
    pid_t busy_pid;    /* ... in this process (a forked child never finishes it) */
    int close_pending; /* close() was called while busy */
    int lent;          /* a view() is open */
    int listed;        /* wait_any() is gathering its consumers: seen once already */
    int pending;       /* a core error a poll_many met after it had consumed
                          messages: the next call raises it */
    Py_ssize_t exports; /* buffers of views still exported */
    /* How it was opened, for pickling. */
    int registered_entry;
    int check_owner;
    uid_t owner;
    uint32_t spin;
    PyObject *group; /* the group's name (str), or NULL */
} ConsumerObject;

/* timeout and wait: None -> forever (-1); a number of seconds >= 0; value
 * NULL (not given) -> 0. */
static int parse_seconds(PyObject *value, const char *what, int64_t *ns)
{
    if (value == NULL) {
        *ns = 0;
        return 0;
    }
    if (value == Py_None) {
        *ns = -1;
        return 0;
    }
    if (PyBool_Check(value) || !(PyFloat_Check(value) || PyLong_Check(value))) {
        PyErr_Format(PyExc_TypeError, "%s must be a number of seconds or None, not %.100s", what,
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    double seconds = PyFloat_AsDouble(value);
    if (seconds == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a number or None, not %.100s", what,
                     Py_TYPE(value)->tp_name);
        return -1;
    }
    if (!(seconds >= 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be non-negative (or None to wait forever)", what);
        return -1;
    }
    *ns = seconds >= 9e9 ? -1 : (int64_t)(seconds * 1e9);
    return 0;
}

static int64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static PyObject *Consumer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"name", "start", "spin", "owner", "register", "wait", "group", NULL};
    module_state *st = state_of_type(type);
    PyObject *name, *start = NULL, *spin_arg = NULL, *owner = NULL, *wait = NULL, *group = NULL;
    int register_entry = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O$OOpOO:Consumer", keywords, &name, &start,
                                     &spin_arg, &owner, &register_entry, &wait, &group))
        return NULL;
    struct shmq_consumer_options options = {.start = SHMQ_START_LATEST, .no_entry = !register_entry};
    if (group == Py_None)
        group = NULL;
    if (group != NULL) {
        if (!PyUnicode_Check(group)) {
            PyErr_Format(PyExc_TypeError, "group must be str or None, not %.100s",
                         Py_TYPE(group)->tp_name);
            return NULL;
        }
        Py_ssize_t size;
        options.group = PyUnicode_AsUTF8AndSize(group, &size);
        if (options.group == NULL)
            return NULL;
        if (!register_entry) {
            PyErr_SetString(PyExc_ValueError, "a group member takes a consumer entry: "
                                              "group and register=False exclude each other");
            return NULL;
        }
        if (size < 1 || size > SHMQ_GROUP_NAME_MAX || (size_t)size != strlen(options.group) ||
            shmq_name_validate(options.group) < 0) {
            PyErr_Format(PyExc_ValueError, "group must be 1 to %d characters from "
                         "[A-Za-z0-9._-], starting with a letter or digit, not %R",
                         (int)SHMQ_GROUP_NAME_MAX, group);
            return NULL;
        }
    }
    if (spin_arg != NULL) {
        if (!PyLong_Check(spin_arg) || PyBool_Check(spin_arg)) {
            PyErr_Format(PyExc_TypeError, "spin must be int, not %.100s", Py_TYPE(spin_arg)->tp_name);
            return NULL;
        }
        int overflow;
        long long spin = PyLong_AsLongLongAndOverflow(spin_arg, &overflow);
        if (spin == -1 && PyErr_Occurred())
            return NULL;
        if (overflow < 0 || spin < 0) {
            PyErr_Format(PyExc_ValueError, "spin must be non-negative, not %R", spin_arg);
            return NULL;
        }
        /* The core clamps to SHMQ_SPIN_MAX; so do we, for huge values. */
        options.spin = overflow > 0 || spin > SHMQ_SPIN_MAX ? SHMQ_SPIN_MAX : (uint32_t)spin;
    }
    if (owner != NULL && owner != Py_None) {
        if (!PyLong_Check(owner) || PyBool_Check(owner)) {
            PyErr_Format(PyExc_TypeError, "owner must be an int uid or None, not %.100s",
                         Py_TYPE(owner)->tp_name);
            return NULL;
        }
        unsigned long long uid = PyLong_AsUnsignedLongLong(owner);
        if (uid == (unsigned long long)-1 && PyErr_Occurred())
            PyErr_Clear();
        /* uid_t is 32 bits, and (uid_t)-1 means "no user" to the kernel:
         * a larger value must not wrap round to some other user. */
        else if (uid < (unsigned long long)(uid_t)-1) {
            options.check_owner = 1;
            options.owner = (uid_t)uid;
        }
        if (!options.check_owner) {
            PyErr_Format(PyExc_ValueError, "owner must be a uid from 0 to %lu, not %R",
                         (unsigned long)(uid_t)-1 - 1, owner);
            return NULL;
        }
    }
    if (start != NULL && PyLong_Check(start) && !PyBool_Check(start)) {
        /* A sequence number: how a pickled Consumer re-attaches where it was. */
        unsigned long long position = PyLong_AsUnsignedLongLong(start);
        if (position == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "start must be 'latest', 'earliest' or a sequence "
                         "number from 0 to 2**64-1, not %R", start);
            return NULL;
        }
        options.start = SHMQ_START_AT;
        options.position = position;
    } else if (start != NULL && PyUnicode_Check(start) &&
               PyUnicode_CompareWithASCIIString(start, "latest") == 0)
        options.start = SHMQ_START_LATEST;
    else if (start != NULL && PyUnicode_Check(start) &&
             PyUnicode_CompareWithASCIIString(start, "earliest") == 0)
        options.start = SHMQ_START_EARLIEST;
    else if (start != NULL) {
        PyErr_Format(PyUnicode_Check(start) ? PyExc_ValueError : PyExc_TypeError,
                     "start must be 'latest', 'earliest' or a sequence number, not %R", start);
        return NULL;
    }
    if (parse_seconds(wait, "wait", &options.wait_ns) < 0)
        return NULL;
    const char *cname = queue_name(st, name);
    if (cname == NULL)
        return NULL;
    ConsumerObject *self = (ConsumerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->registered_entry = register_entry;
    self->check_owner = options.check_owner;
    self->owner = options.owner;
    self->spin = options.spin;
    struct released_gil gil;
    options.wait_check = run_signal_handlers;
    options.wait_context = &gil;
    int rc;
    gil.tstate = PyEval_SaveThread();
    rc = shmq_consumer_open_with(&self->consumer, cname, &options);
    PyEval_RestoreThread(gil.tstate);
    if (rc < 0) {
        Py_DECREF(self);
        if (rc == -EINTR) { /* a signal handler raised */
            interrupted_by_python();
            return NULL;
        }
        if (rc == -EPERM && options.check_owner) {
            PyObject *text = PyUnicode_FromFormat("queue %R is not owned by uid %lu", name,
                                                  (unsigned long)options.owner);
            if (text == NULL)
                return NULL;
            PyObject *exc = PyObject_CallFunction(PyExc_PermissionError, "iOO", EPERM, text, name);
            Py_DECREF(text);
            if (exc != NULL) {
                PyErr_SetObject(PyExc_PermissionError, exc);
                Py_DECREF(exc);
            }
            return NULL;
        }
        if (rc == -ETIMEDOUT && group != NULL) {
            PyObject *text = PyUnicode_FromFormat(
                "could not join group %R of queue %R: another process held the join lock for "
                "5 s", group, name);
            if (text != NULL) {
                PyObject *exc = PyObject_CallFunction(PyExc_TimeoutError, "iO", ETIMEDOUT, text);
                Py_DECREF(text);
                if (exc != NULL) {
                    PyErr_SetObject(PyExc_TimeoutError, exc);
                    Py_DECREF(exc);
                }
            }
            return NULL;
        }
        if (rc == -EOPNOTSUPP && group != NULL) {
            PyErr_Format(PyExc_OSError, "queue %R has no usable consumer state "
                         "(shmq-NAME.consumers is missing or not its owner's): groups need it",
                         name);
            return NULL;
        }
        if (rc == -EUSERS && group != NULL) {
            PyErr_Format(st->TooManyConsumers, "no room to join group %R of queue %R: a queue "
                         "holds %d groups of %d members, and a lossless queue's members each "
                         "take a consumer entry too (or another process planted locks in the "
                         "queue's lock file: shmq stat shows 'unclear' groups)", group, name,
                         (int)SHMQ_GROUPS_MAX, (int)SHMQ_GROUP_MEMBERS_MAX);
            return NULL;
        }
        return raise_code(st, rc, name);
    }
    self->name = Py_NewRef(name);
    self->group = group != NULL ? Py_NewRef(group) : NULL;
    return (PyObject *)self;
}

/* Closes the handle, or, while a call of this process waits with it,
 * interrupts that wait and leaves the closing to it (see WAITING above). */
static void Consumer_close_handle(ConsumerObject *self)
{
    if (self->consumer == NULL)
        return;
    if (self->busy && self->busy_pid == getpid()) {
        if (!self->close_pending) {
            self->close_pending = 1;
            shmq_consumer_interrupt(self->consumer);
        }
        return;
    }
    self->busy = 0;
    self->close_pending = 0;
    shmq_consumer_close(self->consumer);
    self->consumer = NULL;
}

static void Consumer_dealloc(ConsumerObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    Consumer_close_handle(self);
    Py_XDECREF(self->name);
    Py_XDECREF(self->group);
    type->tp_free(self);
    Py_DECREF(type);
}

static PyObject *poll_error(ConsumerObject *self, int rc, size_t length, size_t buf_size);

/* Checks the handle is open, not in use by a thread that released the GIL,
 * and owes no error; raises otherwise. */
static int consumer_usable_slow(ConsumerObject *self)
{
    /* A thread that was waiting when another thread called fork() does not
     * exist in the child: the mark it left there is stale. */
    if (self->busy && self->busy_pid != getpid()) {
        self->busy = 0;
        if (self->close_pending)
            Consumer_close_handle(self);
    }
    if (self->consumer == NULL || self->close_pending) {
        closed_error("Consumer");
        return 0;
    }
    if (self->lent) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Consumer has a view open: leave its with-block first");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Consumer is in use by another thread (blocking poll in progress)");
        return 0;
    }
    if (self->pending) {
        int code = self->pending;
        self->pending = 0;
        poll_error(self, code, 0, 0);
        return 0;
    }
    return 1;
}

/* The usual answer, yes, in one test; the rest only when something is set. */
static inline int consumer_usable(ConsumerObject *self)
{
    if (self->consumer != NULL && (self->busy | self->lent | self->close_pending | self->pending) == 0)
        return 1;
    return consumer_usable_slow(self);
}

/*
 * Waits in the core, once, up to timeout_ns (-1: forever), until a poll has
 * something to report; flags as shmq_consumer_wait_flags. Without the GIL,
 * the handle busy, our wait check installed. Returns 0, SHMQ_ENDED,
 * -ETIMEDOUT, PYTHON_ERROR (a signal handler raised), or CLOSED_WHILE_WAITING (close() came meanwhile: the
 * handle is closed now, ValueError set).
 */
static int consumer_wait(ConsumerObject *self, int64_t timeout_ns, unsigned flags)
{
    struct released_gil gil;
    int rc;
    self->busy = 1;
    self->busy_pid = getpid();
    shmq_consumer_set_wait_check(self->consumer, run_signal_handlers, &gil);
    do {
        gil.tstate = PyEval_SaveThread();
        rc = shmq_consumer_wait_flags(self->consumer, timeout_ns, flags);
        PyEval_RestoreThread(gil.tstate);
        /* Only close() interrupts our waits; an interrupt left pending by
         * an earlier close attempt that found the wait already over is not
         * meant for this one. */
    } while (rc == SHMQ_INTERRUPTED && !self->close_pending);
    shmq_consumer_set_wait_check(self->consumer, NULL, NULL);
    self->busy = 0;
    if (rc == -EINTR)
        rc = interrupted_by_python();
    if (self->close_pending) {
        Consumer_close_handle(self);
        if (rc != PYTHON_ERROR)
            PyErr_SetString(PyExc_ValueError, "Consumer was closed while waiting");
        return CLOSED_WHILE_WAITING;
    }
    return rc;
}

/* One attempt to read, made with the GIL held; returns what the core's poll
 * functions return. */
typedef int (*attempt_fn)(ConsumerObject *self, void *arg);

/*
 * Makes attempt(); while it finds nothing (SHMQ_EMPTY) and timeout_ns (-1:
 * forever) has not run out, waits in the core (consumer_wait) and attempts
 * again. With wait_flags 0 it stops, with SHMQ_ENDED, once the stream ended
 * and everything was read (iteration); with SHMQ_WAIT_PAST_END it waits on
 * for a producer to reopen (poll). Returns the last attempt's result
 * (SHMQ_EMPTY when the time ran out or _interrupt() ended the wait),
 * SHMQ_ENDED, PYTHON_ERROR or CLOSED_WHILE_WAITING.
 *
 * The core waits the whole timeout in one call; the loop only goes round
 * again when a wake-up found nothing to take (the message it saw was an
 * overrun that resynced the reader past the end, say).
 */
static int poll_until(ConsumerObject *self, int64_t timeout_ns, attempt_fn attempt, void *arg,
                      unsigned wait_flags)
{
    int rc = attempt(self, arg);
    if (rc != SHMQ_EMPTY || timeout_ns == 0)
        return rc;
    int64_t deadline = timeout_ns > 0 ? monotonic_ns() + timeout_ns : -1;
    for (;;) {
        int64_t left = -1;
        if (deadline >= 0 && (left = deadline - monotonic_ns()) <= 0)
            return SHMQ_EMPTY;
        int waited = consumer_wait(self, left, wait_flags);
        if (waited == -ETIMEDOUT || waited == SHMQ_INTERRUPTED)
            return SHMQ_EMPTY;
        if (waited != 0 && waited != SHMQ_ENDED)
            return waited;
        rc = attempt(self, arg);
        if (rc == SHMQ_EMPTY && waited == SHMQ_ENDED)
            return SHMQ_ENDED;
        if (rc != SHMQ_EMPTY)
            return rc;
    }
}

/* poll() into a new bytes object of exactly the message's size. */
struct new_bytes {
    PyObject *msg;
};

static void *allocate_bytes(void *context, size_t length)
{
    struct new_bytes *nb = context;
    Py_CLEAR(nb->msg); /* a torn copy: its object goes, a new one is asked for */
    nb->msg = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
    return nb->msg ? PyBytes_AS_STRING(nb->msg) : NULL;
}

static int attempt_bytes(ConsumerObject *self, void *arg)
{
    struct new_bytes *nb = arg;
    size_t length;
    int rc = shmq_consumer_poll_alloc(self->consumer, allocate_bytes, nb, &length);
    if (rc != 0)
        Py_CLEAR(nb->msg);
    return rc;
}

/* poll_into(): one message into the caller's buffer. */
struct into_buffer {
    void *buf;
    size_t size;
    size_t length;
};

static int attempt_into(ConsumerObject *self, void *arg)
{
    struct into_buffer *ib = arg;
    return shmq_consumer_poll(self->consumer, ib->buf, ib->size, &ib->length);
}

/* Turns a poll result into an exception; returns NULL always. */
static PyObject *poll_error(ConsumerObject *self, int rc, size_t length, size_t buf_size)
{
    if (rc == PYTHON_ERROR || rc == CLOSED_WHILE_WAITING || (rc == -ENOMEM && PyErr_Occurred()))
        return NULL;
    module_state *st = state_of_type(Py_TYPE(self));
    if (rc == -EMSGSIZE)
        return PyErr_Format(st->MessageTooLarge,
                            "next message is %zu bytes, the buffer holds only %zu", length, buf_size);
    if (rc == -ECHILD)
        /* A group member's claims are its parent's: a child opens its own. */
        return raise_os_error(PyExc_ChildProcessError, ECHILD,
                              "a group member inherited through fork() reads nothing in the "
                              "child: open a new Consumer there", self->name);
    return raise_code(st, rc, self->name);
}

/* Parses (timeout=0) or a single leading positional/keyword argument. */
static int parse_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                      const char *const *names, int required, PyObject **out, int count)
{
    for (int i = 0; i < count; i++)
        out[i] = NULL;
    if (nargs > count) {
        PyErr_Format(PyExc_TypeError, "takes at most %d arguments (%zd given)", count, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nk; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int found = 0;
        for (int i = 0; i < count && !found; i++) {
            if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0) {
                if (out[i] != NULL) {
                    PyErr_Format(PyExc_TypeError, "got multiple values for argument '%s'", names[i]);
                    return -1;
                }
                out[i] = args[nargs + k];
                found = 1;
            }
        }
        if (!found) {
            PyErr_Format(PyExc_TypeError, "got an unexpected keyword argument '%S'", key);
            return -1;
        }
    }
    for (int i = 0; i < required; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "missing required argument '%s'", names[i]);
            return -1;
        }
    }
    return 0;
}

/* poll() and iteration: a message, None (nothing, or the stream ended:
 * *ended says which), or NULL with an exception. */
static PyObject *poll_bytes(ConsumerObject *self, int64_t timeout_ns, int stop_at_end, int *ended)
{
    struct new_bytes nb = {NULL};
    int rc = poll_until(self, timeout_ns, attempt_bytes, &nb,
                        stop_at_end ? 0 : SHMQ_WAIT_PAST_END);
    *ended = rc == SHMQ_ENDED || rc == CLOSED_WHILE_WAITING;
    if (rc == 0)
        return nb.msg;
    if (rc == SHMQ_EMPTY || rc == SHMQ_ENDED)
        Py_RETURN_NONE;
    return poll_error(self, rc, 0, 0);
}

static PyObject *Consumer_poll(ConsumerObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    PyObject *timeout;
    int64_t timeout_ns;
    if (!consumer_usable(self))
        return NULL;
    if (nargs == 0 && kwnames == NULL) {
        /* poll(): the hot path, one attempt and no waiting machinery. */
        struct new_bytes nb = {NULL};
        int rc = attempt_bytes(self, &nb);
        if (rc == 0)
            return nb.msg;
        if (rc == SHMQ_EMPTY)
            Py_RETURN_NONE;
        return poll_error(self, rc, 0, 0);
    }
    if (parse_args(args, nargs, kwnames, names, 0, &timeout, 1) < 0)
        return NULL;
    if (parse_timeout(timeout, &timeout_ns) < 0)
        return NULL;
    int ended;
    return poll_bytes(self, timeout_ns, 0, &ended);
}

static PyObject *poll_many_loop(ConsumerObject *self, PyObject *list, Py_ssize_t max_messages,
                                int64_t timeout_ns);

static PyObject *Consumer_poll_many(ConsumerObject *self, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    static const char *const names[] = {"max_messages", "timeout"};
    PyObject *argv[2];
    int64_t timeout_ns;
    if (!consumer_usable(self))
        return NULL;
    if (parse_args(args, nargs, kwnames, names, 1, argv, 2) < 0 || parse_timeout(argv[1], &timeout_ns) < 0)
        return NULL;
    Py_ssize_t max_messages = PyNumber_AsSsize_t(argv[0], PyExc_OverflowError);
    if (max_messages == -1 && PyErr_Occurred())
        return NULL;
    if (max_messages < 0) {
        PyErr_SetString(PyExc_ValueError, "max_messages must be non-negative");
        return NULL;
    }
    if (!consumer_usable(self)) /* __index__ may have run Python code */
        return NULL;
    PyObject *list = PyList_New(0);
    if (list == NULL || max_messages == 0)
        return list;
    /* A group member claims the batch at once, and holds it until the call
     * returns (shmq.h, GROUPS). */
    struct shmq_consumer *batch = self->consumer;
    shmq_consumer_batch_begin(batch, (size_t)max_messages);
    list = poll_many_loop(self, list, max_messages, timeout_ns);
    /* The handle is still open: a close() meanwhile waits for this call. */
    if (self->consumer == batch)
        shmq_consumer_batch_end(batch);
    return list;
}

static PyObject *poll_many_loop(ConsumerObject *self, PyObject *list, Py_ssize_t max_messages,
                                int64_t timeout_ns)
{
    for (Py_ssize_t i = 0; i < max_messages; i++) {
        struct new_bytes nb = {NULL};
        /* Only the first message is waited for; then take what is there. */
        int rc = poll_until(self, i == 0 ? timeout_ns : 0, attempt_bytes, &nb, SHMQ_WAIT_PAST_END);
        if (rc == SHMQ_EMPTY || rc == SHMQ_ENDED)
            break;
        if (rc < 0 && i > 0) {
            /* What was consumed is returned, never dropped; the error waits
             * for the next call. A MemoryError left the message in the ring
             * (nothing to keep); a later poll meets it again. */
            if (rc == -ENOMEM && PyErr_Occurred())
                PyErr_Clear();
            else if (rc != PYTHON_ERROR && rc != CLOSED_WHILE_WAITING)
                self->pending = rc;
            break;
        }
        if (rc < 0) {
            Py_DECREF(list);
            return poll_error(self, rc, 0, 0);
        }
        int appended = PyList_Append(list, nb.msg);
        Py_DECREF(nb.msg);
        if (appended < 0) {
            Py_DECREF(list);
            return NULL;
        }
    }
    return list;
}

static PyObject *Consumer_poll_into(ConsumerObject *self, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    static const char *const names[] = {"buffer", "timeout"};
    PyObject *argv[2];
    int64_t timeout_ns;
    if (!consumer_usable(self))
        return NULL;
    if (parse_args(args, nargs, kwnames, names, 1, argv, 2) < 0 || parse_timeout(argv[1], &timeout_ns) < 0)
        return NULL;
    Py_buffer view;
    if (writable_buffer(argv[0], &view) < 0)
        return NULL;
    if (!consumer_usable(self)) { /* a __buffer__ in Python may have closed us */
        PyBuffer_Release(&view);
        return NULL;
    }
    struct into_buffer ib = {view.buf, (size_t)view.len, 0};
    int rc = poll_until(self, timeout_ns, attempt_into, &ib, SHMQ_WAIT_PAST_END);
    PyBuffer_Release(&view);
    if (rc == 0)
        return PyLong_FromSize_t(ib.length);
    if (rc == SHMQ_EMPTY || rc == SHMQ_ENDED)
        Py_RETURN_NONE;
    return poll_error(self, rc, ib.length, ib.size);
}

static PyObject *Consumer_poll_many_into(ConsumerObject *self, PyObject *const *args,
                                         Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"buffer", "max_messages", "timeout"};
    PyObject *argv[3];
    int64_t timeout_ns;
    if (!consumer_usable(self))
        return NULL;
    if (parse_args(args, nargs, kwnames, names, 1, argv, 3) < 0 || parse_timeout(argv[2], &timeout_ns) < 0)
        return NULL;
    Py_ssize_t max_messages = 1024;
    if (argv[1] != NULL && argv[1] != Py_None) {
        max_messages = PyNumber_AsSsize_t(argv[1], PyExc_OverflowError);
        if (max_messages == -1 && PyErr_Occurred())
            return NULL;
        if (max_messages < 0) {
            PyErr_SetString(PyExc_ValueError, "max_messages must be non-negative");
            return NULL;
        }
    }
    /* A batch never needs more lengths than the ring holds (and never more
     * than POLL_MANY_MAX): the caller's integer must not size an allocation. */
    if ((uint64_t)max_messages > shmq_consumer_capacity(self->consumer))
        max_messages = (Py_ssize_t)shmq_consumer_capacity(self->consumer);
    if (max_messages > POLL_MANY_MAX)
        max_messages = POLL_MANY_MAX;
    Py_buffer view;
    if (writable_buffer(argv[0], &view) < 0)
        return NULL;
    if (!consumer_usable(self)) { /* __index__ or __buffer__ may have run Python code */
        PyBuffer_Release(&view);
        return NULL;
    }
    PyObject *result = NULL;
    size_t *lengths = PyMem_New(size_t, (size_t)(max_messages ? max_messages : 1));
    if (lengths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int n = 0;
    if (max_messages > 0) {
        /* Wait for the first message in place, then take the rest in one
         * call; a group member claims them all at once (shmq.h, GROUPS). */
        struct into_buffer ib = {view.buf, (size_t)view.len, 0};
        struct shmq_consumer *batch = self->consumer;
        shmq_consumer_batch_begin_within(batch, (size_t)max_messages, (size_t)view.len);
        int rc = poll_until(self, timeout_ns, attempt_into, &ib, SHMQ_WAIT_PAST_END);
        if (self->consumer != batch)
            batch = NULL; /* closed while it waited */
        lengths[0] = ib.length;
        if (rc == 0) {
            /* -EMSGSIZE here only ends the batch: the message stays, and
             * the next call reports it. A corrupt slot met here is skipped
             * and counted in lost, but the core's poll_many does not say
             * so once it has copied messages. */
            int more = shmq_consumer_poll_many(self->consumer, (unsigned char *)view.buf + lengths[0],
                                               (size_t)view.len - lengths[0], lengths + 1,
                                               (size_t)max_messages - 1);
            n = 1 + (more > 0 ? more : 0);
        }
        if (batch != NULL)
            shmq_consumer_batch_end(batch);
        if (rc != 0 && rc != SHMQ_EMPTY && rc != SHMQ_ENDED) {
            poll_error(self, rc, lengths[0], (size_t)view.len);
            goto done;
        }
    }
    result = PyList_New(n);
    for (int i = 0; result != NULL && i < n; i++) {
        PyObject *len = PyLong_FromSize_t(lengths[i]);
        if (len == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, len);
    }
done:
    PyMem_Free(lengths);
    PyBuffer_Release(&view);
    return result;
}

/* Blocks for the next message; stops (NULL, no exception) at the end of the
 * stream, or when another thread closes the consumer meanwhile. */
static PyObject *Consumer_iternext(ConsumerObject *self)
{
    if (!consumer_usable(self))
        return NULL;
    int ended;
    PyObject *msg = poll_bytes(self, -1, 1, &ended);
    if (msg == Py_None || (msg == NULL && ended)) {
        Py_XDECREF(msg);
        PyErr_Clear();
        return NULL;
    }
    return msg;
}

static int set_int_item(PyObject *dict, const char *key, unsigned long value)
{
    PyObject *number = PyLong_FromUnsignedLong(value);
    int rc = number == NULL ? -1 : PyDict_SetItemString(dict, key, number);
    Py_XDECREF(number);
    return rc;
}

/* Pickles by name and position, with the options it was opened with
 * (spin, owner, register): unpickling attaches a new consumer (in any
 * process) that reads on from where this one was, as this one would. */
static PyObject *Consumer_reduce(ConsumerObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->consumer == NULL)
        return closed_error("Consumer");
    PyObject *make = Py_NewRef((PyObject *)Py_TYPE(self));
    PyObject *options = PyDict_New();
    if (options == NULL)
        goto fail;
    if (self->spin != 0 && set_int_item(options, "spin", self->spin) < 0)
        goto fail;
    if (self->check_owner && set_int_item(options, "owner", (unsigned long)self->owner) < 0)
        goto fail;
    if (!self->registered_entry && PyDict_SetItemString(options, "register", Py_False) < 0)
        goto fail;
    if (self->group != NULL && PyDict_SetItemString(options, "group", self->group) < 0)
        goto fail;
    if (PyDict_GET_SIZE(options) > 0) {
        /* functools.partial(cls, **options): picklable under every protocol. */
        PyObject *functools = PyImport_ImportModule("functools");
        PyObject *partial = functools ? PyObject_GetAttrString(functools, "partial") : NULL;
        Py_XDECREF(functools);
        PyObject *bound = NULL;
        if (partial != NULL) {
            PyObject *cls = PyTuple_Pack(1, make);
            if (cls != NULL)
                bound = PyObject_Call(partial, cls, options);
            Py_XDECREF(cls);
            Py_DECREF(partial);
        }
        if (bound == NULL)
            goto fail;
        Py_SETREF(make, bound);
    }
    Py_DECREF(options);
    PyObject *result = Py_BuildValue("N(OK)", make, self->name,
                                     (unsigned long long)shmq_consumer_position(self->consumer));
    return result;
fail:
    Py_XDECREF(options);
    Py_DECREF(make);
    return NULL;
}

/* wait() and _wait_for_async(): True when a poll has something, False on
 * timeout, at the end of the stream, or when _interrupt() ended the wait. */
static PyObject *wait_for_message(ConsumerObject *self, PyObject *timeout)
{
    int64_t timeout_ns;
    if (parse_timeout(timeout == NULL ? Py_None : timeout, &timeout_ns) < 0)
        return NULL;
    int rc = timeout_ns == 0 ? shmq_consumer_wait_flags(self->consumer, 0, 0)
                             : consumer_wait(self, timeout_ns, 0);
    if (rc == 0)
        Py_RETURN_TRUE;
    if (rc == SHMQ_ENDED || rc == -ETIMEDOUT || rc == SHMQ_INTERRUPTED)
        Py_RETURN_FALSE;
    return poll_error(self, rc, 0, 0);
}

static PyObject *Consumer_wait(ConsumerObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    PyObject *timeout;
    if (!consumer_usable(self))
        return NULL;
    if (parse_args(args, nargs, kwnames, names, 0, &timeout, 1) < 0)
        return NULL;
    return wait_for_message(self, timeout);
}

static PyObject *Consumer_close(ConsumerObject *self, PyObject *Py_UNUSED(ignored))
{
    if (lent_out(self->lent, self->exports, "Consumer") < 0)
        return NULL;
    if (self->consumer != NULL)
        Consumer_close_handle(self);
    Py_RETURN_NONE;
}

static PyObject *Consumer_exit(ConsumerObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    if (lent_out(self->lent, self->exports, "Consumer") < 0)
        return NULL;
    if (self->consumer != NULL)
        Consumer_close_handle(self);
    Py_RETURN_NONE;
}

static PyObject *Consumer_repr(ConsumerObject *self)
{
    if (self->consumer == NULL)
        return PyUnicode_FromFormat("<shmq.Consumer name=%R closed>", self->name);
    if (self->group != NULL)
        return PyUnicode_FromFormat(
            "<shmq.Consumer name=%R group=%R slot_size=%u capacity=%u position=%llu lost=%llu>",
            self->name, self->group, shmq_consumer_slot_size(self->consumer),
            shmq_consumer_capacity(self->consumer),
            (unsigned long long)shmq_consumer_position(self->consumer),
            (unsigned long long)shmq_consumer_lost(self->consumer));
    return PyUnicode_FromFormat("<shmq.Consumer name=%R slot_size=%u capacity=%u position=%llu lost=%llu>",
                                self->name, shmq_consumer_slot_size(self->consumer),
                                shmq_consumer_capacity(self->consumer),
                                (unsigned long long)shmq_consumer_position(self->consumer),
                                (unsigned long long)shmq_consumer_lost(self->consumer));
}

/* A 1/0 answer from the core as a bool, or its negative code as an exception. */
static PyObject *bool_or_error(ConsumerObject *self, int rc)
{
    if (rc < 0)
        return raise_code(state_of_type(Py_TYPE(self)), rc, self->name);
    return PyBool_FromLong(rc);
}

#define CONSUMER_GETTER(field, expr)                                             \
    static PyObject *Consumer_get_##field(ConsumerObject *self, void *closure) \
    {                                                                            \
        (void)closure;                                                           \
        if (self->consumer == NULL)                                              \
            return closed_error("Consumer");                                     \
        return expr;                                                             \
    }
CONSUMER_GETTER(slot_size, PyLong_FromUnsignedLong(shmq_consumer_slot_size(self->consumer)))
CONSUMER_GETTER(capacity, PyLong_FromUnsignedLong(shmq_consumer_capacity(self->consumer)))
CONSUMER_GETTER(max_message_size,
                PyLong_FromUnsignedLongLong(shmq_consumer_max_message_size(self->consumer)))
CONSUMER_GETTER(position, PyLong_FromUnsignedLongLong(shmq_consumer_position(self->consumer)))
CONSUMER_GETTER(lost, PyLong_FromUnsignedLongLong(shmq_consumer_lost(self->consumer)))
CONSUMER_GETTER(owner_uid, PyLong_FromUnsignedLong((unsigned long)shmq_consumer_owner_uid(self->consumer)))
CONSUMER_GETTER(ended, PyBool_FromLong(shmq_consumer_ended(self->consumer)))
CONSUMER_GETTER(lossless, PyBool_FromLong(shmq_consumer_lossless(self->consumer)))
CONSUMER_GETTER(registered, PyBool_FromLong(shmq_consumer_registered(self->consumer)))
CONSUMER_GETTER(backlog, PyLong_FromUnsignedLongLong(shmq_consumer_backlog(self->consumer)))
CONSUMER_GETTER(producer_alive, bool_or_error(self, shmq_consumer_producer_alive(self->consumer)))
CONSUMER_GETTER(unlinked, bool_or_error(self, shmq_consumer_unlinked(self->consumer)))

static PyObject *Consumer_get_name(ConsumerObject *self, void *closure)
{
    (void)closure;
    return Py_NewRef(self->name);
}

static PyObject *Consumer_get_group(ConsumerObject *self, void *closure)
{
    (void)closure;
    return Py_NewRef(self->group != NULL ? self->group : Py_None);
}

static PyObject *Consumer_get_closed(ConsumerObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->consumer == NULL || self->close_pending);
}


static PyObject *Consumer_fileno(ConsumerObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!consumer_usable(self))
        return NULL;
    int fd = shmq_consumer_fileno(self->consumer);
    if (fd == -ECHILD)
        return raise_os_error(PyExc_ChildProcessError, ECHILD,
                              "a Consumer inherited through fork() has no descriptor (its entry "
                              "is the parent's): open a new Consumer in the child",
                              self->name);
    if (fd < 0)
        return raise_code(state_of_type(Py_TYPE(self)), fd, self->name);
    return PyLong_FromLong(fd);
}

/* For shmq._aio: re-arms the descriptor (shmq_consumer_rearm); False when
 * the consumer cannot be used now (closed, busy in another thread). */
static PyObject *Consumer_rearm(ConsumerObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->consumer == NULL || self->busy || self->lent || self->close_pending)
        Py_RETURN_FALSE;
    return PyBool_FromLong(shmq_consumer_rearm(self->consumer) == 0);
}

static PyMethodDef Consumer_methods[] = {
    {"_rearm", (PyCFunction)Consumer_rearm, METH_NOARGS,
     "For shmq._aio: arms the descriptor again without reading (see shmq_consumer_rearm)."},
    {"fileno", (PyCFunction)Consumer_fileno, METH_NOARGS,
     "fileno($self, /)\n--\n\nA descriptor for select, poll, epoll, selectors and "
     "loop.add_reader. It is readable whenever poll(timeout=0) would return a message (or "
     "raise: a loss or an error to report) or the stream has ended, and stops being readable "
     "only when a poll (or view) returns None: wait until readable, poll until None, wait "
     "again. A wake-up that races a poll can leave it readable with nothing to read; the "
     "next poll returns None and quiets it. The consumer owns it: close() closes it; never "
     "read from it or close it yourself. The same number on every call; ValueError once "
     "closed. While messages flow it costs nothing; each time the consumer goes quiet, the "
     "producer sends it one datagram at its next publish."},
    {"poll", (PyCFunction)(void (*)(void))Consumer_poll, METH_FASTCALL | METH_KEYWORDS,
     "poll($self, /, timeout=0)\n--\n\nReturn the next message (bytes), or None.\n\n"
     "poll(timeout=None) waits as long as it takes; poll(timeout=1.5) waits up to 1.5 "
     "seconds. poll() alone does not block: it returns None at once when nothing is there. "
     "None also comes at once when the producer closed the stream and everything was read "
     "(unless a timeout is given: then it waits for a producer to reopen the queue). Waits "
     "without the GIL; Ctrl-C interrupts the wait, and close() from another thread or a "
     "signal handler ends it with ValueError (\"Consumer was closed while waiting\"). "
     "Raises CorruptSlot for a damaged slot (counted in lost)."},
    {"poll_many", (PyCFunction)(void (*)(void))Consumer_poll_many, METH_FASTCALL | METH_KEYWORDS,
     "poll_many($self, /, max_messages, timeout=0)\n--\n\nWait up to timeout for the first "
     "message, then return it with every message already available, up to max_messages (an "
     "empty list when none came in time). What it consumed is always returned: an error "
     "met after the first message (CorruptSlot) ends the batch and is raised by the next "
     "call on this consumer."},
    {"poll_into", (PyCFunction)(void (*)(void))Consumer_poll_into, METH_FASTCALL | METH_KEYWORDS,
     "poll_into($self, /, buffer, timeout=0)\n--\n\nCopy the next message into a writable "
     "buffer and return its length, or None on timeout. Raises MessageTooLarge (and keeps the "
     "message) if the buffer is too small."},
    {"poll_many_into", (PyCFunction)(void (*)(void))Consumer_poll_many_into,
     METH_FASTCALL | METH_KEYWORDS,
     "poll_many_into($self, /, buffer, max_messages=1024, timeout=0)\n--\n\nCopy as many "
     "whole messages as fit (up to max_messages) back to back into a writable buffer and return "
     "their lengths; waits up to timeout for the first one (an empty list on timeout)."},
    {"wait", (PyCFunction)(void (*)(void))Consumer_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait($self, /, timeout=None)\n--\n\nWait up to timeout seconds (None: forever) until a "
     "poll has something to return, without consuming it. False on timeout, or at once when "
     "the producer closed the stream and everything was read. Releases the GIL."},
    {"close", (PyCFunction)Consumer_close, METH_NOARGS,
     "close($self, /)\n--\n\nDetach from the queue (idempotent). Never unlinks it. Called "
     "from another thread, or from a signal handler, while a call waits with this consumer, "
     "it interrupts that wait, which then closes the handle and raises ValueError (iteration "
     "just stops). Raises BufferError while a view or a buffer made from one is alive."},
    {"__reduce__", (PyCFunction)Consumer_reduce, METH_NOARGS, NULL},
    {"view", (PyCFunction)(void (*)(void))Consumer_view, METH_FASTCALL | METH_KEYWORDS,
     "view($self, /, timeout=0)\n--\n\nRead the next message in place: `with consumer.view() as "
     "msg:` gives a read-only memoryview into the slot (None if no message came within "
     "timeout); the consumer moves past it when the block ends. On a lossless queue a "
     "registered consumer's view cannot be overwritten during the block (a buffer that "
     "escapes it can: the exit raises BufferError), except a message from before its "
     "open (start='earliest' or a sequence) that the producer was already rewriting. Otherwise the exit re-checks the slot "
     "and raises Overwritten if the producer rewrote it meanwhile: discard what the block "
     "computed (the message counts as lost)."},
    {"__enter__", return_self, METH_NOARGS, "__enter__($self, /)\n--\n\n"},
    {"__exit__", (PyCFunction)(void (*)(void))Consumer_exit, METH_FASTCALL, "__exit__($self, exc_type, exc, tb, /)\n--\n\n"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Consumer_getset[] = {
    {"name", (getter)Consumer_get_name, NULL, "Queue name.", NULL},
    {"slot_size", (getter)Consumer_get_slot_size, NULL,
     "Bytes per slot (and the largest message, unless max_message_size says more).", NULL},
    {"max_message_size", (getter)Consumer_get_max_message_size, NULL,
     "Largest message in bytes, fixed for the queue's life.", NULL},
    {"capacity", (getter)Consumer_get_capacity, NULL, "Number of slots in the ring.", NULL},
    {"position", (getter)Consumer_get_position, NULL,
     "Next sequence number this consumer will read.", NULL},
    {"lost", (getter)Consumer_get_lost, NULL,
     "Messages this consumer lost to overrun, cumulative (a group member: its group's count).",
     NULL},
    {"owner_uid", (getter)Consumer_get_owner_uid, NULL, "uid that owns the queue's segment.", NULL},
    {"lossless", (getter)Consumer_get_lossless, NULL, "Whether the queue is lossless.", NULL},
    {"registered", (getter)Consumer_get_registered, NULL,
     "Whether this consumer holds a lossless producer back (it never loses a message).", NULL},
    {"backlog", (getter)Consumer_get_backlog, NULL,
     "Messages published that this consumer has not read yet.", NULL},
    {"producer_alive", (getter)Consumer_get_producer_alive, NULL,
     "Whether a live producer holds the queue (asks the kernel about its lock; no pids).", NULL},
    {"ended", (getter)Consumer_get_ended, NULL,
     "Whether the producer closed the stream; a producer that reopens the queue clears it. "
     "A consumer that attached after the end sees True until then: a poll with a timeout "
     "waits for the next producer run, while iteration stops at once. For a group member, "
     "also every claim of another member returned (one still held may come back to be "
     "delivered again).", NULL},
    {"unlinked", (getter)Consumer_get_unlinked, NULL,
     "Whether the queue was unlinked since this consumer attached (its name may now be "
     "another queue's).", NULL},
    {"group", (getter)Consumer_get_group, NULL,
     "The consumer group this consumer is a member of (its name), or None: the members of a "
     "group split the stream, each message going to one of them.", NULL},
    {"closed", (getter)Consumer_get_closed, NULL,
     "True after close() (also while a waiting call is about to close the handle).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Consumer_doc,
"Consumer(name, start='latest', *, spin=0, owner=None, register=True, wait=0, group=None)\n"
"--\n\n"
"A reader of queue `name`; every consumer sees every message.\n\n"
"start='latest' reads what is published after it attaches; 'earliest' starts\n"
"at the oldest message the producer will not overwrite next; an int starts at\n"
"that sequence number. A consumer that falls more than a ring behind skips\n"
"ahead and counts what it missed in `lost`; it never returns a torn message.\n"
"spin: iterations to spin before a blocking poll sleeps (at most 1,000,000).\n"
"owner: refuse (PermissionError) a queue not owned by this uid (ValueError for\n"
"a number that is no uid). register=False: take no consumer entry (not listed;\n"
"on a lossless queue, a lossy observer that never holds the producer back).\n"
"wait: seconds to wait for the queue to appear (None: forever; 0, the\n"
"default: not at all), raising QueueNotFound when it does not; Ctrl-C\n"
"interrupts the wait.\n"
"group: join the consumer group of that name (1 to 32 characters, as in queue\n"
"names): the members of a group split the stream, each message going to one\n"
"of them, while plain consumers and other groups still read every message.\n"
"The first member starts the group at its start; later ones continue from the\n"
"group's position. `lost` is then the group's count. A message a member had\n"
"claimed and not returned when it died is delivered again to another member\n"
"(or counted lost if the producer overwrote it first): docs/consumer-state.md.\n\n"
"The ring is mapped read-only. Iterating blocks for each next message and\n"
"stops when the producer closes the stream. `ended` says the producer closed\n"
"the stream; a consumer that attached after the end sees ended=True until a\n"
"producer reopens the queue: a poll with a timeout waits for that next run,\n"
"while iteration stops at once. Pickling keeps name, position, spin, owner,\n"
"register and group.");

static PyType_Slot Consumer_slots[] = {
    {Py_tp_new, Consumer_new},
    {Py_tp_dealloc, Consumer_dealloc},
    {Py_tp_repr, Consumer_repr},
    {Py_tp_methods, Consumer_methods},
    {Py_tp_getset, Consumer_getset},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, Consumer_iternext},
    {Py_tp_doc, (void *)Consumer_doc},
    {0, NULL},
};

static PyType_Spec Consumer_spec = {
    .name = "shmq.Consumer",
    .basicsize = sizeof(ConsumerObject),
    /* A base type: the package adds its asyncio methods in a subclass. */
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_BASETYPE,
    .slots = Consumer_slots,
};

/* ---------------------------------------------------------------- Lease */

/*
 * A loan (Producer.loan) or a view (Consumer.view): a context manager whose
 * __enter__ hands out a memoryview of slot memory in place, and whose
 * __exit__ releases that memoryview, then commits or abandons the loan, or
 * moves the consumer past the viewed message, where a lossy view can learn
 * that the producer overwrote it meanwhile (Overwritten). The owner counts
 * what is lent out, so that close() cannot unmap it.
 *
 * ESCAPED BUFFERS. Python cannot revoke an exported buffer: a numpy array or
 * a slice made from a loan's memoryview can outlive the with-block and still
 * write into the slot. So a loan whose buffer is still exported at exit is
 * neither committed nor abandoned: the core's claim stays open (STUCK), so
 * that the producer publishes nothing into that slot, and every publish
 * raises RuntimeError saying why. The release of the last export (or the
 * collection of the lease) abandons it. A view's buffer is read-only: the
 * consumer moves on at once, and exit only reports the escape.
 *
 * An entered lease and its memoryview refer to each other until exit; the
 * lease is a GC type, so that a lease whose exit never runs is collected,
 * abandoning what it held, instead of keeping its owner unusable forever.
 */
enum { LEASE_LOAN, LEASE_VIEW };
enum { LEASE_READY, LEASE_ENTERED, LEASE_STUCK, LEASE_DONE };

typedef struct {
    PyObject_HEAD
    PyObject *owner; /* the ProducerObject or ConsumerObject; NULL once cleared */
    int kind;
    int state;
    void *data;      /* NULL: a view that found no message */
    Py_ssize_t size;
    PyObject *view;  /* the memoryview __enter__ handed out */
    Py_ssize_t exports;
} LeaseObject;

static Py_ssize_t *owner_exports(LeaseObject *self)
{
    return self->kind == LEASE_LOAN ? &((ProducerObject *)self->owner)->exports
                                    : &((ConsumerObject *)self->owner)->exports;
}

static PyObject *new_lease(module_state *st, PyObject *owner, int kind, void *data, size_t size)
{
    LeaseObject *self = PyObject_GC_New(LeaseObject, st->lease_type);
    if (self == NULL)
        return NULL;
    self->owner = Py_NewRef(owner);
    self->kind = kind;
    self->state = LEASE_READY;
    self->data = data;
    self->size = (Py_ssize_t)size;
    self->view = NULL;
    self->exports = 0;
    if (data != NULL) {
        if (kind == LEASE_LOAN)
            ((ProducerObject *)owner)->lent = 1;
        else
            ((ConsumerObject *)owner)->lent = 1;
    }
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int Lease_getbuffer(LeaseObject *self, Py_buffer *view, int flags)
{
    if (self->state != LEASE_ENTERED || self->data == NULL || self->owner == NULL) {
        PyErr_SetString(PyExc_BufferError, "the loan or view is not open");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->size,
                          self->kind == LEASE_VIEW, flags) < 0)
        return -1;
    self->exports++;
    (*owner_exports(self))++;
    return 0;
}

/* A loan is over without a commit: nothing of it was published, and its
 * slot is the producer's again. Called when the last export of a stuck loan
 * is gone, or at collection. */
static void abandon_loan(LeaseObject *self)
{
    ProducerObject *producer = (ProducerObject *)self->owner;
    self->state = LEASE_DONE;
    producer->stuck = 0;
    producer->lent = 0;
    if (producer->producer != NULL)
        shmq_producer_abort(producer->producer);
}

static void Lease_releasebuffer(LeaseObject *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
    if (self->owner == NULL)
        return;
    (*owner_exports(self))--;
    if (self->exports == 0 && self->state == LEASE_STUCK)
        abandon_loan(self);
}

/* Releases the memoryview __enter__ handed out; one made from it may live
 * on (the lease's exports count it). */
static int release_view(LeaseObject *self)
{
    if (self->view == NULL)
        return 0;
    PyObject *r = PyObject_CallMethodNoArgs(self->view, state_of_type(Py_TYPE(self))->release_name);
    if (r == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_BufferError))
            return -1;
        PyErr_Clear();
    }
    Py_XDECREF(r);
    Py_CLEAR(self->view);
    return 0;
}

/* Ends the lease once: commit (a loan left normally), abort, or release (a
 * view); a loan whose buffer escaped gets stuck instead (see above).
 * Returns 0, or -1 with an exception set. */
static int Lease_finish(LeaseObject *self, int failed)
{
    if (self->state == LEASE_DONE || self->state == LEASE_STUCK || self->data == NULL ||
        self->owner == NULL) {
        if (self->state != LEASE_STUCK)
            self->state = LEASE_DONE;
        return 0;
    }
    if (release_view(self) < 0)
        return -1;
    int still_exported = self->exports > 0;
    if (self->kind == LEASE_LOAN) {
        ProducerObject *producer = (ProducerObject *)self->owner;
        if (still_exported) {
            self->state = LEASE_STUCK;
            producer->stuck = 1;
            if (failed)
                return 0;
            PyErr_SetString(PyExc_BufferError,
                            "the loan's buffer is still exported (a memoryview or array made from "
                            "it is alive), so nothing was published; the producer publishes "
                            "nothing until that buffer is released");
            return -1;
        }
        self->state = LEASE_DONE;
        producer->lent = 0;
        if (producer->producer == NULL)
            return 0;
        if (failed) {
            shmq_producer_abort(producer->producer);
            return 0;
        }
        int rc = shmq_producer_commit(producer->producer);
        if (rc < 0) {
            /* -ECHILD: a loan opened before fork() cannot be published from
             * the child; it is abandoned there. */
            shmq_producer_abort(producer->producer);
            raise_code(state_of_type(Py_TYPE(self)), rc, producer->name);
            return -1;
        }
        return 0;
    }
    self->state = LEASE_DONE;
    ConsumerObject *consumer = (ConsumerObject *)self->owner;
    consumer->lent = 0;
    if (consumer->consumer == NULL)
        return 0;
    int rc = shmq_consumer_release(consumer->consumer);
    if (failed)
        return 0;
    if (rc == SHMQ_OVERWRITTEN) {
        module_state *st = state_of_type(Py_TYPE(consumer));
        PyErr_SetString(st->Overwritten, "the producer overwrote the message during the view: "
                        "discard what was computed from it (it counts as lost)");
        return -1;
    }
    if (still_exported) {
        PyErr_SetString(PyExc_BufferError, "a buffer made from the view outlived its with-block; "
                        "the slot it points into will be reused");
        return -1;
    }
    return 0;
}

static PyObject *Lease_enter(LeaseObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->state != LEASE_READY) {
        PyErr_SetString(PyExc_RuntimeError, "a loan or view can be entered once");
        return NULL;
    }
    self->state = LEASE_ENTERED;
    if (self->data == NULL)
        Py_RETURN_NONE;
    self->view = PyMemoryView_FromObject((PyObject *)self);
    return Py_XNewRef(self->view);
}

static PyObject *Lease_exit(LeaseObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (self->state == LEASE_READY) {
        /* Nothing was written through a view it never handed out: publish
         * nothing (a loan's slot holds stale bytes). */
        if (Lease_finish(self, 1) < 0)
            return NULL;
        PyErr_SetString(PyExc_RuntimeError, "__exit__ without __enter__: the loan or view was "
                        "abandoned, nothing was published");
        return NULL;
    }
    int failed = nargs > 0 && args[0] != Py_None;
    if (Lease_finish(self, failed) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int Lease_traverse(LeaseObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->owner);
    Py_VISIT(self->view);
    return 0;
}

/* The collector found the lease in garbage (an entered lease whose exit
 * never ran, held by its own memoryview): abandon what it holds while the
 * owner is still here, then let go of both. */
static int Lease_clear(LeaseObject *self)
{
    if (self->owner != NULL && self->data != NULL && self->state != LEASE_DONE) {
        if (self->kind == LEASE_LOAN)
            abandon_loan(self);
        else {
            ConsumerObject *consumer = (ConsumerObject *)self->owner;
            self->state = LEASE_DONE;
            consumer->lent = 0;
            if (consumer->consumer != NULL)
                shmq_consumer_release(consumer->consumer);
        }
    }
    self->state = LEASE_DONE;
    Py_CLEAR(self->view); /* may release an export: the owner is still counted */
    if (self->owner != NULL) {
        /* Exports that outlive this (garbage as well) stop counting against
         * the owner now. */
        *owner_exports(self) -= self->exports;
        Py_CLEAR(self->owner);
    }
    return 0;
}

static void Lease_dealloc(LeaseObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    /* Never entered or never left: abandon the loan, move past the view. */
    PyObject *type_, *value, *traceback;
    PyErr_Fetch(&type_, &value, &traceback);
    if (Lease_finish(self, 1) < 0)
        PyErr_WriteUnraisable((PyObject *)self);
    PyErr_Restore(type_, value, traceback);
    Py_XDECREF(self->view);
    Py_XDECREF(self->owner);
    PyObject_GC_Del(self);
    Py_DECREF(type);
}

static PyObject *Lease_repr(LeaseObject *self)
{
    static const char *const states[] = {"ready", "open", "stuck", "done"};
    return PyUnicode_FromFormat("<shmq.%s %zd bytes %s>", self->kind == LEASE_LOAN ? "Loan" : "View",
                                self->size, states[self->state]);
}

static PyMethodDef Lease_methods[] = {
    {"__enter__", (PyCFunction)Lease_enter, METH_NOARGS, "__enter__($self, /)\n--\n\n"},
    {"__exit__", (PyCFunction)(void (*)(void))Lease_exit, METH_FASTCALL, "__exit__($self, exc_type, exc, tb, /)\n--\n\n"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Lease_slots[] = {
    {Py_tp_dealloc, Lease_dealloc},
    {Py_tp_traverse, Lease_traverse},
    {Py_tp_clear, Lease_clear},
    {Py_tp_repr, Lease_repr},
    {Py_tp_methods, Lease_methods},
    {Py_bf_getbuffer, Lease_getbuffer},
    {Py_bf_releasebuffer, Lease_releasebuffer},
    {Py_tp_doc, (void *)"A loan (Producer.loan) or a view (Consumer.view): use it in a with-block."},
    {0, NULL},
};

static PyType_Spec Lease_spec = {
    .name = "shmq.Lease",
    .basicsize = sizeof(LeaseObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION |
             Py_TPFLAGS_HAVE_GC,
    .slots = Lease_slots,
};

static PyObject *Producer_loan(PyObject *producer, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    ProducerObject *self = (ProducerObject *)producer;
    static const char *const names[] = {"size", "timeout"};
    PyObject *argv[2];
    int64_t timeout_ns;
    if (!producer_usable(self))
        return NULL;
    if (parse_args(args, nargs, kwnames, names, 1, argv, 2) < 0 ||
        parse_timeout(argv[1] ? argv[1] : Py_None, &timeout_ns) < 0)
        return NULL;
    Py_ssize_t size = PyNumber_AsSsize_t(argv[0], PyExc_OverflowError);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    if (size < 0) {
        PyErr_Format(PyExc_ValueError, "loan size must be non-negative, not %zd", size);
        return NULL;
    }
    if (!producer_usable(self)) /* __index__ may have run Python code */
        return NULL;
    if (self->lent) {
        PyErr_SetString(PyExc_RuntimeError, self->stuck
                        ? "the buffer of an earlier loan is still exported (a memoryview or array "
                          "made from it is alive): no new loan until it is released"
                        : "a loan is already open on this Producer");
        return NULL;
    }
    void *data;
    int rc = shmq_producer_claim(self->producer, (size_t)size, &data);
    if (rc == SHMQ_FULL && timeout_ns != 0) {
        struct producer_wait w = {.call = CALL_CLAIM, .size = (size_t)size};
        rc = producer_wait(self, &w, timeout_ns);
        data = w.claimed;
    }
    if (rc < 0)
        return publish_error(self, rc, (size_t)size, 0);
    PyObject *lease = new_lease(state_of_type(Py_TYPE(self)), (PyObject *)self, LEASE_LOAN, data,
                                (size_t)size);
    if (lease == NULL)
        shmq_producer_abort(self->producer);
    return lease;
}

struct peeked {
    const void *data;
    size_t length;
};

static int attempt_peek(ConsumerObject *self, void *arg)
{
    struct peeked *pk = arg;
    return shmq_consumer_peek(self->consumer, &pk->data, &pk->length);
}

static PyObject *Consumer_view(PyObject *consumer, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    ConsumerObject *self = (ConsumerObject *)consumer;
    static const char *const names[] = {"timeout"};
    PyObject *timeout = NULL;
    int64_t timeout_ns;
    if (!consumer_usable(self))
        return NULL;
    if ((nargs || kwnames) && parse_args(args, nargs, kwnames, names, 0, &timeout, 1) < 0)
        return NULL;
    if (parse_timeout(timeout, &timeout_ns) < 0)
        return NULL;
    struct peeked pk = {NULL, 0};
    int rc = poll_until(self, timeout_ns, attempt_peek, &pk, SHMQ_WAIT_PAST_END);
    module_state *st = state_of_type(Py_TYPE(self));
    if (rc == SHMQ_EMPTY || rc == SHMQ_ENDED)
        return new_lease(st, (PyObject *)self, LEASE_VIEW, NULL, 0);
    if (rc != 0)
        return poll_error(self, rc, 0, 0);
    PyObject *lease = new_lease(st, (PyObject *)self, LEASE_VIEW, (void *)pk.data, pk.length);
    if (lease == NULL)
        shmq_consumer_release(self->consumer);
    return lease;
}

/* --------------------------------------------------------------- module */

static PyObject *shmq_unlink_py(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"name", "force", NULL};
    module_state *st = state_of_module(module);
    PyObject *name;
    int force = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$p:unlink", keywords, &name, &force))
        return NULL;
    const char *cname = queue_name(st, name);
    if (cname == NULL)
        return NULL;
    int rc = shmq_unlink(cname, force ? SHMQ_UNLINK_FORCE : 0);
    if (rc == -EBUSY)
        return PyErr_Format(st->ProducerBusy,
                            "queue %R has a live producer; unlinking it would let a second producer "
                            "create another queue under the same name (use force=True to unlink "
                            "anyway)", name);
    if (rc < 0)
        return raise_code(st, rc, name);
    Py_RETURN_NONE;
}

static PyObject *shmq_exists_py(PyObject *module, PyObject *name)
{
    module_state *st = state_of_module(module);
    const char *cname = queue_name(st, name);
    if (cname == NULL)
        return NULL;
    int rc = shmq_exists(cname);
    if (rc < 0)
        return raise_code(st, rc, name);
    return PyBool_FromLong(rc);
}

/* Most groups inspect() lists: 16 group numbers, each of which planted
 * locks may make tell several pages. */
#define GROUP_LIST_MAX 64

/* The live groups of queue cname, as a list of dicts. */
static PyObject *group_info_list(module_state *st, PyObject *name, const char *cname)
{
    struct shmq_group_info groups[GROUP_LIST_MAX];
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = shmq_inspect_groups(cname, groups, GROUP_LIST_MAX);
    Py_END_ALLOW_THREADS
    if (n < 0)
        return raise_code(st, n, name);
    if (n > GROUP_LIST_MAX)
        n = GROUP_LIST_MAX;
    PyObject *list = PyList_New(n);
    for (int i = 0; list != NULL && i < n; i++) {
        struct shmq_group_info *g = &groups[i];
        /* A name is whatever the page holds: decoded leniently. */
        PyObject *group_name = PyUnicode_DecodeUTF8(g->name, (Py_ssize_t)strlen(g->name), "replace");
        PyObject *d = group_name == NULL ? NULL : Py_BuildValue(
            "{sNsIsKsKsKsKsOsN}", "name", group_name, "members", g->members,
            "position", (unsigned long long)g->position, "lag", (unsigned long long)g->lag,
            "lost", (unsigned long long)g->lost, "claimed", (unsigned long long)g->claimed,
            "unclear", g->unclear ? Py_True : Py_False,
            "uid", g->uid == (uid_t)-1 ? Py_NewRef(Py_None) : PyLong_FromUnsignedLong(g->uid));
        if (d == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, d);
    }
    return list;
}

/* inspect(name): shmq_inspect as a dict. */
static PyObject *shmq_inspect_py(PyObject *module, PyObject *name)
{
    module_state *st = state_of_module(module);
    const char *cname = queue_name(st, name);
    if (cname == NULL)
        return NULL;
    struct shmq_consumer_info *entries = PyMem_New(struct shmq_consumer_info, SHMQ_CONSUMER_LIST_MAX);
    if (entries == NULL)
        return PyErr_NoMemory();
    struct shmq_queue_info info;
    int n;
    Py_BEGIN_ALLOW_THREADS
    n = shmq_inspect(cname, &info, entries, SHMQ_CONSUMER_LIST_MAX);
    Py_END_ALLOW_THREADS
    PyObject *result = NULL;
    if (n < 0) {
        raise_code(st, n, name);
        goto done;
    }
    PyObject *consumers = consumer_info_list(entries, n < SHMQ_CONSUMER_LIST_MAX ? n : SHMQ_CONSUMER_LIST_MAX);
    if (consumers == NULL)
        goto done;
    PyObject *groups = group_info_list(st, name, cname);
    if (groups == NULL) {
        Py_DECREF(consumers);
        goto done;
    }
    result = Py_BuildValue(
        "{sOsIsKsIsIsOsKsKsOsOsksksKsKsNsN}",
        "name", name, "slot_size", info.slot_size, "max_message_size",
        (unsigned long long)info.max_message_size, "capacity", info.capacity,
        "max_consumers", info.max_consumers, "lossless", info.lossless ? Py_True : Py_False,
        "first_sequence", (unsigned long long)info.first_sequence,
        "head", (unsigned long long)info.head,
        "producer_alive", info.producer_alive ? Py_True : Py_False,
        "ended", info.ended ? Py_True : Py_False, "owner_uid", (unsigned long)info.owner_uid,
        "mode", (unsigned long)info.mode, "ring_bytes", (unsigned long long)info.ring_bytes,
        "state_bytes", (unsigned long long)info.state_bytes, "consumers", consumers,
        "groups", groups);
done:
    PyMem_Free(entries);
    return result;
}


/* wait_any(consumers, timeout=None): see module_methods. */
static PyObject *shmq_wait_any_py(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    static const char *const names[] = {"consumers", "timeout"};
    PyObject *argv[2];
    module_state *st = state_of_module(module);
    if (parse_args(args, nargs, kwnames, names, 1, argv, 2) < 0)
        return NULL;
    int64_t timeout_ns;
    if (parse_timeout(argv[1] ? argv[1] : Py_None, &timeout_ns) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(argv[0], "wait_any() takes an iterable of Consumers");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    ConsumerObject **objs = PyMem_Calloc((size_t)(n ? n : 1), sizeof(*objs));
    struct shmq_consumer **handles = PyMem_Calloc((size_t)(n ? n : 1), sizeof(*handles));
    unsigned char *ready = PyMem_Calloc((size_t)(n ? n : 1), 1);
    PyObject *result = NULL;
    Py_ssize_t m = 0, marked = 0;
    if (objs == NULL || handles == NULL || ready == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyObject_TypeCheck(item, st->consumer_type)) {
            PyErr_Format(PyExc_TypeError, "wait_any() takes Consumers, not %.100s",
                         Py_TYPE(item)->tp_name);
            goto done;
        }
        ConsumerObject *c = (ConsumerObject *)item;
        if (c->listed)
            continue; /* a duplicate: each consumer is waited on (and returned) once */
        if (!consumer_usable(c))
            goto done;
        c->listed = 1;
        objs[m] = c;
        handles[m] = c->consumer;
        m++;
    }
    if (m == 0 && timeout_ns < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "wait_any() with no consumers and no timeout would never return");
        goto done;
    }
    if (timeout_ns == 0) {
        int rc = shmq_wait_any(handles, (size_t)m, 0, ready, NULL, NULL);
        if (rc < 0) {
            raise_code(st, rc, NULL);
            goto done;
        }
    } else {
        struct released_gil gil;
        pid_t me = getpid();
        for (marked = 0; marked < m; marked++) {
            objs[marked]->busy = 1;
            objs[marked]->busy_pid = me;
        }
        int rc;
        do {
            gil.tstate = PyEval_SaveThread();
            rc = shmq_wait_any(handles, (size_t)m, timeout_ns, ready, run_signal_handlers, &gil);
            PyEval_RestoreThread(gil.tstate);
            /* Only a close() ends the wait early: an interrupt meant for an
             * asyncio wait that has gone is not ours. */
            int closing = 0;
            for (Py_ssize_t i = 0; i < m; i++)
                closing |= objs[i]->close_pending;
            if (rc != SHMQ_INTERRUPTED || closing)
                break;
        } while (1);
        int closed = 0;
        for (Py_ssize_t i = 0; i < m; i++) {
            objs[i]->busy = 0;
            if (objs[i]->close_pending) {
                Consumer_close_handle(objs[i]);
                closed = 1;
            }
        }
        marked = 0;
        if (rc == -EINTR) {
            interrupted_by_python();
            goto done;
        }
        if (closed) {
            PyErr_SetString(PyExc_ValueError, "a Consumer was closed while wait_any() waited");
            goto done;
        }
        if (rc < 0 && rc != SHMQ_INTERRUPTED) {
            raise_code(st, rc, NULL);
            goto done;
        }
        if (rc == SHMQ_INTERRUPTED)
            memset(ready, 0, (size_t)m);
    }
    result = PyList_New(0);
    for (Py_ssize_t i = 0; result != NULL && i < m; i++)
        if (ready[i] && PyList_Append(result, (PyObject *)objs[i]) < 0)
            Py_CLEAR(result);
done:
    for (Py_ssize_t i = 0; i < marked; i++)
        objs[i]->busy = 0;
    for (Py_ssize_t i = 0; i < m; i++)
        objs[i]->listed = 0;
    PyMem_Free(objs);
    PyMem_Free(handles);
    PyMem_Free(ready);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef module_methods[] = {
    {"wait_any", (PyCFunction)(void (*)(void))shmq_wait_any_py, METH_FASTCALL | METH_KEYWORDS,
     "wait_any($module, /, consumers, timeout=None)\n--\n\nBlock (GIL released) until at "
     "least one of `consumers` has something for poll(timeout=0) (a message, or a loss or "
     "error to report) or its stream has ended, or until timeout seconds pass (None: "
     "forever; 0: only look). Returns the list of those ready, each once, in the order they "
     "were given (empty on timeout). Takes any number of consumers of any queues; up to 64 it sleeps in one "
     "futex_waitv, beyond that in ppoll on their descriptors (fileno()). Ctrl-C interrupts "
     "it. The consumers may not be used by another thread meanwhile; close() from another "
     "thread ends the wait with ValueError."},
    {"unlink", (PyCFunction)(void (*)(void))shmq_unlink_py, METH_VARARGS | METH_KEYWORDS,
     "unlink($module, /, name, *, force=False)\n--\n\nRemove queue `name` from /dev/shm; open "
     "handles keep working. Raises ProducerBusy while a live producer holds it (unless force), "
     "QueueNotFound if there is none."},
    {"exists", shmq_exists_py, METH_O, "exists($module, name, /)\n--\n\nWhether the name `name` is taken in /dev/shm: by a queue (even "
     "one you may not open) or by anything else planted there (inspect() tells them apart). "
     "Never blocks."},
    {"inspect", shmq_inspect_py, METH_O,
     "inspect($module, name, /)\n--\n\nLook at queue `name` without taking anything and "
     "without writing: a dict of name, slot_size, max_message_size, capacity, max_consumers, lossless, "
     "first_sequence, head (the sequence published next), producer_alive, ended, owner_uid, "
     "mode (permission bits), ring_bytes, state_bytes and consumers, a list of dicts (index, "
     "pid, uid, registered, position, lag, lost) for each live consumer that holds an entry. "
     "The ring is validated as a consumer validates it, and liveness comes from the kernel's "
     "locks. Raises QueueNotFound; IncompatibleQueue for a segment that is no usable queue "
     "(foreign, corrupt, half-initialised, or not a regular file: a FIFO never hangs it); "
     "PermissionError; ValueError for a bad name; OSError otherwise."},
    {NULL, NULL, 0, NULL},
};

static PyObject *new_exception(PyObject *module, const char *name, const char *doc, PyObject *bases)
{
    if (bases == NULL)
        return NULL;
    PyObject *exc = PyErr_NewExceptionWithDoc(name, doc, bases, NULL);
    Py_DECREF(bases);
    if (exc == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, strrchr(name, '.') + 1, exc) < 0) {
        Py_DECREF(exc);
        return NULL;
    }
    return exc;
}

static int module_exec(PyObject *module)
{
    module_state *st = state_of_module(module);
    st->producer_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Producer_spec, NULL);
    if (st->producer_type == NULL || PyModule_AddType(module, st->producer_type) < 0)
        return -1;
    st->consumer_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Consumer_spec, NULL);
    if (st->consumer_type == NULL || PyModule_AddType(module, st->consumer_type) < 0)
        return -1;
    st->ShmqError = new_exception(module, "shmq.ShmqError", "Base class of shmq's own errors.",
                                  PyTuple_Pack(1, PyExc_Exception));
    if (st->ShmqError == NULL)
        return -1;
    st->QueueNotFound = new_exception(module, "shmq.QueueNotFound", "No queue with that name.",
                                      PyTuple_Pack(2, st->ShmqError, PyExc_FileNotFoundError));
    st->IncompatibleQueue = new_exception(
        module, "shmq.IncompatibleQueue",
        "The segment is not a usable shmq queue: other geometry, foreign, corrupt or truncated.",
        PyTuple_Pack(2, st->ShmqError, PyExc_ValueError));
    st->MessageTooLarge = new_exception(module, "shmq.MessageTooLarge",
                                        "Message larger than the slot size, or than the buffer.",
                                        PyTuple_Pack(2, st->ShmqError, PyExc_ValueError));
    st->ProducerBusy = new_exception(module, "shmq.ProducerBusy",
                                     "Another live producer holds the queue.",
                                     PyTuple_Pack(1, st->ShmqError));
    st->CorruptSlot = new_exception(module, "shmq.CorruptSlot",
                                    "A slot of the ring is corrupt (impossible length, or sequence "
                                    "stamps that keep the reader lapping); it was skipped and "
                                    "counted in lost.",
                                    PyTuple_Pack(1, st->ShmqError));
    st->release_name = PyUnicode_InternFromString("release");
    if (st->release_name == NULL)
        return -1;
    st->lease_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Lease_spec, NULL);
    if (st->lease_type == NULL || PyModule_AddType(module, st->lease_type) < 0)
        return -1;
    st->Overwritten = new_exception(module, "shmq.Overwritten",
                                    "The producer overwrote a message while it was read in place "
                                    "(Consumer.view): discard what was computed from it.",
                                    PyTuple_Pack(1, st->ShmqError));
    /* Also a queue.Full, so that code written for queue.Queue catches it. */
    PyObject *queue_module = PyImport_ImportModule("queue");
    PyObject *queue_full = queue_module ? PyObject_GetAttrString(queue_module, "Full") : NULL;
    Py_XDECREF(queue_module);
    if (queue_full == NULL)
        return -1;
    st->Full = new_exception(module, "shmq.Full",
                             "A lossless queue had no room before the timeout ran out; "
                             ".published says how many messages of a batch went out. Also a "
                             "queue.Full.",
                             PyTuple_Pack(2, st->ShmqError, queue_full));
    Py_DECREF(queue_full);
    st->TooManyConsumers = new_exception(module, "shmq.TooManyConsumers",
                                         "Every consumer entry of the lossless queue is taken "
                                         "(max_consumers).",
                                         PyTuple_Pack(1, st->ShmqError));
    if (!st->QueueNotFound || !st->IncompatibleQueue || !st->MessageTooLarge || !st->ProducerBusy ||
        !st->CorruptSlot || !st->Full || !st->TooManyConsumers || !st->Overwritten)
        return -1;
    if (PyModule_AddIntConstant(module, "SLOT_SIZE_MAX", SHMQ_SLOT_SIZE_MAX) < 0 ||
        PyModule_AddIntConstant(module, "CAPACITY_MAX", SHMQ_CAPACITY_MAX) < 0 ||
        PyModule_AddIntConstant(module, "NAME_MAX", SHMQ_NAME_MAX) < 0 ||
        PyModule_AddIntConstant(module, "SPIN_MAX", SHMQ_SPIN_MAX) < 0 ||
        PyModule_AddStringConstant(module, "NAME_PREFIX", SHMQ_NAME_PREFIX) < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg)
{
    module_state *st = state_of_module(module);
    Py_VISIT(st->producer_type);
    Py_VISIT(st->consumer_type);
    Py_VISIT(st->ShmqError);
    Py_VISIT(st->QueueNotFound);
    Py_VISIT(st->IncompatibleQueue);
    Py_VISIT(st->MessageTooLarge);
    Py_VISIT(st->ProducerBusy);
    Py_VISIT(st->CorruptSlot);
    Py_VISIT(st->Full);
    Py_VISIT(st->TooManyConsumers);
    Py_VISIT(st->Overwritten);
    Py_VISIT(st->lease_type);
    return 0;
}

static int module_clear(PyObject *module)
{
    module_state *st = state_of_module(module);
    Py_CLEAR(st->producer_type);
    Py_CLEAR(st->consumer_type);
    Py_CLEAR(st->ShmqError);
    Py_CLEAR(st->QueueNotFound);
    Py_CLEAR(st->IncompatibleQueue);
    Py_CLEAR(st->MessageTooLarge);
    Py_CLEAR(st->ProducerBusy);
    Py_CLEAR(st->CorruptSlot);
    Py_CLEAR(st->Full);
    Py_CLEAR(st->TooManyConsumers);
    Py_CLEAR(st->Overwritten);
    Py_CLEAR(st->lease_type);
    Py_CLEAR(st->release_name);
    return 0;
}

static void module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef shmq_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmq._shmq",
    .m_doc = "C core binding of shmq; use the shmq package.",
    .m_size = sizeof(module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__shmq(void)
{
    return PyModuleDef_Init(&shmq_module);
}
