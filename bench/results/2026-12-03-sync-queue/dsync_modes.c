// SPDX-License-Identifier: Apache-2.0
// dsync_modes: see README.md here (a raw record of one measurement, not part of the build).
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
    int mode = atoi(argv[1]);
    size_t B = atoi(argv[2]);
    const char *p = "/tmp/dsync_modes.data";
    unlink(p);
    int fd = open(p, O_CREAT | O_RDWR, 0644);
    size_t total = 256 << 20;
    char *z = aligned_alloc(4096, 1 << 20);
    memset(z, 0, 1 << 20);
    for (size_t o = 0; o < total; o += 1 << 20)
        pwrite(fd, z, 1 << 20, o);
    fsync(fd);
    close(fd);
    int fl = O_RDWR;
    if (mode == 1)
        fl |= O_DIRECT | O_DSYNC;
    if (mode == 2)
        fl |= O_DSYNC;
    fd = open(p, fl);
    struct io_uring r;
    io_uring_queue_init(64, &r, 0);
    char *buf = aligned_alloc(4096, B);
    memset(buf, 'x', B);
    off_t off = 0;
    long n = 0;
    double t0 = now();
    while (now() - t0 < 3) {
        struct io_uring_sqe *s = io_uring_get_sqe(&r);
        io_uring_prep_write(s, fd, buf, B, off);
        if (mode == 0) {
            s->flags |= IOSQE_IO_LINK;
            s = io_uring_get_sqe(&r);
            io_uring_prep_fsync(s, fd, IORING_FSYNC_DATASYNC);
        }
        io_uring_submit_and_wait(&r, mode == 0 ? 2 : 1);
        struct io_uring_cqe *c;
        int k = 0;
        while (k < (mode == 0 ? 2 : 1)) {
            io_uring_wait_cqe(&r, &c);
            if (c->res < 0) {
                printf("err %d\n", c->res);
                return 1;
            }
            io_uring_cqe_seen(&r, c);
            k++;
        }
        off += B;
        n++;
    }
    printf("mode=%s batch=%zu: %.0f writes/s, %.0f us each\n",
           mode == 0   ? "write+fdatasync"
           : mode == 1 ? "O_DIRECT|O_DSYNC"
                       : "O_DSYNC buffered",
           B, n / 3.0, 3e6 / n);
    return 0;
}
