/* Shared by the reference receivers: bind PATH, parse args, print the result line. */
#ifndef UGRAM_BENCH_COMMON_H
#define UGRAM_BENCH_COMMON_H
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* One byte more than the largest datagram we accept: a full buffer means truncation. */
#define RECV_BUF_SIZE (65536 + 1)

static inline double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void die(const char *prog, const char *what) {
    fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(errno));
    exit(1);
}

/* Bind PATH ("@name" = abstract). An existing path is unlinked only if it is a socket. */
static inline int bind_path(const char *prog, const char *path) {
    struct sockaddr_un addr;
    size_t len = strlen(path);
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (len == 0 || len >= sizeof addr.sun_path) {
        fprintf(stderr, "%s: bad socket path length %zu\n", prog, len);
        exit(2);
    }
    memcpy(addr.sun_path, path, len);
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    if (path[0] == '@') {
        addr.sun_path[0] = '\0';
        alen--;
    } else {
        struct stat st;
        if (lstat(path, &st) == 0) {
            if (!S_ISSOCK(st.st_mode)) {
                fprintf(stderr, "%s: %s exists and is not a socket; refusing to remove it\n",
                        prog, path);
                exit(1);
            }
            if (unlink(path) != 0) die(prog, "unlink");
        }
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die(prog, "socket");
    if (bind(fd, (struct sockaddr *)&addr, alen) != 0) die(prog, "bind");
    return fd;
}

static inline unsigned long long parse_count(const char *prog, int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PATH COUNT\n", prog);
        exit(2);
    }
    char *end;
    errno = 0;
    unsigned long long count = strtoull(argv[2], &end, 10);
    if (errno || end == argv[2] || *end || argv[2][0] == '-' || count == 0) {
        fprintf(stderr, "%s: COUNT must be a positive integer\n", prog);
        exit(2);
    }
    return count;
}

static inline void report(unsigned long long received, double seconds,
                          unsigned long long truncated, unsigned long long bytes) {
    printf("received=%llu seconds=%.6f truncated=%llu bytes=%llu\n", received, seconds,
           truncated, bytes);
    fflush(stdout);
}
#endif
