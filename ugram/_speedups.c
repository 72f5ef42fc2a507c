/* ugram._speedups: the per-datagram loops of the receiver and the workers, in C.
 *
 * Optional on x86-64: ugram runs without it (pure-Python paths with the same behaviour),
 * and the `speedups` setting turns its loops off. Each function does exactly what its
 * Python twin does (Ring.try_put and Ring._read in ugram/ring.py, BatchReceiver.complete
 * and credentials_from_control in ugram/receiver/mmsg.py, close_in_control in
 * ugram/receiver/rights.py, Receiver._place_plain and
 * _place_slots in ugram/receiver/loop.py,
 * Worker._record_step and _decode_batch in ugram/workers/loop.py, observe_latency in
 * ugram/stats.py), in the same order of stores, so that the
 * crash-safety arguments made there hold here too:
 *
 *   - a record's bytes are stored before the head that publishes it (a release store);
 *   - the head is published per record, and the scratch area's `placed` index is stored
 *     right after, so a receiver killed mid-batch loses nothing and a successor places
 *     at most one record twice;
 *   - the consumer loads the head with acquire semantics before it reads record bytes.
 *
 * Memory ordering (ugram/ordering.py has the whole argument, record by record). Every
 * u64 word another process reads (a ring's control block, the counter table, the scratch
 * area's `placed` index) is stored here with a release store and loaded with an acquire
 * load (the __atomic builtins, which gcc and clang both have), and the sleep/wake
 * handshake has a sequentially consistent fence on each side. On x86-64 these compile to
 * the plain moves the pure-Python paths make (TSO gives release/acquire for free; only the
 * fence costs an instruction); on arm64 to stlr / ldar and dmb ish; tests/unit/
 * test_arm64_ordering.py checks that in the arm64 machine code. Off x86-64 the same
 * ordering is required of the Python paths too: there every such word is reached through
 * this module's `Words` (release stores, acquire loads) and `fence()`, never through a
 * plain memoryview, and ugram refuses to start without this module.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "_ordering.h"

/* Ring control block: u64 slots (ugram/ring.py). Producer, consumer, supervisor and
 * journal words sit on separate 128-byte lines (Apple M-series cache lines are 128 bytes,
 * most others 64): a store by one side never invalidates the line the other side writes. */
#define MIN_CONTROL_SIZE 4096
#define MAX_CONTROL_SIZE (1 << 20)
#define CTL_CAPACITY 1
#define CTL_DATA_AT 2
#define CTL_HEAD 16
#define CTL_PUBLISHED 17
#define CTL_TAIL 32
#define CTL_ACKED 33
#define CTL_IN_HAND 34
#define CTL_CONSUMER_WAITING 35
#define CTL_COST_NS 38 /* the consumer's recent wall time per record (Ring.note_cost) */
#define HEADER_SIZE 32
#define PAD_MARK 0xFFFFFFFFu
#define FLAG_CREDS 1u
#define MSG_TRUNC_FLAG 0x20u
#define SENTINEL 0xFFFFFFFFu

static int64_t clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

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
 * name with its leading NUL, or nothing for an unbound sender (BatchReceiver.address). */
static inline Py_ssize_t slot_address(const char *scratch, const ScratchLayout *l, Py_ssize_t i,
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

/* Bounds that keep every offset computation far from overflow (the real values are small:
 * batch <= 1024, slots <= max_datagram + 1 <= 16 MiB, names 112 bytes). */
#define MAX_SLOTS 1024
#define MAX_STRIDE (64 * 1024 * 1024)
#define MAX_NAME 4096
#define NAPS 16          /* at most this many sched_yield() re-polls of an emptied socket */
#define NAP_NS 50000     /* ... within this long (ns) of the first one */
#define NAP_MIN_BATCH 8  /* ... and only after a batch this big: the sender was blocked */

/* The ring's capacity, and where its records start (*data_at: the size of its control
 * block, a page of this machine, see ugram/ring.py), or 0 (with ValueError set) when
 * `ring` does not hold a ring. Both words were stored by the supervisor before any child
 * existed (the child got the ring's fd afterwards): plain loads. */
static uint64_t ring_capacity(const Py_buffer *ring, uint64_t *data_at, const char *who)
{
    const uint64_t *ctl = (const uint64_t *)ring->buf;
    uint64_t len = (uint64_t)ring->len, cap = 0, at = 0;
    if (len >= MIN_CONTROL_SIZE) {
        cap = ctl[CTL_CAPACITY];
        at = ctl[CTL_DATA_AT];
    }
    if (at < MIN_CONTROL_SIZE || at > MAX_CONTROL_SIZE || at % MIN_CONTROL_SIZE || at > len ||
        cap < HEADER_SIZE || cap % 8 || cap > len - at) {
        PyErr_Format(PyExc_ValueError, "%s: not a ring", who);
        return 0;
    }
    *data_at = at;
    return cap;
}

static int scratch_fits(const Py_buffer *scratch, const ScratchLayout *l, Py_ssize_t count,
                        const char *who)
{
    const Py_ssize_t fields[] = {l->len_at, l->flags_at, l->namelen_at};
    int ok = count >= 0 && count <= MAX_SLOTS && l->headers_at >= 8 && l->names_at >= 0 &&
             l->payloads_at >= 0 && l->header_stride >= 0 && l->header_stride <= MAX_STRIDE &&
             l->slot_stride >= 0 && l->slot_stride <= MAX_STRIDE && l->name_stride >= 2 &&
             l->name_stride <= MAX_NAME && l->headers_at <= MAX_STRIDE &&
             l->names_at <= (Py_ssize_t)1 << 40 && l->payloads_at <= (Py_ssize_t)1 << 40 &&
             l->headers_at + count * l->header_stride <= scratch->len &&
             l->payloads_at + count * l->slot_stride <= scratch->len &&
             l->names_at + count * l->name_stride <= scratch->len;
    for (int k = 0; k < 3 && ok; k++)
        ok = fields[k] >= 0 && fields[k] <= l->header_stride - 4;
    if (!ok)
        PyErr_Format(PyExc_ValueError, "%s: scratch area too small for the layout", who);
    return ok;
}

#ifdef __linux__
/* The receiver's drain, from here to place_slots and again around drain(): recvmmsg,
 * struct mmsghdr, SCM_CREDENTIALS and struct ucred are Linux's. Elsewhere drain() raises
 * OSError(ENOSYS); it is never called there (ugram.receiver.mmsg.available() is False), the
 * receiver's Python paths serve, and they reach the rings through Words. */

/* The producer's view of one ring during a drain (Ring's _head and friends). */
typedef struct {
    char *data;
    uint64_t *ctl;
    uint64_t cap, head, published, tail;
    int fresh;    /* records put since the consumer was last checked for sleep */
    int64_t room; /* records it may still take before its consumer falls behind (pack) */
} Producer;

/* 0 (ValueError set) when the ring's head and tail cannot be those of a sane ring: the
 * writes below stay inside the ring only for an 8-aligned head at most `cap` ahead. */
UGRAM_NOINLINE static int producer_open(Producer *p, char *base, uint64_t cap, uint64_t data_at)
{
    p->ctl = (uint64_t *)base;
    p->data = base + data_at;
    p->cap = cap;
    /* Head and count are this producer's own, or a dead predecessor's, or the supervisor's
     * after a reset (Ring.reset stores CORRUPT = 0 last, with release): acquire. */
    p->head = load_acquire(&p->ctl[CTL_HEAD]);
    p->published = load_acquire(&p->ctl[CTL_PUBLISHED]);
    p->tail = load_acquire(&p->ctl[CTL_TAIL]); /* pairs with the consumer's tail release */
    p->fresh = 0;
    p->room = 0;
    if (p->head % 8 || p->tail > p->head || p->head - p->tail > cap) {
        PyErr_SetString(PyExc_ValueError, "drain: corrupt ring (head or tail)");
        return 0;
    }
    return 1;
}

/* Ring.publish + signal_wake: wake the consumer if it sleeps and records came since the
 * last look. The full fence orders our head stores before the load of its flag (the
 * consumer does the mirror image: flag, fence, head: Ring.set_sleeping). */
UGRAM_NOINLINE static void producer_wake(Producer *p, int wake_fd)
{
    if (!p->fresh)
        return;
    p->fresh = 0;
    fence_seq_cst();
    if (load_acquire(&p->ctl[CTL_CONSUMER_WAITING])) {
        uint64_t one = 1;
        ssize_t unused = write(wake_fd, &one, sizeof one); /* EAGAIN: already signalled */
        (void)unused;
    }
}

/* A sender's SCM_CREDENTIALS, as a record header carries them. */
typedef struct {
    int32_t pid;
    uint32_t uid, gid;
} Creds;

/* Ring.try_put: copy one record in and publish it at once. 0 when it does not fit.
 * `creds` NULL: the record carries none. */
UGRAM_NOINLINE static int producer_put(Producer *p, const char *address, Py_ssize_t alen, const char *payload,
                        uint32_t n, int64_t recv_ns, const Creds *creds)
{
    uint64_t cap = p->cap, head = p->head;
    uint64_t size = ((uint64_t)HEADER_SIZE + alen + n + 7) & ~(uint64_t)7;
    if (size > cap)
        return 0; /* never fits: the caller's Python path raises RingFullError */
    uint64_t off = head % cap;
    uint64_t pad = (cap - off < size) ? cap - off : 0;
    if (head + pad + size - p->tail > cap) {
        /* Pairs with the consumer's tail release: its reads of the records it freed
         * are done before we overwrite them. */
        p->tail = load_acquire(&p->ctl[CTL_TAIL]);
        if (head + pad + size - p->tail > cap)
            return 0; /* full (or larger than the ring): the caller decides */
    }
    if (pad) {
        uint32_t mark = PAD_MARK;
        memcpy(p->data + off, &mark, 4);
        head += pad;
        off = 0;
    }
    char *rec = p->data + off;
    uint32_t length = (uint32_t)(HEADER_SIZE + alen + n), flags = creds ? FLAG_CREDS : 0;
    uint16_t alen16 = (uint16_t)alen, zero16 = 0;
    Creds none = {0, 0, 0};
    if (creds == NULL)
        creds = &none;
    memcpy(rec, &length, 4);
    memcpy(rec + 4, &flags, 4);
    memcpy(rec + 8, &recv_ns, 8);
    memcpy(rec + 16, &creds->pid, 4);
    memcpy(rec + 20, &creds->uid, 4);
    memcpy(rec + 24, &creds->gid, 4);
    memcpy(rec + 28, &alen16, 2);
    memcpy(rec + 30, &zero16, 2);
    if (alen)
        memcpy(rec + HEADER_SIZE, address, (size_t)alen);
    memcpy(rec + HEADER_SIZE + alen, payload, n);
    p->head = head + size;
    store_release(&p->ctl[CTL_PUBLISHED], ++p->published); /* a count the supervisor reads */
    store_release(&p->ctl[CTL_HEAD], p->head); /* every record byte is stored before this */
    p->fresh = 1;
    return 1;
}

/* Where the receiver counts (its block of the shared counter table). */
typedef struct {
    uint64_t *c;
    Py_ssize_t received, bytes, oversized, fds_closed;
} ReceiverCounters;

typedef struct {
    Py_ssize_t placed, oversized;
} PlaceTotals;

#ifndef __linux__
/* Without recvmmsg (macOS): the receiver never calls drain() there, since
 * ugram.receiver.mmsg.available() is False and it reads with recvfrom; these keep the
 * helper building, and drain() fails with ENOSYS should it be called all the same. */
struct ugram_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};
#define mmsghdr ugram_mmsghdr
static int ugram_recvmmsg(int fd, struct mmsghdr *headers, unsigned int n, int flags, void *t)
{
    (void)fd, (void)headers, (void)n, (void)flags, (void)t;
    errno = ENOSYS;
    return -1;
}
#define recvmmsg ugram_recvmmsg
#endif

