/*
 * ugram._parsers: the syslog, statsd and lines codecs' common cases at native speed.
 *
 * SyslogParser(fallback, message_type, bsd_time, rfc3339) is a callable that parses one
 * datagram exactly as ugram.codecs.syslog.parse_syslog (the reference) does, or calls
 * `fallback` (that very function) with the datagram where it is not sure to: a header byte
 * outside ASCII (Python's \d, \s and str lengths are Unicode), a header that is not the
 * common RFC 5424 or RFC 3164 shape, a field over its limit, an escaped structured data
 * value, an empty datagram. Declining is always correct; the fast path only ever gives the
 * answer the reference would (tests/unit/test_parsers.py checks it with hypothesis).
 *
 * It works on the bytes: every position where the reference cuts its decoded text is next
 * to an ASCII byte, and a UTF-8 decoder (errors="replace") starts afresh at an ASCII byte,
 * so decoding a piece of the bytes gives the same text as cutting the decoded whole.
 *
 * Time is linear in the datagram: every scan moves forward and none is repeated.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define API_VERSION 1

#define DEFAULT_PRI 13
#define MAX_HOSTNAME 255
#define MAX_APP_NAME 48
#define MAX_PROCID 128
#define MAX_MSGID 32
#define MAX_SD_NAME 32
#define MAX_SD_VALUE 8192
#define MAX_TAG 64
#define STAMP_KEY 40

static const char MONTHS[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* What a parse step returns when it declines: the reference decides. */
static PyObject DECLINE_OBJECT;
#define DECLINE (&DECLINE_OBJECT)

/* What the three parsers share: a callable object whose vectorcall reads the payload's
   buffer and runs its `parse_payload` (the parsed datagram, or DECLINE to hand the payload
   to `fallback`, the pure-Python reference). */
typedef PyObject *(*ParsePayload)(PyObject *self, const unsigned char *b, Py_ssize_t n);

#define PARSER_HEAD                                                                         \
    PyObject_HEAD vectorcallfunc vectorcall; /* NULL until __init__ succeeded */            \
    ParsePayload parse_payload;                                                             \
    PyObject *fallback; /* the reference */

typedef struct {
    PARSER_HEAD
} Parser;

static PyObject *parser_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames)
{
    Parser *self = (Parser *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_Format(PyExc_TypeError, "%s takes one argument, the payload",
                     Py_TYPE(callable)->tp_name);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *parsed = self->parse_payload(callable, view.buf, view.len);
    PyBuffer_Release(&view);
    if (parsed == DECLINE)
        return PyObject_CallOneArg(self->fallback, args[0]);
    return parsed;
}

static PyObject *parser_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    if (((Parser *)op)->vectorcall == NULL) {
        PyErr_Format(PyExc_TypeError, "%s was not initialised", Py_TYPE(op)->tp_name);
        return NULL;
    }
    return PyVectorcall_Call(op, args, kwargs);
}

/* The start of every __init__: not callable until it succeeds; no keyword arguments. */
static int parser_init_start(PyObject *op, PyObject *kwargs)
{
    ((Parser *)op)->vectorcall = NULL;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_Format(PyExc_TypeError, "%s takes no keyword arguments", Py_TYPE(op)->tp_name);
        return -1;
    }
    return 0;
}

/* The end of a successful __init__. */
static void parser_ready(PyObject *op, ParsePayload parse)
{
    ((Parser *)op)->parse_payload = parse;
    ((Parser *)op)->vectorcall = parser_vectorcall;
}

static void parser_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    Py_TYPE(op)->tp_clear(op);
    Py_TYPE(op)->tp_free(op);
}

/* Each non-empty line of a datagram ("\n" separated, a trailing "\r" dropped) parsed by
   `one`, as a list; DECLINE when `one` declines a line or there is none. */
static PyObject *each_line(PyObject *self, const unsigned char *b, Py_ssize_t n,
                           ParsePayload one)
{
    PyObject *lines = PyList_New(0);
    if (lines == NULL)
        return NULL;
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        if (i < n && b[i] != '\n')
            continue;
        Py_ssize_t end = i;
        if (end > start && b[end - 1] == '\r')
            end--;
        if (end > start) {
            PyObject *line = one(self, b + start, end - start);
            if (line == DECLINE || line == NULL || PyList_Append(lines, line) < 0) {
                if (line != DECLINE)
                    Py_XDECREF(line);
                Py_DECREF(lines);
                return line == DECLINE ? DECLINE : NULL;
            }
            Py_DECREF(line);
        }
        start = i + 1;
    }
    if (PyList_GET_SIZE(lines) == 0) {
        Py_DECREF(lines);
        return DECLINE; /* no line: the reference raises */
    }
    return lines;
}

/* Small caches of what repeats from line to line (names, tags, header fields), by the
   bytes read: a slot holds one entry, a new one replaces it. */
#define CACHE_SLOTS 1024 /* a power of two */
#define HEADER_SLOTS 256

typedef struct {
    PyObject *key;   /* bytes: what was read */
    PyObject *value; /* what it parsed to (str, or a tuple of str) */
} CacheSlot;


static size_t fnv1a(const unsigned char *at, Py_ssize_t length)
{
    uint64_t h = 14695981039346656037ULL;
    for (Py_ssize_t i = 0; i < length; i++)
        h = (h ^ at[i]) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 29));
}

/* The cached value for these bytes, or NULL (no error set) when the slot holds others. */
static PyObject *cache_get(CacheSlot *slot, const unsigned char *at, Py_ssize_t length)
{
    if (slot->key != NULL && PyBytes_GET_SIZE(slot->key) == length &&
        memcmp(PyBytes_AS_STRING(slot->key), at, (size_t)length) == 0)
        return Py_NewRef(slot->value);
    return NULL;
}

static void cache_put(CacheSlot *slot, const unsigned char *at, Py_ssize_t length,
                      PyObject *value)
{
    PyObject *key = PyBytes_FromStringAndSize((const char *)at, length);
    if (key == NULL) {
        PyErr_Clear(); /* not remembered: nothing is lost */
        return;
    }
    Py_XSETREF(slot->key, key);
    Py_XSETREF(slot->value, Py_NewRef(value));
}

