/*
 * metrics.jsonl and the progress line (see metrics.h).
 */
#include "metrics.h"

#include "autograd/clock.h"
#include "autograd/fileio.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

/* ---- metrics.jsonl ---- */

struct dc_metrics {
    FILE *fp;
    char *path;
};

#define MAX_METRICS_FILE (1u << 30)

/* A whole line (no newline) that is a JSON object whose step is <= keep_until. */
static bool keep_line(const char *line, size_t n, int64_t keep_until) {
    cJSON *j = cJSON_ParseWithLength(line, n);
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(j, "step");
    bool keep = cJSON_IsNumber(step) && step->valuedouble <= (double)keep_until;
    cJSON_Delete(j);
    return keep;
}

/* Rewrite `path` without the lines after keep_until (atomically, and only
 * when something is dropped). A missing file is fine. */
static int drop_later_lines(const char *path, int64_t keep_until) {
    if (access(path, F_OK) != 0)
        return 0;
    size_t n;
    char *text = dc_read_file(path, MAX_METRICS_FILE, &n);
    if (!text)
        return -1;
    size_t kept = 0;
    for (size_t at = 0; at < n;) {
        char *nl = memchr(text + at, '\n', n - at);
        if (!nl) /* a torn last line */
            break;
        size_t len = (size_t)(nl - (text + at)) + 1;
        if (keep_line(text + at, len - 1, keep_until)) {
            memmove(text + kept, text + at, len);
            kept += len;
        }
        at += len;
    }
    int rc = kept == n ? 0 : dc_write_file(path, text, kept, true);
    free(text);
    return rc;
}

int dc_metrics_open(dc_metrics **out, const char *path, int64_t keep_until) {
    *out = NULL;
    dc_metrics *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        return dc_fail("%s: out of memory", path);
    }
    int rc = drop_later_lines(path, keep_until);
    if (!rc && !(m->fp = fopen(path, "a")))
        rc = dc_fail("%s: cannot open for appending: %s", path, strerror(errno));
    if (rc) {
        dc_metrics_close(m);
        return -1;
    }
    *out = m;
    return 0;
}

