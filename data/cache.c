/*
 * The dataset cache file: written once by the builder, then mapped by every
 * run (see dataset.h). All numbers are little-endian.
 *
 *   [0, 4096)        header: magic "diffc-ds", version, count, h, w, c,
 *                    num_classes, n_skipped, flags, the three table sizes,
 *                    the source fingerprint, the pixels' and tables' CRC-32,
 *                    the source kind and path; its own CRC-32 in the last 4 bytes
 *   [4096, +P)       pixels, P = count * h * w * c bytes, [count, h, w, c]
 *   8-aligned        labels, int32 [count] (-1 when unlabelled)
 *   8-aligned        class names, captions, skipped (path, reason) pairs:
 *                    each a string table: u64 n, u64 offsets[n + 1] into the
 *                    blob that follows, and the blob of NUL-terminated strings
 *
 * Offsets are not stored: they follow from the sizes, so the reader computes
 * the one layout the header allows and the file must end exactly where it
 * ends. That catches a count that lies, a truncated file or trailing junk.
 *
 * The reader checks everything that decides where it reads: the header and
 * its checksum, the layout, every table entry inside its table, labels in
 * range, and the tables' checksum. It does not check the pixels' checksum
 * when opening: any byte is a valid pixel, so a damaged pixel cannot make a
 * reader misbehave, while checking it would read the whole file (tens of GB
 * for a large dataset) before training maps in the first batch. `diffc info`
 * on a cache checks it (dc_cache_verify_pixels).
 */
#include "source.h"

#include "autograd/error.h"
#include "autograd/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the dataset cache maps int32 labels directly: a little-endian host is required"
#endif

static const char magic[8] = {'d', 'i', 'f', 'f', 'c', '-', 'd', 's'};

/* Header field offsets. */
enum {
    H_MAGIC = 0,
    H_VERSION = 8,
    H_HEADER_SIZE = 12,
    H_COUNT = 16,
    H_H = 24,
    H_W = 28,
    H_C = 32,
    H_CLASSES = 36,
    H_SKIPPED = 40,
    H_FLAGS = 44,
    H_CLASSES_SIZE = 48,
    H_CAPTIONS_SIZE = 56,
    H_SKIPPED_SIZE = 64,
    H_FINGERPRINT = 72,
    H_PIXELS_CRC = 80,
    H_TABLES_CRC = 84,
    H_KIND = 88,    /* char[24] */
    H_SOURCE = 112, /* char[3980], up to the checksum */
    H_CRC = DC_CACHE_HEADER - 4,
};
#define FLAG_CAPTIONS 1u
#define MAX_SIDE 65536
#define MAX_CLASSES (1 << 24)

/* ---- little-endian fields ---- */

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> 8 * i);
}

static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> 8 * i);
}

static uint32_t get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t align8(uint64_t v) { return (v + 7) & ~(uint64_t)7; }

/* crc32 over any length (zlib takes uInt lengths). */
static uint32_t crc_of(uint32_t crc, const uint8_t *p, uint64_t n) {
    while (n) {
        uInt k = n > (1u << 30) ? 1u << 30 : (uInt)n;
        crc = (uint32_t)crc32(crc, p, k);
        p += k, n -= k;
    }
    return crc;
}

/* ---- the layout the header implies ---- */

typedef struct {
    uint64_t pixels, labels, classes, captions, skipped, end; /* offsets; end = file size */
} layout;

/* 0, or -1 when the sizes overflow 64 bits. */
static int compute_layout(layout *l, uint64_t count, uint64_t hwc, uint64_t classes_size,
                          uint64_t captions_size, uint64_t skipped_size) {
    uint64_t p, lab;
    if (__builtin_mul_overflow(count, hwc, &p) || __builtin_mul_overflow(count, 4, &lab) ||
        p > UINT64_MAX / 2 || lab > UINT64_MAX / 8 || classes_size > UINT64_MAX / 8 ||
        captions_size > UINT64_MAX / 8 || skipped_size > UINT64_MAX / 8)
        return -1;
    l->pixels = DC_CACHE_HEADER;
    l->labels = align8(l->pixels + p);
    l->classes = align8(l->labels + lab);
    l->captions = align8(l->classes + classes_size);
    l->skipped = align8(l->captions + captions_size);
    return __builtin_add_overflow(l->skipped, skipped_size, &l->end) ? -1 : 0;
}