typedef struct {
    PARSER_HEAD             /* fallback: parse_syslog */
    PyObject *message_type; /* SyslogMessage */
    PyObject *bsd_time;     /* _bsd_time(month, day, hour, minute, second) */
    PyObject *rfc3339;      /* _rfc3339(text) -> datetime | None */
    PyObject *kw_plain;     /* keyword names of a message without a header */
    PyObject *kw_3164;
    PyObject *kw_5424;
    /* The last BSD timestamp resolved, and the clock's second it was resolved in: the
       reference remembers its answers for the rest of that second too. */
    char bsd_key[16];
    Py_ssize_t bsd_len;
    long long bsd_second;
    PyObject *bsd_value;
    /* The last RFC 3339 timestamp (with its zone: the answer never changes). */
    char iso_key[STAMP_KEY];
    Py_ssize_t iso_len;
    PyObject *iso_value;
    CacheSlot header[HEADER_SLOTS]; /* host, app, procid, msgid, SD names */
} SyslogParser;

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* Python's str.isspace() and re's \s, for ASCII. */
static inline int is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}


static PyObject *decode(const unsigned char *at, Py_ssize_t length)
{
    return PyUnicode_DecodeUTF8((const char *)at, length, "replace");
}

static PyObject *ascii_text(const unsigned char *at, Py_ssize_t length)
{
    return PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, at, length);
}

/* ASCII header text (a host, a tag, an SD name), the same object as the last time these
   bytes were read in its cache slot. */
static PyObject *header_text(SyslogParser *self, const unsigned char *at, Py_ssize_t length)
{
    if (length > 64)
        return ascii_text(at, length);
    CacheSlot *slot = &self->header[fnv1a(at, length) & (HEADER_SLOTS - 1)];
    PyObject *text = cache_get(slot, at, length);
    if (text != NULL)
        return text;
    text = ascii_text(at, length);
    if (text != NULL)
        cache_put(slot, at, length, text);
    return text;
}

/* A header field: None for "-" (NILVALUE), else its (ASCII) text. */
static PyObject *nil_or_text(SyslogParser *self, const unsigned char *at, Py_ssize_t length)
{
    if (length == 1 && at[0] == '-')
        Py_RETURN_NONE;
    return header_text(self, at, length);
}

static long long clock_second(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now); /* time.time()'s clock, not time()'s coarse one */
    return (long long)now.tv_sec;
}

/* -- RFC 5424 ------------------------------------------------------------------------------ */

/* The end of an SD-NAME ([^\s=\]"]+, ASCII) at `p`, or -1 to decline. */
static Py_ssize_t sd_name_end(const unsigned char *b, Py_ssize_t p, Py_ssize_t n)
{
    Py_ssize_t start = p;
    while (p < n) {
        unsigned char c = b[p];
        if (c >= 0x80)
            return -1;
        if (is_space(c) || c == '=' || c == ']' || c == '"')
            break;
        p++;
    }
    if (p == start || p - start > MAX_SD_NAME)
        return -1;
    return p;
}

/* Parse "[id k="v" ...]..." at *pos into `elements`; 0, or -1 to decline (an error set
   only for a failed allocation). */
static int structured_data(SyslogParser *self, const unsigned char *b, Py_ssize_t n,
                           Py_ssize_t *pos, PyObject *elements)
{
    Py_ssize_t p = *pos;
    while (p < n && b[p] == '[') {
        Py_ssize_t id_end = sd_name_end(b, p + 1, n);
        if (id_end < 0)
            return -1;
        PyObject *id = header_text(self, b + p + 1, id_end - p - 1);
        if (id == NULL)
            return -1;
        PyObject *params = PyDict_GetItemWithError(elements, id); /* borrowed */
        if (params == NULL) {
            if (PyErr_Occurred() || (params = PyDict_New()) == NULL) {
                Py_DECREF(id);
                return -1;
            }
            int failed = PyDict_SetItem(elements, id, params);
            Py_DECREF(params); /* the dict holds it */
            if (failed) {
                Py_DECREF(id);
                return -1;
            }
        }
        Py_DECREF(id);
        p = id_end;
        while (p < n && b[p] != ']') {
            if (b[p] != ' ')
                return -1;
            Py_ssize_t name_end = sd_name_end(b, p + 1, n);
            if (name_end < 0 || name_end + 1 >= n || b[name_end] != '=' || b[name_end + 1] != '"')
                return -1;
            Py_ssize_t v = name_end + 2, q = v;
            while (q < n && b[q] != '"') {
                if (b[q] == '\\')
                    return -1; /* an escape: the reference unescapes */
                q++;
            }
            if (q >= n)
                return -1;
            PyObject *name = header_text(self, b + p + 1, name_end - p - 1);
            if (name == NULL)
                return -1;
            PyObject *value = decode(b + v, q - v);
            if (value == NULL || PyUnicode_GET_LENGTH(value) > MAX_SD_VALUE ||
                PyDict_SetItem(params, name, value) < 0) {
                Py_DECREF(name);
                Py_XDECREF(value);
                return -1;
            }
            Py_DECREF(name);
            Py_DECREF(value);
            p = q + 1;
        }
        if (p >= n)
            return -1;
        p++; /* the "]" */
    }
    *pos = p;
    return 0;
}

static int two_digits(const unsigned char *at)
{
    return is_digit(at[0]) && is_digit(at[1]) ? (at[0] - '0') * 10 + (at[1] - '0') : -1;
}

/* The reference's _rfc3339 for its plainest inputs: YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+hh:mm),
   every field in its usual range, as datetime.fromisoformat() builds it. NULL with no error
   set for anything else (the reference decides). */
