/*
 * shmq._shmq: the CPython binding over the C core in csrc/.
 *
 * Only binding work lives here: argument parsing, the buffer protocol, GIL
 * release and signal checks while waiting, mapping error codes to exceptions,
 * and object lifetime. The queue protocol is entirely in csrc/.
 *
 * Multi-phase init; the types are heap types and, with the exceptions, live in
 * the module state.
 *
 * Threads: publish and non-blocking poll hold the GIL, so one handle is never
 * used by two threads at once there. A blocking poll releases the GIL, so the
 * handle is marked busy for its duration: a second thread using the same
 * Consumer gets RuntimeError, and close() from another thread defers the unmap
 * until the waiter returns (within one wait slice).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "shmq.h"

/* Longest time a blocking poll stays in C before checking for signals. */
#define WAIT_SLICE_NS (50LL * 1000 * 1000)
/* Most messages one poll_many_into call returns. */
#define POLL_MANY_MAX 65536
/* Most entries Producer.consumers reports. */
#define SHMQ_CONSUMER_LIST_MAX 1024

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

/* Raises the exception that matches a negative code from the core. */
static PyObject *raise_code(module_state *st, int code, PyObject *name)
{
    const char *why = shmq_strerror(code);
    PyObject *kind;
    switch (code) {
    case -ENOENT:
        kind = st->QueueNotFound;
        break;
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
    case -EPERM:
        PyErr_Format(PyExc_PermissionError, "%s: %R", why, name ? name : Py_None);
        return NULL;
    case -EINVAL: case -ENAMETOOLONG:
        kind = PyExc_ValueError;
        break;
    case -EACCES:
        errno = -code;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_PermissionError, name);
    case -ENOMEM:
        return PyErr_NoMemory();
    default:
        errno = -code;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
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
static int optional_u32(PyObject *value, const char *what, uint32_t *out)
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
        PyErr_Format(PyExc_ValueError, "%s must be a positive integer", what);
        return -1;
    }
    if (v == 0 || v > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s out of range: %llu", what, v);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
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
static int parse_timeout(PyObject *timeout, int64_t *ns);
static int64_t monotonic_ns(void);
static PyObject *Producer_loan(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames);
static PyObject *Consumer_view(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames);
/* A poll or publish result meaning "a Python exception is set". */
#define PYTHON_ERROR INT32_MIN

/* ------------------------------------------------------------- Producer */

typedef struct {
    PyObject_HEAD
    struct shmq_producer *producer;
    PyObject *name;
    int lent;             /* a loan() is open */
    Py_ssize_t exports;   /* buffers of loans still exported */
} ProducerObject;

static PyObject *Producer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"name", "slot_size", "capacity", "mode", "unlink_on_close",
                               "max_consumers", "lossless", NULL};
    module_state *st = state_of_type(type);
    PyObject *name, *slot_size = NULL, *capacity = NULL, *max_consumers = NULL, *lossless = NULL;
    int mode = 0600, unlink_on_close = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|OO$ipOO:Producer", keywords, &name, &slot_size,
                                     &capacity, &mode, &unlink_on_close, &max_consumers, &lossless))
        return NULL;
    const char *cname = queue_name(st, name);
    if (cname == NULL)
        return NULL;
    struct shmq_config config = {0};
    if (optional_u32(slot_size, "slot_size", &config.slot_size) < 0 ||
        optional_u32(capacity, "capacity", &config.capacity) < 0 ||
        optional_u32(max_consumers, "max_consumers", &config.max_consumers) < 0 ||
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
        return raise_code(st, rc, name);
    }
    self->name = Py_NewRef(name);
    return (PyObject *)self;
}