/* Where each slot's ancillary data sits (BatchReceiver.native_credentials), when the
 * receiver asked for its senders' credentials. */
typedef struct {
    Py_ssize_t controllen_at, controls_at, control_stride, control_size;
} CredsLayout;

/* Slot i's SCM_CREDENTIALS, as mmsg.credentials_from_control reads them: 0 when there are
 * none (or pid 0: queued before SO_PASSCRED was on, the ids are not the sender's). Stricter
 * than its twin on what the kernel never writes (a message running past the control data,
 * or too short for a ucred): none, where the twin reads on or raises. */
static int slot_credentials(const char *sbase, const ScratchLayout *l, const CredsLayout *cl,
                            Py_ssize_t i, Creds *out)
{
    uint64_t len;
    memcpy(&len, sbase + l->headers_at + i * l->header_stride + cl->controllen_at, 8);
    if (len > (uint64_t)cl->control_size)
        len = (uint64_t)cl->control_size;
    const char *control = sbase + cl->controls_at + i * cl->control_stride;
    const uint64_t head = sizeof(struct cmsghdr);
    uint64_t at = 0;
    while (at + head <= len) {
        struct cmsghdr c;
        memcpy(&c, control + at, head);
        if (c.cmsg_len < head || c.cmsg_len > len - at)
            return 0;
#ifdef SCM_CREDENTIALS /* Linux only: macOS gives datagrams no credentials */
        if (c.cmsg_level == SOL_SOCKET && c.cmsg_type == SCM_CREDENTIALS) {
            struct ucred u;
            if (c.cmsg_len < head + sizeof u)
                return 0;
            memcpy(&u, control + at + head, sizeof u);
            out->pid = (int32_t)u.pid;
            out->uid = (uint32_t)u.uid;
            out->gid = (uint32_t)u.gid;
            return u.pid != 0;
        }
#else
        (void)out;
#endif
        at += (c.cmsg_len + 7) & ~(uint64_t)7;
    }
    return 0;
}

#ifndef SCM_PIDFD
#define SCM_PIDFD 0x04 /* Linux 6.5: a pidfd of the sender, with SO_PASSPIDFD */
#endif

/* Close every descriptor the kernel installed in this process with slot i's message
 * (rights.close_in_control): SCM_RIGHTS, and SCM_PIDFD should the socket pass
 * pidfds; each would otherwise stay open for good (a sender sending 12 fds a datagram
 * took the receiver to its descriptor limit in 0.07 s). Only right after recvmmsg: a
 * successor must never close what a dead predecessor's slots name (those numbers are not
 * its own). With MSG_CTRUNC the kernel closed what did not fit, and the message holds
 * only those it installed. Returns how many were closed. */
/* Close a descriptor a sender passed without waiting on it: a socket first gets SO_LINGER
 * {on, 0 s}, so that a lingering TCP socket's close aborts instead of blocking the receiver
 * (ugram/receiver/rights.py: close_passed). 1 if it was closed, 0 if it was not open. */