/* ---- writing ---- */

static int write_at(const dc_cache_writer *w, const void *buf, size_t n, uint64_t off) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t k = pwrite(w->fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return dc_fail("%s: cannot write: %s", w->tmp, k < 0 ? strerror(errno) : "no progress");
        p += k, n -= (size_t)k, off += (uint64_t)k;
    }
    return 0;
}

static int read_at(const dc_cache_writer *w, void *buf, size_t n, uint64_t off) {
    uint8_t *p = buf;
    while (n) {
        ssize_t k = pread(w->fd, p, n, (off_t)off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return dc_fail("%s: cannot read back: %s", w->tmp, k < 0 ? strerror(errno) : "unexpected end");
        p += k, n -= (size_t)k, off += (uint64_t)k;
    }
    return 0;
}

static void release(dc_cache_writer *w) {
    if (w->fd >= 0)
        close(w->fd);
    free(w->path);
    free(w->tmp);
    memset(w, 0, sizeof *w);
    w->fd = -1;
}

int dc_cache_writer_open(dc_cache_writer *w, const char *path) {
    memset(w, 0, sizeof *w);
    w->fd = -1;
    size_t n = strlen(path) + 32;
    w->path = dc_strdup(path);
    w->tmp = malloc(n);
    if (!w->path || !w->tmp) {
        release(w);
        return dc_fail("%s: out of memory", path);
    }
    snprintf(w->tmp, n, "%s.tmp.%ld", path,
             (long)getpid()); /* the pid: ranks on several hosts may share the folder */
    w->fd = open(w->tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        dc_fail("%s: cannot create: %s", w->tmp, strerror(errno));
        release(w);
        return -1;
    }
    return 0;
}

int dc_cache_writer_append(dc_cache_writer *w, const uint8_t *px, size_t n) {
    if (write_at(w, px, n, DC_CACHE_HEADER + w->pixel_bytes))
        return -1;
    w->pixel_bytes += n;
    return 0;
}

/* Back to front, a block of images at a time: image i moves from i*hw to
 * 3*i*hw, never over bytes not yet read. */
int dc_cache_writer_widen(dc_cache_writer *w, int64_t n_images, size_t hw) {
    enum { BLOCK = 64 };
    uint8_t *gray = malloc(BLOCK * hw), *rgb = malloc(BLOCK * hw * 3);
    int rc = gray && rgb ? 0 : dc_fail("%s: out of memory", w->tmp);
    for (int64_t end = n_images; !rc && end > 0; end -= BLOCK) {
        int64_t first = end > BLOCK ? end - BLOCK : 0;
        size_t k = (size_t)(end - first) * hw;
        rc = read_at(w, gray, k, DC_CACHE_HEADER + (uint64_t)first * hw);
        for (size_t j = 0; !rc && j < k; j++)
            rgb[3 * j] = rgb[3 * j + 1] = rgb[3 * j + 2] = gray[j];
        rc = rc ? rc : write_at(w, rgb, 3 * k, DC_CACHE_HEADER + (uint64_t)first * hw * 3);
    }
    if (!rc)
        w->pixel_bytes = (uint64_t)n_images * hw * 3;
    free(gray);
    free(rgb);
    return rc;
}

/* A string table of n strings, string i being get(ctx, i) (NULL: ""). */
typedef const char *(*str_fn)(const void *ctx, uint64_t i);

static uint64_t table_size(str_fn get, const void *ctx, uint64_t n) {
    uint64_t size = 8 + 8 * (n + 1);
    for (uint64_t i = 0; i < n; i++) {
        const char *s = get(ctx, i);
        size += (s ? strlen(s) : 0) + 1;
    }
    return size;
}

static int write_table(const dc_cache_writer *w, str_fn get, const void *ctx, uint64_t n, uint64_t off) {
    uint64_t size = table_size(get, ctx, n), head = 8 + 8 * (n + 1);
    uint8_t *t = malloc(size);
    if (!t)
        return dc_fail("%s: out of memory for a %" PRIu64 "-byte table", w->tmp, size);
    put64(t, n);
    uint64_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s = get(ctx, i);
        size_t len = s ? strlen(s) : 0;
        put64(t + 8 + 8 * i, pos);
        memcpy(t + head + pos, s ? s : "", len + 1);
        pos += len + 1;
    }
    put64(t + 8 + 8 * n, pos);
    int rc = write_at(w, t, size, off);
    free(t);
    return rc;
}

