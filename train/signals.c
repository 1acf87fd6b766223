/*
 * SIGINT/SIGTERM handling for training (see signals.h for the decisions).
 */
#define _GNU_SOURCE /* SA_RESTART */
#include "signals.h"

#include "autograd/error.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t caught;
static struct sigaction old_int, old_term;

/* Async-signal-safe only: a store, write(2) and sigaction(2). */
static void on_signal(int sig) {
    static const char int_msg[] = "\ndiffc: interrupted: writing a checkpoint, then stopping "
                                  "(interrupt again to stop at once)\n";
    static const char term_msg[] = "\ndiffc: terminated: writing a checkpoint, then stopping "
                                   "(signal again to stop at once)\n";
    caught = sig;
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGINT, &dfl, NULL);
    sigaction(SIGTERM, &dfl, NULL);
    int saved = errno; /* the interrupted code may be about to read errno */
    ssize_t ignored = sig == SIGINT ? write(STDERR_FILENO, int_msg, sizeof int_msg - 1)
                                    : write(STDERR_FILENO, term_msg, sizeof term_msg - 1);
    (void)ignored;
    errno = saved;
}

int dc_signals_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART; /* reads and writes in progress carry on */
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGINT); /* one handler at a time */
    sigaddset(&sa.sa_mask, SIGTERM);
    caught = 0;
    if (sigaction(SIGINT, &sa, &old_int) != 0)
        return dc_fail("cannot install the SIGINT handler: %s", strerror(errno));
    if (sigaction(SIGTERM, &sa, &old_term) != 0) {
        int err = errno;
        sigaction(SIGINT, &old_int, NULL);
        return dc_fail("cannot install the SIGTERM handler: %s", strerror(err));
    }
    return 0;
}

void dc_signals_restore(void) {
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
}

int dc_signals_caught(void) { return caught; }

int dc_signals_exit_status(int sig) { return 128 + sig; }
