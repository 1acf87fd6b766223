/*
 * Reading and writing the config.json of a diffusers or transformers model:
 * what every model's parser shares (UNet2DModel in unet.c,
 * UNet2DConditionModel in unet_cond.c, the VAE, CLIP's text encoder, BLIP),
 * from the keys to the file. Keys absent take diffusers' defaults, null reads as 0 where
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

/* A transformers config's model_type (model_type when absent) and
 * architectures[0] (where given) must name the model: `desc` says what the
 * model_type should be in the message, e.g. "BLIP (BlipForConditionalGeneration)". */
int dc_cfg_check_class(const cJSON *root, const char *what, const char *model_type,
                       const char *desc, const char *architecture);

/* The text of the config file at `path` (malloc'ed), at most 1 MiB and
 * without NUL bytes; NULL with a message. */
char *dc_cfg_read_text(const char *path);
/* Write `text` to "<path>.tmp", sync it, rename it to `path`; a NULL text
 * (a config not parsed from one) is an error. */
int dc_cfg_save_text(const char *text, const char *path);

/* A model's reader of its config's JSON root into the struct at cfg. */
typedef int (*dc_cfg_parse_fn)(void *cfg, const cJSON *root, const char *what);

/* The JSON text `json` read by `parse` into the struct at cfg (size bytes,
 * zeroed first and again on failure); *keep (keep may be NULL: not kept)
 * gets a malloc'ed copy of the text. `what` names it in messages. */
int dc_cfg_parse_text(void *cfg, size_t size, const char *json, const char *what,
                      dc_cfg_parse_fn parse, char **keep);
/* The same from the file at `path` (as dc_cfg_read_text reads it). */
int dc_cfg_load(void *cfg, size_t size, const char *path, dc_cfg_parse_fn parse, char **keep);
/* The same from the file DIR/file of a model folder, which must be there:
 * "DIR: no FILE (not a LIBRARY model folder)" otherwise (library:
 * "diffusers", "transformers"). The text is not kept. */
int dc_cfg_load_folder(void *cfg, size_t size, const char *dir, const char *file,
                       const char *library, dc_cfg_parse_fn parse);

#endif
