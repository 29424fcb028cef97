// SPDX-License-Identifier: Apache-2.0
//
// nexusd's start-up failure paths, each with the exit status and a message naming the cause
// and the fix: io_uring refused by a seccomp filter (as Docker's default profile does), the
// listen port already taken, a bad flag, a bad config file line. Also --help and --version.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <dirent.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include "harness.h"

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif

/* Runs nexusd with argv (NULL-terminated, argv[0] ignored); with seccomp set, io_uring_setup
 * fails with EPERM in the child. Captures stderr+stdout into out. Returns the exit status. */
static int run_nexusd(const char **argv, bool seccomp, char *out, size_t cap)
{
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        if (seccomp) {
            struct sock_filter filter[] = {
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
            };
            struct sock_fprog prog = {.len = sizeof(filter) / sizeof(filter[0]), .filter = filter};
            if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
                prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
                _exit(120);
        }
        argv[0] = getenv("NEXUSD");
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(pipefd[1]);
    size_t have = 0;
    ssize_t n;
    while (have < cap - 1 && (n = read(pipefd[0], out + have, cap - 1 - have)) > 0)
        have += (size_t)n;
    out[have] = 0;
    close(pipefd[0]);
    int st = 0;
    int64_t deadline = h_now_ms() + 15000;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (h_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            fail_msg("nexusd did not exit: %s", out);
        }
        usleep(10000);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void test_io_uring_blocked_by_seccomp(void **state)
{
    (void)state;
    char out[4096], listen_at[64];
    snprintf(listen_at, sizeof(listen_at), "127.0.0.1:%u", h_free_port());
    const char *argv[] = {"nexusd", "--listen", listen_at, NULL};
    int rc = run_nexusd(argv, true, out, sizeof(out));
    assert_int_not_equal(rc, 120); /* the filter was installed */
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "seccomp"));
    assert_non_null(strstr(out, "io_uring_setup"));
    assert_non_null(strstr(out, "Fix"));
}

static void test_port_in_use(void **state)
{
    (void)state;
    /* Hold a port with a plain listener (no SO_REUSEPORT): nexusd cannot bind it. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof(a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 1), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    char listen_at[64], out[4096];
    snprintf(listen_at, sizeof(listen_at), "127.0.0.1:%u", ntohs(a.sin_port));
    const char *argv[] = {"nexusd", "--listen", listen_at, NULL};
    int rc = run_nexusd(argv, false, out, sizeof(out));
    close(fd);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "cannot listen on"));
    assert_non_null(strstr(out, "another process holds the port"));
}

static void test_bad_flags_and_config(void **state)
{
    (void)state;
    char out[4096];
    const char *bad_flag[] = {"nexusd", "--no-such-flag", NULL};
    assert_int_equal(run_nexusd(bad_flag, false, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "unknown flag \"--no-such-flag\""));

    const char *bad_value[] = {"nexusd", "--slow-policy", "sometimes", NULL};
    assert_int_equal(run_nexusd(bad_value, false, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "--slow-policy wants disconnect or drop"));

    const char *bad_ring[] = {"nexusd", "--ring-capacity", "1000", NULL};
    assert_int_equal(run_nexusd(bad_ring, false, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "power of two"));

    char path[] = "/tmp/nexusd-conf-XXXXXX";
    int cfd = mkstemp(path);
    assert_true(cfd >= 0);
    const char *text = "# comment\nshards = 1\nmax-frame-bytes = lots\n";
    assert_int_equal(write(cfd, text, strlen(text)), (ssize_t)strlen(text));
    close(cfd);
    const char *bad_conf[] = {"nexusd", "--config", path, NULL};
    assert_int_equal(run_nexusd(bad_conf, false, out, sizeof(out)), 2);
    assert_non_null(strstr(out, ":3: --max-frame-bytes wants a number"));
    unlink(path);

    const char *help[] = {"nexusd", "--help", NULL};
    assert_int_equal(run_nexusd(help, false, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "--max-outbound-bytes"));
    const char *version[] = {"nexusd", "--version", NULL};
    assert_int_equal(run_nexusd(version, false, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "nexusd " NEXUS_VERSION));
}

/* The CPUs ("0", "0-1", ...) that the thread of pid named want_comm may run on. */
static bool task_cpus(pid_t pid, const char *want_comm, char *cpus, size_t cap)
{
    char path[384];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return false;
    bool found = false;
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char comm[64] = "", line[256];
        snprintf(path, sizeof(path), "/proc/%d/task/%s/comm", (int)pid, e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (!fgets(comm, sizeof(comm), f))
            comm[0] = 0;
        fclose(f);
        comm[strcspn(comm, "\n")] = 0;
        if (strcmp(comm, want_comm) != 0)
            continue;
        snprintf(path, sizeof(path), "/proc/%d/task/%s/status", (int)pid, e->d_name);
        if (!(f = fopen(path, "r")))
            continue;
        while (fgets(line, sizeof(line), f))
            if (sscanf(line, "Cpus_allowed_list: %63s", cpus) == 1 && strlen(cpus) < cap)
                found = true;
        fclose(f);
    }
    closedir(d);
    return found;
}

/* --pin-cpus: each shard thread may run on one CPU, shard i on the i-th allowed CPU (wrapping
 * around); without it, on all of them. */
static void test_pin_cpus(void **state)
{
    (void)state;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    struct broker_proc b = H_START(2, "--pin-cpus", NULL);
    char c0[64], c1[64];
    assert_true(task_cpus(b.pid, "nexus-shard-0", c0, sizeof(c0)));
    assert_true(task_cpus(b.pid, "nexus-shard-1", c1, sizeof(c1)));
    assert_string_equal(c0, "0");
    assert_string_equal(c1, ncpu > 1 ? "1" : "0");
    assert_int_equal(h_stop(&b), 0);

    struct broker_proc u = H_START(2, NULL);
    assert_true(task_cpus(u.pid, "nexus-shard-0", c0, sizeof(c0)));
    if (ncpu > 1)
        assert_string_not_equal(c0, "0");
    assert_int_equal(h_stop(&u), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_io_uring_blocked_by_seccomp),
        cmocka_unit_test(test_port_in_use),
        cmocka_unit_test(test_bad_flags_and_config),
        cmocka_unit_test_teardown(test_pin_cpus, h_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
