/*
 * The output folder of a training run, held by one run at a time.
 *
 * Two runs writing one folder would interleave metrics.jsonl and overwrite
 * each other's checkpoints, so a run takes an exclusive flock(2) on a lock
 * file in the folder (RUN_DIR_LOCK) before it reads or writes anything there,
 * and writes its pid into it: a second run is refused with an error that
 * names the holder. The kernel drops a flock with the process however it
 * ends, so a killed run leaves at most the file, which stops nothing (its
 * resume takes the lock again). A file system that cannot lock at all (some
 * network mounts) gets a warning, and the run goes on unguarded.
 *
 * A run that fails before it has made anything of worth (bad data, a bad
 * model: the setup) removes what it made: the folder and the parents it
 * created, or in a folder that was there before only its lock file.
 */
#ifndef DC_TRAIN_RUN_DIR_H
#define DC_TRAIN_RUN_DIR_H

#include <stdbool.h>

#define RUN_DIR_LOCK ".diffc-train.lock"

typedef struct dc_run_dir {
    bool held;     /* the lock is ours (or locking is unsupported here and we went on) */
    int fd;        /* the lock file, when held; -1 where the file system cannot lock */
    char *lock;    /* <dir>/RUN_DIR_LOCK */
    bool made;     /* this run created the lock file (a killed run's may be there) */
    char *created; /* the topmost folder of dir's path this run created; NULL: none */
} dc_run_dir;

/* Create `dir` (and its parents) when missing, check that files can be
 * written in it and lock it. Fails, naming the holder's pid, while another
 * process holds it. A zeroed dc_run_dir is valid to release. */
int dc_run_dir_take(dc_run_dir *r, const char *dir);
/* Unlock and remove the lock file. With `discard`, for a run that failed in
 * its setup: remove the folders take created, with all inside, and else
 * the lock file only if take created it. The message dc_error() holds is
 * kept. Safe on a zeroed or failed one. */
void dc_run_dir_release(dc_run_dir *r, bool discard);

#endif