static PyObject *plain_rfc3339(const unsigned char *b, Py_ssize_t n)
{
    if (n < 20 || b[4] != '-' || b[7] != '-' || (b[10] != 'T' && b[10] != 't') || b[13] != ':' ||
        b[16] != ':')
        return NULL;
    int year = 0;
    for (int i = 0; i < 4; i++) {
        if (!is_digit(b[i]))
            return NULL;
        year = year * 10 + (b[i] - '0');
    }
    int month = two_digits(b + 5), day = two_digits(b + 8), hour = two_digits(b + 11);
    int minute = two_digits(b + 14), second = two_digits(b + 17);
    if (year < 1 || month < 1 || month > 12 || day < 1 || day > 28 || hour < 0 || hour > 23 ||
        minute < 0 || minute > 59 || second < 0 || second > 59)
        return NULL; /* day 29-31, leap seconds, 24:00: the reference's calendar decides */
    Py_ssize_t p = 19;
    int micro = 0, digits = 0;
    if (p < n && b[p] == '.') {
        for (p++; p < n && is_digit(b[p]) && digits < 7; p++, digits++)
            micro = micro * 10 + (b[p] - '0');
        if (digits == 0 || digits > 6)
            return NULL;
        for (int i = digits; i < 6; i++)
            micro *= 10;
    }
    int offset = 0;
    if (p + 1 == n && (b[p] == 'Z' || b[p] == 'z'))
        p++;
    else if (p + 6 == n && (b[p] == '+' || b[p] == '-') && b[p + 3] == ':') {
        int hh = two_digits(b + p + 1), mm = two_digits(b + p + 4);
        if (hh < 0 || hh > 23 || mm < 0 || mm > 59)
            return NULL;
        offset = (hh * 60 + mm) * (b[p] == '-' ? -1 : 1);
        p += 6;
    } else
        return NULL;
    PyObject *delta = PyDelta_FromDSU(0, offset * 60, 0);
    if (delta == NULL)
        return NULL;
    PyObject *zone = PyTimeZone_FromOffset(delta);
    Py_DECREF(delta);
    if (zone == NULL)
        return NULL;
    PyObject *when = PyDateTimeAPI->DateTime_FromDateAndTime(
        year, month, day, hour, minute, second, micro, zone, PyDateTimeAPI->DateTimeType);
    Py_DECREF(zone);
    if (when == NULL && PyErr_ExceptionMatches(PyExc_ValueError))
        PyErr_Clear(); /* out of range: the reference says so */
    return when;
}

static PyObject *rfc3339_time(SyslogParser *self, const unsigned char *at, Py_ssize_t length)
{
    if (length <= STAMP_KEY && self->iso_value != NULL && length == self->iso_len &&
        memcmp(self->iso_key, at, (size_t)length) == 0)
        return Py_NewRef(self->iso_value);
    PyObject *when = plain_rfc3339(at, length);
    if (when == NULL && PyErr_Occurred())
        return NULL;
    if (when == NULL) {
        PyObject *text = ascii_text(at, length);
        if (text == NULL)
            return NULL;
        when = PyObject_CallOneArg(self->rfc3339, text);
        Py_DECREF(text);
    }
    if (when != NULL && when != Py_None && length <= STAMP_KEY) {
        Py_XSETREF(self->iso_value, Py_NewRef(when));
        memcpy(self->iso_key, at, (size_t)length);
        self->iso_len = length;
    }
    return when;
}

/* The end of a header field (\S+ followed by one space) at `p`, or -1 to decline. */
static Py_ssize_t field_end(const unsigned char *b, Py_ssize_t p, Py_ssize_t n)
{
    Py_ssize_t start = p;
    while (p < n && b[p] > 0x20 && b[p] < 0x7f)
        p++;
    if (p == start || p >= n || b[p] != ' ')
        return -1;
    return p;
}

static PyObject *parse_5424(SyslogParser *self, const unsigned char *b, Py_ssize_t p,
                            Py_ssize_t n, int pri)
{
    Py_ssize_t start = p;
    if (b[p] == '0')
        return DECLINE;
    while (p < n && is_digit(b[p]) && p - start < 4)
        p++;
    if (p - start > 3 || p >= n || b[p] != ' ')
        return DECLINE;
    int version = 0;
    for (Py_ssize_t i = start; i < p; i++)
        version = version * 10 + (b[i] - '0');
    Py_ssize_t at[5], end[5];
    p++;
    for (int i = 0; i < 5; i++) {
        at[i] = p;
        end[i] = field_end(b, p, n);
        if (end[i] < 0)
            return DECLINE;
        p = end[i] + 1;
    }
    static const Py_ssize_t limits[5] = {PY_SSIZE_T_MAX, MAX_HOSTNAME, MAX_APP_NAME,
                                         MAX_PROCID, MAX_MSGID};
    for (int i = 1; i < 5; i++)
        if (end[i] - at[i] > limits[i])
            return DECLINE; /* the reference says which field */
    PyObject *elements = PyDict_New();
    if (elements == NULL)
        return NULL;
    if (p < n && b[p] == '-')
        p++;
    else if (p >= n || b[p] != '[' || structured_data(self, b, n, &p, elements) < 0) {
        Py_DECREF(elements);
        return PyErr_Occurred() ? NULL : DECLINE;
    }
    if (p < n && b[p] != ' ') {
        Py_DECREF(elements);
        return DECLINE;
    }
    PyObject *timestamp;
    if (end[0] - at[0] == 1 && b[at[0]] == '-')
        timestamp = Py_NewRef(Py_None);
    else {
        timestamp = rfc3339_time(self, b + at[0], end[0] - at[0]);
        if (timestamp == NULL) {
            Py_DECREF(elements);
            return NULL;
        }
        if (timestamp == Py_None) {
            Py_DECREF(timestamp);
            Py_DECREF(elements);
            return DECLINE;
        }
    }
    Py_ssize_t m = p < n ? p + 1 : n;
    if (n - m >= 3 && b[m] == 0xef && b[m + 1] == 0xbb && b[m + 2] == 0xbf)
        m += 3; /* the BOM RFC 5424 puts before UTF-8 text */
    PyObject *args[10] = {
        PyLong_FromLong(pri / 8),
        PyLong_FromLong(pri % 8),
        PyLong_FromLong(version),
        timestamp,
        nil_or_text(self, b + at[1], end[1] - at[1]),
        nil_or_text(self, b + at[2], end[2] - at[2]),
        nil_or_text(self, b + at[3], end[3] - at[3]),
        nil_or_text(self, b + at[4], end[4] - at[4]),
        elements,
        decode(b + m, n - m),
    };
    PyObject *message = NULL;
    int complete = 1;
    for (int i = 0; i < 10; i++)
        complete &= args[i] != NULL;
    if (complete)
        message = PyObject_Vectorcall(self->message_type, args, 0, self->kw_5424);
    for (int i = 0; i < 10; i++)
        Py_XDECREF(args[i]);
    return message;
}

