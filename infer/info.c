/*
 * `diffc info FILE|DIR`: what a weight file, a checkpoint folder or a
 * dataset holds.
 *
 * A file that is a dataset (IDX images, a CIFAR-10 batch, a dataset cache)
 * is summarised; a sharded index (*.json) is checked against its shards,
 * which are then listed; any other file is read as safetensors and listed:
 * each tensor's name, dtype, shape and size, the totals, then the metadata. A
 * folder is offered to each kind of folder `info` knows (folder_kinds
 * below), in order; the first that recognises it describes it: diffusers
 * model, pipeline and checkpoint folders, then dataset folders (images, IDX,
 * CIFAR-10).
 */
#include "commands.h"

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "data/dataset.h"
#include "models/unet.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char usage_text[] =
    "usage: diffc info [--variant NAME] FILE|DIR\n"
    "\n"
    "Describe a safetensors weight file: each tensor's name, dtype, shape and size,\n"
    "the totals, and the metadata; or a sharded one's index (*.safetensors.index.json)\n"
    "and its shards. Given a diffusers model or pipeline folder, or a training\n"
    "checkpoint, describe the weight files inside it: the UNet's plain weights and\n"
    "every variant (diffusion_pytorch_model.fp16.safetensors, ...), or with\n"
    "--variant NAME only that variant's.\n"
    "\n"
    "Given a dataset (an image folder, MNIST/Fashion-MNIST IDX files or their\n"
    "folder, CIFAR-10 batches or their folder, or a dataset cache file), decode it\n"
    "and show the number of images, their sizes and channels, the classes with\n"
    "their counts, and every file that would be skipped, with the reason.\n"
    "\n"
    "options:\n"
    "  --variant NAME  in a folder, only the UNet weights of this variant\n"
    "  -h, --help      show this help\n";

/* ---- formatting ---- */

/* `s` with control bytes escaped, so a name or value from a file stays on
 * its line (malloc'd; NULL when out of memory). */
static char *escaped(const char *s) {
    char *out = malloc(4 * strlen(s) + 1), *o = out;
    for (; out && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '\n' || c == '\t')
            o += sprintf(o, "\\%c", c == '\n' ? 'n' : 't');
        else if (c < 0x20 || c == 0x7f)
            o += sprintf(o, "\\x%02x", c);
        else
            *o++ = (char)c;
    }
    if (out)
        *o = '\0';
    return out;
}

/* 1234567 -> "1,234,567" */
static const char *grouped(char *buf, size_t n, uint64_t v) {
    char digits[32];
    int len = snprintf(digits, sizeof digits, "%" PRIu64, v);
    size_t o = 0;
    for (int i = 0; i < len && o + 2 < n; i++) {
        if (i && (len - i) % 3 == 0)
            buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
    return buf;
}

/* 1258291 -> "1.2 MiB" */
static const char *human_bytes(char *buf, size_t n, uint64_t b) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1024 && u < 5)
        v /= 1024, u++;
    if (u == 0)
        snprintf(buf, n, "%" PRIu64 " B", b);
    else
        snprintf(buf, n, "%.1f %s", v, units[u]);
    return buf;
}

static int max_int(int a, int b) { return a > b ? a : b; }

/* ---- one weight file ---- */