static int close_passed(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return 0; /* EBADF: not one the kernel installed for us */
    if (S_ISSOCK(st.st_mode)) {
        struct linger abort_on_close = {1, 0};
        (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
    }
    (void)close(fd); /* EINTR: closed all the same (Linux) */
    return 1;
}

static Py_ssize_t close_passed_fds(char *sbase, const ScratchLayout *l, const CredsLayout *cl,
                                   Py_ssize_t i)
{
    uint64_t len;
    memcpy(&len, sbase + l->headers_at + i * l->header_stride + cl->controllen_at, 8);
    if (len > (uint64_t)cl->control_size)
        len = (uint64_t)cl->control_size;
    const char *control = sbase + cl->controls_at + i * cl->control_stride;
    const uint64_t head = sizeof(struct cmsghdr);
    uint64_t at = 0;
    Py_ssize_t closed = 0;
    while (at + head <= len) {
        struct cmsghdr c;
        memcpy(&c, control + at, head);
        if (c.cmsg_len < head)
            break;
        uint64_t end = c.cmsg_len < len - at ? c.cmsg_len : len - at;
        if (c.cmsg_level == SOL_SOCKET && (c.cmsg_type == SCM_RIGHTS || c.cmsg_type == SCM_PIDFD))
            for (uint64_t k = head; k + sizeof(int) <= end; k += sizeof(int)) {
                int fd;
                memcpy(&fd, control + at + k, sizeof fd);
                if (fd >= 0)
                    closed += close_passed(fd);
            }
        at += (c.cmsg_len + 7) & ~(uint64_t)7;
    }
    return closed;
}

/* The receive time of the oldest record the consumer has not acknowledged (the one at
 * `tail`, which stays put until we overwrite it, and only we write) into *recv_ns; 0 for a
 * tail no sane ring has (the caller then gives the ring no room). */
static int producer_oldest(const Producer *p, uint64_t tail, int64_t *recv_ns)
{
    if (tail % 8 || tail > p->head || p->head - tail > p->cap || p->cap < HEADER_SIZE)
        return 0;
    uint64_t off = tail % p->cap;
    uint32_t mark;
    memcpy(&mark, p->data + off, 4);
    if (p->cap - off < HEADER_SIZE || mark == PAD_MARK)
        off = 0; /* the record starts the buffer (Ring._read's rule) */
    memcpy(recv_ns, p->data + off + 8, 8);
    return 1;
}

/* How many more records each ring takes before its consumer falls behind: none once its
 * oldest unacknowledged record is older than `pack_ns`, else as many as its consumer gets
 * through in `pack_ns` at its recent cost per record, less what it holds (an empty ring
 * always takes one: an idle worker takes a record before it waits behind a busy one). A
 * heuristic over words a worker writes: a bad value places a record badly, never unsafely.
 * `pack_ns` 0: no room anywhere, plain round-robin (Routes.refresh_rooms is the twin). */
UGRAM_NOINLINE static void producer_rooms(Producer *rings, Py_ssize_t active, int64_t now,
                                          int64_t pack_ns)
{
    for (Py_ssize_t k = 0; k < active; k++) {
        Producer *p = &rings[k];
        p->room = 0;
        if (pack_ns <= 0)
            continue;
        uint64_t tail = load_acquire(&p->ctl[CTL_TAIL]); /* then the record at it */
        if (tail == p->head) {
            p->tail = tail;
            p->room = 1;
        } else {
            int64_t oldest;
            if (!producer_oldest(p, tail, &oldest))
                continue;
            /* In unsigned arithmetic: a garbage time must not overflow. A time ahead of
             * ours (the clock stepped back) is as young as can be. */
            if (oldest < now && (uint64_t)now - (uint64_t)oldest > (uint64_t)pack_ns)
                continue;
        }
        uint64_t acked = load_acquire(&p->ctl[CTL_ACKED]);
        uint64_t cost = load_acquire(&p->ctl[CTL_COST_NS]);
        uint64_t held = tail == p->head || acked >= p->published ? 0 : p->published - acked;
        uint64_t budget = cost ? (uint64_t)pack_ns / cost : 0;
        if (budget > held && (int64_t)(budget - held) > p->room)
            p->room = (int64_t)(budget - held);
    }
}

/* The ring for the next record: the first with room (counted down), else the next in
 * turn from *next_ring (every consumer is behind: spread evenly). *packed: whether it was
 * picked for its room. */
static inline Py_ssize_t first_with_room(const Producer *rings, Py_ssize_t active,
                                         Py_ssize_t at)
{
    while (at < active && rings[at].room <= 0)
        at++;
    return at;
}

static inline Py_ssize_t pick_ring(Producer *rings, Py_ssize_t active, Py_ssize_t *first,
                                   Py_ssize_t *next_ring, int *packed)
{
    *first = first_with_room(rings, active, *first);
    *packed = *first < active;
    if (*packed) {
        rings[*first].room--;
        return *first;
    }
    Py_ssize_t k = *next_ring;
    *next_ring = k + 1 < active ? k + 1 : 0;
    return k;
}

/* When the rooms were judged, and the first ring that may have room left (`active`: spent,
 * as before the first batch). They are judged again once spent, or once a quarter of the window has passed (a
 * worker that stopped keeps its room until then): reading the words each worker writes
 * for every record, every receive batch, cost a flood of cheap records 14 %. */
#define JUDGE_PARTS 4
typedef struct {
    int64_t at;
    Py_ssize_t packing;
} Judged;

/* Place scratch slots first..count-1, each in the ring pick_ring names (by the rooms
 * producer_rooms gave them, at `recv_ns` when judged again here, then round-robin), each published at once, counted, and marked placed in the scratch area (that order: a
 * receiver killed between two stores re-places at most one record, and loses none). A slot
 * over `limit` bytes (or truncated by the kernel) is counted as oversized and skipped.
 * `cl` non-NULL: each record carries its sender's credentials (when the kernel gave any).
 * Returns the first slot not handled: count, or the slot whose ring was full. */
UGRAM_NOINLINE static Py_ssize_t place_slots(Producer *rings, Py_ssize_t active, Py_ssize_t *next_ring,
                              char *sbase, const ScratchLayout *l, const CredsLayout *cl,
                              Py_ssize_t first, Py_ssize_t count, Py_ssize_t limit,
                              int64_t recv_ns, int64_t pack_ns, Judged *judged,
                              const ReceiverCounters *rc, PlaceTotals *t)
{
    uint64_t *placed_index = (uint64_t *)sbase, *c = rc->c;
    Py_ssize_t i, *packing = &judged->packing;
    *packing = first_with_room(rings, active, *packing); /* spent to the last: judged now */
    if (*packing >= active || recv_ns - judged->at > pack_ns / JUDGE_PARTS) {
        producer_rooms(rings, active, recv_ns, pack_ns);
        *packing = 0;
        judged->at = recv_ns;
    }
    for (i = first; i < count; i++) {
        uint32_t n = slot_u32(sbase, l, i, l->len_at);
        if ((Py_ssize_t)n > limit || n > (uint64_t)l->slot_stride ||
            (slot_u32(sbase, l, i, l->flags_at) & MSG_TRUNC_FLAG)) {
            add_release(&c[rc->received], 1);
            add_release(&c[rc->oversized], 1);
            t->oversized++;
            store_release(placed_index, (uint64_t)i + 1);
            continue;
        }
        const char *address = NULL;
        Py_ssize_t alen = slot_address(sbase, l, i, &address);
        const char *payload = sbase + l->payloads_at + i * l->slot_stride;
        Creds creds;
        int with_creds = cl != NULL && slot_credentials(sbase, l, cl, i, &creds);
        /* One clock reading per batch, plus the slot's index: receive times stay in
         * receipt order across workers (a gauge's "last value" depends on it). */
        Py_ssize_t turn;
        int packed, put;
        do { /* a ring with room in records may lack the bytes: then the next one */
            turn = *next_ring;
            Py_ssize_t k = pick_ring(rings, active, packing, next_ring, &packed);
            put = producer_put(&rings[k], address, alen, payload, n, recv_ns + i,
                               with_creds ? &creds : NULL);
            if (!put && packed)
                rings[k].room = 0;
        } while (!put && packed);
        if (!put) {
            *next_ring = turn; /* the caller's Routes.put goes on from there */
            break;
        }
        add_release(&c[rc->received], 1);
        add_release(&c[rc->bytes], n);
        store_release(placed_index, (uint64_t)i + 1); /* placed: never placed again */
        t->placed++;
    }
    return i;
}

#endif /* __linux__: the receiver's drain */

PyDoc_STRVAR(reset_slots_doc,
"reset_slots(scratch, layout, count, controllen_at, control_size)\n\n"
"Ready the first `count` scratch slots for the next recvmmsg call: lengths back to the\n"
"sentinel, name (and control) lengths back to their buffer sizes; then `placed` = 0.");

UGRAM_NOINLINE static void reset(char *sbase, const ScratchLayout *l, Py_ssize_t count,
                  Py_ssize_t controllen_at, uint64_t control_size)
{
    uint32_t sentinel = SENTINEL, namelen = 110; /* sizeof(struct sockaddr_un) */
    for (Py_ssize_t i = 0; i < count; i++) {
        char *hdr = sbase + l->headers_at + i * l->header_stride;
        memcpy(hdr + l->len_at, &sentinel, 4);
        memcpy(hdr + l->namelen_at, &namelen, 4);
        if (control_size)
            memcpy(hdr + controllen_at, &control_size, 8);
    }
    store_release((uint64_t *)sbase, 0); /* after the reset: a kill in between finds nothing */
}

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
    if (!parse_layout(layout_tuple, &l) || !scratch_fits(&scratch, &l, count, "reset_slots"))
        goto done;
    if (control_size && (controllen_at < 0 || controllen_at > l.header_stride - 8)) {
        PyErr_SetString(PyExc_ValueError, "reset_slots: controllen_at outside the header");
        goto done;
    }
    reset((char *)scratch.buf, &l, count, controllen_at, control_size);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&scratch);
    return result;
}

