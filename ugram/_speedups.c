/* ugram._speedups: the per-datagram loops of the receiver and the workers, in C.
 *
 * Optional: ugram runs without it (pure-Python paths with the same behaviour), and the
 * `speedups` setting turns it off. Each function does exactly what its Python twin does
 * (ugram/ring.py, ugram/receiver/mmsg.py), in the same order of stores, so that the
 * crash-safety arguments made there hold here too:
 *
 *   - a record's bytes are stored before the head that publishes it (a release store);
 *   - the head is published per record, and the scratch area's `placed` index is stored
 *     right after, so a receiver killed mid-batch loses nothing and a successor places
 *     at most one record twice;
 *   - the consumer loads the head with acquire semantics before it reads record bytes.
 *
 * x86-64 only, like the ring itself (ugram.ring.check_memory_ordering refuses the rest).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* Ring control block: u64 slots (ugram/ring.py). */
#define CONTROL_SIZE 4096
#define CTL_CAPACITY 1
#define CTL_HEAD 8
#define CTL_PUBLISHED 9
#define CTL_TAIL 16
#define HEADER_SIZE 32
#define PAD_MARK 0xFFFFFFFFu
#define FLAG_CREDS 1u
#define MSG_TRUNC_FLAG 0x20u
#define SENTINEL 0xFFFFFFFFu

