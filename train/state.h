/*
 * What a trainer keeps beside the weights, in train_state.safetensors
 * (checkpoint.h), shared by `diffc train` and `diffc train-caption`: the
 * counters (metadata) and AdamW's moments (tensors adamw.exp_avg,
 * adamw.exp_avg_sq), with the checks that refuse a hand-edited or corrupted
 * state instead of training from it; and the host view of a device buffer
 * that writing them needs.
 */
#ifndef DC_TRAIN_STATE_H
#define DC_TRAIN_STATE_H

#include "checkpoint.h"
#include "options.h"

#include "autograd/safetensors.h"

#include <stddef.h>
#include <stdint.h>

/* The metadata counters. */
typedef struct dc_train_counters {
    int64_t step;          /* optimizer steps done */
    int64_t adamw_step;    /* AdamW's (skipped steps are not its) */
    int64_t ema_step;      /* the EMA's optimization_step (0 without EMA) */
    int64_t bad_steps;     /* non-finite steps in a row */
    int64_t loader_cursor; /* the loader's next global batch */
} dc_train_counters;

/* Write `output_dir`/checkpoint-<c->step> (checkpoint.h): the model's files
 * from w, and train_state.safetensors with format_version `version`, the
 * counters, the options as train_config, and AdamW's moments m, v [n]
 * (host memory). */
int dc_train_state_save(const char *output_dir, const dc_model_writer *w, const char *version,
                        const dc_train_counters *c, const dc_train_options *o, const float *m, const float *v,
                        size_t n);

/* The counters of a state, each checked against the others: none past the
 * step, bad_steps below max_bad, step * global_batch within int64_t, and
 * loader_cursor = step x the gradient_accumulation_steps of the state's
 * train_config metadata (the run that wrote it). */
int dc_train_counters_read(const dc_st_file *f, int64_t global_batch, int max_bad, dc_train_counters *c);

/* Floats [lo, lo + len) of the state's moment tensor `name`, which must hold
 * n finite f32 (adamw.exp_avg_sq: none negative), into dst[len] on `device`. */
int dc_train_state_moment(const dc_st_file *f, const char *name, size_t n, size_t lo, size_t len, int device,
                          float *dst);

/* buf[n] of `device` readable on the host: buf itself on the CPU, else a
 * copy in *copy (malloc'ed, for the caller to free). NULL after dc_fail. */
const float *dc_train_on_host(int device, const float *buf, size_t n, float **copy);

#endif
