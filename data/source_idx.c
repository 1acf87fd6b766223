/*
 * MNIST / Fashion-MNIST IDX files, plain or gzip.
 *
 * An IDX file is a 4-byte magic (00 00, type 08 = unsigned bytes, number of
 * dimensions), the dimensions as big-endian u32, then the data. Images are
 * idx3 [n, rows, cols], labels idx1 [n]. The data must be exactly as long as
 * the dimensions say. A gzip file is inflated from memory with zlib; its
 * decompressed size is bounded before anything is allocated: the header must
 * promise no more than deflate could expand the compressed bytes to (about
 * 1032:1), and we allocate exactly what it promises and refuse a stream that
 * runs past it. So a small "bomb" can neither make us allocate gigabytes nor
 * write past the buffer.
 *
 * A folder holds train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]
 * (split "train") and the t10k- pair (split "test"); the Kaggle spelling
 * "train-images.idx3-ubyte" is accepted too. An images file can be given
 * directly; its labels are the file named alike with labels-idx1, if present.
 * Classes are "0".."9" (up to the largest label), except that a folder whose
 * path contains "fashion" and has 10 classes gets Fashion-MNIST's names.
 */
#define _GNU_SOURCE /* strcasestr */
#include "source.h"

#include "autograd/error.h"

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define MAX_IDX_BYTES ((uint64_t)1 << 34) /* 16 GiB of pixels: far beyond any IDX set */
#define MAX_RATIO 1100                    /* deflate expands at most ~1032:1 */
#define MAX_SIDE 65536

static const char *const fashion_names[10] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                              "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

/* ---- parsing ---- */

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The header in p[0..n): dims into idx, header length into *hdr, data
 * length into *total. 1 when n is too short to hold the header yet. */
static int parse_header(dc_idx *idx, const uint8_t *p, size_t n, size_t *hdr, uint64_t *total,
                        const char *what) {
    if (n < 4)
        return 1;
    if (p[0] || p[1] || (p[3] != 1 && p[3] != 3))
        return dc_fail(
            "%s: not an IDX file (magic %02x %02x %02x %02x; images are 00 00 08 03, labels 00 00 08 01)",
            what, p[0], p[1], p[2], p[3]);
    if (p[2] != 0x08)
        return dc_fail("%s: IDX data type 0x%02x is not unsigned bytes (0x08)", what, p[2]);
    idx->ndim = p[3];
    *hdr = 4 + 4 * (size_t)idx->ndim;
    if (n < *hdr)
        return 1;
    *total = 1;
    for (int i = 0; i < idx->ndim; i++) {
        idx->dims[i] = be32(p + 4 + 4 * i);
        if (idx->dims[i] == 0)
            return dc_fail("%s: IDX dimension %d is 0", what, i);
        if (__builtin_mul_overflow(*total, idx->dims[i], total) || *total > MAX_IDX_BYTES)
            return dc_fail("%s: IDX header promises more than %" PRIu64 " bytes of data", what,
                           MAX_IDX_BYTES);
    }
    return 0;
}

static int parse_plain(dc_idx *idx, const uint8_t *p, size_t n, const char *what) {
    size_t hdr = 0;
    uint64_t total = 0;
    int rc = parse_header(idx, p, n, &hdr, &total, what);
    if (rc > 0)
        return dc_fail("%s: file is %zu bytes, too short for an IDX header", what, n);
    if (rc)
        return -1;
    if (n - hdr != total)
        return dc_fail("%s: file has %zu bytes of data, but its IDX header (%" PRIu32 " x %" PRIu32
                       " x %" PRIu32 ") needs %" PRIu64 " (%s)",
                       what, n - hdr, idx->dims[0], idx->ndim > 1 ? idx->dims[1] : 1,
                       idx->ndim > 2 ? idx->dims[2] : 1, total,
                       n - hdr < total ? "truncated" : "trailing bytes");
    idx->data = p + hdr;
    idx->size = (size_t)total;
    return 0;
}

/* ---- gzip ---- */

typedef struct {
    z_stream z;
    int ended; /* every gzip member has ended and no input is left */
    const char *what;
} gz;