PyDoc_STRVAR(drain_doc,
"drain(fd, scratch, layout, batch, rings, wakes, active, next_ring, limit, calls, counters,\n"
"      slots, credentials=None, pack_ns=0)\n"
"    -> (empty, next_ring, placed, oversized, count, following)\n\n"
"The receiver's path without admission or routing, whole: up to `calls`\n"
"times, recvmmsg up to `batch` datagrams into the scratch area, place each in one of the\n"
"first `active` rings (Ring.try_put): the first whose consumer keeps up, judged at the\n"
"first batch and again once the rooms are spent or `pack_ns` / 4 has passed (its oldest\n"
"unacknowledged record younger than `pack_ns`, and what it holds done within `pack_ns`\n"
"at its recent cost a record),\n"
"else the next in turn from `next_ring`\n"
"(0: always in turn), count it in `counters` (u64 slots\n"
"`slots` = (received, bytes, oversized, fds_closed)) and ready the slots again (as\n"
"reset_slots does). `credentials`: (controllen_at, controls_at, control_stride,\n"
"control_size) of the slots' ancillary data, when the socket passes credentials: each\n"
"record carries its sender's, and every descriptor a sender passed (SCM_RIGHTS, SCM_PIDFD)\n"
"is closed right after the receive and counted in `fds_closed`; the datagram goes on.\n"
"`empty`: the socket ran dry (after a big batch, a sign of a blocked sender, the socket is\n"
"polled again a few times within 50 us, with sched_yield() between, to let the sender refill\n"
"it). Sleeping consumers are woken through their eventfds `wakes` (before a re-poll, and\n"
"at the end: nothing is left to publish). When a ring is\n"
"full it stops: `count` is that batch's size and `following` the first slot not placed\n"
"(both 0 otherwise); the caller places or holds the rest, then resets the slots.\n\n"
"Raises OSError for a receive error other than EAGAIN or EINTR.");

