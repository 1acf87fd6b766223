/*
 * Opening a dataset (see dataset.h): scan the source, derive the cache's
 * name from a fingerprint of the source and the options, reuse that cache
 * when it is there and valid, else build it; then map it.
 *
 * The fingerprint hashes the format version, the source kind, its absolute
 * path, every file it reads (path, size, modification time to the
 * nanosecond), the split, the resolution, the channels and a caption
 * column other than "text". So a changed
 * source or option gets a different name, and an old cache is never read
 * for new data (old caches are left where they are; delete the cache folder
 * to reclaim the space). Reusing a cache stats the source files but reads
 * none of them.
 *
 * Builds hold an exclusive flock on the cache folder, so ranks started
 * together (mpirun) build once: the others wait and then reuse the result.
 */
#include "source.h"

#include "autograd/error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_RESOLUTION 65536

/* ---- options ---- */

static int check_options(dc_dataset_options *o, const dc_dataset_options *given) {
    *o = given ? *given : (dc_dataset_options){0};
    if (!o->split)
        o->split = "train";
    if (!o->caption_column)
        o->caption_column = "text";
    if (strcmp(o->split, "train") && strcmp(o->split, "test"))
        return dc_fail("dataset split '%s': expected \"train\" or \"test\"", o->split);
    if (o->resolution < 0 || o->resolution > MAX_RESOLUTION)
        return dc_fail("dataset resolution %d: expected 0 (keep) to %d", o->resolution, MAX_RESOLUTION);
    if (o->channels != 0 && o->channels != 1 && o->channels != 3)
        return dc_fail("dataset channels %d: expected 0 (keep), 1 or 3", o->channels);
    return 0;
}

/* ---- the cache folder ---- */

static int mkdir_p(const char *dir) {
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s", dir) >= sizeof path)
        return dc_fail("%s: path too long", dir);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p)
            continue;
        char c = *p;
        *p = '\0';
        struct stat st;
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return dc_fail("%s: cannot create the cache folder: %s", path, strerror(errno));
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
            return dc_fail("%s: cannot create the cache folder: not a folder", path);
        if (!(*p = c))
            return 0;
    }
}

/* opts.cache_dir, $DIFFC_CACHE_DIR, $XDG_CACHE_HOME/diffc, ~/.cache/diffc. */
static int cache_dir(char *buf, size_t n, const dc_dataset_options *o) {
    const char *env = getenv("DIFFC_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    size_t len;
    if (o->cache_dir && *o->cache_dir)
        len = (size_t)snprintf(buf, n, "%s", o->cache_dir);
    else if (env && *env)
        len = (size_t)snprintf(buf, n, "%s", env);
    else if (xdg && *xdg)
        len = (size_t)snprintf(buf, n, "%s/diffc", xdg);
    else if (home && *home)
        len = (size_t)snprintf(buf, n, "%s/.cache/diffc", home);
    else
        return dc_fail("no cache folder: set DIFFC_CACHE_DIR (or HOME)");
    if (len >= n)
        return dc_fail("%s: cache folder path too long", buf);
    return mkdir_p(buf);
}

/* ---- the fingerprint: FNV-1a, 64 bits ---- */

static void fp_add(uint64_t *h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        *h = (*h ^ b[i]) * 0x100000001b3ull;
}

static void fp_str(uint64_t *h, const char *s) { fp_add(h, s, strlen(s) + 1); }

static void fp_i64(uint64_t *h, int64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)v >> 8 * i);
    fp_add(h, b, 8);
}

static uint64_t fingerprint(const dc_source *s, const dc_dataset_options *o) {
    uint64_t h = 0xcbf29ce484222325ull;
    fp_i64(&h, DC_CACHE_VERSION);
    fp_str(&h, s->kind);
    fp_str(&h, s->root);
    fp_str(&h, s->split ? s->split : "");
    fp_i64(&h, o->resolution);
    fp_i64(&h, o->channels);
    if (o->caption_column && strcmp(o->caption_column, "text")) /* the default keeps older caches' names */
        fp_str(&h, o->caption_column);
    fp_i64(&h, s->n_files);
    for (int i = 0; i < s->n_files; i++) {
        fp_str(&h, s->files[i].path);
        fp_i64(&h, s->files[i].size);
        fp_i64(&h, s->files[i].mtime_ns);
    }
    return h;
}