static const char *class_at(const void *m, uint64_t i) { return ((const dc_cache_meta *)m)->class_names[i]; }
static const char *caption_at(const void *m, uint64_t i) { return ((const dc_cache_meta *)m)->captions[i]; }
static const char *skip_at(const void *m, uint64_t i) {
    const dc_dataset_skip *s = &((const dc_cache_meta *)m)->skipped[i / 2];
    return i % 2 ? s->reason : s->path;
}

/* CRC-32 of [off, off + n) of the temporary file. */
static int crc_range(const dc_cache_writer *w, uint64_t off, uint64_t n, uint32_t *crc) {
    enum { BLOCK = 1 << 20 };
    uint8_t *buf = malloc(BLOCK);
    int rc = buf ? 0 : dc_fail("%s: out of memory", w->tmp);
    *crc = (uint32_t)crc32(0, Z_NULL, 0);
    for (uint64_t done = 0; !rc && done < n;) {
        size_t k = n - done < BLOCK ? (size_t)(n - done) : BLOCK;
        rc = read_at(w, buf, k, off + done);
        *crc = crc_of(*crc, buf, k);
        done += k;
    }
    free(buf);
    return rc;
}

static void fill_header(uint8_t *h, const dc_cache_meta *m, const uint64_t sizes[3], uint32_t pixels_crc,
                        uint32_t tables_crc) {
    memset(h, 0, DC_CACHE_HEADER);
    memcpy(h + H_MAGIC, magic, sizeof magic);
    put32(h + H_VERSION, DC_CACHE_VERSION);
    put32(h + H_HEADER_SIZE, DC_CACHE_HEADER);
    put64(h + H_COUNT, (uint64_t)m->count);
    put32(h + H_H, (uint32_t)m->h);
    put32(h + H_W, (uint32_t)m->w);
    put32(h + H_C, (uint32_t)m->c);
    put32(h + H_CLASSES, (uint32_t)m->num_classes);
    put32(h + H_SKIPPED, (uint32_t)m->n_skipped);
    put32(h + H_FLAGS, m->captions ? FLAG_CAPTIONS : 0);
    put64(h + H_CLASSES_SIZE, sizes[0]);
    put64(h + H_CAPTIONS_SIZE, sizes[1]);
    put64(h + H_SKIPPED_SIZE, sizes[2]);
    put64(h + H_FINGERPRINT, m->fingerprint);
    put32(h + H_PIXELS_CRC, pixels_crc);
    put32(h + H_TABLES_CRC, tables_crc);
    snprintf((char *)h + H_KIND, H_SOURCE - H_KIND, "%s", m->kind);
    snprintf((char *)h + H_SOURCE, H_CRC - H_SOURCE, "%s", m->source); /* informational: may be cut */
    put32(h + H_CRC, (uint32_t)crc32(0, h, H_CRC));
}

/* Zeros from *pos up to `off`, where the next section starts. */
static int pad_to(const dc_cache_writer *w, uint64_t *pos, uint64_t off) {
    static const uint8_t zeros[8];
    int rc = write_at(w, zeros, (size_t)(off - *pos), *pos);
    *pos = off;
    return rc;
}

static int write_tables(const dc_cache_writer *w, const dc_cache_meta *m, const layout *l,
                        const uint64_t sizes[3]) {
    uint64_t pos = l->pixels + w->pixel_bytes, n = (uint64_t)m->count;
    if (pad_to(w, &pos, l->labels) || write_at(w, m->labels, (size_t)n * 4, pos))
        return -1;
    pos += n * 4;
    if (pad_to(w, &pos, l->classes) || write_table(w, class_at, m, (uint64_t)m->num_classes, pos))
        return -1;
    pos += sizes[0];
    if (pad_to(w, &pos, l->captions) || (m->captions && write_table(w, caption_at, m, n, pos)))
        return -1;
    pos += sizes[1];
    return pad_to(w, &pos, l->skipped) || write_table(w, skip_at, m, 2 * (uint64_t)m->n_skipped, pos) ? -1
                                                                                                      : 0;
}

