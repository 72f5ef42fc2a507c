/*
 * ugram._parsers: the syslog codec's common cases at native speed.
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
#include <stddef.h>
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

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fallback;     /* parse_syslog: the reference */
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

/* A header field: None for "-" (NILVALUE), else its (ASCII) text. */
static PyObject *nil_or_text(const unsigned char *at, Py_ssize_t length)
{
    if (length == 1 && at[0] == '-')
        Py_RETURN_NONE;
    return ascii_text(at, length);
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
static int structured_data(const unsigned char *b, Py_ssize_t n, Py_ssize_t *pos,
                           PyObject *elements)
{
    Py_ssize_t p = *pos;
    while (p < n && b[p] == '[') {
        Py_ssize_t id_end = sd_name_end(b, p + 1, n);
        if (id_end < 0)
            return -1;
        PyObject *id = ascii_text(b + p + 1, id_end - p - 1);
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
            PyObject *name = ascii_text(b + p + 1, name_end - p - 1);
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

static PyObject *rfc3339_time(SyslogParser *self, const unsigned char *at, Py_ssize_t length)
{
    if (length <= STAMP_KEY && self->iso_value != NULL && length == self->iso_len &&
        memcmp(self->iso_key, at, (size_t)length) == 0)
        return Py_NewRef(self->iso_value);
    PyObject *text = ascii_text(at, length);
    if (text == NULL)
        return NULL;
    PyObject *when = PyObject_CallOneArg(self->rfc3339, text);
    Py_DECREF(text);
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
    else if (p >= n || b[p] != '[' || structured_data(b, n, &p, elements) < 0) {
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
        nil_or_text(b + at[1], end[1] - at[1]),
        nil_or_text(b + at[2], end[2] - at[2]),
        nil_or_text(b + at[3], end[3] - at[3]),
        nil_or_text(b + at[4], end[4] - at[4]),
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

static PyObject *make_3164(SyslogParser *self, int pri, PyObject *timestamp,
                           const unsigned char *b, Py_ssize_t host, Py_ssize_t host_end,
                           const Tag *tag, Py_ssize_t m, Py_ssize_t n)
{
    PyObject *args[7] = {
        PyLong_FromLong(pri / 8),
        PyLong_FromLong(pri % 8),
        Py_NewRef(timestamp),
        host < 0 ? Py_NewRef(Py_None) : decode(b + host, host_end - host),
        tag == NULL ? Py_NewRef(Py_None) : ascii_text(b + tag->tag, tag->tag_end - tag->tag),
        tag == NULL || tag->pid_end <= tag->pid ? Py_NewRef(Py_None)
                                                : ascii_text(b + tag->pid, tag->pid_end - tag->pid),
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

static PyObject *parse(SyslogParser *self, const unsigned char *b, Py_ssize_t n)
{
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

static PyObject *parser_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames)
{
    SyslogParser *self = (SyslogParser *)callable;
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "SyslogParser takes one argument, the payload");
        return NULL;
    }
    PyObject *payload = args[0];
    Py_buffer view;
    if (PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *message = parse(self, view.buf, view.len);
    PyBuffer_Release(&view);
    if (message == DECLINE)
        return PyObject_CallOneArg(self->fallback, payload);
    return message;
}

static int parser_init(PyObject *op, PyObject *args, PyObject *kwargs)
{
    SyslogParser *self = (SyslogParser *)op;
    PyObject *fallback, *message_type, *bsd, *rfc3339;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "SyslogParser takes no keyword arguments");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OOOO:SyslogParser", &fallback, &message_type, &bsd, &rfc3339))
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
    self->vectorcall = parser_vectorcall;
    return 0;
}

static int parser_traverse(PyObject *op, visitproc visit, void *arg)
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

static int parser_clear(PyObject *op)
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
    return 0;
}

static void parser_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    parser_clear(op);
    Py_TYPE(op)->tp_free(op);
}

static PyObject *parser_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    SyslogParser *self = (SyslogParser *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->vectorcall = NULL; /* set by __init__; a call before it is refused */
    return (PyObject *)self;
}

static PyObject *parser_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    if (((SyslogParser *)op)->vectorcall == NULL) {
        PyErr_SetString(PyExc_TypeError, "SyslogParser was not initialised");
        return NULL;
    }
    return PyVectorcall_Call(op, args, kwargs);
}

static PyTypeObject SyslogParserType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ugram._parsers.SyslogParser",
    .tp_basicsize = sizeof(SyslogParser),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "SyslogParser(fallback, message_type, bsd_time, rfc3339): parse_syslog, compiled",
    .tp_vectorcall_offset = offsetof(SyslogParser, vectorcall),
    .tp_new = parser_new,
    .tp_init = parser_init,
    .tp_call = parser_call,
    .tp_traverse = parser_traverse,
    .tp_clear = parser_clear,
    .tp_dealloc = parser_dealloc,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ugram._parsers",
    .m_doc = "The syslog codec's common cases, compiled (see ugram.codecs.native).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__parsers(void)
{
    if (PyType_Ready(&SyslogParserType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "API_VERSION", API_VERSION) < 0 ||
        PyModule_AddObjectRef(m, "SyslogParser", (PyObject *)&SyslogParserType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
