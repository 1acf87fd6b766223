/*
 * Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM (kill, a
 * batch scheduler's notice).
 *
 * The handler only records the signal (and writes one line to stderr, with
 * write(2), which is safe in a handler); the training loop polls
 * dc_signals_caught() after each optimizer step, writes a checkpoint and
 * returns. The decisions, so that scripts and people can rely on them:
 *
 *  - exit status: 128 + the signal's number (130 for SIGINT, 143 for
 *    SIGTERM), after the checkpoint is written. That is what a shell reports
 *    for a process stopped by the signal, so `diffc train ... && diffc sample
 *    ...` does not go on with an unfinished model, while the checkpoint lets
 *    `--resume-from-checkpoint latest` continue exactly where it stopped.
 *  - a second SIGINT or SIGTERM (either) stops the process at once, as if no
 *    handler were installed (the first signal puts the default action back).
 *    Nothing is lost that a checkpoint promised: a checkpoint being written
 *    is left as a temporary folder, or without DONE, which resuming ignores,
 *    and the previous checkpoint is untouched. Someone pressing Ctrl-C twice
 *    wants out, and a checkpoint stuck on a dead network disk must not make
 *    the process unkillable short of SIGKILL.
 */
#ifndef DC_TRAIN_SIGNALS_H
#define DC_TRAIN_SIGNALS_H

/* Install the handlers for SIGINT and SIGTERM (keeping the previous ones)
 * and forget any signal caught before. */
int dc_signals_install(void);
/* Put the previous handlers back. */
void dc_signals_restore(void);
/* The number of the first signal caught since install, 0 when none. */
int dc_signals_caught(void);
/* The exit status for a run stopped by `sig`: 128 + sig. */
int dc_signals_exit_status(int sig);

#endif
