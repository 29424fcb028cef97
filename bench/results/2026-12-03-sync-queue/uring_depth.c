// SPDX-License-Identifier: Apache-2.0
// uring_depth: see README.md here (a raw record of one measurement, not part of the build).
#define _GNU_SOURCE
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now()
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
int main(int argc, char **argv)
{
    int pre = atoi(argv[1]), D = atoi(argv[2]);
    size_t B = atoi(argv[3]);
    unlink("/tmp/uring_depth.data");
    int fd = open("/tmp/uring_depth.data", O_CREAT | O_RDWR, 0644);
    size_t total = 256 << 20;
    if (pre) {
        char *z = calloc(1, 1 << 20);
        for (size_t o = 0; o < total; o += 1 << 20)
            pwrite(fd, z, 1 << 20, o);
        fsync(fd);
    }
    struct io_uring r;
    io_uring_queue_init(64, &r, 0);
    char *buf = malloc(B);
    memset(buf, 'x', B);
    off_t off = 0;
    int writing = 0, syncs = 0;
    long nsync = 0;
    double t0 = now();
    while (now() - t0 < 3) {
        if (!writing && syncs < D) {
            struct io_uring_sqe *s = io_uring_get_sqe(&r);
            io_uring_prep_write(s, fd, buf, B, off);
            s->user_data = 1;
            off += B;
            writing = 1;
        }
        io_uring_submit_and_wait(&r, 1);
        struct io_uring_cqe *c;
        while (io_uring_peek_cqe(&r, &c) == 0) {
            if (c->user_data == 1) {
                writing = 0;
                struct io_uring_sqe *s = io_uring_get_sqe(&r);
                io_uring_prep_fsync(s, fd, IORING_FSYNC_DATASYNC);
                s->user_data = 2;
                syncs++;
                io_uring_submit(&r);
            } else {
                syncs--;
                nsync++;
            }
            io_uring_cqe_seen(&r, c);
        }
    }
    printf("pre=%d depth=%d batch=%zu: %.0f syncs/s %.1f MB/s\n", pre, D, B, nsync / 3.0,
           nsync * B / 3.0 / 1e6);
    return 0;
}