#ifdef __linux__
static PyObject *drain(PyObject *self, PyObject *args)
{
    int fd;
    Py_buffer scratch, counters;
    PyObject *layout_tuple, *ring_list, *wake_list, *slots_tuple, *creds_tuple = Py_None;
    Py_ssize_t batch, active, next_ring, limit, calls;
    long long pack_ns = 0;
    ScratchLayout l;
    CredsLayout creds_layout, *cl = NULL;
    ReceiverCounters rc;
    if (!PyArg_ParseTuple(args, "iw*O!nO!O!nnnnw*O!|OL", &fd, &scratch, &PyTuple_Type,
                          &layout_tuple, &batch, &PyList_Type, &ring_list, &PyList_Type,
                          &wake_list, &active, &next_ring, &limit, &calls, &counters,
                          &PyTuple_Type, &slots_tuple, &creds_tuple, &pack_ns))
        return NULL;
    PyObject *result = NULL, *rings = NULL;
    Producer *producers = NULL;
    Py_buffer *bufs = NULL;
    int *wake_fds = NULL;
    Py_ssize_t held = 0;
    if (!parse_layout(layout_tuple, &l) || !scratch_fits(&scratch, &l, batch, "drain"))
        goto done;
    if (!PyArg_ParseTuple(slots_tuple, "nnnn;slots: received, bytes, oversized, fds_closed",
                          &rc.received, &rc.bytes, &rc.oversized, &rc.fds_closed))
        goto done;
    if (creds_tuple != Py_None) {
        cl = &creds_layout;
        if (!PyArg_ParseTuple(creds_tuple, "nnnn;credentials: 4 offsets", &cl->controllen_at,
                              &cl->controls_at, &cl->control_stride, &cl->control_size))
            goto done;
        /* The one field reset writes besides the lengths: it must be msg_controllen, or a
         * reset would overwrite a pointer the kernel then follows (EFAULT at best). */
        if (cl->controllen_at !=
                (Py_ssize_t)(offsetof(struct mmsghdr, msg_hdr) +
                             offsetof(struct msghdr, msg_controllen)) ||
            cl->control_size < (Py_ssize_t)sizeof(struct cmsghdr) ||
            cl->control_size > MAX_NAME || cl->control_stride < cl->control_size ||
            cl->control_stride > MAX_NAME || cl->controls_at < 0 ||
            cl->controls_at > (Py_ssize_t)1 << 40 ||
            cl->controls_at + batch * cl->control_stride > scratch.len) {
            PyErr_SetString(PyExc_ValueError, "drain: credentials outside the scratch area");
            goto done;
        }
    }
    Py_ssize_t n_counters = counters.len / 8;
    if (rc.received < 0 || rc.received >= n_counters || rc.bytes < 0 ||
        rc.bytes >= n_counters || rc.oversized < 0 || rc.oversized >= n_counters ||
        rc.fds_closed < 0 || rc.fds_closed >= n_counters) {
        PyErr_SetString(PyExc_ValueError, "drain: counter slots outside the counter block");
        goto done;
    }
    rc.c = (uint64_t *)counters.buf;
    rings = PySequence_Tuple(ring_list); /* getting a buffer runs Python code: snapshot */
    if (rings == NULL)
        goto done;
    if (batch < 1 || l.header_stride != (Py_ssize_t)sizeof(struct mmsghdr) || active < 1 ||
        active > PyTuple_GET_SIZE(rings) || active > PyList_GET_SIZE(wake_list) ||
        next_ring < 0 || next_ring >= active) {
        PyErr_SetString(PyExc_ValueError, "drain: bad batch, layout or ring numbers");
        goto done;
    }
    bufs = PyMem_Calloc((size_t)active, sizeof(Py_buffer));
    producers = PyMem_Calloc((size_t)active, sizeof(Producer));
    wake_fds = PyMem_Calloc((size_t)active, sizeof(int));
    if (bufs == NULL || producers == NULL || wake_fds == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t k = 0; k < active; k++) {
        long wake_fd = PyLong_AsLong(PyList_GET_ITEM(wake_list, k));
        if (wake_fd == -1 && PyErr_Occurred())
            goto done;
        if (wake_fd < 0 || wake_fd > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "drain: wakes must be file descriptors");
            goto done;
        }
        wake_fds[k] = (int)wake_fd;
    }
    for (; held < active; held++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(rings, held), &bufs[held], PyBUF_WRITABLE) < 0)
            goto done;
        uint64_t data_at;
        uint64_t cap = ring_capacity(&bufs[held], &data_at, "drain");
        if (cap == 0 || !producer_open(&producers[held], (char *)bufs[held].buf, cap, data_at)) {
            held++;
            goto done;
        }
    }
    char *sbase = (char *)scratch.buf;
    struct mmsghdr *headers = (struct mmsghdr *)(sbase + l.headers_at);
    PlaceTotals t = {0, 0};
    Py_ssize_t count = 0, following = 0;
    Judged judged = {0, active};
    int empty = 0, naps = 0, last_got = 0;
    int64_t nap_deadline = 0;
    for (Py_ssize_t call = 0; call < calls;) {
        int got = recvmmsg(fd, headers, (unsigned int)batch, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                /* A sender blocked on the full queue refills it within microseconds of
                 * our reads: a few yields catch that without an epoll round trip (measured
                 * +10-40% with one worker on 2 cores). Only after a big batch (an idle or
                 * trickling server never naps), for 50 us at most, and only once the
                 * consumers that sleep were woken for what is already in their rings. */
                if (last_got >= NAP_MIN_BATCH && naps < NAPS) {
                    int64_t now = clock_ns(CLOCK_MONOTONIC);
                    if (naps == 0)
                        nap_deadline = now + NAP_NS;
                    if (now <= nap_deadline) {
                        for (Py_ssize_t k = 0; k < active; k++)
                            producer_wake(&producers[k], wake_fds[k]);
                        naps++;
                        sched_yield();
                        continue;
                    }
                }
                empty = 1;
                break;
            }
            PyErr_SetFromErrno(PyExc_OSError);
            for (Py_ssize_t k = 0; k < active; k++) /* what it placed before still counts */
                producer_wake(&producers[k], wake_fds[k]);
            goto done;
        }
        call++;
        if (got == 0) {
            empty = 1;
            break;
        }
        last_got = got;
        if (cl != NULL) /* refused before anything else can fail: never kept */
            for (Py_ssize_t i = 0; i < got; i++)
                add_release(&rc.c[rc.fds_closed], (uint64_t)close_passed_fds(sbase, &l, cl, i));
        Py_ssize_t stop = place_slots(producers, active, &next_ring, sbase, &l, cl, 0, got,
                                      limit, clock_ns(CLOCK_REALTIME), pack_ns, &judged, &rc,
                                      &t);
        if (stop < got) {
            count = got;
            following = stop;
            break;
        }
        reset(sbase, &l, got, cl ? cl->controllen_at : 0, cl ? (uint64_t)cl->control_size : 0);
    }
    /* Ring.publish for every ring it put to: the caller has nothing left to publish. */
    for (Py_ssize_t k = 0; k < active; k++)
        producer_wake(&producers[k], wake_fds[k]);
    result = Py_BuildValue("innnnn", empty, next_ring, t.placed, t.oversized, count, following);
done:
    for (Py_ssize_t k = 0; k < held; k++)
        PyBuffer_Release(&bufs[k]);
    PyMem_Free(bufs);
    PyMem_Free(producers);
    PyMem_Free(wake_fds);
    Py_XDECREF(rings);
    PyBuffer_Release(&scratch);
    PyBuffer_Release(&counters);
    return result;
}

#else
static PyObject *drain(PyObject *self, PyObject *args)
{
    errno = ENOSYS; /* no recvmmsg: the receiver's Python paths serve */
    return PyErr_SetFromErrno(PyExc_OSError);
}
#endif /* __linux__ */

