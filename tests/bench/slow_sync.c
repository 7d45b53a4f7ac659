/*
 * LD_PRELOAD shim for scripts/bench: a slow disk, and a count of store commits.
 *
 * Wraps fsync, fdatasync, syncfs and sync_file_range (glibc's entry points, which Spin's
 * bundled SQLite calls through the dynamic linker).
 *   BENCH_SYNC_DELAY_US  sleep this long before each call (unset or 0: no delay)
 *   BENCH_SYNC_LOG       append one line per call to this file:
 *                        "<CLOCK_REALTIME ns> <pid> <call> <path of the fd>"
 * The environment is inherited, so the shim also runs in the trigger processes that
 * `spin up` starts. Each line is written with one write(2) on an O_APPEND descriptor, so
 * lines from concurrent threads and processes do not interleave.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void slow_and_log(const char *call, int fd) {
    const char *delay = getenv("BENCH_SYNC_DELAY_US");
    long us = delay ? atol(delay) : 0;
    if (us > 0) {
        struct timespec pause = {us / 1000000, (us % 1000000) * 1000};
        while (nanosleep(&pause, &pause) != 0) {
        }
    }
    const char *log = getenv("BENCH_SYNC_LOG");
    if (!log || !*log) {
        return;
    }
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    path[n > 0 ? n : 0] = '\0';
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    char line[4300];
    int len = snprintf(line, sizeof line, "%lld %d %s %s\n",
                       (long long)now.tv_sec * 1000000000LL + now.tv_nsec, (int)getpid(), call,
                       path);
    if (len > (int)sizeof line - 1) {
        len = (int)sizeof line - 1;
    }
    int out = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (out >= 0) {
        /* Nothing to do if it fails: the count is then short, never the sync. */
        (void)!write(out, line, (size_t)len);
        close(out);
    }
}

/* The real function, looked up once: dlsym(RTLD_NEXT) finds glibc's, not ours. */
#define REAL(name) \
    static __typeof__(name) *real; \
    if (!real) real = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

int fsync(int fd) {
    REAL(fsync);
    slow_and_log("fsync", fd);
    return real(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync);
    slow_and_log("fdatasync", fd);
    return real(fd);
}

int syncfs(int fd) {
    REAL(syncfs);
    slow_and_log("syncfs", fd);
    return real(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    REAL(sync_file_range);
    slow_and_log("sync_file_range", fd);
    return real(fd, offset, nbytes, flags);
}
