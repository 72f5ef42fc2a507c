/* Load generator for AF_UNIX SOCK_DGRAM servers.
 *
 * usage: sender PATH COUNT SIZE [BATCH] [--json|--syslog|--statsd] [--start=N]
 *
 * Sends COUNT datagrams of exactly SIZE bytes to PATH ("@name" = Linux abstract name) with
 * sendmmsg(), BATCH per call (default 64). The socket is blocking, so a full receive queue
 * blocks the sender instead of dropping anything.
 *
 * Payload: raw mode puts the sequence number (little-endian u64) in the first 8 bytes when
 * SIZE >= 8 and fills the rest with 'x'. --json sends
 *   {"seq":N,"name":"metric.name","value":1.5,"tags":["a:b"],"pad":"xxx…"}
 * padded to exactly SIZE bytes. --syslog sends RFC 3164 lines as glibc's syslog(3) writes them
 * to a local socket (no hostname), padded with text to exactly SIZE bytes:
 *   <14>Mmm dd hh:mm:ss bench[PID]: seq=NNNNNNNNNN lorem ipsum…
 * (the time stamp is the sender's start, local time). --statsd sends one DogStatsD line a
 * datagram, of its natural length (SIZE is ignored), cycling through five kinds by N % 5:
 *   0 bench.requests.K:1|c|#env:prod,service:web,shard:S   (K = N / 5 % 8, S = N % 4)
 *   1 bench.latency.K:V.D|ms|#env:prod,service:web         (V = N % 500, D = N % 10)
 *   2 bench.queue.K:V|g|#env:prod                          (V = N % 1000)
 *   3 bench.users:uM|s|#env:prod                           (M = N % 1000)
 *   4 bench.size.K:V|h|@0.5|#env:prod,service:web          (V = N % 4096)
 * Sequence numbers start at --start (default 0).
 *
 * ENOENT / ECONNREFUSED (server not bound yet, or being replaced) are retried for up to
 * RETRY_SECONDS; EINTR is always retried. Silent on success; message + exit 1 on error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define RETRY_SECONDS 10.0
#define MAX_BATCH 1024
#define STATSD_CAP 128 /* room for the longest --statsd line */

static const char JSON_HEAD[] = "{\"seq\":";
static const char JSON_MID[] = ",\"name\":\"metric.name\",\"value\":1.5,\"tags\":[\"a:b\"],\"pad\":\"";
static const char JSON_TAIL[] = "\"}";

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "sender: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int retryable(int err) { return err == ENOENT || err == ECONNREFUSED || err == ENOTCONN; }

static socklen_t make_addr(const char *path, struct sockaddr_un *addr) {
    size_t len = strlen(path);
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    if (len == 0 || len >= sizeof addr->sun_path) {
        fprintf(stderr, "sender: bad socket path length %zu\n", len);
        exit(2);
    }
    memcpy(addr->sun_path, path, len);
    if (path[0] == '@') {
        addr->sun_path[0] = '\0'; /* abstract name: no trailing NUL counted */
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    }
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
}

/* (Re)connect, retrying while the server is not there yet. */
static void connect_retry(int fd, const struct sockaddr_un *addr, socklen_t alen) {
    double deadline = now() + RETRY_SECONDS;
    struct timespec pause = {0, 2000000};
    for (;;) {
        if (connect(fd, (const struct sockaddr *)addr, alen) == 0) return;
        if (errno == EINTR) continue;
        if (!retryable(errno) || now() > deadline) die("connect");
        nanosleep(&pause, NULL);
    }
}

static size_t json_min_size(uint64_t seq) {
    char digits[32];
    int n = snprintf(digits, sizeof digits, "%llu", (unsigned long long)seq);
    return sizeof JSON_HEAD - 1 + (size_t)n + sizeof JSON_MID - 1 + sizeof JSON_TAIL - 1;
}

static void fill_json(char *buf, size_t size, uint64_t seq) {
    int n = snprintf(buf, size, "%s%llu%s", JSON_HEAD, (unsigned long long)seq, JSON_MID);
    size_t pad_end = size - (sizeof JSON_TAIL - 1);
    memset(buf + n, 'x', pad_end - (size_t)n);
    memcpy(buf + pad_end, JSON_TAIL, sizeof JSON_TAIL - 1);
}

static const char FILLER[] =
    "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua; ut enim ad minim veniam, quis nostrud ";

static char syslog_head[64]; /* "<14>Mmm dd hh:mm:ss bench[PID]: seq=" */

static void init_syslog(void) {
    char stamp[32];
    time_t t = time(NULL);
    strftime(stamp, sizeof stamp, "%b %e %H:%M:%S", localtime(&t));
    snprintf(syslog_head, sizeof syslog_head, "<14>%s bench[%d]: seq=", stamp, (int)getpid());
}

static size_t syslog_min_size(void) { return strlen(syslog_head) + 10 + 1; }

static void fill_syslog(char *buf, size_t size, uint64_t seq) {
    int n = snprintf(buf, size, "%s%010llu ", syslog_head, (unsigned long long)seq);
    for (size_t i = (size_t)n, f = 0; i < size; i++, f = (f + 1) % (sizeof FILLER - 1))
        buf[i] = FILLER[f];
}