int dc_cache_writer_finish(dc_cache_writer *w, const dc_cache_meta *m) {
    uint64_t sizes[3] = {table_size(class_at, m, (uint64_t)m->num_classes),
                         m->captions ? table_size(caption_at, m, (uint64_t)m->count) : 0,
                         table_size(skip_at, m, 2 * (uint64_t)m->n_skipped)};
    uint64_t hwc = (uint64_t)m->h * (uint64_t)m->w * (uint64_t)m->c;
    layout l = {0};
    uint32_t pixels_crc, tables_crc;
    uint8_t *header = malloc(DC_CACHE_HEADER);
    int rc = header ? 0 : dc_fail("%s: out of memory", w->tmp);
    if (!rc && (compute_layout(&l, (uint64_t)m->count, hwc, sizes[0], sizes[1], sizes[2]) ||
                w->pixel_bytes != (uint64_t)m->count * hwc))
        rc = dc_fail("%s: internal error: %" PRIu64 " pixel bytes written for %" PRId64 " images of %dx%dx%d",
                     w->tmp, w->pixel_bytes, m->count, m->h, m->w, m->c);
    rc = rc ? rc : write_tables(w, m, &l, sizes);
    rc = rc ? rc : crc_range(w, l.pixels, w->pixel_bytes, &pixels_crc);
    rc = rc ? rc : crc_range(w, l.labels, l.end - l.labels, &tables_crc);
    if (!rc) {
        fill_header(header, m, sizes, pixels_crc, tables_crc);
        rc = write_at(w, header, DC_CACHE_HEADER, 0);
    }
    free(header);
    if (!rc && fsync(w->fd) != 0)
        rc = dc_fail("%s: cannot sync: %s", w->tmp, strerror(errno));
    if (!rc && rename(w->tmp, w->path) != 0)
        rc = dc_fail("%s: cannot rename %s to it: %s", w->path, w->tmp, strerror(errno));
    if (rc) {
        dc_cache_writer_abort(w);
        return -1;
    }
    (void)dc_sync_parent(w->path); /* best effort: the file is complete either way */
    release(w);
    return 0;
}

void dc_cache_writer_abort(dc_cache_writer *w) {
    if (w->tmp)
        unlink(w->tmp);
    release(w);
}

/* ---- reading ---- */

typedef struct {
    const char *what;
    const uint8_t *buf;
    size_t size;
} reader;

/* Parse the string table of n strings at [off, off + size) into ptrs[n]
 * (its size already checked by check_capacity). */
static int read_table(const reader *r, const char *name, uint64_t off, uint64_t size, uint64_t n,
                      const char **ptrs) {
    const uint8_t *t = r->buf + off;
    if (get64(t) != n)
        return dc_fail("%s: the %s table holds %" PRIu64 " entries, the header says %" PRIu64, r->what, name,
                       get64(t), n);
    uint64_t head = 8 + 8 * (n + 1), blob = size - head;
    const char *b = (const char *)t + head;
    if (get64(t + 8) != 0 || get64(t + 8 + 8 * n) != blob)
        return dc_fail("%s: the %s table's offsets do not span its %" PRIu64 "-byte blob", r->what, name,
                       blob);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t a = get64(t + 8 + 8 * i), e = get64(t + 16 + 8 * i);
        if (e <= a || e > blob || memchr(b + a, '\0', (size_t)(e - a)) != b + e - 1)
            return dc_fail("%s: the %s table's entry %" PRIu64 " ([%" PRIu64 ", %" PRIu64
                           ")) is not one NUL-terminated string inside the table",
                           r->what, name, i, a, e);
        ptrs[i] = b + a;
    }
    return 0;
}

