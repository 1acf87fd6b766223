/*
 * Finding a model folder's safetensors weights by diffusers' and
 * transformers' file names, variants and sharded indexes. See weights.h.
 */
#define _GNU_SOURCE /* strdup */
#include "weights.h"

#include "autograd/error.h"
#include "autograd/fileio.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define NAME_MAX_BYTES 256 /* a file name built from a stem and a variant */

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Why `base` has no usable weights: only PyTorch's pickled ones, or none. */
static int no_weights(const char *base, const dc_weights_kind *k) {
    char *bin = dc_path_join(base, k->bin);
    int rc = !bin ? -1
             : is_file(bin)
                 ? dc_fail("%s: only PyTorch .bin weights; diffc reads safetensors (in Python: "
                           "%s.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True))",
                           base, k->cls)
                 : dc_fail("%s: no %s.safetensors (a %s model folder holds its weights there)",
                           base, k->stem, k->library);
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
 * single file, else a sharded index. NULL otherwise. */
static char *weights_of(const char *base, const dc_weights_kind *k, const char *variant) {
    char single[NAME_MAX_BYTES], index[NAME_MAX_BYTES];
    const char *dot = variant ? "." : "", *v = variant ? variant : "";
    snprintf(single, sizeof single, "%s%s%s.safetensors", k->stem, dot, v);
    snprintf(index, sizeof index, "%s.safetensors.index%s%s.json", k->stem, dot, v);
    for (int i = 0; i < 2; i++) {
        char *path = dc_path_join(base, i ? index : single);
        if (path && is_file(path))
            return path;
        free(path);
    }
    return NULL;
}

bool dc_weights_name(const dc_weights_kind *k, const char *name, char *variant, size_t n) {
    char single[NAME_MAX_BYTES], index[NAME_MAX_BYTES];
    if (n == 0)
        return false;
    variant[0] = '\0';
    snprintf(single, sizeof single, "%s.safetensors", k->stem);
    snprintf(index, sizeof index, "%s.safetensors.index.json", k->stem);
    if (!strcmp(name, single) || !strcmp(name, index))
        return true;
    snprintf(single, sizeof single, "%s.", k->stem);
    snprintf(index, sizeof index, "%s.safetensors.index.", k->stem);
    size_t ls = strlen(single), li = strlen(index);
    const char *tail = !strncmp(name, index, li)    ? ".json"
                       : !strncmp(name, single, ls) ? ".safetensors"
                                                    : NULL;
    if (!tail)
        return false;
    const char *v = name + (!strcmp(tail, ".json") ? li : ls);
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
static int list_variants(const char *base, const dc_weights_kind *k, char *list, size_t n) {
    DIR *d = opendir(base);
    int count = 0;
    list[0] = '\0';
    for (struct dirent *e = d ? readdir(d) : NULL; e; e = readdir(d)) {
        char v[80], quoted[84];
        if (!dc_weights_name(k, e->d_name, v, sizeof v) || !v[0])
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

int dc_weights_find(const char *base, const dc_weights_kind *k, const char *variant,
                    char **weights, char **guessed) {
    char *unused = NULL, list[512];
    guessed = guessed ? guessed : &unused;
    *weights = *guessed = NULL;
    if (variant && !variant_ok(variant))
        return dc_fail("variant '%.64s': not a variant name (letters, digits, '_' and '-')", variant);
    if ((*weights = weights_of(base, k, variant)))
        return 0;
    int n = list_variants(base, k, list, sizeof list);
    if (variant)
        return dc_fail("%s: no variant '%s' (%s.%s.safetensors); variants here: %s", base, variant,
                       k->stem, variant, n ? list : "none");
    if (n > 1)
        return dc_fail("%s: no %s.safetensors, but variants %s: choose one with --variant", base,
                       k->stem, list);
    if (n == 0)
        return no_weights(base, k);
    list[strlen(list) - 1] = '\0'; /* the one variant, unquoted */
    if (!(*weights = weights_of(base, k, list + 1)) || !(*guessed = strdup(list + 1))) {
        free(*weights);
        *weights = NULL;
        return dc_fail("%s: out of memory", base);
    }
    free(unused);
    return 0;
}