static inline uint64_t load_acquire(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_release(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

typedef struct {
    /* byte offsets inside the scratch area (ugram/receiver/mmsg.py) */
    Py_ssize_t headers_at, header_stride, len_at, flags_at, namelen_at;
    Py_ssize_t names_at, name_stride, payloads_at, slot_stride;
} ScratchLayout;

static int parse_layout(PyObject *tuple, ScratchLayout *l)
{
    return PyArg_ParseTuple(tuple, "nnnnnnnnn;layout: 9 offsets", &l->headers_at,
                            &l->header_stride, &l->len_at, &l->flags_at, &l->namelen_at,
                            &l->names_at, &l->name_stride, &l->payloads_at, &l->slot_stride);
}

static inline uint32_t slot_u32(const char *scratch, const ScratchLayout *l, Py_ssize_t i,
                                Py_ssize_t field)
{
    uint32_t v;
    memcpy(&v, scratch + l->headers_at + i * l->header_stride + field, 4);
    return v;
}

/* The sender's address as stored in a ring: a path without its trailing NULs, an abstract
 * name with its leading NUL, or nothing for an unbound sender (ReceiveBatch.address). */
static Py_ssize_t slot_address(const char *scratch, const ScratchLayout *l, Py_ssize_t i,
                               const char **out)
{
    uint32_t namelen = slot_u32(scratch, l, i, l->namelen_at);
    if (namelen <= 2)
        return 0;
    if (namelen > (uint32_t)l->name_stride)
        namelen = (uint32_t)l->name_stride;
    const char *name = scratch + l->names_at + i * l->name_stride + 2;
    Py_ssize_t n = (Py_ssize_t)namelen - 2;
    if (name[0] != '\0')
        while (n > 0 && name[n - 1] == '\0')
            n--;
    *out = name;
    return n;
}

PyDoc_STRVAR(put_scratch_doc,
"put_scratch(ring, scratch, layout, first, count, limit, recv_ns) -> (next, placed, nbytes, oversized)\n\n"
"Copy scratch slots first..count-1 into the ring, publishing each record and marking it\n"
"placed in the scratch area. A slot over `limit` bytes (or truncated by the kernel) is\n"
"skipped and counted as oversized. Stops at the first record that does not fit: `next` is\n"
"its index (== count when every slot was handled).");

static PyObject *put_scratch(PyObject *self, PyObject *args)
{
    Py_buffer ring, scratch;
    PyObject *layout_tuple;
    Py_ssize_t first, count, limit;
    long long recv_ns;
    ScratchLayout l;
    if (!PyArg_ParseTuple(args, "w*w*O!nnnL", &ring, &scratch, &PyTuple_Type, &layout_tuple,
                          &first, &count, &limit, &recv_ns))
        return NULL;
    PyObject *result = NULL;
    if (!parse_layout(layout_tuple, &l))
        goto done;
    if (ring.len < CONTROL_SIZE || count < first || first < 0 ||
        l.headers_at + count * l.header_stride > scratch.len ||
        l.payloads_at + count * l.slot_stride > scratch.len ||
        l.names_at + count * l.name_stride > scratch.len) {
        PyErr_SetString(PyExc_ValueError, "put_scratch: buffers too small for the layout");
        goto done;
    }
    char *rbase = (char *)ring.buf, *sbase = (char *)scratch.buf;
    uint64_t *ctl = (uint64_t *)rbase, *placed_index = (uint64_t *)sbase;
    char *data = rbase + CONTROL_SIZE;
    uint64_t cap = ctl[CTL_CAPACITY];
    if (cap == 0 || CONTROL_SIZE + cap > (uint64_t)ring.len) {
        PyErr_SetString(PyExc_ValueError, "put_scratch: not a ring");
        goto done;
    }
    uint64_t head = ctl[CTL_HEAD], published = ctl[CTL_PUBLISHED];
    uint64_t tail = load_acquire(&ctl[CTL_TAIL]);
    Py_ssize_t i, placed = 0, oversized = 0;
    long long nbytes = 0;
    for (i = first; i < count; i++) {
        uint32_t n = slot_u32(sbase, &l, i, l.len_at);
        if ((Py_ssize_t)n > limit || (slot_u32(sbase, &l, i, l.flags_at) & MSG_TRUNC_FLAG)) {
            oversized++;
            placed_index[0] = (uint64_t)i + 1;
            continue;
        }
        const char *address = NULL;
        Py_ssize_t alen = slot_address(sbase, &l, i, &address);
        uint64_t size = ((uint64_t)HEADER_SIZE + alen + n + 7) & ~(uint64_t)7;
        uint64_t off = head % cap;
        uint64_t pad = (cap - off < size) ? cap - off : 0;
        if (head + pad + size - tail > cap) {
            tail = load_acquire(&ctl[CTL_TAIL]);
            if (head + pad + size - tail > cap)
                break; /* full (or larger than the ring): the caller decides */
        }
        if (pad) {
            uint32_t mark = PAD_MARK;
            memcpy(data + off, &mark, 4);
            head += pad;
            off = 0;
        }
        char *rec = data + off;
        uint32_t length = (uint32_t)(HEADER_SIZE + alen + n), zero32 = 0;
        uint16_t alen16 = (uint16_t)alen, zero16 = 0;
        int64_t ns = recv_ns;
        memcpy(rec, &length, 4);
        memcpy(rec + 4, &zero32, 4);   /* flags: no credentials */
        memcpy(rec + 8, &ns, 8);
        memcpy(rec + 16, &zero32, 4);  /* pid */
        memcpy(rec + 20, &zero32, 4);  /* uid */
        memcpy(rec + 24, &zero32, 4);  /* gid */
        memcpy(rec + 28, &alen16, 2);
        memcpy(rec + 30, &zero16, 2);
        if (alen)
            memcpy(rec + HEADER_SIZE, address, (size_t)alen);
        memcpy(rec + HEADER_SIZE + alen, sbase + l.payloads_at + i * l.slot_stride, n);
        head += size;
        ctl[CTL_PUBLISHED] = ++published;
        store_release(&ctl[CTL_HEAD], head); /* every record byte is stored before this */
        placed_index[0] = (uint64_t)i + 1;   /* placed: a successor must not place it again */
        placed++;
        nbytes += n;
    }
    result = Py_BuildValue("nnLn", i, placed, nbytes, oversized);
done:
    PyBuffer_Release(&ring);
    PyBuffer_Release(&scratch);
    return result;
}

PyDoc_STRVAR(reset_slots_doc,
"reset_slots(scratch, layout, count, controllen_at, control_size)\n\n"
"Ready the first `count` scratch slots for the next recvmmsg call: lengths back to the\n"
"sentinel, name (and control) lengths back to their buffer sizes; then `placed` = 0.");

static PyObject *reset_slots(PyObject *self, PyObject *args)
{
    Py_buffer scratch;
    PyObject *layout_tuple;
    Py_ssize_t count, controllen_at;
    unsigned long long control_size;
    ScratchLayout l;
    if (!PyArg_ParseTuple(args, "w*O!nnK", &scratch, &PyTuple_Type, &layout_tuple, &count,
                          &controllen_at, &control_size))
        return NULL;
    PyObject *result = NULL;
    if (!parse_layout(layout_tuple, &l))
        goto done;
    if (count < 0 || l.headers_at + count * l.header_stride > scratch.len) {
        PyErr_SetString(PyExc_ValueError, "reset_slots: buffer too small for the layout");
        goto done;
    }
    char *sbase = (char *)scratch.buf;
    uint32_t sentinel = SENTINEL, namelen = 110; /* sockaddr_un */
    for (Py_ssize_t i = 0; i < count; i++) {
        char *hdr = sbase + l.headers_at + i * l.header_stride;
        memcpy(hdr + l.len_at, &sentinel, 4);
        memcpy(hdr + l.namelen_at, &namelen, 4);
        if (control_size)
            memcpy(hdr + controllen_at, &control_size, 8);
    }
    store_release((uint64_t *)sbase, 0); /* after the reset: a kill in between finds nothing */
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&scratch);
    return result;
}

PyDoc_STRVAR(take_records_doc,
"take_records(ring, rpos, head_seen, limit, record_type) -> (batch, rpos, head_seen)\n\n"
"Read up to `limit` published records starting at byte position `rpos`; `batch` is a\n"
"list of (record, end) pairs, each record a `record_type` (a 6-field tuple subclass:\n"
"payload, address, recv_ns, pid, uid, gid).");

static PyObject *make_record(PyTypeObject *type, const char *rec, uint32_t length)
{
    uint32_t flags;
    int64_t recv_ns;
    int32_t pid;
    uint32_t uid, gid;
    uint16_t alen;
    memcpy(&flags, rec + 4, 4);
    memcpy(&recv_ns, rec + 8, 8);
    memcpy(&pid, rec + 16, 4);
    memcpy(&uid, rec + 20, 4);
    memcpy(&gid, rec + 24, 4);
    memcpy(&alen, rec + 28, 2);
    if (HEADER_SIZE + (uint32_t)alen > length) {
        PyErr_SetString(PyExc_ValueError, "take_records: corrupt record header");
        return NULL;
    }
    PyObject *record = type->tp_alloc(type, 6);
    if (record == NULL)
        return NULL;
    PyObject *items[6];
    items[0] = PyBytes_FromStringAndSize(rec + HEADER_SIZE + alen, length - HEADER_SIZE - alen);
    items[1] = PyBytes_FromStringAndSize(rec + HEADER_SIZE, alen);
    items[2] = PyLong_FromLongLong(recv_ns);
    items[3] = PyLong_FromLong(pid);
    if (flags & FLAG_CREDS) {
        items[4] = PyLong_FromUnsignedLong(uid);
        items[5] = PyLong_FromUnsignedLong(gid);
    } else { /* Record's convention for "no credentials" */
        items[4] = PyLong_FromLong(-1);
        items[5] = PyLong_FromLong(-1);
    }
    for (int k = 0; k < 6; k++) {
        if (items[k] == NULL) {
            for (int j = 0; j < 6; j++)
                Py_XDECREF(items[j]);
            Py_DECREF(record);
            return NULL;
        }
    }
    for (int k = 0; k < 6; k++)
        PyTuple_SET_ITEM(record, k, items[k]);
    return record;
}

static PyObject *take_records(PyObject *self, PyObject *args)
{
    Py_buffer ring;
    unsigned long long rpos, head_seen;
    Py_ssize_t limit;
    PyTypeObject *type;
    if (!PyArg_ParseTuple(args, "w*KKnO!", &ring, &rpos, &head_seen, &limit, &PyType_Type, &type))
        return NULL;
    PyObject *batch = NULL, *result = NULL;
    if (!PyType_IsSubtype(type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "take_records: record_type must be a tuple subclass");
        goto done;
    }
    char *rbase = (char *)ring.buf;
    uint64_t *ctl = (uint64_t *)rbase;
    const char *data = rbase + CONTROL_SIZE;
    uint64_t cap = ctl[CTL_CAPACITY];
    if (ring.len < CONTROL_SIZE || cap == 0 || CONTROL_SIZE + cap > (uint64_t)ring.len) {
        PyErr_SetString(PyExc_ValueError, "take_records: not a ring");
        goto done;
    }
    batch = PyList_New(0);
    if (batch == NULL)
        goto done;
    uint64_t pos = rpos, seen = head_seen;
    for (Py_ssize_t taken = 0; taken < limit; taken++) {
        if (pos == seen) {
            seen = load_acquire(&ctl[CTL_HEAD]); /* before any record byte is read */
            if (pos == seen)
                break;
        }
        uint64_t off = pos % cap;
        uint32_t mark = 0;
        if (cap - off >= 4)
            memcpy(&mark, data + off, 4);
        if (cap - off < HEADER_SIZE || mark == PAD_MARK) {
            pos += cap - off;
            off = 0;
        }
        uint32_t length;
        memcpy(&length, data + off, 4);
        if (length < HEADER_SIZE || off + length > cap) {
            PyErr_SetString(PyExc_ValueError, "take_records: corrupt record length");
            goto done;
        }
        PyObject *record = make_record(type, data + off, length);
        if (record == NULL)
            goto done;
        pos += ((uint64_t)length + 7) & ~(uint64_t)7;
        PyObject *pair = Py_BuildValue("(NK)", record, (unsigned long long)pos);
        if (pair == NULL || PyList_Append(batch, pair) < 0) {
            Py_XDECREF(pair);
            goto done;
        }
        Py_DECREF(pair);
    }
    result = Py_BuildValue("OKK", batch, (unsigned long long)pos, (unsigned long long)seen);
done:
    Py_XDECREF(batch);
    PyBuffer_Release(&ring);
    return result;
}


/* ---- worker: the per-record loop ------------------------------------------------------ */

#define CTL_ACKED 17
#define CTL_IN_HAND 18

typedef struct {
    /* u64 slot indexes in the worker's counter block (ugram/stats.py) */
    Py_ssize_t command, retire, progress, busy_since, handled, handler_errors, invalid;
    Py_ssize_t latency_first, latency_buckets, latency_sum;
} CounterSlots;

static int64_t clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ugram.stats.observe_latency */
static void observe_latency(uint64_t *c, const CounterSlots *s, int64_t ns)
{
    if (ns <= 0) {
        c[s->latency_first] += 1;
        return;
    }
    uint64_t us = (uint64_t)(ns - 1) / 1000;
    Py_ssize_t index = us ? 64 - __builtin_clzll(us) : 0; /* int.bit_length() */
    c[s->latency_first + (index < s->latency_buckets ? index : s->latency_buckets)] += 1;
    c[s->latency_sum] += (uint64_t)ns;
}

/* The exception being raised, taken off the thread state (normalised, with traceback). */
static PyObject *take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value != NULL ? value : Py_NewRef(Py_None);
#endif
}

