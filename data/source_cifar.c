/*
 * CIFAR-10 binary batches: records of 1 label byte and 3072 pixel bytes, the
 * 32x32 red plane, then green, then blue (CHW), stored back to back.
 *
 * A folder holds data_batch_1.bin .. data_batch_5.bin (split "train", in
 * numeric order) and test_batch.bin (split "test"); a batch file can also be
 * given directly. Class names come from batches.meta.txt beside the batches
 * (one per line) when it is there, else CIFAR-10's own ten names.
 */
#include "source.h"

#include "autograd/error.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define SIDE 32
#define PLANE (SIDE * SIDE)
#define RECORD (1 + 3 * PLANE)
#define MAX_BATCHES 1000
#define MAX_NAMES 256

static const char *const cifar10_names[10] = {"airplane", "automobile", "bird",  "cat",  "deer",
                                              "dog",      "frog",       "horse", "ship", "truck"};

typedef struct {
    int n; /* batch files, in s->files order */
    const void **maps;
    size_t *sizes;
    int64_t *first; /* [n + 1]: index of each file's first record */
} cifar_impl;

static const dc_source_ops cifar_ops;

/* ---- finding the batches ---- */

/* The N of "data_batch_N.bin", or -1. */
static int batch_number(const char *name) {
    int n, len = 0;
    if (sscanf(name, "data_batch_%d.bin%n", &n, &len) != 1 || name[len] || n < 0)
        return -1;
    return n;
}

static int cmp_batch(const void *a, const void *b) {
    return batch_number(*(char *const *)a) - batch_number(*(char *const *)b);
}

static int add_in(dc_source *s, const char *dir, const char *name) {
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path)
        return dc_fail("%s/%s: path too long", dir, name);
    return dc_source_add_file(s, path, path);
}

/* The batch names in `dir` for the split, sorted; *any says whether the
 * folder holds CIFAR batches at all (of either split). */
static int list_batches(const char *dir, const char *split, char ***names, int *n, int *any) {
    int test = !strcmp(split, "test");
    *names = NULL, *n = 0, *any = 0;
    DIR *d = opendir(dir);
    if (!d)
        return dc_fail("%s: cannot list the folder: %s", dir, strerror(errno));
    int rc = 0;
    for (struct dirent *e; !rc && (e = readdir(d));) {
        int is_train = batch_number(e->d_name) >= 0, is_test = !strcmp(e->d_name, "test_batch.bin");
        *any |= is_train || is_test;
        if (!(test ? is_test : is_train))
            continue;
        char **grown = *n < MAX_BATCHES ? realloc(*names, ((size_t)*n + 1) * sizeof **names) : NULL;
        if (!grown) {
            rc = dc_fail("%s: more than %d batch files, or out of memory", dir, MAX_BATCHES);
            break;
        }
        *names = grown;
        if ((grown[*n] = dc_strdup(e->d_name)))
            (*n)++;
        else
            rc = -1;
    }
    closedir(d);
    if (*n)
        qsort(*names, (size_t)*n, sizeof **names, cmp_batch);
    return rc;
}

