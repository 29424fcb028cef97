// SPDX-License-Identifier: Apache-2.0
//
// Implementation of portlock.h. The holder of an address is found the way ss(8) and fuser(1)
// find it: the inodes of the listening sockets from /proc/net/tcp, tcp6 or unix, then the
// process whose /proc/PID/fd holds one of them. Only the failure path reads /proc.
#include "broker/portlock.h"

#include <dirent.h>
#include <errno.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Listening sockets looked for at once: one per shard of a holding nexusd (at most 64), or a
 * few of anything else; past 256 the first ones found suffice to name a holder. */
#define PORTLOCK_INODES_MAX 256

/* TCP state LISTEN in /proc/net/tcp ("0A"). */
#define PORTLOCK_TCP_LISTEN 0x0A

struct inodes {
    unsigned long v[PORTLOCK_INODES_MAX];
    size_t n;
};

/* Adds the inodes of the sockets listening on port, from /proc/net/tcp or /proc/net/tcp6. */
static void tcp_listeners(const char *path, uint16_t port, struct inodes *in)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[512];
    bool header = true;
    while (in->n < PORTLOCK_INODES_MAX && fgets(line, sizeof(line), f)) {
        unsigned lport, st;
        unsigned long ino;
        if (header) {
            header = false;
            continue;
        }
        /* sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode */
        if (sscanf(line, " %*u: %*[0-9A-Fa-f]:%x %*s %x %*s %*s %*s %*u %*u %lu", &lport, &st,
                   &ino) == 3 &&
            lport == port && st == PORTLOCK_TCP_LISTEN && ino != 0)
            in->v[in->n++] = ino;
    }
    fclose(f);
}

/* Adds the inode of the unix socket bound to the abstract name (shown as "@name"). */
static void unix_bound(const char *name, struct inodes *in)
{
    FILE *f = fopen("/proc/net/unix", "r");
    if (!f)
        return;
    char line[512], path[256];
    while (in->n < PORTLOCK_INODES_MAX && fgets(line, sizeof(line), f)) {
        unsigned long ino;
        /* Num RefCount Protocol Flags Type St Inode Path */
        if (sscanf(line, "%*s %*s %*s %*s %*s %*s %lu %255s", &ino, path) == 2 && path[0] == '@' &&
            strcmp(path + 1, name) == 0)
            in->v[in->n++] = ino;
    }
    fclose(f);
}

static bool inode_in(const struct inodes *in, unsigned long ino)
{
    for (size_t i = 0; i < in->n; i++)
        if (in->v[i] == ino)
            return true;
    return false;
}

/* True if a descriptor of process pid (a /proc entry name) is one of the sockets. */
static bool pid_holds(const char *pid, const struct inodes *in)
{
    char path[300], link[64];
    snprintf(path, sizeof(path), "/proc/%s/fd", pid);
    DIR *d = opendir(path); /* fails for other users' processes: they stay unnamed */
    if (!d)
        return false;
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        snprintf(path, sizeof(path), "/proc/%s/fd/%s", pid, e->d_name);
        ssize_t n = readlink(path, link, sizeof(link) - 1);
        unsigned long ino;
        if (n <= 0)
            continue;
        link[n] = 0;
        found = sscanf(link, "socket:[%lu]", &ino) == 1 && inode_in(in, ino);
    }
    closedir(d);
    return found;
}

/* The process holding one of the sockets, or 0 if none is visible. */
static pid_t inodes_owner(const struct inodes *in)
{
    if (in->n == 0)
        return 0;
    DIR *proc = opendir("/proc");
    if (!proc)
        return 0;
    pid_t owner = 0;
    struct dirent *e;
    while (!owner && (e = readdir(proc))) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end == 0 && pid > 0 && pid_holds(e->d_name, in))
            owner = (pid_t)pid;
    }
    closedir(proc);
    return owner;
}

/* "pid N (comm)" into out; -ENOENT for pid 0. */
static int describe(pid_t pid, char *out, size_t cap)
{
    if (pid == 0) {
        snprintf(out, cap, "its owner is not visible to this user");
        return -ENOENT;
    }
    char path[64], comm[64] = "?";
    snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
    FILE *f = fopen(path, "r");
    if (f) {
        if (!fgets(comm, sizeof(comm), f))
            snprintf(comm, sizeof(comm), "?");
        fclose(f);
        comm[strcspn(comm, "\n")] = 0;
    }
    snprintf(out, cap, "pid %d (%s)%s", (int)pid, comm,
             pid == getpid() ? ", this process: is the port named twice?" : "");
    return 0;
}

int portlock_holder(uint16_t port, char *out, size_t cap)
{
    struct inodes in = {.n = 0};
    tcp_listeners("/proc/net/tcp", port, &in);
    tcp_listeners("/proc/net/tcp6", port, &in);
    return describe(inodes_owner(&in), out, cap);
}

/* Binds the abstract unix socket `name`. Returns its descriptor or -errno. */
static int lock_take(const char *name)
{
    struct sockaddr_un a;
    memset(&a, 0, sizeof(a));
    a.sun_family = AF_UNIX;
    size_t nl = strlen(name);
    if (nl + 1 > sizeof(a.sun_path))
        return -ENAMETOOLONG;
    memcpy(a.sun_path + 1, name, nl); /* sun_path[0] = 0: the abstract namespace */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (struct sockaddr *)&a,
             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + nl)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

/* A bind of the address without SO_REUSEPORT. Returns 0 or -errno. */
static int probe(const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1, r = 0;
    /* As the listeners do: a connection of an earlier run in TIME_WAIT is no holder. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
        r = -errno;
    close(fd);
    return r;
}

int portlock_claim(const char *host, uint16_t port, const char *flag, char *err, size_t cap)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    /* ip: any numeric address with a scope ("fe80::1%eth0"); name fits in sun_path (108). */
    char ps[8], ip[64], name[100], holder[160];
    snprintf(ps, sizeof(ps), "%u", port);
    int r = getaddrinfo(host, ps, &hints, &res);
    if (r != 0) {
        snprintf(err, cap, "cannot resolve listen address %s: %s", host, gai_strerror(r));
        return -EINVAL;
    }
    /* The first address, as the listeners bind it (broker_listen). */
    if (getnameinfo(res->ai_addr, res->ai_addrlen, ip, sizeof(ip), NULL, 0, NI_NUMERICHOST) != 0)
        snprintf(ip, sizeof(ip), "%.60s", host);
    bool v6 = res->ai_family == AF_INET6;
    snprintf(name, sizeof(name), "nexusd-listen/%s%s%s:%u", v6 ? "[" : "", ip, v6 ? "]" : "", port);
    int lock = lock_take(name);
    if (lock == -EADDRINUSE) {
        struct inodes in = {.n = 0};
        unix_bound(name, &in);
        describe(inodes_owner(&in), holder, sizeof(holder));
    } else if (lock >= 0 && (r = probe(res)) < 0) {
        close(lock);
        lock = r;
        if (lock == -EADDRINUSE)
            portlock_holder(port, holder, sizeof(holder));
    }
    freeaddrinfo(res);
    if (lock == -EADDRINUSE)
        snprintf(err, cap,
                 "cannot listen on %s:%u: %s (another process holds the port: %s; use --%s to "
                 "choose another address)",
                 host, port, strerror(-lock), holder, flag);
    else if (lock < 0)
        snprintf(err, cap, "cannot listen on %s:%u: %s", host, port, strerror(-lock));
    return lock;
}
