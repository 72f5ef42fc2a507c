/* Reference receiver, the machine's ceiling: recvmmsg() in batches of 64.
 *
 * usage: recv_mmsg PATH COUNT
 * Binds PATH, receives COUNT datagrams, prints
 *   received=N seconds=S truncated=T bytes=B
 * with S measured from the first datagram to the last. Truncated datagrams count toward N.
 */
#include "common.h"

#define BATCH 64

int main(int argc, char **argv) {
    const char *prog = "recv_mmsg";
    unsigned long long count = parse_count(prog, argc, argv);
    int fd = bind_path(prog, argv[1]);

    static char bufs[BATCH][RECV_BUF_SIZE];
    static struct iovec iovs[BATCH];
    static struct mmsghdr msgs[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iovs[i].iov_base = bufs[i];
        iovs[i].iov_len = RECV_BUF_SIZE;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }

    unsigned long long received = 0, truncated = 0, bytes = 0;
    double first = 0;
    while (received < count) {
        unsigned want = (unsigned)(count - received < BATCH ? count - received : BATCH);
        for (unsigned i = 0; i < want; i++) msgs[i].msg_hdr.msg_flags = 0;
        /* MSG_WAITFORONE: block for the first datagram, then take what is queued */
        int n = recvmmsg(fd, msgs, want, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die(prog, "recvmmsg");
        }
        if (received == 0) first = now_seconds();
        for (int i = 0; i < n; i++) {
            if ((msgs[i].msg_hdr.msg_flags & MSG_TRUNC) || msgs[i].msg_len >= RECV_BUF_SIZE)
                truncated++;
            bytes += msgs[i].msg_len;
        }
        received += (unsigned long long)n;
    }
    double last = now_seconds(); /* the loop ends on the last datagram */
    report(received, last - first, truncated, bytes);
    close(fd);
    return 0;
}