/* The tensor table; names are escaped before the column widths are taken. */
static int print_tensors(const dc_st_file *f) {
    char **names = calloc((size_t)f->n + 1, sizeof *names), shape[160], bytes[32];
    int rc = names ? 0 : dc_fail("out of memory");
    int wn = 4, wd = 5, ws = 5, wb = 5;
    for (int i = 0; !rc && i < f->n; i++) {
        const dc_st_tensor *t = &f->tensors[i];
        rc = (names[i] = escaped(t->name)) ? 0 : dc_fail("out of memory");
        wn = max_int(wn, names[i] ? (int)strlen(names[i]) : 0);
        wd = max_int(wd, (int)strlen(t->dtype_name));
        ws = max_int(ws, (int)strlen(dc_shape_str(shape, sizeof shape, t->ndim, t->shape)));
        wb = max_int(wb, (int)strlen(grouped(bytes, sizeof bytes, t->nbytes)));
    }
    if (!rc && f->n)
        printf("  %-*s  %-*s  %-*s  %*s\n", wn, "name", wd, "dtype", ws, "shape", wb, "bytes");
    for (int i = 0; !rc && i < f->n; i++) {
        const dc_st_tensor *t = &f->tensors[i];
        printf("  %-*s  %-*s  %-*s  %*s\n", wn, names[i], wd, t->dtype_name, ws,
               dc_shape_str(shape, sizeof shape, t->ndim, t->shape), wb,
               grouped(bytes, sizeof bytes, t->nbytes));
    }
    for (int i = 0; names && i < f->n; i++)
        free(names[i]);
    free(names);
    return rc;
}

static void print_totals(const dc_st_file *f) {
    uint64_t params = 0, bytes = 0;
    for (int i = 0; i < f->n; i++) {
        params += (uint64_t)dc_shape_numel(f->tensors[i].ndim, f->tensors[i].shape);
        bytes += f->tensors[i].nbytes;
    }
    char p[32], b[32], h[32];
    printf("  total: %d tensor%s, %s parameters, %s (%s bytes)\n", f->n, f->n == 1 ? "" : "s",
           grouped(p, sizeof p, params), human_bytes(h, sizeof h, bytes), grouped(b, sizeof b, bytes));
}

static int print_meta(const dc_st_file *f) {
    printf("  metadata:%s\n", f->n_meta ? "" : " none");
    int rc = 0;
    for (int i = 0; !rc && i < f->n_meta; i++) {
        char *k = escaped(f->meta_keys[i]), *v = escaped(f->meta_values[i]);
        rc = k && v ? 0 : dc_fail("out of memory");
        if (!rc)
            printf("    %s = %s\n", k, v);
        free(k);
        free(v);
    }
    return rc;
}

static int describe_one(const dc_st_file *f, const char *path) {
    printf("%s: safetensors weight file\n", path);
    int rc = print_tensors(f);
    if (!rc)
        print_totals(f);
    return rc ? rc : print_meta(f);
}

/* One file, or a sharded set: the index, then each shard. */
static int describe_file(const char *path) {
    dc_st_set s;
    if (dc_st_set_open(&s, path))
        return -1;
    size_t len = strlen(path);
    bool sharded = len > 5 && !strcmp(path + len - 5, ".json");
    int tensors = 0, rc = 0;
    for (int f = 0; f < s.n; f++)
        tensors += s.files[f].n;
    if (sharded)
        printf("%s: sharded safetensors weights, %d tensors in %d shard%s\n\n", path, tensors, s.n,
               s.n == 1 ? "" : "s");
    for (int f = 0; f < s.n && !rc; f++) {
        if (f)
            putchar('\n');
        rc = describe_one(&s.files[f], s.paths[f]);
    }
    dc_st_set_close(&s);
    return rc;
}

/* ---- datasets ---- */

static void print_sizes(const dc_dataset_summary *s) {
    if (s->count == 0)
        return;
    if (s->min_w == s->max_w && s->min_h == s->max_h)
        printf("  size: %dx%d\n", s->min_w, s->min_h);
    else
        printf("  size: width %d to %d, height %d to %d\n", s->min_w, s->max_w, s->min_h, s->max_h);
    if (s->min_c == s->max_c)
        printf("  channels: %d (%s)\n", s->min_c, s->min_c == 1 ? "gray" : "RGB");
    else
        printf("  channels: 1 and 3 (gray and RGB)\n");
}

