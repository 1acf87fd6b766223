/*
 * Error reporting for the library. Functions that can fail return a status
 * (0 on success, -1 on failure) or NULL, after recording one message with
 * dc_fail(). The caller reads it with dc_error(); only diffc.c and the
 * subcommands turn it into an exit code. The message is per thread.
 */
#ifndef DC_ERROR_H
#define DC_ERROR_H

#include <stdarg.h>

#if defined(__GNUC__)
#define DC_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define DC_PRINTF(a, b)
#endif

/* Record a formatted message; always returns -1 so callers can `return dc_fail(...)`. */
int dc_fail(const char *fmt, ...) DC_PRINTF(1, 2);
int dc_vfail(const char *fmt, va_list ap);
/* Put `prefix: ` in front of the message last recorded; returns -1. */
int dc_fail_prefix(const char *prefix);
/* The last message recorded on this thread ("" when none). */
const char *dc_error(void);
/* Forget the last message. */
void dc_clear_error(void);

#endif