/* "<dir>/<source name>-<fingerprint>.diffc-ds", the name kept to safe bytes. */
static int cache_path(char *buf, size_t n, const char *dir, const dc_source *s, uint64_t fp) {
    const char *base = strrchr(s->root, '/') ? strrchr(s->root, '/') + 1 : s->root;
    char name[65];
    size_t k = 0;
    for (; base[k] && k < sizeof name - 1; k++) {
        char c = base[k];
        name[k] = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                          c == '_' || c == '.'
                      ? c
                      : '_';
    }
    name[k] = '\0';
    if ((size_t)snprintf(buf, n, "%s/%s-%016" PRIx64 "%s", dir, k ? name : "root", fp, DC_CACHE_SUFFIX) >= n)
        return dc_fail("%s: cache path too long", dir);
    return 0;
}

/* ---- open / close ---- */

int dc_dataset_open_cache_info(dc_dataset *ds, dc_cache_info *info, const char *path) {
    dc_cache_info scratch;
    const void *map;
    size_t size;
    memset(ds, 0, sizeof *ds);
    if (dc_map_file(path, &map, &size))
        return -1;
    if (dc_cache_parse(ds, info ? info : &scratch, map, size, path)) {
        dc_unmap_file(map, size);
        return -1;
    }
    ds->map = (void *)map;
    ds->map_size = size;
    if (!(ds->cache_path = dc_strdup(path))) {
        dc_dataset_close(ds);
        return -1;
    }
    return 0;
}

int dc_dataset_open_cache(dc_dataset *ds, const char *cache_path) {
    return dc_dataset_open_cache_info(ds, NULL, cache_path);
}

/* The cache at `path` when it exists, is valid and was built from this
 * fingerprint: 1 opened, 0 absent or stale (a warning says why), -1 error. */
static int reuse(dc_dataset *ds, const char *path, uint64_t fp, const dc_dataset_options *o) {
    if (access(path, F_OK) != 0)
        return 0;
    dc_cache_info info;
    if (dc_dataset_open_cache_info(ds, &info, path) == 0 && info.fingerprint == fp)
        return 1;
    if (ds->map)
        dc_fail("%s: built from other data (fingerprint mismatch)", path);
    dc_dataset_close(ds);
    if (!o->quiet)
        fprintf(stderr, "diffc: warning: rebuilding the dataset cache: %s\n", dc_error());
    return 0;
}

/* Reuse or build the cache at `path`, under the cache folder's lock. */
static int open_or_build(dc_dataset *ds, dc_source *s, const char *dir, const char *path, uint64_t fp,
                         const dc_dataset_options *o) {
    int lock = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lock < 0 || flock(lock, LOCK_EX) != 0) {
        int err = errno;
        if (lock >= 0)
            close(lock);
        return dc_fail("%s: cannot lock the cache folder: %s", dir, strerror(err));
    }
    int rc = reuse(ds, path, fp, o);
    if (rc == 0)
        rc = s->ops->load(s) || dc_cache_build(s, o, path, fp) || dc_dataset_open_cache_info(ds, NULL, path)
                 ? -1
                 : 2;
    close(lock); /* releases the lock */
    if (rc == 1 && ds->n_skipped && !o->quiet && !o->strict)
        fprintf(stderr,
                "diffc: warning: %d files of %s were skipped when its cache was built (diffc info %s lists "
                "them)\n",
                ds->n_skipped, s->root, path);
    return rc < 0 ? -1 : 0;
}

/* A cache file given as the source: its shape must agree with the options. */
static int open_given_cache(dc_dataset *ds, const char *path, const dc_dataset_options *o) {
    if (dc_dataset_open_cache_info(ds, NULL, path))
        return -1;
    if ((o->resolution && (ds->h != o->resolution || ds->w != o->resolution)) ||
        (o->channels && ds->c != o->channels)) {
        dc_fail("%s: a cache of %dx%dx%d images, but resolution %d and channels %d were asked for", path,
                ds->w, ds->h, ds->c, o->resolution, o->channels);
        dc_dataset_close(ds);
        return -1;
    }
    return 0;
}

