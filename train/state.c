/* The counters and moments of train_state.safetensors (see state.h). */
#include "state.h"

#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* In the order of dc_train_counters_read's enum. */
#define DC_TRAIN_COUNTERS 5
static const char *const counter_keys[DC_TRAIN_COUNTERS] = {"step", "adamw_step", "ema_step", "loader_cursor",
                                                            "bad_steps"};

int dc_train_state_save(const char *output_dir, const dc_model_writer *w, const char *version,
                        const dc_train_counters *c, const dc_train_options *o, const float *m, const float *v,
                        size_t n) {
    const int64_t counts[DC_TRAIN_COUNTERS] = {c->step, c->adamw_step, c->ema_step, c->loader_cursor,
                                               c->bad_steps};
    char text[DC_TRAIN_COUNTERS][24];
    const char *keys[DC_TRAIN_COUNTERS + 2] = {"format_version"}, *values[DC_TRAIN_COUNTERS + 2] = {version};
    for (int k = 0; k < DC_TRAIN_COUNTERS; k++) {
        snprintf(text[k], sizeof text[k], "%" PRId64, counts[k]);
        keys[k + 1] = counter_keys[k];
        values[k + 1] = text[k];
    }
    cJSON *cfg = dc_train_options_to_json(o);
    char *cfg_text = cfg ? dc_json_print(cfg, false) : NULL;
    cJSON_Delete(cfg);
    if (!cfg_text)
        return -1;
    keys[DC_TRAIN_COUNTERS + 1] = "train_config";
    values[DC_TRAIN_COUNTERS + 1] = cfg_text;
    size_t bytes = n * sizeof(float);
    dc_st_tensor tensors[2] = {
        {.name = "adamw.exp_avg", .dtype = DC_F32, .ndim = 1, .shape = {(int64_t)n}, .data = m,
         .nbytes = bytes},
        {.name = "adamw.exp_avg_sq", .dtype = DC_F32, .ndim = 1, .shape = {(int64_t)n}, .data = v,
         .nbytes = bytes},
    };
    dc_train_state state = {.tensors = tensors, .n = 2, .meta_keys = keys, .meta_values = values,
                            .n_meta = DC_TRAIN_COUNTERS + 2};
    int rc = dc_checkpoint_save_model(output_dir, c->step, w, &state, NULL, NULL);
    free(cfg_text);
    return rc;
}

static int meta_int(const dc_st_file *f, const char *key, int64_t *out) {
    const char *v = dc_st_meta(f, key);
    char *end;
    errno = 0;
    if (!v || (*out = strtoll(v, &end, 10), end == v || *end || errno) || *out < 0)
        return dc_fail("train_state.safetensors: metadata '%s' is missing or not a count (\"%.32s\")", key,
                       v ? v : "");
    return 0;
}

/* The --gradient-accumulation-steps of the run that wrote the state (its
 * train_config), which relates its step to its loader cursor. */
static int state_accumulation(const dc_st_file *f, int64_t *accum) {
    const char *text = dc_st_meta(f, "train_config");
    cJSON *cfg = text ? cJSON_Parse(text) : NULL;
    double v = 1; /* the option's default, when the config leaves it out */
    int rc = cJSON_IsObject(cfg) ? dc_json_get_number(cfg, "gradient_accumulation_steps",
                                                      "train_state.safetensors: train_config", &v)
                                 : dc_fail("train_state.safetensors: metadata 'train_config' is missing or "
                                           "not a JSON object");
    cJSON_Delete(cfg);
    if (!rc && !(v >= 1 && v <= (1 << 20) && v == floor(v)))
        rc = dc_fail("train_state.safetensors: train_config's gradient_accumulation_steps %g is not a "
                     "count in [1, 2^20]", v);
    *accum = (int64_t)v;
    return rc;
}

int dc_train_counters_read(const dc_st_file *f, int64_t global_batch, int max_bad, dc_train_counters *out) {
    enum { STEP, ADAM, EMA, CURSOR, BAD };
    int64_t c[DC_TRAIN_COUNTERS], accum;
    for (int k = 0; k < DC_TRAIN_COUNTERS; k++)
        if (meta_int(f, counter_keys[k], &c[k]))
            return -1;
    if (state_accumulation(f, &accum))
        return -1;
    if (c[STEP] > INT64_MAX / global_batch)
        return dc_fail("train_state.safetensors: step %" PRId64 " is past any run's end", c[STEP]);
    static const int at_most_step[] = {ADAM, EMA, BAD};
    for (int i = 0; i < 3; i++) {
        int k = at_most_step[i];
        if (c[k] > c[STEP])
            return dc_fail("train_state.safetensors: %s %" PRId64 " is past step %" PRId64, counter_keys[k], c[k],
                           c[STEP]);
    }
    if (c[BAD] >= max_bad)
        return dc_fail("train_state.safetensors: bad_steps %" PRId64 " (a run stops at %d)", c[BAD], max_bad);
    if (c[STEP] > INT64_MAX / accum || c[CURSOR] != c[STEP] * accum)
        return dc_fail("train_state.safetensors: loader_cursor %" PRId64 " is not step %" PRId64 " x the %"
                       PRId64 " micro-batches of a step", c[CURSOR], c[STEP], accum);
    *out = (dc_train_counters){c[STEP], c[ADAM], c[EMA], c[BAD], c[CURSOR]};
    return 0;
}

/* A moment buffer must hold finite numbers (exp_avg_sq: not negative). */
static int check_moment(const char *name, const void *data, size_t n, bool square) {
    for (size_t i = 0; i < n; i++) {
        float x;
        memcpy(&x, (const char *)data + i * sizeof x, sizeof x); /* file data need not be aligned */
        if (!isfinite(x) || (square && x < 0))
            return dc_fail("train_state.safetensors: '%s' holds %g at %zu", name, (double)x, i);
    }
    return 0;
}

int dc_train_state_moment(const dc_st_file *f, const char *name, size_t n, size_t lo, size_t len, int device,
                          float *dst) {
    const dc_st_tensor *t = dc_st_find(f, name);
    if (!t || t->dtype != DC_F32 || t->nbytes != n * sizeof(float))
        return dc_fail("train_state.safetensors: '%s' is missing or not %zu f32 values", name, n);
    if (lo > n || len > n - lo)
        return dc_fail("train_state.safetensors: '%s': floats [%zu, %zu) of %zu", name, lo, lo + len, n);
    if (check_moment(name, t->data, n, !strcmp(name, "adamw.exp_avg_sq")))
        return -1;
    return dc_memcpy(dst, device, (const float *)t->data + lo, DC_CPU, len * sizeof(float));
}

const float *dc_train_on_host(int device, const float *buf, size_t n, float **copy) {
    size_t bytes = n * sizeof(float);
    *copy = NULL;
    if (device == DC_CPU)
        return buf;
    if (!(*copy = malloc(bytes))) {
        dc_fail("out of memory for a host copy of %zu bytes", bytes);
        return NULL;
    }
    if (dc_memcpy(*copy, DC_CPU, buf, device, bytes)) {
        free(*copy);
        return *copy = NULL;
    }
    return *copy;
}