/* -- RFC 3164 ------------------------------------------------------------------------------ */

/* The length of "Mmm dd hh:mm:ss" (or "Mmm d hh:mm:ss") at `b`, 0 when there is none; the
   day's bytes in *day and *day_length. The reference's regex: (Mmm) ([ \d]?\d) (\d\d):(\d\d):
   (\d\d)(?: |$), ASCII. */
static Py_ssize_t bsd_stamp(const unsigned char *b, Py_ssize_t n, Py_ssize_t *day,
                           Py_ssize_t *day_length)
{
    if (n < 14)
        return 0;
    int month = -1;
    for (int i = 0; i < 12; i++)
        if (memcmp(b, MONTHS[i], 3) == 0)
            month = i;
    if (month < 0 || b[3] != ' ')
        return 0;
    Py_ssize_t q;
    if ((b[4] == ' ' || is_digit(b[4])) && is_digit(b[5]) && b[6] == ' ')
        *day = 4, *day_length = 2, q = 7;
    else if (is_digit(b[4]) && b[5] == ' ')
        *day = 4, *day_length = 1, q = 6;
    else
        return 0;
    if (q + 8 > n)
        return 0;
    const unsigned char *t = b + q;
    if (!(is_digit(t[0]) && is_digit(t[1]) && t[2] == ':' && is_digit(t[3]) && is_digit(t[4]) &&
          t[5] == ':' && is_digit(t[6]) && is_digit(t[7])))
        return 0;
    q += 8;
    if (q < n && b[q] != ' ')
        return 0;
    return q;
}

static PyObject *bsd_time(SyslogParser *self, const unsigned char *b, Py_ssize_t length,
                          Py_ssize_t day, Py_ssize_t day_length)
{
    long long second = clock_second();
    if (self->bsd_value != NULL && second == self->bsd_second && length == self->bsd_len &&
        memcmp(self->bsd_key, b, (size_t)length) == 0)
        return Py_NewRef(self->bsd_value);
    const unsigned char *t = b + length - 8;
    PyObject *args[5] = {
        ascii_text(b, 3),
        ascii_text(b + day, day_length),
        ascii_text(t, 2),
        ascii_text(t + 3, 2),
        ascii_text(t + 6, 2),
    };
    PyObject *when = NULL;
    if (args[0] && args[1] && args[2] && args[3] && args[4])
        when = PyObject_Vectorcall(self->bsd_time, args, 5, NULL);
    for (int i = 0; i < 5; i++)
        Py_XDECREF(args[i]);
    if (when != NULL) {
        Py_XSETREF(self->bsd_value, Py_NewRef(when));
        memcpy(self->bsd_key, b, (size_t)length);
        self->bsd_len = length;
        self->bsd_second = second;
    }
    return when;
}

typedef struct {
    Py_ssize_t tag, tag_end, pid, pid_end, end; /* end: where the message starts */
} Tag;

/* The reference's _TAG: ([^\s:\[\]]{1,64})(?:\[([^\]\s]*)\])?:(?: |$). 1: a tag, 0: none,
   -1: decline (a byte outside ASCII where it decides). */
static int match_tag(const unsigned char *b, Py_ssize_t p, Py_ssize_t n, Tag *tag)
{
    Py_ssize_t q = p;
    while (q < n && q - p <= MAX_TAG) {
        unsigned char c = b[q];
        if (c >= 0x80)
            return -1;
        if (is_space(c) || c == ':' || c == '[' || c == ']')
            break;
        q++;
    }
    if (q == p || q - p > MAX_TAG || q >= n)
        return 0;
    tag->tag = p, tag->tag_end = q, tag->pid = tag->pid_end = -1;
    if (b[q] == '[') {
        Py_ssize_t r = q + 1;
        while (r < n && b[r] != ']') {
            if (b[r] >= 0x80)
                return -1;
            if (is_space(b[r]))
                return 0;
            r++;
        }
        if (r >= n)
            return 0;
        tag->pid = q + 1, tag->pid_end = r;
        q = r + 1;
    }
    if (q >= n || b[q] != ':')
        return 0;
    q++;
    if (q < n && b[q] != ' ')
        return 0;
    tag->end = q < n ? q + 1 : n;
    return 1;
}

/* An RFC 3164 host (the first word, any bytes but a space): cached when it is ASCII. */
static PyObject *host_text(SyslogParser *self, const unsigned char *at, Py_ssize_t length)
{
    for (Py_ssize_t i = 0; i < length; i++)
        if (at[i] >= 0x80)
            return decode(at, length);
    return header_text(self, at, length);
}

static PyObject *make_3164(SyslogParser *self, int pri, PyObject *timestamp,
                           const unsigned char *b, Py_ssize_t host, Py_ssize_t host_end,
                           const Tag *tag, Py_ssize_t m, Py_ssize_t n)
{
    PyObject *args[7] = {
        PyLong_FromLong(pri / 8),
        PyLong_FromLong(pri % 8),
        Py_NewRef(timestamp),
        host < 0 ? Py_NewRef(Py_None) : host_text(self, b + host, host_end - host),
        tag == NULL ? Py_NewRef(Py_None) : header_text(self, b + tag->tag, tag->tag_end - tag->tag),
        tag == NULL || tag->pid_end <= tag->pid
            ? Py_NewRef(Py_None)
            : header_text(self, b + tag->pid, tag->pid_end - tag->pid),
        decode(b + m, n - m),
    };
    PyObject *message = NULL;
    int complete = 1;
    for (int i = 0; i < 7; i++)
        complete &= args[i] != NULL;
    if (complete)
        message = PyObject_Vectorcall(self->message_type, args, 0, self->kw_3164);
    for (int i = 0; i < 7; i++)
        Py_XDECREF(args[i]);
    return message;
}