static void Producer_close_handle(ProducerObject *self)
{
    if (self->producer == NULL)
        return;
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

/* published: how many of a batch went out before it stopped (Full). */
static PyObject *publish_error(ProducerObject *self, int rc, size_t length, size_t published)
{
    module_state *st = state_of_type(Py_TYPE(self));
    if (rc == SHMQ_FULL) {
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
    if (rc == -EMSGSIZE)
        return PyErr_Format(st->MessageTooLarge, "message of %zu bytes exceeds slot_size %u of queue %R",
                            length, shmq_producer_slot_size(self->producer), self->name);
    return raise_code(st, rc, self->name);
}

/* Lossless and full: waits for room without the GIL, in slices, checking
 * for signals after each; returns 0 (room), SHMQ_FULL (the timeout ran
 * out: timeout_ns 0 never waits) or PYTHON_ERROR. */
static int wait_for_room(ProducerObject *self, int64_t timeout_ns)
{
    if (timeout_ns == 0)
        return SHMQ_FULL;
    int64_t deadline = timeout_ns > 0 ? monotonic_ns() + timeout_ns : INT64_MAX;
    for (;;) {
        int64_t slice = WAIT_SLICE_NS;
        if (timeout_ns > 0) {
            int64_t left = deadline - monotonic_ns();
            if (left <= 0)
                return SHMQ_FULL;
            slice = left < slice ? left : slice;
        }
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = shmq_producer_wait_room(self->producer, slice);
        Py_END_ALLOW_THREADS
        if (PyErr_CheckSignals() < 0)
            return PYTHON_ERROR;
        if (rc == 0)
            return 0;
        if (rc != -ETIMEDOUT && rc != -EINTR)
            return rc;
    }
}

/* publish(data, timeout=None): one message; on a lossless queue waits up
 * to timeout for room. The common call, publish(data), takes the fast path. */
/* The rest of publish() once the first attempt is made: wait for room on a
 * full lossless queue, and turn the result into a sequence or an error. */
static PyObject *publish_finish(ProducerObject *self, int rc, const void *bytes, size_t length,
                                uint64_t sequence, PyObject *timeout)
{
    if (rc == SHMQ_FULL) {
        int64_t timeout_ns;
        if (parse_timeout(timeout ? timeout : Py_None, &timeout_ns) < 0)
            return NULL;
        while (rc == SHMQ_FULL) {
            rc = wait_for_room(self, timeout_ns);
            if (rc != 0)
                break;
            rc = shmq_producer_publish(self->producer, bytes, length, &sequence);
        }
    }
    if (rc == PYTHON_ERROR)
        return NULL;
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
    if (self->producer == NULL)
        return closed_error("Producer");
    if (nargs == 1 && kwnames == NULL)
        argv[0] = args[0];
    else if (parse_args(args, nargs, kwnames, names, 1, argv, 2) < 0)
        return NULL;
    uint64_t sequence = 0;
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
    if (self->producer == NULL)
        return closed_error("Producer");
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
    size_t done = 0;
    int rc;
    for (;;) {
        size_t more = 0;
        rc = shmq_producer_publish_many_wait(self->producer, pointers + done, lengths + done,
                                             (size_t)n - done, &more, 0);
        done += more;
        if (rc != SHMQ_FULL)
            break;
        rc = wait_for_room(self, timeout_ns);
        if (rc != 0)
            break;
    }
    if (rc == -EMSGSIZE) {
        size_t longest = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            longest = lengths[i] > longest ? lengths[i] : longest;
        publish_error(self, rc, longest, 0);
    } else if (rc == PYTHON_ERROR)
        ;
    else if (rc < 0)
        publish_error(self, rc, 0, done);
    else if (n == 0)
        result = Py_NewRef(Py_None);
    else
        result = PyLong_FromUnsignedLongLong(shmq_producer_next_sequence(self->producer) - 1);
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
                 lent ? "a loan or view is open" : "a buffer from a loan or view is still exported");
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
    if (lent_out(self->lent, self->exports, "Producer") < 0)
        return NULL;
    Producer_close_handle(self);
    Py_RETURN_NONE;
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
    if (self->producer == NULL)
        return PyUnicode_FromFormat("<shmq.Producer name=%R closed>", self->name);
    return PyUnicode_FromFormat("<shmq.Producer name=%R slot_size=%u capacity=%u next_sequence=%llu>",
                                self->name, shmq_producer_slot_size(self->producer),
                                shmq_producer_capacity(self->producer),
                                (unsigned long long)shmq_producer_next_sequence(self->producer));
}

/* Producer.consumers: one dict per live consumer holding an entry. */
static PyObject *consumer_list(ProducerObject *self)
{
    struct shmq_consumer_info info[SHMQ_CONSUMER_LIST_MAX];
    int n = shmq_producer_consumers(self->producer, info, SHMQ_CONSUMER_LIST_MAX);
    if (n < 0)
        return raise_code(state_of_type(Py_TYPE(self)), n, self->name);
    PyObject *list = PyList_New(0);
    for (int i = 0; list != NULL && i < n; i++) {
        PyObject *d = Py_BuildValue("{sIsIsOsKsKsK}", "index", info[i].index, "pid", info[i].pid,
                                    "registered", info[i].registered ? Py_True : Py_False,
                                    "position", (unsigned long long)info[i].position,
                                    "lag", (unsigned long long)info[i].lag,
                                    "lost", (unsigned long long)info[i].lost);
        if (d == NULL || PyList_Append(list, d) < 0)
            Py_CLEAR(list);
        Py_XDECREF(d);
    }
    return list;
}

#define PRODUCER_GETTER(field, expr)                                             \
    static PyObject *Producer_get_##field(ProducerObject *self, void *closure) \
    {                                                                            \
        (void)closure;                                                           \
        if (self->producer == NULL)                                              \
            return closed_error("Producer");                                     \
        return expr;                                                             \
    }
PRODUCER_GETTER(slot_size, PyLong_FromUnsignedLong(shmq_producer_slot_size(self->producer)))
PRODUCER_GETTER(capacity, PyLong_FromUnsignedLong(shmq_producer_capacity(self->producer)))
PRODUCER_GETTER(next_sequence,
                PyLong_FromUnsignedLongLong(shmq_producer_next_sequence(self->producer)))
PRODUCER_GETTER(wakeups, PyLong_FromUnsignedLongLong(shmq_producer_wakeups(self->producer)))
PRODUCER_GETTER(lossless, PyBool_FromLong(shmq_producer_lossless(self->producer)))
PRODUCER_GETTER(last_sequence, shmq_producer_next_sequence(self->producer) == 0
                                   ? Py_NewRef(Py_None)
                                   : PyLong_FromUnsignedLongLong(
                                         shmq_producer_next_sequence(self->producer) - 1))
PRODUCER_GETTER(consumers, consumer_list(self))

static PyObject *Producer_get_name(ProducerObject *self, void *closure)
{
    (void)closure;
    return Py_NewRef(self->name);
}

static PyObject *Producer_get_closed(ProducerObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->producer == NULL);
}