/* The fixed header fields: magic, version, checksum, sizes in range. */
static int check_header(const reader *r, dc_cache_info *info) {
    const uint8_t *h = r->buf;
    if (r->size < DC_CACHE_HEADER)
        return dc_fail("%s: file is %zu bytes, too short for a diffc dataset cache (%d-byte header)", r->what,
                       r->size, DC_CACHE_HEADER);
    if (memcmp(h, magic, sizeof magic))
        return dc_fail("%s: not a diffc dataset cache (bad magic)", r->what);
    if (get32(h + H_VERSION) != DC_CACHE_VERSION)
        return dc_fail("%s: cache format version %" PRIu32 ", this diffc reads version %d", r->what,
                       get32(h + H_VERSION), DC_CACHE_VERSION);
    if (get32(h + H_CRC) != (uint32_t)crc32(0, h, H_CRC))
        return dc_fail("%s: header checksum mismatch (the file is damaged)", r->what);
    if (get32(h + H_HEADER_SIZE) != DC_CACHE_HEADER)
        return dc_fail("%s: header size %" PRIu32 ", expected %d", r->what, get32(h + H_HEADER_SIZE),
                       DC_CACHE_HEADER);
    uint32_t hh = get32(h + H_H), ww = get32(h + H_W), c = get32(h + H_C);
    if (hh < 1 || hh > MAX_SIDE || ww < 1 || ww > MAX_SIDE || (c != 1 && c != 3))
        return dc_fail("%s: image shape %" PRIu32 "x%" PRIu32 "x%" PRIu32
                       " is not HxWx(1|3) with sides in [1, %d]",
                       r->what, hh, ww, c, MAX_SIDE);
    if (get64(h + H_COUNT) < 1 || get64(h + H_COUNT) > INT64_MAX)
        return dc_fail("%s: image count %" PRIu64 " is out of range", r->what, get64(h + H_COUNT));
    if (get32(h + H_CLASSES) > MAX_CLASSES || get32(h + H_SKIPPED) > INT32_MAX / 2 ||
        (get32(h + H_FLAGS) & ~FLAG_CAPTIONS))
        return dc_fail("%s: bad header (%" PRIu32 " classes, %" PRIu32 " skipped, flags 0x%" PRIx32 ")",
                       r->what, get32(h + H_CLASSES), get32(h + H_SKIPPED), get32(h + H_FLAGS));
    if (!memchr(h + H_KIND, '\0', H_SOURCE - H_KIND) || !memchr(h + H_SOURCE, '\0', H_CRC - H_SOURCE))
        return dc_fail("%s: bad header (unterminated source name)", r->what);
    info->fingerprint = get64(h + H_FINGERPRINT);
    info->pixels_crc = get32(h + H_PIXELS_CRC);
    memcpy(info->kind, h + H_KIND, sizeof info->kind);
    info->kind[sizeof info->kind - 1] = '\0';
    snprintf(info->source, sizeof info->source, "%s", (const char *)h + H_SOURCE);
    return 0;
}

static int check_layout(const reader *r, layout *l) {
    const uint8_t *h = r->buf;
    uint64_t count = get64(h + H_COUNT), hwc = (uint64_t)get32(h + H_H) * get32(h + H_W) * get32(h + H_C);
    int captions = get32(h + H_FLAGS) & FLAG_CAPTIONS;
    if (!captions && get64(h + H_CAPTIONS_SIZE))
        return dc_fail("%s: a captions table without the captions flag", r->what);
    if (compute_layout(l, count, hwc, get64(h + H_CLASSES_SIZE), get64(h + H_CAPTIONS_SIZE),
                       get64(h + H_SKIPPED_SIZE)))
        return dc_fail("%s: the header's sizes overflow (%" PRIu64 " images of %" PRIu64 " bytes)", r->what,
                       count, hwc);
    if (l->end != r->size)
        return dc_fail("%s: file is %zu bytes, but its header describes %" PRIu64 " (%" PRIu64
                       " images of %" PRIu32 "x%" PRIu32 "x%" PRIu32 " and the tables)",
                       r->what, r->size, l->end, count, get32(h + H_H), get32(h + H_W), get32(h + H_C));
    if (get32(h + H_TABLES_CRC) !=
        crc_of((uint32_t)crc32(0, Z_NULL, 0), r->buf + l->labels, l->end - l->labels))
        return dc_fail("%s: labels and tables checksum mismatch (the file is damaged)", r->what);
    return 0;
}

static int check_labels(const reader *r, const int32_t *labels, int64_t count, int num_classes) {
    for (int64_t i = 0; i < count; i++) {
        int32_t v = labels[i];
        if (num_classes ? v < 0 || v >= num_classes : v != -1)
            return dc_fail("%s: image %" PRId64 " has label %" PRId32 ", outside %s", r->what, i, v,
                           num_classes ? "its classes" : "-1 (unlabelled)");
    }
    return 0;
}

/* A table of n strings needs 8 bytes of count, 8 per offset and at least
 * the NUL of each string: checked before the pointer arrays are allocated,
 * so a header claiming a billion entries cannot make us allocate for them. */
