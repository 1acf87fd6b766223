/*
 * Checkpoints and pipeline folders (see checkpoint.h). The order of the
 * steps in dc_checkpoint_save is the whole point: nothing that already
 * exists is touched until the new checkpoint is complete on disk, and DONE
 * is the last thing written, so a reader that sees DONE sees every file.
 */
#define _GNU_SOURCE /* strdup, O_DIRECTORY */
#include "checkpoint.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "models/lora.h"
#include "models/unet.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_FILE "train_state.safetensors"
#define DONE_FILE "DONE"

typedef struct {
    dc_checkpoint_hook fn;
    void *arg;
} hook;

static void notify(const hook *h, const char *path) {
    if (h && h->fn)
        h->fn(path, h->arg);
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* ---- pipeline folders ---- */

/* A diffusers config: "_class_name" and "_diffusers_version" first (added
 * when missing), then the given keys, then `extra`'s (which win). */
static int save_config(const char *path, const cJSON *config, const char *class_name, const cJSON *extra) {
    if (!cJSON_IsObject(config))
        return dc_fail("%s: the %s config is not a JSON object", path, class_name);
    cJSON *j = cJSON_CreateObject();
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(config, "_class_name");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(config, "_diffusers_version");
    bool ok = j &&
              cJSON_AddItemToObject(j, "_class_name",
                                    cls ? cJSON_Duplicate(cls, 1) : cJSON_CreateString(class_name)) &&
              cJSON_AddItemToObject(j, "_diffusers_version",
                                    ver ? cJSON_Duplicate(ver, 1) : cJSON_CreateString(DC_DIFFUSERS_VERSION));
    for (const cJSON *src = config; ok && cJSON_IsObject(src); src = src == config ? extra : NULL)
        for (const cJSON *v = src->child; ok && v; v = v->next) {
            cJSON *copy = cJSON_Duplicate(v, 1);
            cJSON_DeleteItemFromObjectCaseSensitive(j, v->string);
            ok = copy && cJSON_AddItemToObject(j, v->string, copy);
            if (!ok)
                cJSON_Delete(copy);
        }
    int rc = ok ? dc_json_save(path, j) : dc_fail("%s: out of memory", path);
    cJSON_Delete(j);
    return rc;
}

static int make_dir(const char *path) {
    if (mkdir(path, 0777) == 0 || (errno == EEXIST && is_dir(path)))
        return 0;
    return dc_fail("%s: cannot create the folder: %s", path, strerror(errno));
}

/* dir/name/config.json and dir/name/<weights>, then the folder synced. */
static int save_model(const char *dir, const char *name, const cJSON *config, const cJSON *extra,
                      const dc_params *ps, const float *data, const hook *h) {
    static const char *const keys[] = {"format"}, *const values[] = {"pt"}; /* as diffusers writes */
    char *sub = dc_path_join(dir, name);
    char *cfg = sub ? dc_path_join(sub, DC_UNET_CONFIG_FILE) : NULL;
    char *weights = cfg ? dc_path_join(sub, DC_UNET_WEIGHTS_FILE) : NULL;
    int rc = weights ? make_dir(sub) : -1;
    if (!rc && !(rc = save_config(cfg, config, "UNet2DModel", extra)))
        notify(h, cfg);
    if (!rc && !(rc = dc_params_save(ps, data, weights, keys, values, 1)))
        notify(h, weights);
    if (!rc)
        rc = dc_sync_dir(sub);
    free(weights);
    free(cfg);
    free(sub);
    return rc;
}

static int save_model_index(const char *dir, const hook *h) {
    static const char text[] = "{\n"
                               "  \"_class_name\": \"DDPMPipeline\",\n"
                               "  \"_diffusers_version\": \"" DC_DIFFUSERS_VERSION "\",\n"
                               "  \"scheduler\": [\"diffusers\", \"DDPMScheduler\"],\n"
                               "  \"unet\": [\"diffusers\", \"UNet2DModel\"]\n"
                               "}\n";
    char *path = dc_path_join(dir, "model_index.json");
    int rc = path ? dc_write_file(path, text, sizeof text - 1, true) : -1;
    if (!rc)
        notify(h, path);
    free(path);
    return rc;
}

static int save_scheduler(const char *dir, const cJSON *config, const hook *h) {
    char *sub = dc_path_join(dir, "scheduler");
    char *path = sub ? dc_path_join(sub, "scheduler_config.json") : NULL;
    int rc = path ? make_dir(sub) : -1;
    if (!rc && !(rc = save_config(path, config, "DDPMScheduler", NULL)))
        notify(h, path);
    if (!rc)
        rc = dc_sync_dir(sub);
    free(path);
    free(sub);
    return rc;
}

/* from/name into to/name: a hard link, or a copy where there can be none
 * (another file system); a file there before is replaced. */
static int link_file(const char *from, const char *to, const char *name, const hook *h) {
    char *src = dc_path_join(from, name), *dst = dc_path_join(to, name);
    int rc = src && dst ? 0 : -1;
    if (!rc && (unlink(dst) == 0 || errno == ENOENT) && link(src, dst) == 0) {
        notify(h, dst);
    } else if (!rc) {
        size_t n = 0;
        char *data = dc_read_file(src, SIZE_MAX, &n);
        if (!(rc = data ? dc_write_file(dst, data, n, true) : -1))
            notify(h, dst);
        free(data);
    }
    free(src);
    free(dst);
    return rc;
}

/* The plain files of from/name into to/name (a folder of files, as a
 * pipeline's components are), synced. */
static int link_component(const char *from, const char *to, const char *name, const hook *h) {
    char *src = dc_path_join(from, name), *dst = dc_path_join(to, name);
    DIR *d = src && dst ? opendir(src) : NULL;
    int rc = !src || !dst ? -1 : d ? make_dir(dst) : dc_fail("%s: cannot list the folder: %s", src, strerror(errno));
    for (struct dirent *e; !rc && (e = readdir(d));) {
        char *path = dc_path_join(src, e->d_name);
        if (!path)
            rc = -1;
        else if (e->d_name[0] != '.' && is_file(path))
            rc = link_file(src, dst, e->d_name, h);
        free(path);
    }
    if (d)
        closedir(d);
    if (!rc)
        rc = dc_sync_dir(dst);
    free(src);
    free(dst);
    return rc;
}

/* What a Stable Diffusion folder keeps of the pipeline it was trained from. */
static int save_frozen(const char *dir, const char *from, const hook *h) {
    static const char *const parts[] = {"scheduler", "tokenizer", "text_encoder", "vae"};
    char a[PATH_MAX], b[PATH_MAX];
    if (realpath(dir, a) && realpath(from, b) && !strcmp(a, b))
        return 0; /* written over the folder it came from: its files are there */
    int rc = link_file(from, dir, "model_index.json", h);
    for (size_t i = 0; !rc && i < sizeof parts / sizeof parts[0]; i++)
        rc = link_component(from, dir, parts[i], h);
    return rc;
}

static int save_lora(const char *dir, const dc_lora *l, const hook *h) {
    char *path = dc_path_join(dir, DC_LORA_WEIGHTS_FILE);
    int rc = !path || dc_lora_save(l, dir) ? -1 : 0;
    if (!rc)
        notify(h, path);
    free(path);
    return rc ? rc : dc_sync_dir(dir);
}

static int save_pipeline(const char *dir, const dc_pipeline *p, const hook *h) {
    if (p->lora)
        return save_lora(dir, p->lora, h);
    if (!p->params || !p->unet_config || (!p->scheduler_config && !p->frozen_from))
        return dc_fail("%s: a pipeline needs parameters, a UNet config and a scheduler config", dir);
    const float *weights = p->weights ? p->weights : p->params->data;
    int rc = p->frozen_from ? save_frozen(dir, p->frozen_from, h) : save_model_index(dir, h);
    if (!rc)
        rc = save_model(dir, "unet", p->unet_config, NULL, p->params, weights, h);
    if (!rc && p->ema)
        rc = save_model(dir, "unet_ema", p->unet_config, p->ema_state, p->params, p->ema, h);
    if (!rc && !p->frozen_from)
        rc = save_scheduler(dir, p->scheduler_config, h);
    return rc ? rc : dc_sync_dir(dir);
}

int dc_pipeline_save(const char *dir, const dc_pipeline *p) {
    return dc_mkdirs(dir) ? -1 : save_pipeline(dir, p, NULL);
}

/* ---- checkpoints ---- */

/* `name` is prefix<digits>suffix: the step in *step. */
static bool parse_step(const char *name, const char *prefix, const char *suffix, int64_t *step) {
    size_t lp = strlen(prefix), ls = strlen(suffix), ln = strlen(name);
    if (ln <= lp + ls || strncmp(name, prefix, lp) || strcmp(name + ln - ls, suffix))
        return false;
    int64_t v = 0;
    for (size_t i = lp; i < ln - ls; i++) {
        if (name[i] < '0' || name[i] > '9' || v > (INT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (name[i] - '0');
    }
    *step = v;
    return true;
}

static bool is_complete(const char *dir) {
    char *done = dc_path_join(dir, DONE_FILE);
    bool ok = done && is_dir(dir) && is_file(done);
    free(done);
    return ok;
}

/* The message of the failure that is being cleaned up after survives the
 * clean-up, with what failed in front. */
static int fail_and_remove(const char *what, const char *remove_path) {
    char *msg = strdup(dc_error());
    if (remove_path)
        dc_remove_tree(remove_path);
    dc_fail("%s: %s", what, msg ? msg : "out of memory");
    free(msg);
    return -1;
}

/* Everything but DONE, in `tmp`. */
static int write_tmp(const char *tmp, const dc_model_writer *w, const dc_train_state *s, const hook *h) {
    if (dc_remove_tree(tmp) || make_dir(tmp) || w->write(tmp, w->model, h->fn, h->arg))
        return -1;
    if (!s)
        return 0;
    char *path = dc_path_join(tmp, STATE_FILE);
    int rc = path ? 0 : -1;
    if (!rc && !(rc = dc_st_write(path, s->tensors, s->n, s->meta_keys, s->meta_values, s->n_meta)))
        notify(h, path);
    free(path);
    return rc ? rc : dc_sync_dir(tmp);
}

/* DONE, with the step in it for people who look. */
static int write_done(const char *dir, int64_t step, const hook *h) {
    char text[64], *path = dc_path_join(dir, DONE_FILE);
    int n = snprintf(text, sizeof text, "step %" PRId64 "\n", step);
    int rc = path ? dc_write_file(path, text, (size_t)n, false) : -1;
    if (!rc && !(rc = dc_sync_dir(dir)))
        notify(h, path);
    free(path);
    return rc;
}

typedef struct {
    char *tmp, *final, *old;
} ckpt_paths;

static int ckpt_paths_init(ckpt_paths *c, const char *output_dir, int64_t step) {
    char name[64];
    snprintf(name, sizeof name, ".checkpoint-%" PRId64 ".tmp", step);
    c->tmp = dc_path_join(output_dir, name);
    snprintf(name, sizeof name, "checkpoint-%" PRId64, step);
    c->final = dc_path_join(output_dir, name);
    snprintf(name, sizeof name, ".checkpoint-%" PRId64 ".old", step);
    c->old = dc_path_join(output_dir, name);
    return c->tmp && c->final && c->old ? 0 : -1;
}

static void ckpt_paths_free(ckpt_paths *c) {
    free(c->tmp);
    free(c->final);
    free(c->old);
}

/* tmp becomes final; a final already there (the same step saved again after
 * resuming from an earlier checkpoint) is moved aside to `old` first. */
static int move_into_place(const ckpt_paths *c, const char *output_dir) {
    bool replacing = is_dir(c->final);
    if (replacing && dc_remove_tree(c->old))
        return -1;
    if (replacing && rename(c->final, c->old) != 0)
        return dc_fail("%s: cannot move aside: %s", c->final, strerror(errno));
    if (rename(c->tmp, c->final) != 0) {
        int err = errno;
        if (replacing)
            rename(c->old, c->final);
        return dc_fail("%s: cannot rename to %s: %s", c->tmp, c->final, strerror(err));
    }
    return dc_sync_dir(output_dir);
}

static int write_pipeline(const char *dir, const void *model, dc_checkpoint_hook fn, void *arg) {
    hook h = {fn, arg};
    return save_pipeline(dir, model, &h);
}

dc_model_writer dc_pipeline_writer(const dc_pipeline *p) { return (dc_model_writer){write_pipeline, p}; }

int dc_checkpoint_save(const char *output_dir, int64_t step, const dc_pipeline *p, const dc_train_state *s,
                       dc_checkpoint_hook fn, void *arg) {
    dc_model_writer w = dc_pipeline_writer(p);
    return dc_checkpoint_save_model(output_dir, step, &w, s, fn, arg);
}

int dc_checkpoint_save_model(const char *output_dir, int64_t step, const dc_model_writer *w,
                             const dc_train_state *s, dc_checkpoint_hook fn, void *arg) {
    char what[96];
    snprintf(what, sizeof what, "checkpoint-%" PRId64 " not written (earlier checkpoints are intact)", step);
    if (step < 0)
        return dc_fail("%s: step %" PRId64 " is negative", output_dir, step);
    hook h = {fn, arg};
    ckpt_paths c;
    int rc = ckpt_paths_init(&c, output_dir, step);
    if (!rc && write_tmp(c.tmp, w, s, &h))
        rc = fail_and_remove(what, c.tmp);
    if (!rc && move_into_place(&c, output_dir))
        rc = fail_and_remove(what, c.tmp);
    if (!rc)
        notify(&h, c.final);
    if (!rc && write_done(c.final, step, &h)) { /* never marked complete: put back what was there */
        rc = fail_and_remove(what, c.final);
        if (is_dir(c.old))
            rename(c.old, c.final);
    }
    if (!rc)
        dc_remove_tree(c.old);
    ckpt_paths_free(&c);
    return rc;
}

/* ---- finding and pruning ---- */

typedef struct {
    int64_t step;
    char *path;
} found_ckpt;

static int cmp_newest_first(const void *a, const void *b) {
    const found_ckpt *x = a, *y = b;
    return x->step > y->step ? -1 : x->step < y->step;
}

/* Every complete checkpoint in `dir`, newest first (*n of them); with
 * `clean`, leftovers (temporary and incomplete folders) are removed on the
 * way. 0 or -1; a missing `dir` holds none. */
static int scan(const char *dir, bool clean, found_ckpt **out, int *n) {
    *out = NULL, *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : dc_fail("%s: cannot list the folder: %s", dir, strerror(errno));
    int rc = 0, cap = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        int64_t step;
        bool ckpt = parse_step(e->d_name, "checkpoint-", "", &step);
        bool leftover = parse_step(e->d_name, ".checkpoint-", ".tmp", &step) ||
                        parse_step(e->d_name, ".checkpoint-", ".old", &step);
        if (!ckpt && !leftover)
            continue;
        char *path = dc_path_join(dir, e->d_name);
        if (!path) {
            rc = -1;
        } else if (ckpt && is_complete(path)) {
            found_ckpt *grown = *n < cap ? *out : realloc(*out, (size_t)(cap = 2 * cap + 8) * sizeof **out);
            if (!grown) {
                free(path);
                rc = dc_fail("%s: out of memory", dir);
                break;
            }
            *out = grown;
            (*out)[(*n)++] = (found_ckpt){step, path};
            continue;
        } else if (clean && (leftover || is_dir(path))) {
            rc = dc_remove_tree(path);
        }
        free(path);
    }
    closedir(d);
    if (*n > 1)
        qsort(*out, (size_t)*n, sizeof **out, cmp_newest_first);
    return rc;
}

static void free_found(found_ckpt *f, int n) {
    for (int i = 0; i < n; i++)
        free(f[i].path);
    free(f);
}

int dc_checkpoint_prune(const char *output_dir, int64_t keep) {
    found_ckpt *f;
    int n, rc = scan(output_dir, true, &f, &n);
    for (int i = 0; !rc && keep > 0 && i < n; i++)
        if (i >= keep)
            rc = dc_remove_tree(f[i].path);
    free_found(f, n);
    return rc;
}

int dc_checkpoint_latest(const char *output_dir, char **path, int64_t *step) {
    found_ckpt *f;
    int n;
    *path = NULL;
    if (scan(output_dir, false, &f, &n)) {
        free_found(f, n);
        return -1;
    }
    if (n > 0) {
        *path = f[0].path, *step = f[0].step;
        f[0].path = NULL;
    }
    free_found(f, n);
    return n > 0;
}

int dc_checkpoint_resolve(const char *output_dir, const char *which, char **path) {
    *path = NULL;
    if (!strcmp(which, "latest")) {
        int64_t step;
        return dc_checkpoint_latest(output_dir, path, &step) < 0 ? -1 : 0;
    }
    char *p = is_dir(which) ? strdup(which) : dc_path_join(output_dir, which);
    if (!p)
        return dc_fail("%s: out of memory", which);
    if (!is_dir(p)) {
        dc_fail("%s: no such checkpoint folder (looked here and in %s)", which, output_dir);
        free(p);
        return -1;
    }
    if (!is_complete(p)) {
        dc_fail("%s: an incomplete checkpoint (no DONE file: it was interrupted while being written)", p);
        free(p);
        return -1;
    }
    *path = p;
    return 0;
}

/* ---- reading ---- */

/* `dir`/`name`/diffusion_pytorch_model.safetensors (malloc'ed), or NULL. */
static char *weights_path(const char *dir, const char *name) {
    char *sub = dc_path_join(dir, name);
    char *path = sub ? dc_path_join(sub, DC_UNET_WEIGHTS_FILE) : NULL;
    free(sub);
    return path;
}

/* The trained weights of a checkpoint: a LoRA run's adapters, else unet/'s. */
static char *trained_path(const char *dir) {
    char *lora = dc_path_join(dir, DC_LORA_WEIGHTS_FILE);
    if (!lora || is_file(lora))
        return lora;
    free(lora);
    return weights_path(dir, "unet");
}

static int load_model(const char *dir, const char *name, dc_params *ps, float *data) {
    char *path = !strcmp(name, "unet") ? trained_path(dir) : weights_path(dir, name);
    int rc = path ? 0 : -1;
    if (!rc && !strcmp(name, "unet_ema") && !is_file(path))
        rc = dc_fail("%s: the checkpoint has no EMA weights (it was trained without --use-ema)", dir);
    if (!rc)
        rc = dc_params_load(ps, data, path, NULL);
    free(path);
    return rc;
}

int dc_checkpoint_check(const char *dir, const dc_params *ps) {
    char *path = trained_path(dir);
    int rc = path ? dc_params_check_file(ps, path, NULL) : -1;
    free(path);
    return rc;
}

int dc_checkpoint_load(const char *dir, dc_params *ps, float *weights, float *ema, dc_st_file *state) {
    if (load_model(dir, "unet", ps, weights) || (ema && load_model(dir, "unet_ema", ps, ema)))
        return -1;
    return state ? dc_checkpoint_open_state(dir, state) : 0;
}

int dc_checkpoint_open_state(const char *dir, dc_st_file *state) {
    char *path = dc_path_join(dir, STATE_FILE);
    int rc = path ? dc_st_open(state, path) : -1;
    free(path);
    return rc;
}