static PyObject *parse_3164(SyslogParser *self, const unsigned char *b, Py_ssize_t p,
                            Py_ssize_t n, int pri)
{
    Py_ssize_t day, day_length, stamp = bsd_stamp(b + p, n - p, &day, &day_length);
    if (stamp == 0) { /* no header at all (Python's SysLogHandler): all message */
        PyObject *args[3] = {PyLong_FromLong(pri / 8), PyLong_FromLong(pri % 8),
                             decode(b + p, n - p)};
        PyObject *message = NULL;
        if (args[0] && args[1] && args[2])
            message = PyObject_Vectorcall(self->message_type, args, 0, self->kw_plain);
        for (int i = 0; i < 3; i++)
            Py_XDECREF(args[i]);
        return message;
    }
    PyObject *timestamp = bsd_time(self, b + p, stamp, day, day_length);
    if (timestamp == NULL)
        return NULL;
    Py_ssize_t r = p + stamp < n ? p + stamp + 1 : n; /* the rest, after the space */
    Tag tag;
    PyObject *message;
    int found = match_tag(b, r, n, &tag);
    if (found > 0 && tag.pid_end - tag.pid > MAX_PROCID)
        found = -1; /* the reference raises: let it say so */
    if (found < 0)
        message = DECLINE;
    else if (found)
        message = make_3164(self, pri, timestamp, b, -1, -1, &tag, tag.end, n);
    else {
        const unsigned char *space = memchr(b + r, ' ', (size_t)(n - r));
        if (space == NULL)
            message = make_3164(self, pri, timestamp, b, -1, -1, NULL, r, n);
        else {
            Py_ssize_t host_end = space - b, after = host_end + 1;
            int ascii = 1;
            for (Py_ssize_t i = r; i < host_end && ascii; i++)
                ascii = b[i] < 0x80;
            if (host_end - r > MAX_HOSTNAME && !ascii)
                message = DECLINE; /* its length in characters decides */
            else if (host_end - r > MAX_HOSTNAME) /* a long first word is message text */
                message = make_3164(self, pri, timestamp, b, -1, -1, NULL, r, n);
            else {
                found = match_tag(b, after, n, &tag);
                if (found > 0 && tag.pid_end - tag.pid > MAX_PROCID)
                    found = -1;
                if (found < 0)
                    message = DECLINE;
                else
                    message = make_3164(self, pri, timestamp, b, r, host_end,
                                        found ? &tag : NULL, found ? tag.end : after, n);
            }
        }
    }
    Py_DECREF(timestamp);
    return message;
}

/* -- the whole datagram -------------------------------------------------------------------- */

static PyObject *syslog_payload(PyObject *op, const unsigned char *b, Py_ssize_t n)
{
    SyslogParser *self = (SyslogParser *)op;
    while (n > 0 && (b[n - 1] == '\0' || b[n - 1] == '\r' || b[n - 1] == '\n'))
        n--;
    if (n == 0)
        return DECLINE; /* empty: the reference raises */
    Py_ssize_t p = 0;
    if (b[0] >= 0x80)
        return DECLINE; /* \d is Unicode there */
    if (is_digit(b[0])) { /* an RFC 6587 octet count: \d{1,6} (?=<) */
        while (p < n && is_digit(b[p]) && p < 7)
            p++;
        if (p < n && b[p] >= 0x80)
            return DECLINE;
        p = (p <= 6 && p + 1 < n && b[p] == ' ' && b[p + 1] == '<') ? p + 1 : 0;
    }
    int pri = DEFAULT_PRI;
    if (p < n && b[p] == '<') { /* <(\d{1,3})> */
        Py_ssize_t q = p + 1;
        int value = 0;
        while (q < n && is_digit(b[q]) && q - p <= 4)
            value = value * 10 + (b[q++] - '0');
        if (q < n && b[q] >= 0x80 && q - p <= 3)
            return DECLINE;
        if (q - p >= 2 && q - p <= 4 && q < n && b[q] == '>' && value <= 191) {
            pri = value;
            p = q + 1;
        }
    }
    if (p < n && b[p] >= 0x80)
        return DECLINE; /* str.isdigit() is Unicode */
    if (p < n && is_digit(b[p]))
        return parse_5424(self, b, p, n, pri);
    return parse_3164(self, b, p, n, pri);
}

static int syslog_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    SyslogParser *self = (SyslogParser *)op;
    PyObject *fallback, *message_type, *bsd, *rfc3339;
    if (parser_init_start(op, kwargs) < 0 ||
        !PyArg_ParseTuple(args, "OOOO:SyslogParser", &fallback, &message_type, &bsd, &rfc3339))
        return -1;
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    Py_XSETREF(self->message_type, Py_NewRef(message_type));
    Py_XSETREF(self->bsd_time, Py_NewRef(bsd));
    Py_XSETREF(self->rfc3339, Py_NewRef(rfc3339));
    Py_XSETREF(self->kw_plain, Py_BuildValue("(sss)", "facility", "severity", "message"));
    Py_XSETREF(self->kw_3164, Py_BuildValue("(sssssss)", "facility", "severity", "timestamp",
                                            "hostname", "app_name", "procid", "message"));
    Py_XSETREF(self->kw_5424,
               Py_BuildValue("(ssssssssss)", "facility", "severity", "version", "timestamp",
                             "hostname", "app_name", "procid", "msgid", "structured_data",
                             "message"));
    Py_CLEAR(self->bsd_value);
    Py_CLEAR(self->iso_value);
    if (self->kw_plain == NULL || self->kw_3164 == NULL || self->kw_5424 == NULL)
        return -1;
    parser_ready(op, syslog_payload);
    return 0;
}

static int syslog_traverse(PyObject *op, visitproc visit, void *arg)
{
    SyslogParser *self = (SyslogParser *)op;
    Py_VISIT(self->fallback);
    Py_VISIT(self->message_type);
    Py_VISIT(self->bsd_time);
    Py_VISIT(self->rfc3339);
    Py_VISIT(self->bsd_value);
    Py_VISIT(self->iso_value);
    return 0;
}