int dc_dataset_open(dc_dataset *ds, const char *source, const dc_dataset_options *opts) {
    memset(ds, 0, sizeof *ds);
    dc_dataset_options o;
    if (check_options(&o, opts))
        return -1;
    if (dc_is_cache_file(source))
        return open_given_cache(ds, source, &o);
    dc_source s;
    char dir[PATH_MAX], path[PATH_MAX];
    if (dc_source_scan(&s, source, o.split))
        return -1;
    s.caption_column = o.caption_column;
    uint64_t fp = fingerprint(&s, &o);
    int rc = cache_dir(dir, sizeof dir, &o) || cache_path(path, sizeof path, dir, &s, fp) ||
             open_or_build(ds, &s, dir, path, fp, &o);
    if (!rc && o.strict && ds->n_skipped) {
        rc = dc_fail("%s/%s: %s (strict: a bad file is an error; it was skipped when the cache %s was built)",
                     s.root, ds->skipped[0].path, ds->skipped[0].reason, path);
        dc_dataset_close(ds);
    }
    dc_source_free(&s);
    return rc ? -1 : 0;
}

void dc_dataset_close(dc_dataset *ds) {
    if (!ds)
        return;
    free(ds->class_names); /* the strings live in the map */
    free(ds->captions);
    free(ds->skipped);
    free(ds->cache_path);
    dc_unmap_file(ds->map, ds->map_size);
    memset(ds, 0, sizeof *ds);
}

/* ---- a subset of the classes ---- */

int dc_class_index(char *const *class_names, int num_classes, const char *name, size_t len) {
    for (int k = 0; k < num_classes; k++)
        if (strlen(class_names[k]) == len && !strncmp(class_names[k], name, len))
            return k;
    char *end;
    long k = strtol(name, &end, 10);
    if (len && end == name + len && k >= 0 && k < num_classes)
        return (int)k;
    if (num_classes < 1)
        return dc_fail("class '%.*s': the dataset has no class labels", (int)len, name);
    return dc_fail("class '%.*s': the dataset's classes are 0..%d (%s .. %s)", (int)len, name, num_classes - 1,
                   class_names[0], class_names[num_classes - 1]);
}

/* want[k] = 1 for every class of spec. */
static int parse_classes(const dc_dataset *ds, const char *spec, uint8_t *want) {
    for (const char *p = spec;;) {
        size_t len = strcspn(p, ",");
        int k = dc_class_index(ds->class_names, ds->num_classes, p, len);
        if (k < 0)
            return -1;
        want[k] = 1;
        if (!p[len])
            return 0;
        p += len + 1;
    }
}

int dc_dataset_select_classes(const dc_dataset *ds, const char *spec, int64_t **idx, int64_t *n) {
    *idx = NULL;
    *n = 0;
    if (ds->num_classes < 1)
        return dc_fail("classes %s: the dataset has no class labels", spec);
    uint8_t *want = calloc((size_t)ds->num_classes, 1);
    int64_t *count = calloc((size_t)ds->num_classes, sizeof *count);
    int rc = want && count ? parse_classes(ds, spec, want) : dc_fail("out of memory");
    for (int64_t i = 0; !rc && i < ds->count; i++)
        count[ds->labels[i]] += ds->labels[i] >= 0;
    for (int k = 0; !rc && k < ds->num_classes; k++)
        if (want[k] && !count[k])
            rc = dc_fail("class %d (%s): the dataset has no image of it", k, ds->class_names[k]);
    if (!rc && !(*idx = malloc((size_t)ds->count * sizeof **idx)))
        rc = dc_fail("out of memory");
    for (int64_t i = 0; !rc && i < ds->count; i++)
        if (ds->labels[i] >= 0 && want[ds->labels[i]])
            (*idx)[(*n)++] = i;
    free(want);
    free(count);
    return rc;
}