static PyMethodDef Producer_methods[] = {
    {"publish", (PyCFunction)(void (*)(void))Producer_publish, METH_FASTCALL | METH_KEYWORDS,
     "publish($self, /, data, timeout=None)\n--\n\nPublish one message (any C-contiguous "
     "bytes-like object) and return its sequence number. Raises MessageTooLarge if it exceeds "
     "slot_size. On a lossless queue, waits up to timeout seconds (None: forever; 0: not at all) "
     "for every registered consumer to have room, without the GIL, and raises Full when the "
     "time runs out. Ctrl-C interrupts the wait."},
    {"publish_many", (PyCFunction)(void (*)(void))Producer_publish_many,
     METH_FASTCALL | METH_KEYWORDS,
     "publish_many($self, /, messages, timeout=None)\n--\n\nPublish every message of an "
     "iterable in order and return the last sequence number (None if empty). All sizes are "
     "checked first: on MessageTooLarge nothing is published. On a lossless queue, waits for "
     "room as publish does; Full.published says how many went out before it stopped."},
    {"close", (PyCFunction)Producer_close, METH_NOARGS,
     "close($self, /)\n--\n\nEnd the stream (consumers that have read everything stop "
     "iterating) and release the queue (idempotent). Unlinks it if unlink_on_close. In a "
     "child after fork() it only releases the child's copy."},
    {"__enter__", return_self, METH_NOARGS, "__enter__($self, /)\n--\n\n"},
    {"__exit__", (PyCFunction)(void (*)(void))Producer_exit, METH_FASTCALL, "__exit__($self, exc_type, exc, tb, /)\n--\n\n"},
    {"__reduce__", (PyCFunction)Producer_reduce, METH_NOARGS, NULL},
    {"loan", (PyCFunction)(void (*)(void))Producer_loan, METH_FASTCALL | METH_KEYWORDS,
     "loan($self, /, size, timeout=None)\n--\n\nLend out the next slot for writing in place: "
     "`with producer.loan(size) as buf:` gives a writable memoryview of exactly size bytes; "
     "leaving the block publishes it (its sequence is then last_sequence), leaving it by an "
     "exception abandons it (nothing is published; the next publish takes its sequence). "
     "Raises MessageTooLarge over slot_size; on a lossless queue waits for room like publish."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Producer_getset[] = {
    {"name", (getter)Producer_get_name, NULL, "Queue name.", NULL},
    {"slot_size", (getter)Producer_get_slot_size, NULL, "Largest message in bytes.", NULL},
    {"capacity", (getter)Producer_get_capacity, NULL, "Number of slots in the ring.", NULL},
    {"next_sequence", (getter)Producer_get_next_sequence, NULL,
     "Sequence number the next message will get.", NULL},
    {"lossless", (getter)Producer_get_lossless, NULL,
     "Whether registered consumers hold this producer back.", NULL},
    {"last_sequence", (getter)Producer_get_last_sequence, NULL,
     "Sequence number of the last message published (None before the first).", NULL},
    {"consumers", (getter)Producer_get_consumers, NULL,
     "The live consumers that hold an entry: dicts of index, pid (display only), registered, "
     "position, lag and lost. The broadcast analogue of qsize().", NULL},
    {"wakeups", (getter)Producer_get_wakeups, NULL,
     "FUTEX_WAKE calls made so far to wake sleeping consumers (one per sleep episode).", NULL},
    {"closed", (getter)Producer_get_closed, NULL, "True after close().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Producer_doc,
"Producer(name, slot_size=None, capacity=None, *, mode=0o600, unlink_on_close=False,\n"
"         max_consumers=None, lossless=None)\n"
"--\n\n"
"The single producer of queue `name`.\n\n"
"Creates the queue if it does not exist (slot_size bytes per message, default\n"
"1024; capacity slots, a power of two, default 8192; max_consumers listed\n"
"consumers, default 64), or attaches to it and continues its sequence. A given\n"
"slot_size or capacity that differs from an existing queue raises\n"
"IncompatibleQueue. Raises ProducerBusy while another live producer holds the\n"
"queue, and PermissionError for a queue owned by another user or open wider\n"
"than `mode`.");

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
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
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
    Py_ssize_t exports; /* buffers of views still exported */
} ConsumerObject;

static PyObject *Consumer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"name", "start", "spin", "owner", "register", NULL};
    module_state *st = state_of_type(type);
    PyObject *name, *start = NULL, *spin_arg = NULL, *owner = NULL;
    int register_entry = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O$OOp:Consumer", keywords, &name, &start,
                                     &spin_arg, &owner, &register_entry))
        return NULL;
    struct shmq_consumer_options options = {.start = SHMQ_START_LATEST, .no_entry = !register_entry};
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
        unsigned long uid = PyLong_AsUnsignedLong(owner);
        if (uid == (unsigned long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "owner must be a uid (a non-negative int), not %R", owner);
            return NULL;
        }
        options.check_owner = 1;
        options.owner = (uid_t)uid;
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
    const char *cname = queue_name(st, name);
    if (cname == NULL)
        return NULL;
    ConsumerObject *self = (ConsumerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = shmq_consumer_open_with(&self->consumer, cname, &options);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        Py_DECREF(self);
        if (rc == -EPERM && options.check_owner)
            return PyErr_Format(PyExc_PermissionError,
                                "queue %R is not owned by uid %lu", name, (unsigned long)options.owner);
        return raise_code(st, rc, name);
    }
    self->name = Py_NewRef(name);
    return (PyObject *)self;
}

