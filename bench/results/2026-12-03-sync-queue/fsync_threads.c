// SPDX-License-Identifier: Apache-2.0
// fsync_threads: see README.md here (a raw record of one measurement, not part of the build).
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
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
int fd;
int nth;
volatile int stop;
long cnt[16];
void *w(void *a)
{
    long id = (long)a;
    char buf[8192];
    memset(buf, 'x', sizeof buf);
    long i = 0;
    while (!stop) {
        off_t o = ((i * nth + id) % 4000) * 8192;
        pwrite(fd, buf, 8192, o);
        fdatasync(fd);
        i++;
    }
    cnt[id] = i;
    return 0;
}
int main(int argc, char **argv)
{
    int pre = atoi(argv[1]);
    nth = atoi(argv[2]);
    unlink("/tmp/fsync_threads.data");
    fd = open("/tmp/fsync_threads.data", O_CREAT | O_RDWR, 0644);
    if (pre) {
        char *z = calloc(1, 4000 * 8192);
        write(fd, z, 4000 * 8192);
        fsync(fd);
    }
    pthread_t t[16];
    stop = 0;
    for (long i = 0; i < nth; i++)
        pthread_create(&t[i], 0, w, (void *)i);
    usleep(2000000);
    stop = 1;
    long tot = 0;
    for (int i = 0; i < nth; i++) {
        pthread_join(t[i], 0);
        tot += cnt[i];
    }
    printf("pre=%d threads=%d syncs/s=%.0f\n", pre, nth, tot / 2.0);
    return 0;
}