static int syslog_clear(PyObject *op)
{
    SyslogParser *self = (SyslogParser *)op;
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->message_type);
    Py_CLEAR(self->bsd_time);
    Py_CLEAR(self->rfc3339);
    Py_CLEAR(self->kw_plain);
    Py_CLEAR(self->kw_3164);
    Py_CLEAR(self->kw_5424);
    Py_CLEAR(self->bsd_value);
    Py_CLEAR(self->iso_value);
    for (int i = 0; i < HEADER_SLOTS; i++) {
        Py_CLEAR(self->header[i].key);
        Py_CLEAR(self->header[i].value);
    }
    return 0;
}

static PyTypeObject SyslogParserType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ugram._parsers.SyslogParser",
    .tp_basicsize = sizeof(SyslogParser),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "SyslogParser(fallback, message_type, bsd_time, rfc3339): parse_syslog, compiled",
    .tp_vectorcall_offset = offsetof(Parser, vectorcall),
    .tp_new = PyType_GenericNew,
    .tp_init = syslog_init,
    .tp_call = parser_call,
    .tp_traverse = syslog_traverse,
    .tp_clear = syslog_clear,
    .tp_dealloc = parser_dealloc,
};

/* == statsd ================================================================================

StatsdParser(fallback, metric_type) is a callable that parses one DogStatsD datagram exactly as
ugram.codecs.statsd.parse_packet (the reference) does when every line of it is a plain metric
line it is sure of; for any other datagram (an event or service check, a line that does not
parse, a line over 1 KiB: the limits, bad-line counting and logging are the reference's) it
returns fallback(payload), which parses the whole datagram again. Metric names and tag
sections are remembered (a small cache by their bytes): a flood repeats a few of them, and an
aggregator's dictionary lookups are fastest with the same string object each time. */

#define STATSD_MAX_FIELD 1024
#define STATSD_MAX_NAME 256

typedef struct {
    PARSER_HEAD            /* fallback: parse_packet */
    PyObject *metric_type; /* Metric */
    PyObject *kwnames;
    PyObject *types[6];    /* "c", "g", "ms", "h", "s", "d" */
    PyObject *empty;       /* () */
    PyObject *one;         /* 1.0 */
    CacheSlot names[CACHE_SLOTS];
    CacheSlot tags[CACHE_SLOTS];
} StatsdParser;

static const char *const METRIC_TYPES[6] = {"c", "g", "ms", "h", "s", "d"};

/* Strict UTF-8, as bytes.decode(): NULL with no error set when it is not UTF-8. */
static PyObject *strict_text(const unsigned char *at, Py_ssize_t length)
{
    PyObject *text = PyUnicode_DecodeUTF8((const char *)at, length, NULL);
    if (text == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        PyErr_Clear();
    return text;
}

static PyObject *metric_name(StatsdParser *self, const unsigned char *at, Py_ssize_t length)
{
    CacheSlot *slot = &self->names[fnv1a(at, length) & (CACHE_SLOTS - 1)];
    PyObject *name = cache_get(slot, at, length);
    if (name != NULL)
        return name;
    name = strict_text(at, length);
    if (name != NULL) {
        PyUnicode_InternInPlace(&name);
        cache_put(slot, at, length, name);
    }
    return name;
}

/* The reference's _tags: tuple(filter(None, raw.decode().split(","))). */
static PyObject *metric_tags(StatsdParser *self, const unsigned char *at, Py_ssize_t length)
{
    CacheSlot *slot = &self->tags[fnv1a(at, length) & (CACHE_SLOTS - 1)];
    PyObject *tags = cache_get(slot, at, length);
    if (tags != NULL)
        return tags;
    PyObject *text = strict_text(at, length);
    if (text == NULL)
        return NULL;
    Py_DECREF(text); /* decodes: now each tag, which then decodes too */
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i <= length; i++) {
        if (i < length && at[i] != ',')
            continue;
        if (i > start) {
            PyObject *tag = strict_text(at + start, i - start);
            if (tag == NULL || PyList_Append(list, tag) < 0) {
                Py_XDECREF(tag);
                Py_DECREF(list);
                return NULL;
            }
            Py_DECREF(tag);
        }
        start = i + 1;
    }
    tags = PyList_AsTuple(list);
    Py_DECREF(list);
    if (tags != NULL)
        cache_put(slot, at, length, tags);
    return tags;
}

/* The reference's _number: [+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?, finite, as float() reads
   it (PyOS_string_to_double is what float() calls). 0 and *value, or -1 to decline. */
