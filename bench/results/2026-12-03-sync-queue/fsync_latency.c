// SPDX-License-Identifier: Apache-2.0
// fsync_latency: see README.md here (a raw record of one measurement, not part of the build).
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static double now()
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}
int cmp(const void *a, const void *b)
{
    double x = *(double *)a, y = *(double *)b;
    return x < y ? -1 : x > y;
}
void run(const char *name, int mode)
{
    char p[64];
    snprintf(p, 64, "/tmp/fsync_latency.%s", name);
    unlink(p);
    int fd = open(p, O_CREAT | O_RDWR | O_TRUNC, 0644);
    size_t total = 4096 * 2000;
    char *z = calloc(1, total);
    if (mode == 1) {
        write(fd, z, total);
        fsync(fd);
    }
    if (mode == 2) {
        fallocate(fd, 0, 0, total);
        fsync(fd);
    }
    char buf[4096];
    memset(buf, 'x', 4096);
    double l[2000];
    for (int i = 0; i < 2000; i++) {
        double t = now();
        pwrite(fd, buf, 4096, (off_t)i * 4096);
        fdatasync(fd);
        l[i] = now() - t;
    }
    qsort(l, 2000, sizeof(double), cmp);
    printf("%-10s p50 %.0f us p99 %.0f us\n", name, l[1000], l[1980]);
    close(fd);
    unlink(p);
}
int main()
{
    run("append", 0);
    run("prezero", 1);
    run("falloc", 2);
    run("append", 0);
    run("prezero", 1);
    return 0;
}
