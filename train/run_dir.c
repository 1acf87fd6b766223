/*
 * The lock on a training run's output folder (see run_dir.h).
 */
#include "run_dir.h"

#include "autograd/error.h"
#include "autograd/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOCK_TRIES 8 /* a holder may remove the file between our open and our flock */

/* The first folder of dir's path, from the top, that does not exist: the
 * one dc_mkdirs would create first (NULL when all exist, or on failure). */
static char *first_missing(const char *dir) {
    char *p = dir[0] ? strdup(dir) : NULL;
    struct stat st;
    for (char *s = p ? p + 1 : NULL; s; s++) {
        char c = *s;
        if ((c == '/' && s[-1] != '/') || !c) {
            *s = '\0';
            if (lstat(p, &st) != 0 && errno == ENOENT)
                return p;
            *s = c;
        }
        if (!c)
            break;
    }
    free(p);
    return NULL;
}

/* The pid written in the lock file; 0 when it holds none yet. */
static long holder_pid(int fd) {
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    long pid = strtol(buf, NULL, 10);
    return pid > 0 ? pid : 0;
}

static int refuse(const dc_run_dir *r, const char *dir, int fd) {
    long pid = holder_pid(fd);
    char who[48] = "another process";
    if (pid)
        snprintf(who, sizeof who, "another training run (pid %ld)", pid);
    return dc_fail("%s: in use by %s, which holds %s: wait for it to end or choose another --output-dir",
                   dir, who, r->lock);
}

/* fd still names r->lock: the holder before us did not remove it as we opened it. */
static bool still_there(const dc_run_dir *r, int fd) {
    struct stat a, b;
    return fstat(fd, &a) == 0 && stat(r->lock, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

static int write_pid(dc_run_dir *r) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (ftruncate(r->fd, 0) != 0 || pwrite(r->fd, buf, (size_t)n, 0) != n)
        return dc_fail("%s: cannot write: %s", r->lock, strerror(errno));
    return 0;
}

static int lock(dc_run_dir *r, const char *dir) {
    for (int tries = 0; tries < LOCK_TRIES; tries++) {
        r->made = access(r->lock, F_OK) != 0;
        int fd = open(r->lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0)
            return dc_fail("%s: cannot create: %s", r->lock, strerror(errno));
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int err = errno;
            int rc = err == EWOULDBLOCK ? refuse(r, dir, fd) : 0;
            close(fd);
            if (rc)
                return rc;
            fprintf(stderr, "diffc: warning: %s: cannot lock (%s): nothing stops another run from writing "
                    "this folder\n", r->lock, strerror(err));
            r->held = true;
            r->fd = -1;
            return 0;
        }
        if (still_there(r, fd)) {
            r->held = true;
            r->fd = fd;
            return write_pid(r);
        }
        close(fd);
    }
    return dc_fail("%s: cannot lock: it keeps being replaced", r->lock);
}

int dc_run_dir_take(dc_run_dir *r, const char *dir) {
    memset(r, 0, sizeof *r);
    r->fd = -1;
    r->created = first_missing(dir);
    if (!(r->lock = dc_path_join(dir, RUN_DIR_LOCK)))
        return -1;
    return dc_dir_check_writable(dir) || lock(r, dir) ? -1 : 0;
}

void dc_run_dir_release(dc_run_dir *r, bool discard) {
    char *message = strdup(dc_error()); /* what the removals below must not overwrite */
    if (r->held && discard && r->created)
        dc_remove_tree(r->created);
    else if (r->held && r->fd >= 0 && (r->made || !discard))
        unlink(r->lock); /* before the unlock: a run that opened this file then sees it gone */
    if (r->held && r->fd >= 0)
        close(r->fd);
    if (message && message[0])
        dc_fail("%s", message);
    else
        dc_clear_error();
    free(message);
    free(r->lock);
    free(r->created);
    memset(r, 0, sizeof *r);
    r->fd = -1;
}
