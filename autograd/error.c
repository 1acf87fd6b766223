/* The per-thread error message behind dc_fail()/dc_error(). */
#include "error.h"

#include <stdio.h>

static _Thread_local char message[1024];

int dc_vfail(const char *fmt, va_list ap) {
    vsnprintf(message, sizeof message, fmt, ap);
    return -1;
}

int dc_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    dc_vfail(fmt, ap);
    va_end(ap);
    return -1;
}

int dc_fail_prefix(const char *prefix) {
    char msg[sizeof message];
    snprintf(msg, sizeof msg, "%s", message);
    return dc_fail("%s: %s", prefix, msg);
}

const char *dc_error(void) { return message; }

void dc_clear_error(void) { message[0] = '\0'; }