PyDoc_STRVAR(take_records_doc,
"take_records(ring, rpos, head_seen, limit, record_type, max_bytes=sys.maxsize)\n"
"    -> (batch, rpos, head_seen)\n\n"
"Read up to `limit` published records starting at byte position `rpos`, stopping before\n"
"the one that would take their payloads past `max_bytes` (the first is always taken);\n"
"`batch` is a list of (record, end) pairs, each record a `record_type` (a 6-field tuple subclass:\n"
"payload, address, recv_ns, pid, uid, gid). Raises ValueError (the ring is corrupt) for a\n"
"head or a record that no producer can have written.");

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
    Py_ssize_t limit, max_bytes = PY_SSIZE_T_MAX;
    PyTypeObject *type;
    if (!PyArg_ParseTuple(args, "w*KKnO!|n", &ring, &rpos, &head_seen, &limit, &PyType_Type,
                          &type, &max_bytes))
        return NULL;
    PyObject *batch = NULL, *result = NULL;
    if (!PyType_IsSubtype(type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "take_records: record_type must be a tuple subclass");
        goto done;
    }
    char *rbase = (char *)ring.buf;
    uint64_t *ctl = (uint64_t *)rbase;
    uint64_t data_at;
    uint64_t cap = ring_capacity(&ring, &data_at, "take_records");
    if (cap == 0)
        goto done;
    const char *data = rbase + data_at;
    batch = PyList_New(0);
    if (batch == NULL)
        goto done;
    uint64_t pos = rpos, seen = head_seen, size = 0;
    for (Py_ssize_t taken = 0; taken < limit; taken++) {
        const uint64_t before = pos; /* where the next batch starts if this record is left */
        if (pos == seen) {
            /* Pairs with producer_put's head release: before any record byte is read. */
            seen = load_acquire(&ctl[CTL_HEAD]);
            if (pos == seen)
                break;
            if (seen < pos || seen - pos > cap || seen % 8) {
                PyErr_SetString(PyExc_ValueError, "take_records: corrupt ring (head)");
                goto done;
            }
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
        /* Every record lies whole between the cursor and the head (Ring._read): a zero
         * length, or one past the head or the buffer, is corruption. */
        if (length < HEADER_SIZE || off + length > cap ||
            pos + (((uint64_t)length + 7) & ~(uint64_t)7) > seen) {
            PyErr_SetString(PyExc_ValueError, "take_records: corrupt record length");
            goto done;
        }
        uint16_t alen;
        memcpy(&alen, data + off + 28, 2);
        if (HEADER_SIZE + (uint32_t)alen <= length) { /* else make_record says it is corrupt */
            size += length - HEADER_SIZE - alen;
            if (taken > 0 && size > (uint64_t)max_bytes) {
                pos = before; /* left for the next batch, as Ring.take_batch does */
                break;
            }
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

/* The journal (Ring.settle_journal): what ACKED and the handled / handler-error / invalid
 * counters will say once the record in hand is acknowledged. Counted into before the tail
 * store, copied to the counters after it, so a kill between any two stores can be settled. */
#define CTL_J_ACKED 64
#define CTL_J_HANDLED 65
#define CTL_J_ERRORS 66
#define CTL_J_INVALID 67

typedef struct {
    /* u64 slot indexes in the worker's counter block (ugram/stats.py) */
    Py_ssize_t command, retire, progress, busy_since, handled, handler_errors, invalid;
    Py_ssize_t latency_first, latency_buckets, latency_sum;
} CounterSlots;


/* After the tail store: the counts, from the journal (release stores: none of them may be
 * seen, or moved by the compiler, before the tail store that precedes them). */
UGRAM_NOINLINE static void settle(uint64_t *ctl, uint64_t *c, const CounterSlots *s)
{
    store_release(&ctl[CTL_ACKED], ctl[CTL_J_ACKED]);
    store_release(&c[s->handled], ctl[CTL_J_HANDLED]);
    store_release(&c[s->handler_errors], ctl[CTL_J_ERRORS]);
    store_release(&c[s->invalid], ctl[CTL_J_INVALID]);
}

/* ugram.stats.observe_latency */
static void observe_latency(uint64_t *c, const CounterSlots *s, int64_t ns)
{
    if (ns <= 0) {
        add_release(&c[s->latency_first], 1);
        return;
    }
    uint64_t us = (uint64_t)(ns - 1) / 1000;
    Py_ssize_t index = us ? 64 - __builtin_clzll(us) : 0; /* int.bit_length() */
    add_release(&c[s->latency_first + (index < s->latency_buckets ? index : s->latency_buckets)], 1);
    add_release(&c[s->latency_sum], (uint64_t)ns);
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

/* Call fn(arg); an Exception is counted in *errors and reported through on_exc(exc), and 1
 * is returned; anything else raised (SystemExit, KeyboardInterrupt) propagates: -1. 0 when
 * the call returned. */
static int call_reporting(PyObject *fn, PyObject *arg, PyObject *on_exc, uint64_t *errors)
{
    PyObject *r = PyObject_CallOneArg(fn, arg);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    add_release(errors, 1);
    PyObject *exc = take_exception();
    PyObject *cb = PyObject_CallOneArg(on_exc, exc);
    Py_DECREF(exc);
    if (cb == NULL)
        return -1;
    Py_DECREF(cb);
    return 1;
}

/* decode(payload); a decode error (one of `decode_errors`) is counted in *invalid and passed
 * to on_invalid(exc): NULL with no exception set. Anything else raised (or raised by
 * on_invalid): NULL with the exception set. */
static PyObject *decode_reporting(PyObject *decode, PyObject *payload, PyObject *decode_errors,
                                  PyObject *on_invalid, uint64_t *invalid)
{
    PyObject *message = PyObject_CallOneArg(decode, payload);
    if (message != NULL || !PyErr_ExceptionMatches(decode_errors))
        return message;
    add_release(invalid, 1);
    PyObject *exc = take_exception();
    PyObject *cb = PyObject_CallOneArg(on_invalid, exc);
    Py_DECREF(exc);
    Py_XDECREF(cb);
    return NULL;
}

PyDoc_STRVAR(run_records_doc,
"run_records(batch, ctl, counters, slots, process, call, decode, decode_errors, on_invalid,\n"
"            on_error, allowance) -> done\n\n"
"The worker's per-record loop (ugram.workers.loop.Worker._record_step): for each (record,\n"
"end) of `batch`, mark it in hand, count progress, handle it, observe its latency and\n"
"acknowledge it. With `call` set (plain data handlers) the record's payload, decoded by\n"
"`decode` when not None, goes to `call`; a decode error (one of `decode_errors`) is counted\n"
"as invalid and passed to on_invalid(exc), an Exception from `call` is counted and passed to\n"
"on_error(exc). With `call` None, process(record) does everything but acknowledging. Counts\n"
"go to the ring's journal before the tail store and to the counters after it\n"
"(Ring.settle_journal). Stops before a record when told to retire, or after `allowance`\n"
"records. Returns how many were handled.");

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
    PyObject *result = NULL, *items = NULL;
    Py_ssize_t n = 0, done = 0;
    if (!PyArg_ParseTuple(slots_tuple, "nnnnnnnnnn;slots: 10 counter indexes", &s.command,
                          &s.retire, &s.progress, &s.busy_since, &s.handled, &s.handler_errors,
                          &s.invalid, &s.latency_first, &s.latency_buckets, &s.latency_sum))
        goto done;
    Py_ssize_t n_counters = counters_buf.len / 8;
    const Py_ssize_t indexes[] = {s.command, s.progress, s.busy_since, s.handled,
                                  s.handler_errors, s.invalid, s.latency_first, s.latency_sum};
    int slots_ok = ctl_buf.len >= MIN_CONTROL_SIZE && s.latency_buckets >= 0 &&
                   s.latency_first >= 0 && s.latency_buckets < n_counters - s.latency_first;
    for (int k = 0; k < 8 && slots_ok; k++)
        slots_ok = indexes[k] >= 0 && indexes[k] < n_counters;
    if (!slots_ok) {
        PyErr_SetString(PyExc_ValueError, "run_records: control block too small, or counter "
                                          "slots outside the counter block");
        goto done;
    }
    uint64_t *ctl = (uint64_t *)ctl_buf.buf, *c = (uint64_t *)counters_buf.buf;
    const uint64_t *command = &c[s.command]; /* the supervisor's order: acquire */
    /* A tuple snapshot: a handler that reaches the list and changes it cannot pull items
     * out from under this loop. */
    items = PyList_AsTuple(batch);
    if (items == NULL)
        goto done;
    n = PyTuple_GET_SIZE(items);
    for (Py_ssize_t k = 0; k < n && done < allowance; k++) {
        if (done && load_acquire(command) == (uint64_t)s.retire)
            break;
        PyObject *pair = PyTuple_GET_ITEM(items, k), *record, *end_obj;
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
        store_release(&ctl[CTL_IN_HAND], end); /* before the handler runs (Ring.settle_journal) */
        add_release(&c[s.progress], 1);
        store_release(&c[s.busy_since], (uint64_t)clock_ns(CLOCK_MONOTONIC));
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
                message = decode_reporting(decode, payload, decode_errors, on_invalid,
                                           &ctl[CTL_J_INVALID]);
                if (message == NULL) {
                    if (PyErr_Occurred())
                        goto done;
                    decoded = -1;
                }
            }
            if (decoded == 0) {
                int rc = call_reporting(call, message, on_error, &ctl[CTL_J_ERRORS]);
                Py_DECREF(message);
                if (rc < 0)
                    goto done;
                add_release(&ctl[CTL_J_HANDLED], 1);
            }
        }
        observe_latency(c, &s, clock_ns(CLOCK_REALTIME) - recv_ns);
        store_release(&ctl[CTL_J_ACKED], __atomic_load_n(&ctl[CTL_ACKED], __ATOMIC_RELAXED) + 1);
        /* Acknowledged: never replayed. The release orders the journal above, and every
         * read of the record's bytes, before it: the producer may reuse the space once it
         * loads this tail (acquire). */
        store_release(&ctl[CTL_TAIL], end);
        settle(ctl, c, &s);
        done++;
    }
    result = PyLong_FromSsize_t(done);
done:
    Py_XDECREF(items);
    PyBuffer_Release(&ctl_buf);
    PyBuffer_Release(&counters_buf);
    return result;
}

/* ---- worker: batch handlers ------------------------------------------------------------ */

/* The slots of `counters` that count, checked against its size; 0 with ValueError set. */
static int counter_slots_fit(const Py_buffer *counters, const Py_ssize_t *slots, int n,
                             const char *who)
{
    Py_ssize_t n_counters = counters->len / 8;
    for (int k = 0; k < n; k++)
        if (slots[k] < 0 || slots[k] >= n_counters) {
            PyErr_Format(PyExc_ValueError, "%s: counter slots outside the counter block", who);
            return 0;
        }
    return 1;
}

/* The (record, end) pair at k of a batch snapshot, its record checked to be a Record tuple. */
static PyObject *batch_record(PyObject *items, Py_ssize_t k, const char *who)
{
    PyObject *pair = PyTuple_GET_ITEM(items, k);
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
        !PyTuple_Check(PyTuple_GET_ITEM(pair, 0)) ||
        PyTuple_GET_SIZE(PyTuple_GET_ITEM(pair, 0)) < 3) {
        PyErr_Format(PyExc_TypeError, "%s: batch items are (Record, end)", who);
        return NULL;
    }
    return PyTuple_GET_ITEM(pair, 0);
}