static int metric_number(const unsigned char *at, Py_ssize_t length, double *value)
{
    char text[64];
    Py_ssize_t i = 0, digits = 0;
    if (length == 0 || length >= (Py_ssize_t)sizeof(text))
        return -1;
    if (at[i] == '+' || at[i] == '-')
        i++;
    while (i < length && is_digit(at[i]))
        i++, digits++;
    if (i < length && at[i] == '.') {
        i++;
        while (i < length && is_digit(at[i]))
            i++, digits++;
    }
    if (digits == 0)
        return -1;
    if (i < length && (at[i] == 'e' || at[i] == 'E')) {
        i++;
        if (i < length && (at[i] == '+' || at[i] == '-'))
            i++;
        Py_ssize_t exponent = 0;
        while (i < length && is_digit(at[i]))
            i++, exponent++;
        if (exponent == 0)
            return -1;
    }
    if (i != length)
        return -1;
    memcpy(text, at, (size_t)length);
    text[length] = '\0';
    char *end;
    double number = PyOS_string_to_double(text, &end, NULL);
    if (number == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (*end != '\0' || !isfinite(number))
        return -1;
    *value = number;
    return 0;
}

typedef struct {
    PyObject *name, *type, *values, *members, *rate, *tags, *timestamp, *container, *relative;
} MetricFields;

static void metric_fields_clear(MetricFields *f)
{
    Py_XDECREF(f->name);
    Py_XDECREF(f->type);
    Py_XDECREF(f->values);
    Py_XDECREF(f->members);
    Py_XDECREF(f->rate);
    Py_XDECREF(f->tags);
    Py_XDECREF(f->timestamp);
    Py_XDECREF(f->container);
    Py_XDECREF(f->relative);
}

/* The values (or a set's members) between the name's ":" and the first "|". 0, or -1 to
   decline (an error set only for a failed allocation). */
static int metric_values(StatsdParser *self, int set, int gauge, const unsigned char *at,
                         Py_ssize_t length, MetricFields *f)
{
    Py_ssize_t count = 1;
    for (Py_ssize_t i = 0; i < length; i++)
        count += at[i] == ':';
    PyObject *values = PyTuple_New(count);
    if (values == NULL)
        return -1;
    int relative = 1;
    Py_ssize_t start = 0, k = 0;
    for (Py_ssize_t i = 0; i <= length; i++) {
        if (i < length && at[i] != ':')
            continue;
        const unsigned char *raw = at + start;
        Py_ssize_t raw_length = i - start;
        PyObject *item = NULL;
        if (set) {
            if (raw_length > 0)
                item = strict_text(raw, raw_length);
        } else {
            double number;
            if (metric_number(raw, raw_length, &number) == 0) {
                item = PyFloat_FromDouble(number);
                relative &= raw[0] == '+' || raw[0] == '-';
            }
        }
        if (item == NULL) {
            Py_DECREF(values);
            return -1;
        }
        PyTuple_SET_ITEM(values, k++, item);
        start = i + 1;
    }
    if (set) {
        f->members = values;
        f->values = Py_NewRef(self->empty);
    } else {
        f->values = values;
        f->members = Py_NewRef(self->empty);
    }
    f->relative = Py_NewRef(gauge && relative ? Py_True : Py_False);
    return 0;
}

/* One "|" section after the type: @rate, #tags, c:container, T<timestamp>, or ignored. */
static int metric_section(StatsdParser *self, const unsigned char *at, Py_ssize_t length,
                          MetricFields *f)
{
    PyObject *value;
    if (length >= 1 && at[0] == '@') {
        double rate;
        if (metric_number(at + 1, length - 1, &rate) < 0 || !(rate > 0 && rate <= 1))
            return -1;
        if ((value = PyFloat_FromDouble(rate)) == NULL)
            return -1;
        Py_XSETREF(f->rate, value);
    } else if (length >= 1 && at[0] == '#') {
        if ((value = metric_tags(self, at + 1, length - 1)) == NULL)
            return -1;
        Py_XSETREF(f->tags, value);
    } else if (length >= 2 && at[0] == 'c' && at[1] == ':') {
        if ((value = strict_text(at + 2, length - 2)) == NULL)
            return -1;
        Py_XSETREF(f->container, value);
    } else if (length >= 1 && at[0] == 'T') {
        if (length < 2 || length > 13)
            return -1;
        long long seconds = 0;
        for (Py_ssize_t i = 1; i < length; i++) {
            if (!is_digit(at[i]))
                return -1;
            seconds = seconds * 10 + (at[i] - '0');
        }
        if ((value = PyLong_FromLongLong(seconds)) == NULL)
            return -1;
        Py_XSETREF(f->timestamp, value);
    }
    return 0;
}

/* One metric line: a Metric, NULL on an error, or DECLINE. */
static PyObject *metric_line(PyObject *op, const unsigned char *b, Py_ssize_t n)
{
    StatsdParser *self = (StatsdParser *)op;
    if (n > STATSD_MAX_FIELD || (n >= 3 && memcmp(b, "_e{", 3) == 0) ||
        (n >= 4 && memcmp(b, "_sc|", 4) == 0))
        return DECLINE; /* the limits, events and service checks: the reference's */
    const unsigned char *colon = memchr(b, ':', (size_t)n);
    if (colon == NULL || colon == b || colon - b > STATSD_MAX_NAME)
        return DECLINE;
    const unsigned char *rest = colon + 1, *end = b + n;
    const unsigned char *bar = memchr(rest, '|', (size_t)(end - rest));
    if (bar == NULL)
        return DECLINE;
    const unsigned char *kind = bar + 1;
    const unsigned char *kind_end = memchr(kind, '|', (size_t)(end - kind));
    if (kind_end == NULL)
        kind_end = end;
    int type = -1;
    for (int i = 0; i < 6; i++)
        if ((Py_ssize_t)strlen(METRIC_TYPES[i]) == kind_end - kind &&
            memcmp(kind, METRIC_TYPES[i], (size_t)(kind_end - kind)) == 0)
            type = i;
    if (type < 0)
        return DECLINE;
    MetricFields f = {0};
    if (metric_values(self, type == 4, type == 1, rest, bar - rest, &f) < 0)
        goto decline;
    for (const unsigned char *p = kind_end; p < end;) {
        const unsigned char *section = p + 1;
        const unsigned char *next = memchr(section, '|', (size_t)(end - section));
        if (next == NULL)
            next = end;
        if (metric_section(self, section, next - section, &f) < 0)
            goto decline;
        p = next;
    }
    if ((f.name = metric_name(self, b, colon - b)) == NULL)
        goto decline;
    f.type = Py_NewRef(self->types[type]);
    PyObject *args[9] = {
        f.name,
        f.type,
        f.values,
        f.members,
        f.rate ? f.rate : self->one,
        f.tags ? f.tags : self->empty,
        f.timestamp ? f.timestamp : Py_None,
        f.container ? f.container : Py_None,
        f.relative,
    };
    PyObject *metric = PyObject_Vectorcall(self->metric_type, args, 0, self->kwnames);
    metric_fields_clear(&f);
    return metric;
decline:
    metric_fields_clear(&f);
    return PyErr_Occurred() ? NULL : DECLINE;
}

static PyObject *statsd_packet(PyObject *op, const unsigned char *b, Py_ssize_t n)
{
    return each_line(op, b, n, metric_line);
}

static int statsd_clear(PyObject *op)
{
    StatsdParser *self = (StatsdParser *)op;
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->metric_type);
    Py_CLEAR(self->kwnames);
    for (int i = 0; i < 6; i++)
        Py_CLEAR(self->types[i]);
    Py_CLEAR(self->empty);
    Py_CLEAR(self->one);
    for (int i = 0; i < CACHE_SLOTS; i++) {
        Py_CLEAR(self->names[i].key);
        Py_CLEAR(self->names[i].value);
        Py_CLEAR(self->tags[i].key);
        Py_CLEAR(self->tags[i].value);
    }
    return 0;
}

