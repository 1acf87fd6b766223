/*
 * What training reports as it goes: metrics.jsonl in the output folder (one
 * JSON object per logged step, for scripts and plots), and the progress line
 * on stderr (a single updating line on a terminal, plain log lines when
 * stderr is a file or a pipe).
 */
#ifndef DC_TRAIN_METRICS_H
#define DC_TRAIN_METRICS_H

#include "autograd/error.h" /* DC_PRINTF */

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- metrics.jsonl ---- */

typedef struct dc_metrics dc_metrics;

typedef struct dc_metrics_row {
    int64_t step;
    double loss;
    /* The mean loss of the samples whose timestep fell in each quarter of
     * [0, num_train_timesteps); NaN for a quarter without samples. */
    double loss_t_quartiles[4];
    double lr, grad_norm, images_per_s;
    /* The high-water mark of the arenas of the training device so far
     * (dc_arena_peak_bytes): what the run needs of it. */
    double peak_arena_bytes;
} dc_metrics_row;

/* Open `path` for appending. Lines with a step after `keep_until` are
 * dropped first (and a torn last line): a run resumed from the checkpoint of
 * step S passes S and the file reads as if the run had never stopped; a new
 * run passes 0 and starts the file afresh. */
int dc_metrics_open(dc_metrics **m, const char *path, int64_t keep_until);
/* Append {"step", "loss", "loss_t_quartiles": [4], "lr", "grad_norm",
 * "images_per_s", "peak_arena_bytes", then extra's members} as one line,
 * flushed. Non-finite
 * numbers are written as null (JSON has no NaN). `extra` may be NULL. */
int dc_metrics_write(dc_metrics *m, const dc_metrics_row *r, const cJSON *extra);
/* -1 when the last line cannot be written. NULL-safe. */
int dc_metrics_close(dc_metrics *m);

/* ---- the progress line ---- */

typedef struct dc_progress {
    FILE *out;
    bool tty;           /* out is a terminal: one line redrawn in place */
    int64_t first_step; /* the step the run (re)started from */
    int64_t total;      /* the last step */
    int64_t log_every;  /* not a terminal: a line every log_every steps */
    double t_start;     /* seconds (monotonic) at init */
    double t_drawn;     /* when the line was last drawn */
    char line[256];     /* the text last drawn, redrawn after a note */
} dc_progress;

/* Report on `out` (stderr, usually) for steps first_step+1 .. total; with
 * `out` NULL the calls below print nothing (the ranks other than 0). */
void dc_progress_init(dc_progress *p, FILE *out, int64_t first_step, int64_t total, int64_t log_every);
/* After optimizer step `step`:
 *   step 120/5000  loss 0.0412  lr 1.0e-04  312 img/s  ETA 4m12s
 * On a terminal the line is redrawn in place (at most 10 times a second, and
 * at the last step), cut to the terminal's width; otherwise printed every
 * log_every steps and at the last. */
void dc_progress_step(dc_progress *p, int64_t step, double loss, double lr, double images_per_s);
/* A line of its own ("saved checkpoint-500"), kept clear of the progress line. */
void dc_progress_note(dc_progress *p, const char *fmt, ...) DC_PRINTF(2, 3);
/* The summary: "done: 5000 steps in 1h02m, 312 img/s, final loss 0.0412",
 * the rate being the whole run's, `images` trained in `seconds` (the
 * training loop's wall time: sample grids and checkpoints included, the
 * setup not), where the step lines show each interval's. */
void dc_progress_done(dc_progress *p, int64_t step, double loss, double images, double seconds);

/* "4m12s", "1h03m", "2d04h"; "?" for a negative or non-finite time. */
const char *dc_format_duration(char *buf, size_t n, double seconds);

#endif
