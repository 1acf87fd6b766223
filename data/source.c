/*
 * What the dataset sources share: telling which kind a path is, the list of
 * files a source reads (for the cache fingerprint), mapping files, running
 * every item through decoding and resizing in parallel, freeing.
 */
#include "source.h"

#include "autograd/error.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

char *dc_strdup(const char *s) {
    char *d = strdup(s);
    if (!d)
        dc_fail("out of memory");
    return d;
}

int dc_source_init(dc_source *s, const char *kind, const char *path, const char *split,
                   const dc_source_ops *ops) {
    memset(s, 0, sizeof *s);
    s->kind = kind;
    s->split = split;
    s->ops = ops;
    s->root = realpath(path, NULL);
    if (!s->root)
        return dc_fail("%s: cannot resolve the path: %s", path, strerror(errno));
    return 0;
}

int dc_source_set_classes(dc_source *s, int n, const char *const *names) {
    if (!(s->class_names = calloc((size_t)n + 1, sizeof *s->class_names)))
        return dc_fail("out of memory");
    s->num_classes = n;
    for (int i = 0; i < n; i++) {
        char digits[16];
        snprintf(digits, sizeof digits, "%d", i);
        if (!(s->class_names[i] = dc_strdup(names ? names[i] : digits)))
            return -1;
    }
    return 0;
}

int dc_source_add_file(dc_source *s, const char *path, const char *stat_path) {
    struct stat st;
    if (stat(stat_path, &st) != 0)
        return dc_fail("%s: cannot stat: %s", stat_path, strerror(errno));
    if (s->n_files % 64 == 0) {
        dc_source_file *f = realloc(s->files, ((size_t)s->n_files + 64) * sizeof *f);
        if (!f)
            return dc_fail("out of memory");
        s->files = f;
    }
    dc_source_file *f = &s->files[s->n_files];
    if (!(f->path = dc_strdup(path)))
        return -1;
    f->size = (int64_t)st.st_size;
    f->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    s->n_files++;
    return 0;
}

int dc_map_file(const char *path, const void **map, size_t *size) {
    *map = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dc_fail("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    int rc = fstat(fd, &st) == 0 ? 0 : dc_fail("%s: cannot stat: %s", path, strerror(errno));
    if (!rc && !S_ISREG(st.st_mode))
        rc = dc_fail("%s: not a regular file", path);
    if (!rc && st.st_size > 0) {
        void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED)
            rc = dc_fail("%s: cannot map %lld bytes: %s", path, (long long)st.st_size, strerror(errno));
        else
            *map = m, *size = (size_t)st.st_size;
    }
    close(fd);
    return rc;
}

void dc_unmap_file(const void *map, size_t size) {
    if (map)
        munmap((void *)map, size);
}

int dc_source_scan(dc_source *s, const char *path, const char *split) {
    struct stat st;
    if (stat(path, &st) != 0)
        return dc_fail("%s: cannot open: %s", path, strerror(errno));
    int rc = dc_idx_scan(s, path, split);
    if (!rc)
        rc = dc_cifar_scan(s, path, split);
    if (!rc && S_ISDIR(st.st_mode))
        rc = dc_folder_scan(s, path);
    if (!rc)
        return dc_fail("%s: not a dataset: expected an image folder, IDX or CIFAR-10 files, or a diffc cache",
                       path);
    return rc < 0 ? -1 : 0;
}

const char *dc_source_item_name(const dc_source *s, int64_t i, char *buf, size_t n) {
    if (s->names)
        return s->names[i];
    snprintf(buf, n, "image %lld", (long long)i);
    return buf;
}

/* ---- every item, in parallel ---- */

typedef struct {
    dc_image img;
    int status;   /* 0 ready, 1 skipped, -1 fatal */
    char *reason; /* the message: a worker's dc_error() is its own thread's */
} slot;

/* Item i, converted and resized: 0, 1 (skip: a file it cannot use) or -1. */
static int prepare(const dc_source *s, int64_t i, int channels, int resolution, dc_image *out) {
    dc_image img = {0}, next = {0};
    int rc = s->ops->image(s, i, &img);
    if (rc == 0 && channels && img.c != channels) {
        rc = dc_image_convert(&next, &img, channels) ? 1 : 0;
        dc_image_free(&img);
        img = next;
    }
    /* A failed resize is the file's fault (an extreme aspect ratio), not ours. */
    if (rc == 0 && resolution && (img.w != resolution || img.h != resolution)) {
        rc = dc_image_resize_center_crop(&next, &img, resolution) ? 1 : 0;
        dc_image_free(&img);
        img = next;
    }
    if (rc)
        dc_image_free(&img);
    *out = img;
    return rc;
}

/* Items per parallel round: enough that a round's barrier costs little
 * next to its work, few enough that its images stay within CHUNK_BYTES. */
#define CHUNK_BYTES ((size_t)64 << 20)
#define CHUNK_MAX 8192

static int64_t next_chunk(int64_t chunk, const slot *slots, int64_t n) {
    size_t bytes = 0;
    for (int64_t k = 0; k < n; k++)
        bytes += (size_t)slots[k].img.w * slots[k].img.h * slots[k].img.c;
    size_t each = bytes / (size_t)n + 1;
    int64_t fit = (int64_t)(CHUNK_BYTES / each);
    return fit < chunk ? chunk : fit > CHUNK_MAX ? CHUNK_MAX : fit;
}

int dc_source_each(const dc_source *s, int channels, int resolution, dc_commit_fn commit, void *ctx) {
    int64_t chunk = 4 * (int64_t)omp_get_max_threads();
    slot *slots = calloc(CHUNK_MAX, sizeof *slots);
    if (!slots)
        return dc_fail("out of memory");
    int rc = 0;
    for (int64_t start = 0, n; !rc && start < s->count; start += n) {
        n = s->count - start < chunk ? s->count - start : chunk;
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t k = 0; k < n; k++) {
            slots[k].status = prepare(s, start + k, channels, resolution, &slots[k].img);
            slots[k].reason = slots[k].status ? strdup(dc_error()) : NULL;
        }
        int64_t grown = next_chunk(chunk, slots, n);
        for (int64_t k = 0; k < n; k++) { /* in order, whatever order the workers finished in */
            slot *sl = &slots[k];
            const char *reason = sl->reason ? sl->reason : "out of memory";
            if (!rc)
                rc = sl->status < 0 ? dc_fail("%s", reason)
                                    : commit(ctx, start + k, sl->status ? NULL : &sl->img, reason);
            dc_image_free(&sl->img);
            free(sl->reason);
            sl->reason = NULL;
        }
        chunk = grown;
    }
    free(slots);
    return rc;
}

void dc_source_free(dc_source *s) {
    if (!s)
        return;
    if (s->ops && s->ops->free)
        s->ops->free(s);
    for (int i = 0; i < s->n_files; i++)
        free(s->files[i].path);
    free(s->files);
    for (int64_t i = 0; s->names && i < s->count; i++)
        free(s->names[i]);
    free(s->names);
    for (int i = 0; s->class_names && i < s->num_classes; i++)
        free(s->class_names[i]);
    free(s->class_names);
    free(s->labels);
    for (int64_t i = 0; s->captions && i < s->count; i++)
        free(s->captions[i]);
    free(s->captions);
    free(s->root);
    memset(s, 0, sizeof *s);
}
