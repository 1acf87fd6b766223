/*
 * Reading and writing the config.json of a diffusers model: what every
 * model's parser shares (UNet2DModel in unet.c, UNet2DConditionModel in
 * unet_cond.c). Keys absent take diffusers' defaults, null reads as 0 where
 * diffusers allows it, and every error is one message that names the file
 * (`what`), the key and the value.
 */
#ifndef DC_MODELS_CONFIG_JSON_H
#define DC_MODELS_CONFIG_JSON_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

/* Scalar keys read into a config struct by a table: absent means the
 * default; null is allowed for DC_CFG_INT_OR_NULL and reads as 0. */
typedef enum { DC_CFG_INT, DC_CFG_INT_OR_NULL, DC_CFG_FLOAT, DC_CFG_BOOL } dc_cfg_kind;

typedef struct dc_cfg_key {
    const char *key;
    dc_cfg_kind kind;
    size_t offset; /* of the int, float or bool field in the struct */
    double def;
} dc_cfg_key;

/* Every key of keys[0, n) from `root` into the struct at `config`. */
int dc_cfg_read_keys(void *config, const cJSON *root, const char *what, const dc_cfg_key *keys,
                     int n);
/* An integer-valued JSON number into *out; -1 with a message otherwise. */
int dc_cfg_int(const cJSON *v, const char *what, const char *key, int *out);
/* An integer or a list of `n` integers into out[0, n) (an integer fills
 * them all); `def` when absent. null is an error. */
int dc_cfg_int_or_list(const cJSON *root, const char *what, const char *key, int def, int n,
                       int *out);

/* A list of 1 to max_n integers into out (*n of them), or def[0, n_def)
 * when absent. */
int dc_cfg_int_list(const cJSON *root, const char *what, const char *key, const int *def,
                    int n_def, int max_n, int *out, int *n);

/* A string key whose value must be one of `allowed` (NULL in the list: null
 * or absent is allowed too); `def` when absent. Returns the index into
 * `allowed`, or -1 with a message that lists what is supported. */
int dc_cfg_choice(const cJSON *root, const char *what, const char *key, const char *def,
                  const char *const *allowed, int n_allowed);
#define DC_CFG_CHOICE(root, what, key, def, ...)                                                   \
    dc_cfg_choice(root, what, key, def, (const char *const[]){__VA_ARGS__},                        \
                  (int)(sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *)))

/* sample_size: null or absent (0, 0), an integer, or [height, width]. */
int dc_cfg_sample_size(const cJSON *root, const char *what, int out[2]);
/* `key` = value must not pass `max` (a model's plausible sizes). */
int dc_cfg_limit(const char *what, const char *key, int value, int max);

/* The text of the config file at `path` (malloc'ed), at most 1 MiB and
 * without NUL bytes; NULL with a message. */
char *dc_cfg_read_text(const char *path);
/* Write `text` to "<path>.tmp", sync it, rename it to `path`. */
int dc_cfg_save_text(const char *text, const char *path);

#endif