static void Consumer_close_handle(ConsumerObject *self)
{
    if (self->busy) {
        self->close_pending = 1; /* the waiting thread closes it when it returns */
        return;
    }
    shmq_consumer_close(self->consumer);
    self->consumer = NULL;
}

static void Consumer_dealloc(ConsumerObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    Consumer_close_handle(self);
    Py_XDECREF(self->name);
    type->tp_free(self);
    Py_DECREF(type);
}

/* Checks the handle is open and not in use by a thread that released the GIL. */
static int consumer_usable_slow(ConsumerObject *self)
{
    /* A thread that was waiting when another thread called fork() does not
     * exist in the child: the mark it left there is stale. */
    if (self->busy && self->busy_pid != getpid()) {
        self->busy = 0;
        if (self->close_pending) {
            self->close_pending = 0;
            shmq_consumer_close(self->consumer);
            self->consumer = NULL;
        }
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
    return 1;
}

/* The usual answer, yes, in one test; the rest only when something is set. */
static inline int consumer_usable(ConsumerObject *self)
{
    if (self->consumer != NULL && (self->busy | self->lent | self->close_pending) == 0)
        return 1;
    return consumer_usable_slow(self);
}

/* timeout: None -> wait forever (-1); a number of seconds >= 0. */
static int parse_timeout(PyObject *timeout, int64_t *ns)
{
    if (timeout == NULL) {
        *ns = 0;
        return 0;
    }
    if (timeout == Py_None) {
        *ns = -1;
        return 0;
    }
    if (PyBool_Check(timeout) || !(PyFloat_Check(timeout) || PyLong_Check(timeout))) {
        PyErr_Format(PyExc_TypeError, "timeout must be a number of seconds or None, not %.100s",
                     Py_TYPE(timeout)->tp_name);
        return -1;
    }
    double seconds = PyFloat_AsDouble(timeout);
    if (seconds == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "timeout must be a number or None, not %.100s",
                     Py_TYPE(timeout)->tp_name);
        return -1;
    }
    if (!(seconds >= 0)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be non-negative (or None to wait forever)");
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

/* One attempt to read, made with the GIL held; returns what the core's poll
 * functions return. */
typedef int (*attempt_fn)(ConsumerObject *self, void *arg);

/*
 * Calls attempt() until it returns something other than SHMQ_EMPTY or
 * timeout_ns (-1: forever) runs out; with wait_flags 0 it also stops, with
 * SHMQ_ENDED, once the stream ended and everything was read (iteration),
 * with SHMQ_WAIT_PAST_END it waits on for a producer to reopen (poll). Between attempts it waits for the ring
 * without the GIL, in slices, checking for signals between slices. Returns
 * the last attempt's result (SHMQ_EMPTY when the time ran out), or
 * PYTHON_ERROR with a Python exception set (a signal handler raised, or the
 * handle was closed meanwhile).
 */
/* A PYTHON_ERROR (ValueError set) that iteration ends on quietly. */
#define CLOSED_WHILE_WAITING (INT32_MIN + 1)
static int poll_until(ConsumerObject *self, int64_t timeout_ns, attempt_fn attempt, void *arg,
                      unsigned wait_flags)
{
    int rc = attempt(self, arg);
    if (rc != SHMQ_EMPTY || timeout_ns == 0)
        return rc;
    int64_t deadline = timeout_ns > 0 ? monotonic_ns() + timeout_ns : INT64_MAX;
    self->busy = 1;
    self->busy_pid = getpid();
    for (;;) {
        int64_t slice = WAIT_SLICE_NS;
        if (timeout_ns > 0) {
            int64_t left = deadline - monotonic_ns();
            if (left <= 0)
                break;
            slice = left < slice ? left : slice;
        }
        int waited;
        Py_BEGIN_ALLOW_THREADS
        waited = shmq_consumer_wait_flags(self->consumer, slice, wait_flags);
        Py_END_ALLOW_THREADS
        /* Signals are checked after every slice, whatever the wait said. */
        if (PyErr_CheckSignals() < 0) {
            rc = PYTHON_ERROR;
            break;
        }
        if (self->close_pending)
            break;
        rc = attempt(self, arg);
        if (rc == SHMQ_EMPTY && waited == SHMQ_ENDED)
            rc = SHMQ_ENDED;
        if (rc != SHMQ_EMPTY)
            break;
    }
    self->busy = 0;
    if (self->close_pending) {
        if (rc == PYTHON_ERROR)
            PyErr_Clear();
        Consumer_close_handle(self);
        closed_error("Consumer");
        return CLOSED_WHILE_WAITING;
    }
    return rc;
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
    PyObject *list = PyList_New(0);
    if (list == NULL || max_messages == 0)
        return list;
    for (Py_ssize_t i = 0; i < max_messages; i++) {
        struct new_bytes nb = {NULL};
        /* Only the first message is waited for; then take what is there. */
        int rc = poll_until(self, i == 0 ? timeout_ns : 0, attempt_bytes, &nb, SHMQ_WAIT_PAST_END);
        if (rc == SHMQ_EMPTY || rc == SHMQ_ENDED)
            break;
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
    PyObject *result = NULL;
    size_t *lengths = PyMem_New(size_t, (size_t)(max_messages ? max_messages : 1));
    if (lengths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int n = 0;
    if (max_messages > 0) {
        /* Wait for the first message in place, then take the rest in one call. */
        struct into_buffer ib = {view.buf, (size_t)view.len, 0};
        int rc = poll_until(self, timeout_ns, attempt_into, &ib, SHMQ_WAIT_PAST_END);
        lengths[0] = ib.length;
        if (rc == 0) {
            /* -EMSGSIZE or -EBADMSG here only end the batch: the next call
             * reports them (a bad slot is already counted in lost). */
            int more = shmq_consumer_poll_many(self->consumer, (unsigned char *)view.buf + lengths[0],
                                               (size_t)view.len - lengths[0], lengths + 1,
                                               (size_t)max_messages - 1);
            n = 1 + (more > 0 ? more : 0);
        } else if (rc != SHMQ_EMPTY && rc != SHMQ_ENDED) {
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

/* Pickles by name and position: unpickling attaches a new consumer (in any
 * process) that reads on from where this one was. */
static PyObject *Consumer_reduce(ConsumerObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->consumer == NULL)
        return closed_error("Consumer");
    return Py_BuildValue("O(OK)", (PyObject *)Py_TYPE(self), self->name,
                         (unsigned long long)shmq_consumer_position(self->consumer));
}

static int attempt_nothing(ConsumerObject *self, void *arg)
{
    (void)arg;
    return shmq_consumer_wait_flags(self->consumer, 0, SHMQ_WAIT_PAST_END) == 0 ? 0 : SHMQ_EMPTY;
}

static PyObject *Consumer_wait(ConsumerObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    PyObject *timeout;
    int64_t timeout_ns;
    if (!consumer_usable(self))
        return NULL;
    if (parse_args(args, nargs, kwnames, names, 0, &timeout, 1) < 0)
        return NULL;
    if (parse_timeout(timeout == NULL ? Py_None : timeout, &timeout_ns) < 0)
        return NULL;
    int rc = poll_until(self, timeout_ns, attempt_nothing, NULL, 0);
    if (rc == 0)
        Py_RETURN_TRUE;
    if (rc == SHMQ_EMPTY || rc == SHMQ_ENDED)
        Py_RETURN_FALSE;
    return poll_error(self, rc, 0, 0);
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

static PyObject *Consumer_get_closed(ConsumerObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->consumer == NULL || self->close_pending);
}

static PyMethodDef Consumer_methods[] = {
    {"poll", (PyCFunction)(void (*)(void))Consumer_poll, METH_FASTCALL | METH_KEYWORDS,
     "poll($self, /, timeout=0)\n--\n\nReturn the next message, or None if none arrives "
     "within timeout seconds (0: don't wait; None: wait forever), or at once if the producer "
     "closed the stream and everything was read. Releases the GIL while waiting; Ctrl-C "
     "interrupts it. Raises CorruptSlot for a damaged slot (counted in lost)."},
    {"poll_many", (PyCFunction)(void (*)(void))Consumer_poll_many, METH_FASTCALL | METH_KEYWORDS,
     "poll_many($self, /, max_messages, timeout=0)\n--\n\nWait up to timeout for the first "
     "message, then return it with every message already available, up to max_messages."},
    {"poll_into", (PyCFunction)(void (*)(void))Consumer_poll_into, METH_FASTCALL | METH_KEYWORDS,
     "poll_into($self, /, buffer, timeout=0)\n--\n\nCopy the next message into a writable "
     "buffer and return its length, or None on timeout. Raises MessageTooLarge (and keeps the "
     "message) if the buffer is too small."},
    {"poll_many_into", (PyCFunction)(void (*)(void))Consumer_poll_many_into,
     METH_FASTCALL | METH_KEYWORDS,
     "poll_many_into($self, /, buffer, max_messages=1024, timeout=0)\n--\n\nCopy as many "
     "whole messages as fit (up to max_messages) back to back into a writable buffer and return "
     "their lengths; waits up to timeout for the first one."},
    {"wait", (PyCFunction)(void (*)(void))Consumer_wait, METH_FASTCALL | METH_KEYWORDS,
     "wait($self, /, timeout=None)\n--\n\nWait up to timeout seconds (None: forever) until a "
     "poll has something to return, without consuming it. False on timeout, or at once when "
     "the producer closed the stream and everything was read. Releases the GIL."},
    {"close", (PyCFunction)Consumer_close, METH_NOARGS,
     "close($self, /)\n--\n\nDetach from the queue (idempotent). Never unlinks it."},
    {"__reduce__", (PyCFunction)Consumer_reduce, METH_NOARGS, NULL},
    {"view", (PyCFunction)(void (*)(void))Consumer_view, METH_FASTCALL | METH_KEYWORDS,
     "view($self, /, timeout=0)\n--\n\nRead the next message in place: `with consumer.view() as "
     "msg:` gives a read-only memoryview into the slot (None if no message came within "
     "timeout); the consumer moves past it when the block ends. On a lossless queue a "
     "registered consumer's view cannot be overwritten. Otherwise the exit re-checks the slot "
     "and raises Overwritten if the producer rewrote it meanwhile: discard what the block "
     "computed (the message counts as lost)."},
    {"__enter__", return_self, METH_NOARGS, "__enter__($self, /)\n--\n\n"},
    {"__exit__", (PyCFunction)(void (*)(void))Consumer_exit, METH_FASTCALL, "__exit__($self, exc_type, exc, tb, /)\n--\n\n"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Consumer_getset[] = {
    {"name", (getter)Consumer_get_name, NULL, "Queue name.", NULL},
    {"slot_size", (getter)Consumer_get_slot_size, NULL, "Largest message in bytes.", NULL},
    {"capacity", (getter)Consumer_get_capacity, NULL, "Number of slots in the ring.", NULL},
    {"position", (getter)Consumer_get_position, NULL,
     "Next sequence number this consumer will read.", NULL},
    {"lost", (getter)Consumer_get_lost, NULL,
     "Messages this consumer lost to overrun, cumulative.", NULL},
    {"owner_uid", (getter)Consumer_get_owner_uid, NULL, "uid that owns the queue's segment.", NULL},
    {"lossless", (getter)Consumer_get_lossless, NULL, "Whether the queue is lossless.", NULL},
    {"registered", (getter)Consumer_get_registered, NULL,
     "Whether this consumer holds a lossless producer back (it never loses a message).", NULL},
    {"backlog", (getter)Consumer_get_backlog, NULL,
     "Messages published that this consumer has not read yet.", NULL},
    {"producer_alive", (getter)Consumer_get_producer_alive, NULL,
     "Whether a live producer holds the queue (asks the kernel about its lock; no pids).", NULL},
    {"ended", (getter)Consumer_get_ended, NULL,
     "Whether the producer closed the stream (a producer that reopens it clears this).", NULL},
    {"unlinked", (getter)Consumer_get_unlinked, NULL,
     "Whether the queue was unlinked since this consumer attached (its name may now be "
     "another queue's).", NULL},
    {"closed", (getter)Consumer_get_closed, NULL, "True after close().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(Consumer_doc,
"Consumer(name, start='latest', *, spin=0, owner=None, register=True)\n"
"--\n\n"
"A reader of queue `name`; every consumer sees every message.\n\n"
"start='latest' reads what is published after it attaches; 'earliest' starts\n"
"at the oldest message the producer will not overwrite next. A consumer that\n"
"falls more than a ring behind skips ahead and counts what it missed in `lost`;\n"
"it never returns a torn message. spin: iterations to spin before a blocking\n"
"poll sleeps (at most 1,000,000). owner: refuse (PermissionError) a queue not\n"
"owned by this uid. register=False: take no consumer entry (not listed).\n"
"The ring is mapped read-only. Iterating blocks for each next message and\n"
"stops when the producer closes the stream.");

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
 */
enum { LEASE_LOAN, LEASE_VIEW };
enum { LEASE_READY, LEASE_ENTERED, LEASE_DONE };

typedef struct {
    PyObject_HEAD
    PyObject *owner; /* the ProducerObject or ConsumerObject */
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
    LeaseObject *self = PyObject_New(LeaseObject, st->lease_type);
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
    return (PyObject *)self;
}

static int Lease_getbuffer(LeaseObject *self, Py_buffer *view, int flags)
{
    if (self->state != LEASE_ENTERED || self->data == NULL) {
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

static void Lease_releasebuffer(LeaseObject *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
    (*owner_exports(self))--;
}

/* Ends the lease once: commit (a loan left normally), abort, or release (a
 * view). Returns 0, or -1 with an exception set. */
static int Lease_finish(LeaseObject *self, int failed)
{
    if (self->state == LEASE_DONE || self->data == NULL) {
        self->state = LEASE_DONE;
        return 0;
    }
    int still_exported = 0;
    if (self->view != NULL) {
        PyObject *r = PyObject_CallMethodNoArgs(self->view, state_of_type(Py_TYPE(self))->release_name);
        if (r == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_BufferError))
                return -1;
            PyErr_Clear();
        }
        Py_XDECREF(r);
        Py_CLEAR(self->view);
    }
    still_exported = self->exports > 0;
    self->state = LEASE_DONE;
    if (self->kind == LEASE_LOAN) {
        ProducerObject *producer = (ProducerObject *)self->owner;
        producer->lent = 0;
        if (producer->producer == NULL)
            return 0;
        if (failed || still_exported) {
            shmq_producer_abort(producer->producer);
            if (still_exported && !failed)
                PyErr_SetString(PyExc_BufferError,
                                "the loan's buffer is still exported (a memoryview or array made "
                                "from it is alive), so nothing was published");
            return still_exported && !failed ? -1 : 0;
        }
        shmq_producer_commit(producer->producer);
        return 0;
    }
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
    int failed = nargs > 0 && args[0] != Py_None;
    if (Lease_finish(self, failed) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static void Lease_dealloc(LeaseObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    /* Never entered or never left: abandon the loan, move past the view. */
    PyObject *type_, *value, *traceback;
    PyErr_Fetch(&type_, &value, &traceback);
    if (Lease_finish(self, 1) < 0)
        PyErr_WriteUnraisable((PyObject *)self);
    PyErr_Restore(type_, value, traceback);
    Py_XDECREF(self->view);
    Py_XDECREF(self->owner);
    PyObject_Free(self);
    Py_DECREF(type);
}

static PyObject *Lease_repr(LeaseObject *self)
{
    static const char *const states[] = {"ready", "open", "done"};
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
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Lease_slots,
};

static PyObject *Producer_loan(PyObject *producer, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    ProducerObject *self = (ProducerObject *)producer;
    static const char *const names[] = {"size", "timeout"};
    PyObject *argv[2];
    int64_t timeout_ns;
    if (self->producer == NULL)
        return closed_error("Producer");
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
    if (self->lent) {
        PyErr_SetString(PyExc_RuntimeError, "a loan is already open on this Producer");
        return NULL;
    }
    void *data;
    int rc = shmq_producer_claim(self->producer, (size_t)size, &data);
    while (rc == SHMQ_FULL) {
        rc = wait_for_room(self, timeout_ns);
        if (rc != 0)
            break;
        rc = shmq_producer_claim(self->producer, (size_t)size, &data);
    }
    if (rc == PYTHON_ERROR)
        return NULL;
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

static PyMethodDef module_methods[] = {
    {"unlink", (PyCFunction)(void (*)(void))shmq_unlink_py, METH_VARARGS | METH_KEYWORDS,
     "unlink($module, /, name, *, force=False)\n--\n\nRemove queue `name` from /dev/shm; open "
     "handles keep working. Raises ProducerBusy while a live producer holds it (unless force), "
     "QueueNotFound if there is none."},
    {"exists", shmq_exists_py, METH_O, "exists($module, name, /)\n--\n\nWhether queue `name` exists."},
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
    st->Full = new_exception(module, "shmq.Full",
                             "A lossless queue had no room before the timeout ran out; "
                             ".published says how many messages of a batch went out.",
                             PyTuple_Pack(1, st->ShmqError));
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