static int scan_folder(dc_source *s, const char *split, int *found) {
    char **names;
    int n, any;
    int rc = list_batches(s->root, split, &names, &n, &any);
    *found = any;
    if (!rc && any && n == 0)
        rc =
            dc_fail("%s: CIFAR-10 folder without %s (split \"%s\")", s->root,
                    strcmp(split, "test") ? "data_batch_1.bin .. data_batch_5.bin" : "test_batch.bin", split);
    for (int i = 0; !rc && i < n; i++)
        rc = add_in(s, s->root, names[i]);
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* A file given directly: a whole number of records whose labels are all
 * CIFAR-10 labels, or any whole number of records named *.bin (its labels
 * are then checked by load, with a message). */
static int looks_like_batch(const char *path) {
    const void *map;
    size_t size;
    if (dc_map_file(path, &map, &size)) {
        dc_clear_error();
        return 0;
    }
    int ok = size > 0 && size % RECORD == 0;
    size_t len = strlen(path);
    if (ok && !(len > 4 && !strcmp(path + len - 4, ".bin")))
        for (size_t r = 0; ok && r < size; r += RECORD)
            ok = ((const uint8_t *)map)[r] < 10;
    dc_unmap_file(map, size);
    return ok;
}

/* batches.meta.txt in the folder holding the batches, when present. */
static int add_meta(dc_source *s, const char *dir) {
    char path[PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/batches.meta.txt", dir);
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) ? add_in(s, dir, "batches.meta.txt") : 0;
}

int dc_cifar_scan(dc_source *s, const char *path, const char *split) {
    struct stat st;
    if (stat(path, &st) != 0)
        return dc_fail("%s: cannot open: %s", path, strerror(errno));
    int dir = S_ISDIR(st.st_mode), found = 0;
    if (!dir && !looks_like_batch(path))
        return 0;
    if (dc_source_init(s, "CIFAR-10", path, split, &cifar_ops))
        return -1;
    int rc = dir ? scan_folder(s, split, &found) : dc_source_add_file(s, s->root, s->root);
    if (!rc && (found || !dir)) {
        char *parent = dc_strdup(s->root), *slash = parent ? strrchr(parent, '/') : NULL;
        if (slash && !dir)
            *slash = '\0';
        rc = parent ? add_meta(s, parent) : -1;
        free(parent);
    }
    if (rc || (dir && !found)) {
        dc_source_free(s);
        return rc ? -1 : 0;
    }
    return 1;
}

/* ---- loading ---- */

/* Class names, one per non-empty line of batches.meta.txt. */
static int read_meta(dc_source *s, const char *path) {
    const void *map;
    size_t size;
    if (dc_map_file(path, &map, &size))
        return -1;
    const char *names[MAX_NAMES], *p = map, *end = p + size;
    char *copies[MAX_NAMES];
    int n = 0, rc = 0;
    while (!rc && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p)), *e = nl ? nl : end;
        const char *t = e;
        while (t > p && (t[-1] == '\r' || t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if (t > p && n == MAX_NAMES)
            rc = dc_fail("%s: more than %d class names", path, MAX_NAMES);
        else if (t > p && !(copies[n] = strndup(p, (size_t)(t - p))))
            rc = dc_fail("out of memory");
        else if (t > p)
            names[n] = copies[n], n++;
        p = e + 1;
    }
    dc_unmap_file(map, size);
    if (!rc && n == 0)
        rc = dc_fail("%s: no class names in the file", path);
    if (!rc)
        rc = dc_source_set_classes(s, n, names);
    for (int i = 0; i < n; i++)
        free(copies[i]);
    return rc;
}

static int map_batches(dc_source *s, cifar_impl *m) {
    for (int f = 0; f < m->n; f++) {
        const char *path = s->files[f].path;
        if (dc_map_file(path, &m->maps[f], &m->sizes[f]))
            return -1;
        if (m->sizes[f] == 0 || m->sizes[f] % RECORD)
            return dc_fail("%s: file is %zu bytes, not a whole number of CIFAR-10 records (%d bytes: 1 label "
                           "byte and 3072 pixel bytes)",
                           path, m->sizes[f], RECORD);
        m->first[f + 1] = m->first[f] + (int64_t)(m->sizes[f] / RECORD);
    }
    return 0;
}

static int read_labels(dc_source *s, const cifar_impl *m) {
    s->count = m->first[m->n];
    if (!(s->labels = malloc((size_t)s->count * sizeof *s->labels)))
        return dc_fail("out of memory");
    for (int f = 0; f < m->n; f++)
        for (int64_t r = 0; r < m->first[f + 1] - m->first[f]; r++) {
            int label = ((const uint8_t *)m->maps[f])[r * RECORD];
            if (label >= s->num_classes)
                return dc_fail("%s: record %" PRId64 " has label %d, but there are %d classes (0..%d)",
                               s->files[f].path, r, label, s->num_classes, s->num_classes - 1);
            s->labels[m->first[f] + r] = label;
        }
    return 0;
}

static int cifar_load(dc_source *s) {
    cifar_impl *m = calloc(1, sizeof *m);
    if (!m)
        return dc_fail("out of memory");
    s->impl = m;
    const char *last = s->files[s->n_files - 1].path, *meta = "/batches.meta.txt";
    int has_meta = strlen(last) > strlen(meta) && !strcmp(last + strlen(last) - strlen(meta), meta);
    m->n = s->n_files - has_meta;
    m->maps = calloc((size_t)m->n, sizeof *m->maps);
    m->sizes = calloc((size_t)m->n, sizeof *m->sizes);
    m->first = calloc((size_t)m->n + 1, sizeof *m->first);
    if (!m->maps || !m->sizes || !m->first)
        return dc_fail("out of memory");
    if (has_meta ? read_meta(s, last) : dc_source_set_classes(s, 10, cifar10_names))
        return -1;
    return map_batches(s, m) || read_labels(s, m) ? -1 : 0;
}

static int cifar_image(const dc_source *s, int64_t i, dc_image *img) {
    const cifar_impl *m = s->impl;
    int f = 0;
    while (i >= m->first[f + 1])
        f++;
    const uint8_t *rec = (const uint8_t *)m->maps[f] + (i - m->first[f]) * RECORD + 1;
    if (dc_image_alloc(img, SIDE, SIDE, 3))
        return -1;
    for (int p = 0; p < PLANE; p++)
        for (int c = 0; c < 3; c++)
            img->px[3 * p + c] = rec[c * PLANE + p];
    return 0;
}

static void cifar_free(dc_source *s) {
    cifar_impl *m = s->impl;
    if (!m)
        return;
    for (int f = 0; m->maps && f < m->n; f++)
        dc_unmap_file(m->maps[f], m->sizes[f]);
    free(m->maps);
    free(m->sizes);
    free(m->first);
    free(m);
    s->impl = NULL;
}

static const dc_source_ops cifar_ops = {cifar_load, cifar_image, cifar_free};