static int print_classes(const dc_dataset_summary *s) {
    if (s->num_classes == 0) {
        printf("  classes: none (unlabelled)\n");
        return 0;
    }
    printf("  classes: %d\n", s->num_classes);
    char **names = calloc((size_t)s->num_classes, sizeof *names), count[32];
    int rc = names ? 0 : dc_fail("out of memory"), width = 0;
    for (int i = 0; !rc && i < s->num_classes; i++) {
        rc = (names[i] = escaped(s->class_names[i])) ? 0 : dc_fail("out of memory");
        width = names[i] ? max_int(width, (int)strlen(names[i])) : width;
    }
    for (int i = 0; !rc && i < s->num_classes; i++)
        printf("    %-*s  %s\n", width, names[i], grouped(count, sizeof count, (uint64_t)s->class_counts[i]));
    for (int i = 0; names && i < s->num_classes; i++)
        free(names[i]);
    free(names);
    return rc;
}

static int print_skipped(const dc_dataset_summary *s) {
    if (s->n_skipped)
        printf("  skipped: %d\n", s->n_skipped);
    int rc = 0;
    for (int k = 0; !rc && k < s->n_skipped; k++) {
        char *p = escaped(s->skipped[k].path), *r = escaped(s->skipped[k].reason);
        rc = p && r ? 0 : dc_fail("out of memory");
        if (!rc)
            printf("    %s: %s\n", p, r);
        free(p);
        free(r);
    }
    return rc;
}

static int describe_dataset(const char *path) {
    dc_dataset_summary s;
    if (dc_dataset_summarize(&s, path))
        return -1;
    char n[32], t[32];
    char *from = s.built_from ? escaped(s.built_from) : NULL;
    if (from)
        printf("%s: diffc dataset cache, built from %s\n", path, from);
    else
        printf("%s: %s dataset\n", path, s.kind);
    free(from);
    printf("  images: %s", grouped(n, sizeof n, (uint64_t)s.count));
    if (s.test_count >= 0)
        printf(" (split train), %s (split test)", grouped(t, sizeof t, (uint64_t)s.test_count));
    printf("\n");
    print_sizes(&s);
    if (s.captioned)
        printf("  captions: %s of %s images\n", grouped(t, sizeof t, (uint64_t)s.captioned), n);
    if (s.built_from)
        printf("  checksum: verified\n");
    int rc = print_classes(&s);
    rc = rc ? rc : print_skipped(&s);
    dc_dataset_summary_free(&s);
    return rc;
}

/* A dataset folder: 1 when described, 0 when the folder is not one. */
static int describe_dataset_folder(const char *dir) {
    if (!dc_dataset_recognise(dir))
        return 0;
    return describe_dataset(dir) ? -1 : 1;
}

/* ---- folders ---- */

