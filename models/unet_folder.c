/*
 * Where a UNet's files lie in a diffusers folder (see dc_unet_find in
 * unet.h): a bare UNet folder (what UNet2DModel.save_pretrained writes) or
 * a component of a pipeline folder (unet/, unet_ema/), with its weights in
 * one file or sharded, plain or as a variant (fp16, ...). Training's
 * --pretrained-model and the inference commands' --model both look here.
 */
#define _GNU_SOURCE /* strdup */
#include "unet.h"

#include "autograd/error.h"
#include "autograd/fileio.h"

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Why `base` has no usable weights: only PyTorch's pickled ones, or none. */
static int no_weights(const char *base) {
    char *bin = dc_path_join(base, "diffusion_pytorch_model.bin");
    int rc = !bin ? -1
             : is_file(bin)
                 ? dc_fail("%s: only PyTorch .bin weights; diffc reads safetensors (in Python: "
                           "UNet2DModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True))",
                           base)
                 : dc_fail("%s: no %s (a diffusers model folder holds its weights there)", base,
                           DC_UNET_WEIGHTS_FILE);
    free(bin);
    return rc;
}

/* Variant names are short words ("fp16", "non_ema"): nothing that reaches
 * outside the folder or upsets a message. */
static bool variant_ok(const char *v) {
    size_t n = strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-");
    return n > 0 && n <= 64 && !v[n];
}

/* The weights of `variant` (NULL: the plain ones) in `base` when there: a
 * single file, else a sharded index (diffusers' names). NULL otherwise. */
static char *weights_of(const char *base, const char *variant) {
    char single[128], index[160];
    snprintf(single, sizeof single, "diffusion_pytorch_model%s%s.safetensors", variant ? "." : "",
             variant ? variant : "");
    snprintf(index, sizeof index, "diffusion_pytorch_model.safetensors.index%s%s.json",
             variant ? "." : "", variant ? variant : "");
    for (int k = 0; k < 2; k++) {
        char *path = dc_path_join(base, k ? index : single);
        if (path && is_file(path))
            return path;
        free(path);
    }
    return NULL;
}

bool dc_unet_weights_name(const char *name, char *variant, size_t n) {
    static const char single[] = "diffusion_pytorch_model.", index[] = "diffusion_pytorch_model.safetensors.index.";
    if (n == 0)
        return false;
    variant[0] = '\0';
    if (!strcmp(name, DC_UNET_WEIGHTS_FILE) || !strcmp(name, DC_UNET_WEIGHTS_FILE ".index.json"))
        return true;
    const char *tail = !strncmp(name, index, sizeof index - 1)    ? ".json"
                       : !strncmp(name, single, sizeof single - 1) ? ".safetensors"
                                                                    : NULL;
    if (!tail)
        return false;
    const char *v = name + (!strcmp(tail, ".json") ? sizeof index : sizeof single) - 1;
    size_t len = strlen(v), tl = strlen(tail);
    if (len <= tl || strcmp(v + len - tl, tail) || len - tl >= n)
        return false;
    snprintf(variant, n, "%.*s", (int)(len - tl), v);
    const char *of = strstr(variant, "-of-");
    bool ok = variant_ok(variant) && !(of && of - variant >= 6 && of[-6] == '-'); /* not a shard */
    if (!ok)
        variant[0] = '\0';
    return ok;
}

/* The distinct variants in `base`, comma-separated into list; their count. */
static int list_variants(const char *base, char *list, size_t n) {
    DIR *d = opendir(base);
    int count = 0;
    list[0] = '\0';
    for (struct dirent *e = d ? readdir(d) : NULL; e; e = readdir(d)) {
        char v[80], quoted[84];
        if (!dc_unet_weights_name(e->d_name, v, sizeof v) || !v[0])
            continue;
        snprintf(quoted, sizeof quoted, "'%s'", v);
        if (strstr(list, quoted))
            continue;
        size_t len = strlen(list);
        snprintf(list + len, n - len, "%s%s", count++ ? ", " : "", quoted);
    }
    if (d)
        closedir(d);
    return count;
}

/* The weights of `base`: the variant asked for, else the plain ones, else the
 * folder's only variant (named in *guessed). */
static int find_weights(const char *base, const char *variant, char **weights, char **guessed) {
    char list[512];
    if (variant && !variant_ok(variant))
        return dc_fail("variant '%.64s': not a variant name (letters, digits, '_' and '-')", variant);
    if ((*weights = weights_of(base, variant)))
        return 0;
    int n = list_variants(base, list, sizeof list);
    if (variant)
        return dc_fail("%s: no variant '%s' (diffusion_pytorch_model.%s.safetensors); variants here: %s",
                       base, variant, variant, n ? list : "none");
    if (n > 1)
        return dc_fail("%s: no %s, but variants %s: choose one with --variant", base,
                       DC_UNET_WEIGHTS_FILE, list);
    if (n == 0)
        return no_weights(base);
    list[strlen(list) - 1] = '\0'; /* the one variant, unquoted */
    if (!(*weights = weights_of(base, list + 1)) || !(*guessed = strdup(list + 1))) {
        free(*weights);
        *weights = NULL;
        return dc_fail("%s: out of memory", base);
    }
    return 0;
}

int dc_unet_find(const char *dir, const char *component, const char *variant, char **config_path,
                 char **weights_path, char **guessed) {
    char *unused = NULL;
    guessed = guessed ? guessed : &unused;
    *config_path = *weights_path = *guessed = NULL;
    if (!is_dir(dir))
        return dc_fail("%s: not a folder (a diffusers UNet or pipeline folder was expected)", dir);
    char *sub = dc_path_join(dir, component);
    char *base = sub && is_dir(sub) ? sub : strdup(dir);
    if (base != sub)
        free(sub);
    char *cfg = base ? dc_path_join(base, DC_UNET_CONFIG_FILE) : NULL;
    int rc = !base  ? dc_fail("out of memory")
             : !cfg ? -1
             : !is_file(cfg)
                 ? dc_fail("%s: no %s (not a diffusers UNet or pipeline folder)", base, DC_UNET_CONFIG_FILE)
                 : find_weights(base, variant, weights_path, guessed);
    if (!rc)
        *config_path = cfg;
    else
        free(cfg);
    free(base);
    free(unused);
    return rc;
}