static int statsd_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    StatsdParser *self = (StatsdParser *)op;
    PyObject *fallback, *metric_type;
    if (parser_init_start(op, kwargs) < 0 ||
        !PyArg_ParseTuple(args, "OO:StatsdParser", &fallback, &metric_type))
        return -1;
    statsd_clear(op);
    self->fallback = Py_NewRef(fallback);
    self->metric_type = Py_NewRef(metric_type);
    self->kwnames = Py_BuildValue("(sssssssss)", "name", "type", "values", "members",
                                  "sample_rate", "tags", "timestamp", "container_id", "relative");
    self->empty = PyTuple_New(0);
    self->one = PyFloat_FromDouble(1.0);
    if (self->kwnames == NULL || self->empty == NULL || self->one == NULL)
        return -1;
    for (int i = 0; i < 6; i++)
        if ((self->types[i] = PyUnicode_InternFromString(METRIC_TYPES[i])) == NULL)
            return -1;
    parser_ready(op, statsd_packet);
    return 0;
}

static int statsd_traverse(PyObject *op, visitproc visit, void *arg)
{
    StatsdParser *self = (StatsdParser *)op;
    Py_VISIT(self->fallback);
    Py_VISIT(self->metric_type);
    return 0; /* the caches hold strings and tuples of strings: no cycle through them */
}

static PyTypeObject StatsdParserType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ugram._parsers.StatsdParser",
    .tp_basicsize = sizeof(StatsdParser),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "StatsdParser(fallback, metric_type): parse_packet, compiled",
    .tp_vectorcall_offset = offsetof(Parser, vectorcall),
    .tp_new = PyType_GenericNew,
    .tp_init = statsd_init,
    .tp_call = parser_call,
    .tp_traverse = statsd_traverse,
    .tp_clear = statsd_clear,
    .tp_dealloc = parser_dealloc,
};

/* == lines =================================================================================

LinesParser(fallback, parse) is a callable that splits a datagram into its lines exactly as
ugram.codecs.base.parse_lines does ("\n" separated, a trailing "\r" dropped, empty lines
skipped) and gives a list of each line parsed: its bytes when `parse` is bytes, its strict
UTF-8 text when `parse` is str, else parse(line). Where a line does not parse (a ValueError
or RecursionError, as the reference catches) or there is no line, it returns
fallback(payload): the reference parses the datagram again, and counts and logs its bad
lines. */

typedef struct {
    PARSER_HEAD /* fallback: the lines codec's pure-Python decode */
    PyObject *parse;
    int mode; /* 0: bytes, 1: str, 2: parse(line) */
} LinesParser;

static PyObject *one_line(PyObject *op, const unsigned char *at, Py_ssize_t length)
{
    LinesParser *self = (LinesParser *)op;
    if (self->mode == 0)
        return PyBytes_FromStringAndSize((const char *)at, length);
    if (self->mode == 1) {
        PyObject *text = strict_text(at, length);
        return text == NULL && !PyErr_Occurred() ? DECLINE : text;
    }
    PyObject *line = PyBytes_FromStringAndSize((const char *)at, length);
    if (line == NULL)
        return NULL;
    PyObject *parsed = PyObject_CallOneArg(self->parse, line);
    Py_DECREF(line);
    if (parsed == NULL &&
        (PyErr_ExceptionMatches(PyExc_ValueError) || PyErr_ExceptionMatches(PyExc_RecursionError))) {
        PyErr_Clear();
        return DECLINE;
    }
    return parsed;
}

static PyObject *lines_packet(PyObject *op, const unsigned char *b, Py_ssize_t n)
{
    return each_line(op, b, n, one_line);
}

static int lines_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    LinesParser *self = (LinesParser *)op;
    PyObject *fallback, *parse;
    if (parser_init_start(op, kwargs) < 0 ||
        !PyArg_ParseTuple(args, "OO:LinesParser", &fallback, &parse))
        return -1;
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    Py_XSETREF(self->parse, Py_NewRef(parse));
    self->mode = parse == (PyObject *)&PyBytes_Type ? 0 : parse == (PyObject *)&PyUnicode_Type ? 1 : 2;
    parser_ready(op, lines_packet);
    return 0;
}

static int lines_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(((LinesParser *)op)->fallback);
    Py_VISIT(((LinesParser *)op)->parse);
    return 0;
}

static int lines_clear(PyObject *op)
{
    Py_CLEAR(((LinesParser *)op)->fallback);
    Py_CLEAR(((LinesParser *)op)->parse);
    return 0;
}

static PyTypeObject LinesParserType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ugram._parsers.LinesParser",
    .tp_basicsize = sizeof(LinesParser),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "LinesParser(fallback, parse): the lines codec's decode, compiled",
    .tp_vectorcall_offset = offsetof(Parser, vectorcall),
    .tp_new = PyType_GenericNew,
    .tp_init = lines_init,
    .tp_call = parser_call,
    .tp_traverse = lines_traverse,
    .tp_clear = lines_clear,
    .tp_dealloc = parser_dealloc,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ugram._parsers",
    .m_doc = "The syslog, statsd and lines codecs' common cases, compiled (ugram.codecs.native).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__parsers(void)
{
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    if (PyType_Ready(&SyslogParserType) < 0 || PyType_Ready(&StatsdParserType) < 0 ||
        PyType_Ready(&LinesParserType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "API_VERSION", API_VERSION) < 0 ||
        PyModule_AddObjectRef(m, "SyslogParser", (PyObject *)&SyslogParserType) < 0 ||
        PyModule_AddObjectRef(m, "StatsdParser", (PyObject *)&StatsdParserType) < 0 ||
        PyModule_AddObjectRef(m, "LinesParser", (PyObject *)&LinesParserType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