static int join(char *buf, size_t n, const char *dir, const char *name) {
    if ((size_t)snprintf(buf, n, "%s/%s", dir, name) >= n)
        return dc_fail("%s/%s: path too long", dir, name);
    return 0;
}

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Weight file names of other models and of our checkpoints (the UNet's are
 * dc_unet_weights_name's). */
static const char *const weight_names[] = {"model.safetensors", "train_state.safetensors"};

static int skip_hidden(const struct dirent *e) { return e->d_name[0] != '.'; }

static int describe_counted(const char *path, int *found) {
    if ((*found)++)
        putchar('\n');
    return describe_file(path);
}

/* The UNet weights in `dir` (all of them, or those of `variant`), sorted. */
static int describe_unet_weights(const char *dir, const char *variant, int *found) {
    struct dirent **e;
    int n = scandir(dir, &e, skip_hidden, alphasort);
    if (n < 0)
        return dc_fail("%s: cannot list the folder: %s", dir, strerror(errno));
    char path[PATH_MAX], v[80];
    int rc = 0;
    for (int i = 0; i < n && !rc; i++)
        if (dc_unet_weights_name(e[i]->d_name, v, sizeof v) && (!variant || !strcmp(v, variant)))
            rc = join(path, sizeof path, dir, e[i]->d_name) || describe_counted(path, found);
    for (int i = 0; i < n; i++)
        free(e[i]);
    free(e);
    return rc ? -1 : 0;
}

/* Describe the weight files directly in `dir`, counting them in *found
 * (files after the first get a blank line before them). */
static int describe_weights_in(const char *dir, const char *variant, int *found) {
    char path[PATH_MAX];
    if (describe_unet_weights(dir, variant, found))
        return -1;
    for (size_t i = 0; !variant && i < sizeof weight_names / sizeof weight_names[0]; i++) {
        if (join(path, sizeof path, dir, weight_names[i]))
            return -1;
        if (is_file(path) && describe_counted(path, found))
            return -1;
    }
    return 0;
}

/* A diffusers model folder (weights at the top), pipeline folder or
 * checkpoint (weights in component subfolders: unet/, unet_ema/, vae/, ...).
 * 1 when described, 0 when the folder holds no weight file, -1 on error. */
static const char *info_variant; /* --variant: the folder kinds take only the folder */

static int describe_weights_folder(const char *dir) {
    int found = 0;
    if (describe_weights_in(dir, info_variant, &found))
        return -1;
    struct dirent **sub;
    int n = scandir(dir, &sub, skip_hidden, alphasort);
    if (n < 0)
        return dc_fail("%s: cannot list the folder: %s", dir, strerror(errno));
    char path[PATH_MAX];
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        rc = join(path, sizeof path, dir, sub[i]->d_name);
        if (!rc && is_dir(path))
            rc = describe_weights_in(path, info_variant, &found);
    }
    for (int i = 0; i < n; i++)
        free(sub[i]);
    free(sub);
    return rc ? -1 : found > 0;
}

/* The kinds of folder `info` describes, tried in order. Each returns 1 when
 * it described the folder, 0 when the folder is not its kind, -1 on error. */
static int (*const folder_kinds[])(const char *dir) = {describe_weights_folder, describe_dataset_folder};

static int describe_folder(const char *dir) {
    for (size_t i = 0; i < sizeof folder_kinds / sizeof folder_kinds[0]; i++) {
        int rc = folder_kinds[i](dir);
        if (rc)
            return rc < 0 ? -1 : 0;
    }
    if (info_variant)
        return dc_fail("%s: no weights of variant '%s' found", dir, info_variant);
    return dc_fail("%s: no safetensors weight file found", dir);
}

/* ---- the command ---- */

static int usage_error(const char *what) {
    fprintf(stderr, "diffc: error: %s\nusage: diffc info FILE|DIR   (diffc info --help for more)\n", what);
    return 2;
}

int dc_cmd_info(int argc, char **argv) {
    const char *path = NULL;
    int options = 1;
    info_variant = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (options && (!strcmp(a, "--help") || !strcmp(a, "-h"))) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (options && !strcmp(a, "--")) {
            options = 0;
            continue;
        }
        char msg[256];
        if (options && !strcmp(a, "--variant")) {
            if (++i == argc)
                return usage_error("--variant needs a NAME");
            info_variant = argv[i];
            continue;
        }
        if (options && a[0] == '-' && a[1]) {
            snprintf(msg, sizeof msg, "unknown option '%s'", a);
            return usage_error(msg);
        }
        if (path) {
            snprintf(msg, sizeof msg, "info takes one FILE or DIR, not also '%s'", a);
            return usage_error(msg);
        }
        path = a;
    }
    if (!path)
        return usage_error("info needs a FILE or DIR");
    int rc = is_dir(path)                 ? describe_folder(path)
             : dc_dataset_recognise(path) ? describe_dataset(path)
                                          : describe_file(path);
    fflush(stdout);
    if (rc) {
        fprintf(stderr, "diffc: error: %s\n", dc_error());
        return 1;
    }
    return 0;
}
