/*
 * A dataset's items one by one, without a cache (see dataset.h): the
 * source's own reader (image folder, IDX, CIFAR-10) behind a public face, or
 * a single image file as a source of one item.
 */
#include "source.h"

#include "autograd/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    dc_source src; /* the source; left zeroed for a single file */
    char *file;    /* the single file, or NULL */
    const char *base;
} items_impl;

/* 1 when `path` is a regular file whose content is PNG or JPEG. */
static int is_image_file(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    uint8_t head[16];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, head, sizeof head) : -1;
    if (fd >= 0)
        close(fd);
    return n > 0 && dc_image_sniff(head, (size_t)n) != DC_IMAGE_UNKNOWN;
}

static int open_file(dc_dataset_items *it, items_impl *m, const char *path) {
    if (!(m->file = realpath(path, NULL)))
        return dc_fail("%s: cannot resolve the path: %s", path, strerror(errno));
    const char *slash = strrchr(m->file, '/');
    m->base = slash ? slash + 1 : m->file;
    it->kind = "image file";
    it->root = m->file;
    it->count = 1;
    return 0;
}

static int open_source(dc_dataset_items *it, items_impl *m, const char *path, const char *split) {
    dc_source *s = &m->src;
    if (dc_source_scan(s, path, split) || s->ops->load(s))
        return -1;
    it->kind = s->kind;
    it->root = s->root;
    it->count = s->count;
    it->num_classes = s->num_classes;
    it->class_names = s->class_names;
    it->labels = s->labels;
    return 0;
}

int dc_dataset_items_open(dc_dataset_items *it, const char *source, const char *split) {
    memset(it, 0, sizeof *it);
    items_impl *m = calloc(1, sizeof *m);
    if (!m)
        return dc_fail("out of memory");
    it->impl = m;
    int rc = is_image_file(source) ? open_file(it, m, source) : open_source(it, m, source, split ? split : "train");
    if (rc)
        dc_dataset_items_close(it);
    return rc;
}

const char *dc_dataset_item_name(const dc_dataset_items *it, int64_t i, char *buf, size_t n) {
    const items_impl *m = it->impl;
    return m->file ? m->base : dc_source_item_name(&m->src, i, buf, n);
}

int dc_dataset_item_image(const dc_dataset_items *it, int64_t i, dc_image *img) {
    const items_impl *m = it->impl;
    if (i < 0 || i >= it->count)
        return dc_fail("item %lld of %lld", (long long)i, (long long)it->count);
    if (!m->file)
        return m->src.ops->image(&m->src, i, img);
    return dc_image_load(img, m->file) ? -1 : 0; /* the only item: nothing to skip to */
}

void dc_dataset_items_close(dc_dataset_items *it) {
    items_impl *m = it->impl;
    if (m) {
        dc_source_free(&m->src);
        free(m->file);
        free(m);
    }
    memset(it, 0, sizeof *it);
}