PyDoc_STRVAR(decode_batch_doc,
"decode_batch(batch, decode, decode_errors, on_invalid, make_datagram, counters, invalid)\n"
"    -> (messages, datagrams)\n\n"
"Worker._decode_batch: each (record, end) of `batch` becomes a message, its payload\n"
"decoded by `decode` when not None. A decode error (one of `decode_errors`) is counted in\n"
"the u64 counter `invalid` and passed to on_invalid(exc), and the record is left out. With\n"
"`make_datagram` not None, `datagrams` holds make_datagram(record) for each message (else\n"
"it is empty). Anything else raised propagates.");

static PyObject *decode_batch(PyObject *self, PyObject *args)
{
    PyObject *batch, *decode, *decode_errors, *on_invalid, *make_datagram;
    Py_buffer counters;
    Py_ssize_t invalid;
    if (!PyArg_ParseTuple(args, "O!OOOOw*n", &PyList_Type, &batch, &decode, &decode_errors,
                          &on_invalid, &make_datagram, &counters, &invalid))
        return NULL;
    PyObject *result = NULL, *items = NULL, *messages = NULL, *datagrams = NULL;
    if (!counter_slots_fit(&counters, &invalid, 1, "decode_batch"))
        goto done;
    uint64_t *c = (uint64_t *)counters.buf;
    items = PyList_AsTuple(batch); /* decode() and friends run Python code: snapshot */
    messages = PyList_New(0);
    datagrams = PyList_New(0);
    if (items == NULL || messages == NULL || datagrams == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(items); k++) {
        PyObject *record = batch_record(items, k, "decode_batch");
        if (record == NULL)
            goto done;
        PyObject *payload = PyTuple_GET_ITEM(record, 0), *message;
        if (decode == Py_None) {
            message = Py_NewRef(payload);
        } else {
            message = decode_reporting(decode, payload, decode_errors, on_invalid, &c[invalid]);
            if (message == NULL) {
                if (PyErr_Occurred())
                    goto done;
                continue; /* undecodable: counted, reported, left out */
            }
        }
        int failed = PyList_Append(messages, message) < 0;
        Py_DECREF(message);
        if (failed)
            goto done;
        if (make_datagram != Py_None) {
            PyObject *dgram = PyObject_CallOneArg(make_datagram, record);
            if (dgram == NULL)
                goto done;
            failed = PyList_Append(datagrams, dgram) < 0;
            Py_DECREF(dgram);
            if (failed)
                goto done;
        }
    }
    result = PyTuple_Pack(2, messages, datagrams);
done:
    Py_XDECREF(items);
    Py_XDECREF(messages);
    Py_XDECREF(datagrams);
    PyBuffer_Release(&counters);
    return result;
}

PyDoc_STRVAR(observe_batch_doc,
"observe_batch(batch, now_ns, counters, latency) -> None\n\n"
"ugram.stats.observe_latency(counters, now_ns - record.recv_ns) for each (record, end) of\n"
"`batch`; `latency` = (first bucket, buckets, sum) slots of the histogram.");

static PyObject *observe_batch(PyObject *self, PyObject *args)
{
    PyObject *batch;
    long long now_ns;
    Py_buffer counters;
    CounterSlots s;
    if (!PyArg_ParseTuple(args, "O!Lw*(nnn)", &PyList_Type, &batch, &now_ns, &counters,
                          &s.latency_first, &s.latency_buckets, &s.latency_sum))
        return NULL;
    PyObject *result = NULL, *items = NULL;
    const Py_ssize_t slots[] = {s.latency_first, s.latency_sum};
    if (!counter_slots_fit(&counters, slots, 2, "observe_batch"))
        goto done;
    if (s.latency_buckets < 0 || s.latency_buckets >= counters.len / 8 - s.latency_first) {
        PyErr_SetString(PyExc_ValueError, "observe_batch: latency buckets outside the block");
        goto done;
    }
    uint64_t *c = (uint64_t *)counters.buf;
    items = PyList_AsTuple(batch);
    if (items == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(items); k++) {
        PyObject *record = batch_record(items, k, "observe_batch");
        if (record == NULL)
            goto done;
        int64_t recv_ns = PyLong_AsLongLong(PyTuple_GET_ITEM(record, 2));
        if (recv_ns == -1 && PyErr_Occurred())
            goto done;
        observe_latency(c, &s, (int64_t)now_ns - recv_ns);
    }
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(items);
    PyBuffer_Release(&counters);
    return result;
}

/* ---- Words: shared u64 words for the Python paths, ordered --------------------------- */

PyDoc_STRVAR(words_doc,
"Words(mapping, offset=0, count=-1)\n\n"
"The u64 words of `mapping` (a writable buffer: an mmap) from byte `offset` on, `count` of\n"
"them (-1: to its end), indexed as memoryview(mapping).cast('Q') is: words[i] is an acquire\n"
"load, words[i] = v a release store (ValueError for a value outside 0..2**64-1), words[a:b]\n"
"the Words of that range of the same mapping. It exports its bytes (the buffer protocol,\n"
"for this module's functions) and holds an export of the mapping until release().\n"
"ugram.ordering hands these out instead of memoryviews off x86-64.");

typedef struct {
    PyObject_HEAD
    Py_buffer view; /* the mapping, held from construction until release() */
    uint64_t *words;
    Py_ssize_t count;
    Py_ssize_t exports; /* buffers this object exported and that are still held */
    int held;
} Words;

static PyTypeObject WordsType;

static int words_attach(Words *w, PyObject *mapping, Py_ssize_t offset, Py_ssize_t count)
{
    if (PyObject_GetBuffer(mapping, &w->view, PyBUF_WRITABLE) < 0)
        return -1;
    w->held = 1;
    char *at = (char *)w->view.buf + offset;
    if (offset < 0 || offset % 8 || offset > w->view.len || (uintptr_t)at % 8 ||
        count < -1 || count > (w->view.len - offset) / 8) {
        PyBuffer_Release(&w->view);
        w->held = 0;
        PyErr_SetString(PyExc_ValueError, "Words: offset or count outside the mapping, or "
                                          "not 8-aligned");
        return -1;
    }
    w->words = (uint64_t *)at;
    w->count = count < 0 ? (w->view.len - offset) / 8 : count;
    return 0;
}

static PyObject *words_make(PyTypeObject *type, PyObject *mapping, Py_ssize_t offset,
                            Py_ssize_t count)
{
    Words *w = (Words *)type->tp_alloc(type, 0);
    if (w == NULL)
        return NULL;
    if (words_attach(w, mapping, offset, count) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    return (PyObject *)w;
}

static PyObject *words_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"mapping", "offset", "count", NULL};
    PyObject *mapping;
    Py_ssize_t offset = 0, count = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|nn:Words", names, &mapping, &offset,
                                     &count))
        return NULL;
    return words_make(type, mapping, offset, count);
}

