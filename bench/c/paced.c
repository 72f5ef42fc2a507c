/* Paced, time-stamped load for the latency measurement (P5).
 *
 * usage: paced PATH COUNT SIZE RATE
 *
 * Sends COUNT datagrams of SIZE bytes (SIZE >= 8) to PATH at RATE per second on an absolute
 * schedule (no drift): everything due is sent with one sendmmsg() (up to BATCH at a time,
 * like the flood sender that measured the maximum rate), each datagram starting with the
 * CLOCK_REALTIME nanoseconds of that call (little-endian u64, as Python's time.time_ns());
 * then it sleeps until the next one is due. The sleeps keep the default timer slack (up to
 * ~50 us late), so at high rates the datagrams leave in small bursts. A receiver that falls
 * behind blocks it (the socket is blocking) and the late datagrams go out back to back when
 * it catches up. A datagram's stamp is when its sendmmsg call was made, not when it was
 * due: send->handler latency includes time blocked on a full queue inside a call, not how
 * late the sender itself was. Prints
 *   sent=N seconds=S
 * The Python twin is `python -m bench.pysend paced`; this one costs a fraction of its CPU,
 * which matters on a small machine where the sender shares the CPUs with the server.
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
#define BATCH 64

static int64_t clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "paced: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(void) {
    fprintf(stderr, "usage: paced PATH COUNT SIZE RATE\n");
    exit(2);
}

static void connect_path(int fd, const char *path) {
    struct sockaddr_un addr;
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof addr.sun_path) usage();
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, len);
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    if (path[0] == '@') {
        addr.sun_path[0] = '\0';
        alen--;
    }
    int64_t deadline = clock_ns(CLOCK_MONOTONIC) + (int64_t)(RETRY_SECONDS * 1e9);
    struct timespec pause = {0, 2000000};
    while (connect(fd, (struct sockaddr *)&addr, alen) != 0) {
        if (errno != EINTR && errno != ENOENT && errno != ECONNREFUSED) die("connect");
        if (clock_ns(CLOCK_MONOTONIC) > deadline) die("connect");
        nanosleep(&pause, NULL);
    }
}

int main(int argc, char **argv) {
    if (argc != 5) usage();
    char *end;
    unsigned long long count = strtoull(argv[2], &end, 10);
    if (*end || count == 0) usage();
    unsigned long long size = strtoull(argv[3], &end, 10);
    if (*end || size < 8 || size > 65536) usage();
    double rate = strtod(argv[4], &end);
    if (*end || !(rate > 0)) usage();

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    connect_path(fd, argv[1]);
    char *bufs = malloc(BATCH * size);
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    if (bufs == NULL) die("malloc");
    memset(bufs, 'x', BATCH * size);
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        iovs[i].iov_base = bufs + i * size;
        iovs[i].iov_len = size;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }

    double interval_ns = 1e9 / rate;
    int64_t t0 = clock_ns(CLOCK_MONOTONIC);
    unsigned long long sent = 0;
    while (sent < count) {
        int64_t now = clock_ns(CLOCK_MONOTONIC);
        unsigned long long due = (unsigned long long)((double)(now - t0) / interval_ns) + 1;
        if (due > count) due = count;
        while (sent < due) {
            unsigned n = due - sent < BATCH ? (unsigned)(due - sent) : BATCH;
            int64_t stamp = clock_ns(CLOCK_REALTIME);
            for (unsigned i = 0; i < n; i++) /* little-endian on x86-64 and arm64 */
                memcpy(bufs + i * size, &stamp, 8);
            int done = sendmmsg(fd, msgs, n, 0);
            if (done < 0) {
                if (errno == EINTR) continue;
                die("sendmmsg");
            }
            sent += (unsigned long long)done;
        }
        int64_t next = t0 + (int64_t)((double)sent * interval_ns);
        struct timespec at = {(time_t)(next / 1000000000), (long)(next % 1000000000)};
        if (next > clock_ns(CLOCK_MONOTONIC))
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL);
    }
    double seconds = (double)(clock_ns(CLOCK_MONOTONIC) - t0) / 1e9;
    printf("sent=%llu seconds=%.6f\n", sent, seconds);
    close(fd);
    return 0;
}