/* Call fn(arg); an Exception is reported through on_exc(exc) and 1 is returned; anything
 * else raised (SystemExit, KeyboardInterrupt) propagates: -1. 0 when the call returned. */
static int call_reporting(PyObject *fn, PyObject *arg, PyObject *on_exc, PyObject **result)
{
    PyObject *r = PyObject_CallOneArg(fn, arg);
    if (r != NULL) {
        if (result != NULL)
            *result = r;
        else
            Py_DECREF(r);
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *exc = take_exception();
    PyObject *cb = PyObject_CallOneArg(on_exc, exc);
    Py_DECREF(exc);
    if (cb == NULL)
        return -1;
    Py_DECREF(cb);
    return 1;
}

PyDoc_STRVAR(run_records_doc,
"run_records(batch, ctl, counters, slots, process, call, decode, decode_errors, on_invalid,\n"
"            on_error, allowance) -> done\n\n"
"The worker's per-record loop (ugram.workers.loop.Worker._record_step): for each (record,\n"
"end) of `batch`, mark it in hand, count progress, handle it, observe its latency and\n"
"acknowledge it. With `call` set (plain data handlers) the record's payload, decoded by\n"
"`decode` when not None, goes to `call`; a decode error (one of `decode_errors`) is counted\n"
"as invalid and passed to on_invalid(exc), an Exception from `call` is counted and passed to\n"
"on_error(exc). With `call` None, process(record) does everything. Stops before a record\n"
"when told to retire, or after `allowance` records. Returns how many were handled.");

static PyObject *run_records(PyObject *self, PyObject *args)
{
    PyObject *batch, *slots_tuple, *process, *call, *decode, *decode_errors, *on_invalid,
        *on_error;
    Py_buffer ctl_buf, counters_buf;
    Py_ssize_t allowance;
    CounterSlots s;
    if (!PyArg_ParseTuple(args, "O!w*w*O!OOOOOOn", &PyList_Type, &batch, &ctl_buf,
                          &counters_buf, &PyTuple_Type, &slots_tuple, &process, &call, &decode,
                          &decode_errors, &on_invalid, &on_error, &allowance))
        return NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(slots_tuple, "nnnnnnnnnn;slots: 10 counter indexes", &s.command,
                          &s.retire, &s.progress, &s.busy_since, &s.handled, &s.handler_errors,
                          &s.invalid, &s.latency_first, &s.latency_buckets, &s.latency_sum))
        goto done;
    if (ctl_buf.len < CONTROL_SIZE || counters_buf.len < 64 * 8) {
        PyErr_SetString(PyExc_ValueError, "run_records: control block or counters too small");
        goto done;
    }
    uint64_t *ctl = (uint64_t *)ctl_buf.buf, *c = (uint64_t *)counters_buf.buf;
    volatile uint64_t *command = &c[s.command];
    Py_ssize_t n = PyList_GET_SIZE(batch), done = 0;
    for (Py_ssize_t k = 0; k < n && done < allowance; k++) {
        if (done && *command == (uint64_t)s.retire)
            break;
        PyObject *pair = PyList_GET_ITEM(batch, k), *record, *end_obj;
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "run_records: batch items are (record, end)");
            goto done;
        }
        record = PyTuple_GET_ITEM(pair, 0);
        end_obj = PyTuple_GET_ITEM(pair, 1);
        uint64_t end = PyLong_AsUnsignedLongLong(end_obj);
        if (end == (uint64_t)-1 && PyErr_Occurred())
            goto done;
        if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) < 3) {
            PyErr_SetString(PyExc_TypeError, "run_records: records are Record tuples");
            goto done;
        }
        int64_t recv_ns = PyLong_AsLongLong(PyTuple_GET_ITEM(record, 2));
        if (recv_ns == -1 && PyErr_Occurred())
            goto done;
        store_release(&ctl[CTL_IN_HAND], end);
        c[s.progress] += 1;
        c[s.busy_since] = (uint64_t)clock_ns(CLOCK_MONOTONIC);
        if (call == Py_None) {
            PyObject *r = PyObject_CallOneArg(process, record);
            if (r == NULL)
                goto done; /* as in Python: what process() lets through ends the worker */
            Py_DECREF(r);
        } else {
            PyObject *payload = PyTuple_GET_ITEM(record, 0), *message = payload;
            int decoded = 0;
            Py_INCREF(message);
            if (decode != Py_None) {
                Py_DECREF(message);
                message = PyObject_CallOneArg(decode, payload);
                if (message == NULL) {
                    if (!PyErr_ExceptionMatches(decode_errors))
                        goto done;
                    c[s.invalid] += 1;
                    PyObject *exc = take_exception();
                    PyObject *cb = PyObject_CallOneArg(on_invalid, exc);
                    Py_DECREF(exc);
                    if (cb == NULL)
                        goto done;
                    Py_DECREF(cb);
                    decoded = -1;
                }
            }
            if (decoded == 0) {
                int rc = call_reporting(call, message, on_error, NULL);
                Py_DECREF(message);
                if (rc < 0)
                    goto done;
                if (rc > 0)
                    c[s.handler_errors] += 1;
                c[s.handled] += 1;
            }
        }
        observe_latency(c, &s, clock_ns(CLOCK_REALTIME) - recv_ns);
        store_release(&ctl[CTL_TAIL], end); /* acknowledged: never replayed */
        ctl[CTL_ACKED] += 1;
        done++;
    }
    result = PyLong_FromSsize_t(done);
done:
    PyBuffer_Release(&ctl_buf);
    PyBuffer_Release(&counters_buf);
    return result;
}

static PyMethodDef methods[] = {
    {"put_scratch", put_scratch, METH_VARARGS, put_scratch_doc},
    {"reset_slots", reset_slots, METH_VARARGS, reset_slots_doc},
    {"take_records", take_records, METH_VARARGS, take_records_doc},
    {"run_records", run_records, METH_VARARGS, run_records_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ugram._speedups",
    "The receiver's and workers' per-datagram loops in C (optional).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