static int check_capacity(const reader *r, const char *name, uint64_t size, uint64_t n) {
    if (size < 16 || (size - 16) / 9 < n)
        return dc_fail("%s: the %s table is %" PRIu64 " bytes, too small for %" PRIu64 " entries", r->what,
                       name, size, n);
    return 0;
}

static int parse_tables(const reader *r, dc_dataset *ds, const layout *l) {
    const uint8_t *h = r->buf;
    uint64_t n_skip = get32(h + H_SKIPPED), n_cls = (uint64_t)ds->num_classes, n = (uint64_t)ds->count;
    int captions = get32(h + H_FLAGS) & FLAG_CAPTIONS;
    if (check_capacity(r, "class names", get64(h + H_CLASSES_SIZE), n_cls) ||
        (captions && check_capacity(r, "captions", get64(h + H_CAPTIONS_SIZE), n)) ||
        check_capacity(r, "skipped files", get64(h + H_SKIPPED_SIZE), 2 * n_skip))
        return -1;
    const char **skip = calloc(2 * n_skip + 1, sizeof *skip);
    ds->class_names = calloc(n_cls + 1, sizeof *ds->class_names);
    ds->skipped = calloc(n_skip + 1, sizeof *ds->skipped);
    ds->captions = captions ? calloc(n + 1, sizeof *ds->captions) : NULL;
    int rc = skip && ds->class_names && ds->skipped && (ds->captions || !captions)
                 ? 0
                 : dc_fail("%s: out of memory", r->what);
    rc = rc ? rc
            : read_table(r, "class names", l->classes, get64(h + H_CLASSES_SIZE), n_cls,
                         (const char **)ds->class_names);
    if (!rc && captions)
        rc = read_table(r, "captions", l->captions, get64(h + H_CAPTIONS_SIZE), n,
                        (const char **)ds->captions);
    rc = rc ? rc : read_table(r, "skipped files", l->skipped, get64(h + H_SKIPPED_SIZE), 2 * n_skip, skip);
    for (uint64_t i = 0; !rc && i < n_skip; i++) {
        ds->skipped[i].path = (char *)skip[2 * i];
        ds->skipped[i].reason = (char *)skip[2 * i + 1];
    }
    ds->n_skipped = rc ? 0 : (int)n_skip;
    free(skip);
    return rc;
}

int dc_cache_parse(dc_dataset *ds, dc_cache_info *info, const void *buf, size_t n, const char *what) {
    memset(ds, 0, sizeof *ds);
    memset(info, 0, sizeof *info);
    reader r = {what, buf, n};
    layout l = {0};
    if ((uintptr_t)buf % 8)
        return dc_fail("%s: internal error: cache image not 8-byte aligned", what);
    if (check_header(&r, info) || check_layout(&r, &l))
        return -1;
    const uint8_t *h = r.buf;
    ds->count = (int64_t)get64(h + H_COUNT);
    ds->h = (int)get32(h + H_H);
    ds->w = (int)get32(h + H_W);
    ds->c = (int)get32(h + H_C);
    ds->num_classes = (int)get32(h + H_CLASSES);
    ds->pixels = r.buf + l.pixels;
    ds->labels = (const int32_t *)(r.buf + l.labels);
    if (check_labels(&r, ds->labels, ds->count, ds->num_classes) || parse_tables(&r, ds, &l)) {
        free(ds->class_names);
        free(ds->captions);
        free(ds->skipped);
        memset(ds, 0, sizeof *ds);
        return -1;
    }
    return 0;
}

int dc_is_cache_file(const char *path) {
    char head[sizeof magic];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, head, sizeof head) : -1;
    if (fd >= 0)
        close(fd);
    return n == (ssize_t)sizeof magic && !memcmp(head, magic, sizeof magic);
}

int dc_cache_verify_pixels(const dc_dataset *ds, const dc_cache_info *info, const char *what) {
    uint64_t n = (uint64_t)ds->count * (uint64_t)ds->h * (uint64_t)ds->w * (uint64_t)ds->c;
    if (crc_of((uint32_t)crc32(0, Z_NULL, 0), ds->pixels, n) != info->pixels_crc)
        return dc_fail("%s: pixel checksum mismatch (the file is damaged; delete it to rebuild)", what);
    return 0;
}