/* Inflate up to len bytes into out; *got says how many came (fewer only at
 * the end of the data). Concatenated gzip members are read as one stream. */
static int gz_read(gz *g, uint8_t *out, uint64_t len, uint64_t *got) {
    *got = 0;
    while (*got < len && !g->ended) {
        uInt chunk = len - *got > (1u << 30) ? 1u << 30 : (uInt)(len - *got);
        g->z.next_out = out + *got;
        g->z.avail_out = chunk;
        int rc = inflate(&g->z, Z_NO_FLUSH);
        *got += chunk - g->z.avail_out;
        if (rc == Z_STREAM_END && g->z.avail_in == 0)
            g->ended = 1;
        else if (rc == Z_STREAM_END && inflateReset(&g->z) != Z_OK)
            return dc_fail("%s: gzip: cannot start the next member", g->what);
        else if (rc == Z_BUF_ERROR) /* no progress with room to write: the input ran out */
            return dc_fail("%s: gzip data is truncated", g->what);
        else if (rc != Z_OK && rc != Z_STREAM_END)
            return dc_fail("%s: corrupt gzip data: %s", g->what, g->z.msg ? g->z.msg : "inflate failed");
    }
    return 0;
}

/* The header, read 4 bytes (magic) then the dimensions. */
static int read_gz_header(gz *g, dc_idx *idx, uint8_t *head, size_t *hdr, uint64_t *total) {
    uint64_t got = 0, more;
    int rc = 1;
    while (rc == 1) {
        size_t want = got < 4 ? 4 : 4 + 4 * (size_t)head[3];
        if (gz_read(g, head + got, want - got, &more))
            return -1;
        got += more;
        if (got < want)
            return dc_fail("%s: gzip data ends after %" PRIu64 " bytes, inside the IDX header", g->what, got);
        rc = parse_header(idx, head, (size_t)got, hdr, total, g->what);
    }
    return rc;
}

static int inflate_idx(dc_idx *idx, const uint8_t *buf, size_t n, const char *what) {
    if (n > UINT_MAX)
        return dc_fail("%s: gzip file over 4 GiB", what);
    gz g = {.what = what};
    g.z.next_in = (Bytef *)buf;
    g.z.avail_in = (uInt)n;
    if (inflateInit2(&g.z, 15 + 16) != Z_OK) /* gzip wrapper only */
        return dc_fail("%s: cannot start zlib", what);
    uint8_t head[16], extra;
    size_t hdr = 0;
    uint64_t total = 0, got = 0;
    int rc = read_gz_header(&g, idx, head, &hdr, &total);
    if (!rc && total > (uint64_t)n * MAX_RATIO)
        rc = dc_fail("%s: IDX header promises %" PRIu64 " bytes, more than %zu bytes of gzip can hold", what,
                     total, n);
    if (!rc && !(idx->owned = malloc((size_t)total)))
        rc = dc_fail("%s: out of memory for %" PRIu64 " bytes", what, total);
    rc = rc ? rc : gz_read(&g, idx->owned, total, &got);
    if (!rc && got < total)
        rc = dc_fail("%s: gzip data holds %" PRIu64 " bytes of IDX data, its header needs %" PRIu64
                     " (truncated)",
                     what, got, total);
    rc = rc ? rc : gz_read(&g, &extra, 1, &got); /* to the end of the stream: checks the CRC */
    if (!rc && got)
        rc = dc_fail("%s: gzip data is longer than its IDX header says (%" PRIu64 " bytes)", what, total);
    inflateEnd(&g.z);
    idx->data = idx->owned;
    idx->size = (size_t)total;
    return rc;
}

int dc_idx_decode(dc_idx *idx, const void *buf, size_t n, const char *what) {
    memset(idx, 0, sizeof *idx);
    const uint8_t *p = buf;
    int rc =
        n >= 2 && p[0] == 0x1f && p[1] == 0x8b ? inflate_idx(idx, p, n, what) : parse_plain(idx, p, n, what);
    if (rc)
        dc_idx_free(idx);
    return rc;
}