/* One DogStatsD line for ``seq`` (see the header); returns its length. */
static size_t fill_statsd(char *buf, size_t cap, uint64_t seq) {
    unsigned k = (unsigned)(seq / 5 % 8);
    int n;
    switch (seq % 5) {
    case 0:
        n = snprintf(buf, cap, "bench.requests.%u:1|c|#env:prod,service:web,shard:%u", k,
                     (unsigned)(seq % 4));
        break;
    case 1:
        n = snprintf(buf, cap, "bench.latency.%u:%u.%u|ms|#env:prod,service:web", k,
                     (unsigned)(seq % 500), (unsigned)(seq % 10));
        break;
    case 2:
        n = snprintf(buf, cap, "bench.queue.%u:%u|g|#env:prod", k, (unsigned)(seq % 1000));
        break;
    case 3:
        n = snprintf(buf, cap, "bench.users:u%u|s|#env:prod", (unsigned)(seq % 1000));
        break;
    default:
        n = snprintf(buf, cap, "bench.size.%u:%u|h|@0.5|#env:prod,service:web", k,
                     (unsigned)(seq % 4096));
    }
    return (size_t)n;
}

static void fill_raw(char *buf, size_t size, uint64_t seq) {
    if (size < 8) return;
    for (int i = 0; i < 8; i++) buf[i] = (char)((seq >> (8 * i)) & 0xff); /* little-endian */
}

static int parse_u64(const char *s, unsigned long long *out) {
    char *end;
    errno = 0;
    *out = strtoull(s, &end, 10);
    return errno == 0 && end != s && *end == '\0' && s[0] != '-';
}

static void usage(void) {
    fprintf(stderr,
            "usage: sender PATH COUNT SIZE [BATCH] [--json|--syslog|--statsd] [--start=N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *pos[4] = {0};
    int npos = 0, json = 0, syslog_lines = 0, statsd = 0;
    unsigned long long start = 0, count, size, batch = 64;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) json = 1;
        else if (strcmp(argv[i], "--syslog") == 0) syslog_lines = 1;
        else if (strcmp(argv[i], "--statsd") == 0) statsd = 1;
        else if (strncmp(argv[i], "--start=", 8) == 0) {
            if (!parse_u64(argv[i] + 8, &start)) usage();
        } else if (npos < 4) pos[npos++] = argv[i];
        else usage();
    }
    if (npos < 3 || !parse_u64(pos[1], &count) || !parse_u64(pos[2], &size)) usage();
    if (npos == 4 && (!parse_u64(pos[3], &batch) || batch == 0 || batch > MAX_BATCH)) usage();
    if (json + syslog_lines + statsd > 1) usage();
    if ((size == 0 && !statsd) || size > 16 * 1024 * 1024) usage();
    if (statsd) size = STATSD_CAP; /* each line's own length is sent */
    if (syslog_lines) {
        init_syslog();
        if (size < syslog_min_size()) {
            fprintf(stderr, "sender: --syslog needs SIZE >= %zu\n", syslog_min_size());
            return 2;
        }
    }
    if (json && size < json_min_size(start + count)) {
        fprintf(stderr, "sender: --json needs SIZE >= %zu\n", json_min_size(start + count));
        return 2;
    }

    struct sockaddr_un addr;
    socklen_t alen = make_addr(pos[0], &addr);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int sndbuf = (int)(size * 4 > 1 << 20 ? size * 4 : 1 << 20);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf); /* best effort */
    connect_retry(fd, &addr, alen);

    char *bufs = malloc(batch * size);
    struct mmsghdr *msgs = calloc(batch, sizeof *msgs);
    struct iovec *iovs = calloc(batch, sizeof *iovs);
    if (!bufs || !msgs || !iovs) die("malloc");
    memset(bufs, 'x', batch * size);
    for (size_t i = 0; i < batch; i++) {
        iovs[i].iov_base = bufs + i * size;
        iovs[i].iov_len = size;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }

    double deadline = 0;
    uint64_t sent = 0;
    while (sent < count) {
        unsigned n = (unsigned)(count - sent < batch ? count - sent : batch);
        for (unsigned i = 0; i < n; i++) {
            char *buf = bufs + i * size;
            uint64_t seq = start + sent + i;
            if (json) fill_json(buf, size, seq);
            else if (syslog_lines) fill_syslog(buf, size, seq);
            else if (statsd) iovs[i].iov_len = fill_statsd(buf, size, seq);
            else fill_raw(buf, size, seq);
        }
        unsigned done = 0;
        while (done < n) {
            int r = sendmmsg(fd, msgs + done, n - done, 0);
            if (r > 0) {
                done += (unsigned)r;
                deadline = 0;
                continue;
            }
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && retryable(errno)) {
                /* the server went away or is being replaced: reconnect for a while */
                if (deadline == 0) deadline = now() + RETRY_SECONDS;
                if (now() > deadline) die("sendmmsg");
                struct timespec pause = {0, 2000000};
                nanosleep(&pause, NULL);
                connect_retry(fd, &addr, alen);
                continue;
            }
            die("sendmmsg");
        }
        sent += n;
    }
    close(fd);
    return 0;
}