static void words_dealloc(Words *w)
{
    if (w->held)
        PyBuffer_Release(&w->view);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static int words_usable(const Words *w)
{
    if (w->held)
        return 1;
    PyErr_SetString(PyExc_ValueError, "operation forbidden on released Words object");
    return 0;
}

/* The word index `key` names (negative: from the end), or -1 with an exception set. */
static Py_ssize_t words_index(const Words *w, PyObject *key)
{
    Py_ssize_t i = PyLong_CheckExact(key) ? PyLong_AsSsize_t(key)
                                           : PyNumber_AsSsize_t(key, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred())
        return -1;
    if (i < 0)
        i += w->count;
    if (i < 0 || i >= w->count) {
        PyErr_SetString(PyExc_IndexError, "Words index out of range");
        return -1;
    }
    return i;
}

/* words[i]: an acquire load. Symbol kept for the arm64 disassembly check. */
UGRAM_NOINLINE static PyObject *words_subscript(Words *w, PyObject *key)
{
    if (!words_usable(w))
        return NULL;
    if (PyLong_CheckExact(key) || PyIndex_Check(key)) {
        Py_ssize_t i = words_index(w, key);
        return i < 0 ? NULL : PyLong_FromUnsignedLongLong(load_acquire(&w->words[i]));
    }
    if (!PySlice_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "Words indices must be integers or slices");
        return NULL;
    }
    Py_ssize_t start, stop, step;
    if (PySlice_Unpack(key, &start, &stop, &step) < 0)
        return NULL;
    Py_ssize_t n = PySlice_AdjustIndices(w->count, &start, &stop, step);
    if (step != 1) {
        PyErr_SetString(PyExc_TypeError, "Words slices take no step");
        return NULL;
    }
    Py_ssize_t offset = (char *)(w->words + start) - (char *)w->view.buf;
    return words_make(Py_TYPE(w), w->view.obj, offset, n);
}

/* words[i] = v: a release store. Symbol kept for the arm64 disassembly check. */
UGRAM_NOINLINE static int words_ass_subscript(Words *w, PyObject *key, PyObject *value)
{
    if (!words_usable(w))
        return -1;
    if (value == NULL || !(PyLong_CheckExact(key) || PyIndex_Check(key))) {
        PyErr_SetString(PyExc_TypeError, "Words: only single words can be stored");
        return -1;
    }
    Py_ssize_t i = words_index(w, key);
    if (i < 0)
        return -1;
    unsigned long long v;
    if (PyLong_CheckExact(value)) {
        v = PyLong_AsUnsignedLongLong(value);
    } else {
        PyObject *number = PyNumber_Index(value);
        if (number == NULL)
            return -1;
        v = PyLong_AsUnsignedLongLong(number);
        Py_DECREF(number);
    }
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "Words: a word holds 0 to 2**64-1");
        return -1;
    }
    store_release(&w->words[i], (uint64_t)v);
    return 0;
}

static Py_ssize_t words_length(Words *w) { return words_usable(w) ? w->count : -1; }

static int words_getbuffer(Words *w, Py_buffer *view, int flags)
{
    if (!words_usable(w))
        return -1;
    if (PyBuffer_FillInfo(view, (PyObject *)w, w->words, w->count * 8, 0, flags) < 0)
        return -1;
    w->exports++;
    return 0;
}

static void words_releasebuffer(Words *w, Py_buffer *view) { w->exports--; }

static PyObject *words_release(Words *w, PyObject *unused)
{
    if (w->exports > 0) {
        PyErr_Format(PyExc_BufferError, "Words has %zd exported buffer(s)", w->exports);
        return NULL;
    }
    if (w->held) {
        PyBuffer_Release(&w->view);
        w->held = 0;
    }
    Py_RETURN_NONE;
}

static PyObject *words_enter(Words *w, PyObject *unused) { return Py_NewRef(w); }

static PyObject *words_exit(Words *w, PyObject *args) { return words_release(w, NULL); }

static PyMethodDef words_methods[] = {
    {"release", (PyCFunction)words_release, METH_NOARGS, "Give the mapping's export back."},
    {"__enter__", (PyCFunction)words_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)words_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods words_mapping = {
    (lenfunc)words_length,
    (binaryfunc)words_subscript,
    (objobjargproc)words_ass_subscript,
};

/* words[i] for iteration (the sequence protocol): an acquire load, as words_subscript. */
static PyObject *words_item(Words *w, Py_ssize_t i)
{
    if (!words_usable(w))
        return NULL;
    if (i < 0 || i >= w->count) {
        PyErr_SetString(PyExc_IndexError, "Words index out of range");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(load_acquire(&w->words[i]));
}

static PySequenceMethods words_sequence = {
    .sq_length = (lenfunc)words_length,
    .sq_item = (ssizeargfunc)words_item,
};

static PyBufferProcs words_buffer = {
    (getbufferproc)words_getbuffer,
    (releasebufferproc)words_releasebuffer,
};

static PyTypeObject WordsType = {
    PyVarObject_HEAD_INIT(NULL, 0) /* its comma is in the macro */
    .tp_name = "ugram._speedups.Words",
    .tp_basicsize = sizeof(Words),
    .tp_dealloc = (destructor)words_dealloc,
    .tp_as_sequence = &words_sequence,
    .tp_as_mapping = &words_mapping,
    .tp_as_buffer = &words_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = words_doc,
    .tp_methods = words_methods,
    .tp_new = words_new,
};

PyDoc_STRVAR(fence_doc,
"fence() -> None\n\n"
"A sequentially consistent fence (store-load ordering included): the Python side of the\n"
"sleep/wake handshake (ugram.ordering.full_fence).");

/* Symbol kept for the arm64 disassembly check. */
UGRAM_NOINLINE static PyObject *fence(PyObject *self, PyObject *unused)
{
    fence_seq_cst();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"reset_slots", reset_slots, METH_VARARGS, reset_slots_doc},
    {"drain", drain, METH_VARARGS, drain_doc},
    {"take_records", take_records, METH_VARARGS, take_records_doc},
    {"run_records", run_records, METH_VARARGS, run_records_doc},
    {"decode_batch", decode_batch, METH_VARARGS, decode_batch_doc},
    {"observe_batch", observe_batch, METH_VARARGS, observe_batch_doc},
    {"fence", fence, METH_NOARGS, fence_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ugram._speedups",
    "The receiver's and workers' per-datagram loops in C (optional).", -1, methods,
    NULL, NULL, NULL, NULL,
};

/* Bumped whenever a function's arguments or results change: ugram.speedups refuses a stale
 * build (an old .so left in place) instead of calling it wrongly. */
#define API_VERSION 12

PyMODINIT_FUNC PyInit__speedups(void)
{
    /* Checked at build time above; again here, where a build for another CPU variant
     * would show it (only lock-free words work between processes). */
    if (!__atomic_is_lock_free(8, NULL)) {
        PyErr_SetString(PyExc_ImportError, "ugram._speedups: 8-byte atomics are not "
                                           "lock-free on this CPU; they cannot order "
                                           "stores between processes");
        return NULL;
    }
    if (PyType_Ready(&WordsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "API_VERSION", API_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "LOCK_FREE_WORDS", 1) < 0 ||
        PyModule_AddObjectRef(m, "Words", (PyObject *)&WordsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