void dc_idx_free(dc_idx *idx) {
    if (!idx)
        return;
    free(idx->owned);
    memset(idx, 0, sizeof *idx);
}

/* ---- the source ---- */

typedef struct {
    char *images_path, *labels_path; /* labels_path NULL: unlabelled */
    const void *images_map, *labels_map;
    size_t images_size, labels_size;
    dc_idx images, labels;
} idx_impl;

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* "<dir>/<prefix>-<what>" in one of its spellings, or NULL when absent. */
static char *find_in(const char *dir, const char *prefix, const char *what, const char *idx) {
    static const char *const forms[] = {"%s/%s-%s-%s-ubyte%s", "%s/%s-%s.%s-ubyte%s"};
    char path[PATH_MAX];
    for (int f = 0; f < 2; f++)
        for (int gz = 0; gz < 2; gz++) {
            snprintf(path, sizeof path, forms[f], dir, prefix, what, idx, gz ? ".gz" : "");
            if (is_file(path))
                return strdup(path);
        }
    return NULL;
}

/* The first 4 bytes of a file as IDX sees them (inflated when gzip), or -1. */
static int64_t peek_magic(const char *path) {
    const void *map;
    size_t size;
    if (dc_map_file(path, &map, &size))
        return -1;
    uint8_t head[4] = {0};
    int64_t magic = -1;
    const uint8_t *p = map;
    if (size >= 2 && p[0] == 0x1f && p[1] == 0x8b && size <= UINT_MAX) {
        gz g = {.what = path};
        g.z.next_in = (Bytef *)p;
        g.z.avail_in = (uInt)size;
        uint64_t got = 0;
        if (inflateInit2(&g.z, 15 + 16) == Z_OK && gz_read(&g, head, 4, &got) == 0 && got == 4)
            magic = be32(head);
        inflateEnd(&g.z);
    } else if (size >= 4) {
        magic = be32(p);
    }
    dc_unmap_file(map, size);
    dc_clear_error();
    return magic;
}

static const dc_source_ops idx_ops;

static int scan_folder(idx_impl *m, const char *dir, const char *split) {
    const char *prefix = strcmp(split, "test") ? "train" : "t10k";
    m->images_path = find_in(dir, prefix, "images", "idx3");
    m->labels_path = find_in(dir, prefix, "labels", "idx1");
    if (!m->images_path)
        return dc_fail("%s: IDX folder without %s-images-idx3-ubyte[.gz] (split \"%s\")", dir, prefix, split);
    if (!m->labels_path)
        return dc_fail("%s: IDX folder without %s-labels-idx1-ubyte[.gz] (split \"%s\")", dir, prefix, split);
    return 0;
}

/* The labels file named like an images file: images -> labels, idx3 -> idx1. */
static char *labels_for(const char *images) {
    char *path = strdup(images), *base = path ? strrchr(path, '/') : NULL;
    char *a = base ? strstr(base, "images") : NULL, *b = a ? strstr(a, "idx3") : NULL;
    if (!a || !b) {
        free(path);
        return NULL;
    }
    memcpy(a, "labels", 6);
    memcpy(b, "idx1", 4);
    if (!is_file(path)) {
        free(path);
        return NULL;
    }
    return path;
}

static int is_idx_folder(const char *dir) {
    static const char *const prefixes[] = {"train", "t10k"};
    for (int i = 0; i < 2; i++) {
        char *p = find_in(dir, prefixes[i], "images", "idx3");
        int found = p != NULL;
        free(p);
        if (found)
            return 1;
    }
    return 0;
}

