/* Reference receiver with one recv() per datagram (golib unixgram's design).
 *
 * usage: recv_plain PATH COUNT
 * Binds PATH, receives COUNT datagrams, prints
 *   received=N seconds=S truncated=T bytes=B
 * with S measured from the first datagram to the last. Truncated datagrams count toward N.
 */
#include "common.h"

int main(int argc, char **argv) {
    const char *prog = "recv_plain";
    unsigned long long count = parse_count(prog, argc, argv);
    int fd = bind_path(prog, argv[1]);

    static char buf[RECV_BUF_SIZE];
    unsigned long long received = 0, truncated = 0, bytes = 0;
    double first = 0;
    while (received < count) {
        /* MSG_TRUNC: return the datagram's real length even when it did not fit */
        ssize_t n = recv(fd, buf, sizeof buf, MSG_TRUNC);
        if (n < 0) {
            if (errno == EINTR) continue;
            die(prog, "recv");
        }
        if (received == 0) first = now_seconds();
        if ((size_t)n >= sizeof buf) truncated++;
        bytes += (unsigned long long)n;
        received++;
    }
    double last = now_seconds(); /* the loop ends on the last datagram */
    report(received, last - first, truncated, bytes);
    close(fd);
    return 0;
}