static cJSON *number(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

static bool add_number(cJSON *j, const char *key, double v) {
    return cJSON_AddItemToObject(j, key, number(v));
}

static cJSON *row_json(const dc_metrics_row *r, const cJSON *extra) {
    cJSON *j = cJSON_CreateObject(), *q = cJSON_CreateArray();
    bool ok = j && q && add_number(j, "step", (double)r->step) && add_number(j, "loss", r->loss);
    for (int i = 0; ok && i < 4; i++)
        ok = cJSON_AddItemToArray(q, number(r->loss_t_quartiles[i]));
    ok = ok && cJSON_AddItemToObject(j, "loss_t_quartiles", q);
    if (!ok)
        cJSON_Delete(q);
    ok = ok && add_number(j, "lr", r->lr) && add_number(j, "grad_norm", r->grad_norm) &&
         add_number(j, "images_per_s", r->images_per_s) && add_number(j, "peak_arena_bytes", r->peak_arena_bytes);
    for (const cJSON *v = extra ? extra->child : NULL; ok && v; v = v->next)
        ok = cJSON_AddItemToObject(j, v->string, cJSON_Duplicate(v, 1));
    if (!ok) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

int dc_metrics_write(dc_metrics *m, const dc_metrics_row *r, const cJSON *extra) {
    if (extra && !cJSON_IsObject(extra))
        return dc_fail("%s: extra metrics must be a JSON object", m->path);
    cJSON *j = row_json(r, extra);
    char *text = j ? dc_json_print(j, false) : NULL;
    cJSON_Delete(j);
    if (!text)
        return dc_fail("%s: out of memory", m->path);
    int ok = fputs(text, m->fp) >= 0 && fputc('\n', m->fp) != EOF && fflush(m->fp) == 0;
    free(text);
    return ok ? 0 : dc_fail("%s: cannot write: %s", m->path, strerror(errno ? errno : EIO));
}

int dc_metrics_close(dc_metrics *m) {
    if (!m)
        return 0;
    int rc = 0;
    if (m->fp && fclose(m->fp) != 0)
        rc = dc_fail("%s: cannot write: %s", m->path, strerror(errno));
    free(m->path);
    free(m);
    return rc;
}

/* ---- the progress line ---- */

const char *dc_format_duration(char *buf, size_t n, double s) {
    if (!(s >= 0) || s > 1e12) {
        snprintf(buf, n, "?");
        return buf;
    }
    long long t = (long long)(s + 0.5);
    if (t < 60)
        snprintf(buf, n, "%llds", t);
    else if (t < 3600)
        snprintf(buf, n, "%lldm%02llds", t / 60, t % 60);
    else if (t < 86400)
        snprintf(buf, n, "%lldh%02lldm", t / 3600, t / 60 % 60);
    else
        snprintf(buf, n, "%lldd%02lldh", t / 86400, t / 3600 % 24);
    return buf;
}

static const char *format_rate(char *buf, size_t n, double r) {
    snprintf(buf, n, !isfinite(r) ? "?" : r >= 100 ? "%.0f" : "%.1f", r);
    return buf;
}

/* The terminal's width in columns (80 when it cannot be told). */
static int term_width(FILE *f) {
    struct winsize ws;
    if (ioctl(fileno(f), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    return 80;
}

void dc_progress_init(dc_progress *p, FILE *out, int64_t first_step, int64_t total, int64_t log_every) {
    memset(p, 0, sizeof *p);
    p->out = out;
    p->tty = out && isatty(fileno(out));
    p->first_step = first_step;
    p->total = total;
    p->log_every = log_every > 0 ? log_every : 1;
    p->t_start = p->t_drawn = dc_seconds();
}

/* \r, the line cut to the width (a wrapped line could not be redrawn), then
 * clear the rest of the old one. */
static void draw(dc_progress *p) {
    fprintf(p->out, "\r%.*s\033[K", term_width(p->out) - 1, p->line);
    fflush(p->out);
}

void dc_progress_step(dc_progress *p, int64_t step, double loss, double lr, double images_per_s) {
    if (!p->out)
        return;
    double t = dc_seconds();
    bool last = step >= p->total;
    if (p->tty ? !last && t - p->t_drawn < 0.1 : !last && step % p->log_every)
        return;
    int64_t done = step - p->first_step;
    double eta = done > 0 ? (t - p->t_start) / (double)done * (double)(p->total - step) : NAN;
    char rate[32], eta_text[32];
    snprintf(p->line, sizeof p->line, "step %lld/%lld  loss %.4g  lr %.1e  %s img/s  ETA %s", (long long)step,
             (long long)p->total, loss, lr, format_rate(rate, sizeof rate, images_per_s),
             dc_format_duration(eta_text, sizeof eta_text, eta));
    p->t_drawn = t;
    if (p->tty) {
        draw(p);
    } else {
        fprintf(p->out, "%s\n", p->line);
        fflush(p->out);
    }
}

void dc_progress_note(dc_progress *p, const char *fmt, ...) {
    if (!p->out)
        return;
    va_list ap;
    va_start(ap, fmt);
    if (p->tty && p->line[0])
        fputs("\r\033[K", p->out);
    vfprintf(p->out, fmt, ap);
    fputc('\n', p->out);
    va_end(ap);
    if (p->tty && p->line[0])
        draw(p);
    fflush(p->out);
}

void dc_progress_done(dc_progress *p, int64_t step, double loss, double images, double seconds) {
    if (!p->out)
        return;
    char took[32], rate[32];
    if (p->tty && p->line[0])
        fputc('\n', p->out);
    fprintf(p->out, "done: %lld steps in %s, %s img/s, final loss %.4g\n", (long long)(step - p->first_step),
            dc_format_duration(took, sizeof took, seconds), format_rate(rate, sizeof rate, images / seconds), loss);
    p->line[0] = '\0';
    fflush(p->out);
}