int dc_idx_scan(dc_source *s, const char *path, const char *split) {
    struct stat st;
    if (stat(path, &st) != 0)
        return dc_fail("%s: cannot open: %s", path, strerror(errno));
    int dir = S_ISDIR(st.st_mode);
    /* any data type counts here, so that load can say what is wrong with it */
    int64_t magic = dir ? -1 : peek_magic(path);
    if (magic >= 0 && (magic & 0xffff00ff) == 1)
        return dc_fail("%s: an IDX labels file; give the images file (...-images-idx3-ubyte) or its folder",
                       path);
    if (dir ? !is_idx_folder(path) : magic < 0 || (magic & 0xffff00ff) != 3)
        return 0;
    idx_impl *m = calloc(1, sizeof *m);
    if (!m)
        return dc_fail("out of memory");
    if (dc_source_init(s, "IDX", path, split, &idx_ops)) {
        free(m);
        return -1;
    }
    s->impl = m;
    int rc = dir ? scan_folder(m, s->root, split) : 0;
    if (!rc && !dir) {
        rc = (m->images_path = dc_strdup(s->root)) ? 0 : -1;
        m->labels_path = rc ? NULL : labels_for(s->root);
    }
    rc = rc ? rc : dc_source_add_file(s, m->images_path, m->images_path);
    if (!rc && m->labels_path)
        rc = dc_source_add_file(s, m->labels_path, m->labels_path);
    if (rc) {
        dc_source_free(s);
        return -1;
    }
    return 1;
}

static int decode_file(const char *path, const void **map, size_t *size, dc_idx *idx, int ndim) {
    if (dc_map_file(path, map, size) || dc_idx_decode(idx, *map, *size, path))
        return -1;
    if (idx->ndim != ndim)
        return dc_fail("%s: IDX file with %d dimensions, expected %s", path, idx->ndim,
                       ndim == 3 ? "images (3: count, rows, cols)" : "labels (1: count)");
    if (ndim == 3 && (idx->dims[1] > MAX_SIDE || idx->dims[2] > MAX_SIDE))
        return dc_fail("%s: IDX images of %" PRIu32 "x%" PRIu32 " pixels, over the %d-pixel side limit", path,
                       idx->dims[2], idx->dims[1], MAX_SIDE);
    return 0;
}

static int load_labels(dc_source *s, const idx_impl *m) {
    if (m->labels.dims[0] != m->images.dims[0])
        return dc_fail("%s: %" PRIu32 " labels for the %" PRIu32 " images of %s", m->labels_path,
                       m->labels.dims[0], m->images.dims[0], m->images_path);
    if (!(s->labels = malloc((size_t)s->count * sizeof *s->labels)))
        return dc_fail("out of memory");
    int max = 0;
    for (int64_t i = 0; i < s->count; i++) {
        s->labels[i] = m->labels.data[i];
        max = s->labels[i] > max ? s->labels[i] : max;
    }
    char *dir = strdup(m->images_path);
    int fashion = dir && max == 9 && strcasestr(dirname(dir), "fashion");
    free(dir);
    return dc_source_set_classes(s, max + 1, fashion ? fashion_names : NULL);
}

static int idx_load(dc_source *s) {
    idx_impl *m = s->impl;
    if (decode_file(m->images_path, &m->images_map, &m->images_size, &m->images, 3))
        return -1;
    s->count = m->images.dims[0];
    if (!m->labels_path) {
        if (!(s->labels = malloc((size_t)s->count * sizeof *s->labels)))
            return dc_fail("out of memory");
        for (int64_t i = 0; i < s->count; i++)
            s->labels[i] = -1;
        return 0;
    }
    if (decode_file(m->labels_path, &m->labels_map, &m->labels_size, &m->labels, 1))
        return -1;
    return load_labels(s, m);
}

static int idx_image(const dc_source *s, int64_t i, dc_image *img) {
    const idx_impl *m = s->impl;
    int rows = (int)m->images.dims[1], cols = (int)m->images.dims[2];
    if (dc_image_alloc(img, cols, rows, 1))
        return -1;
    memcpy(img->px, m->images.data + (size_t)i * rows * cols, (size_t)rows * cols);
    return 0;
}

static void idx_free(dc_source *s) {
    idx_impl *m = s->impl;
    if (!m)
        return;
    dc_idx_free(&m->images);
    dc_idx_free(&m->labels);
    dc_unmap_file(m->images_map, m->images_size);
    dc_unmap_file(m->labels_map, m->labels_size);
    free(m->images_path);
    free(m->labels_path);
    free(m);
    s->impl = NULL;
}

static const dc_source_ops idx_ops = {idx_load, idx_image, idx_free};
