/*
 * safetensors weight files: the validating reader and the atomic writer (see
 * safetensors.h).
 *
 * The reader trusts nothing in the file. Every number from the header is
 * range-checked before it is used as an offset or a size, the JSON is parsed
 * with an explicit length (the header is not NUL-terminated in the map), and
 * every message names the file and, where there is one, the tensor.
 *
 * The writer lays the data out as the reference implementation does and
 * requires: contiguous, with no gaps, starting at offset 0 and ending at the
 * end of the file (PyTorch's safetensors refuses files with holes). Tensors
 * are stored in order of decreasing element size, stably, so with the header
 * padded to 8 bytes every tensor starts at a multiple of its own element size.
 */
#include "safetensors.h"

#include "error.h"
#include "fileio.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_HEADER 100000000u        /* the reference implementation's limit */
#define MAX_EXACT 9007199254740992.0 /* 2^53: JSON numbers are doubles in cJSON */
#define META_KEY "__metadata__"

/* ---- dtypes ---- */

typedef struct {
    const char *name;
    size_t size;
    int dtype; /* dc_dtype, or -1 */
} st_dtype;

static const st_dtype dtypes[] = {
    {"F32", 4, DC_F32}, {"BF16", 2, DC_BF16}, {"F16", 2, DC_F16}, {"I32", 4, DC_I32}, {"U8", 1, DC_U8},
    {"BOOL", 1, -1},    {"I8", 1, -1},        {"U16", 2, -1},     {"I16", 2, -1},     {"U32", 4, -1},
    {"F64", 8, -1},     {"I64", 8, -1},       {"U64", 8, -1},     {"F8_E4M3", 1, -1}, {"F8_E5M2", 1, -1},
};

static const st_dtype *dtype_by_name(const char *name) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (!strcmp(dtypes[i].name, name))
            return &dtypes[i];
    return NULL;
}

static const st_dtype *dtype_by_dc(int dtype) {
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (dtypes[i].dtype >= 0 && dtypes[i].dtype == dtype)
            return &dtypes[i];
    return NULL;
}

/* ---- shared checks ---- */

/* `s` made fit for a one-line message: control bytes become '?', long names
 * are cut. Names come from untrusted files. */
static const char *shown(char *buf, size_t n, const char *s) {
    size_t i = 0;
    for (; s[i] && i + 4 < n; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (s[i])
        memcpy(buf + i, "...", 3), i += 3;
    buf[i] = '\0';
    return buf;
}

/* Index of the first byte that is not well-formed UTF-8 (overlongs,
 * surrogates and code points past U+10FFFF included), or len when all are. */
static size_t utf8_valid_prefix(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t k = c < 0x80             ? 0
                   : (c & 0xe0) == 0xc0 ? 1
                   : (c & 0xf0) == 0xe0 ? 2
                   : (c & 0xf8) == 0xf0 ? 3
                                        : 4;
        if (k == 4 || k >= len - i)
            return i;
        uint32_t cp = k == 0 ? c : c & (0x3f >> k);
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return i;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return i;
        i += k + 1;
    }
    return len;
}

static int utf8_ok(const char *s) {
    return utf8_valid_prefix((const unsigned char *)s, strlen(s)) == strlen(s);
}

/* Shape x element size must be exactly nbytes, computed without overflow.
 * `what` names where nbytes came from, for the message. */
static int check_shape(const char *file, const char *name, int ndim, const int64_t *shape, size_t elem,
                       uint64_t nbytes, const char *what) {
    char nb[128], sb[160];
    if (ndim < 0 || ndim > DC_ST_MAX_DIMS)
        return dc_fail("%s: tensor '%s': %d dimensions, at most %d are allowed", file,
                       shown(nb, sizeof nb, name), ndim, DC_ST_MAX_DIMS);
    uint64_t total = elem;
    int overflow = 0, zero = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || shape[i] > (int64_t)MAX_EXACT)
            return dc_fail("%s: tensor '%s': dimension %d is %" PRId64 ", not in [0, 2^53]", file,
                           shown(nb, sizeof nb, name), i, shape[i]);
        overflow |= __builtin_mul_overflow(total, (uint64_t)shape[i], &total);
        zero |= shape[i] == 0;
    }
    dc_shape_str(sb, sizeof sb, ndim, shape);
    if (zero) /* an empty tensor, however large its other dimensions */
        total = 0;
    else if (overflow)
        return dc_fail("%s: tensor '%s': shape %s x %zu bytes overflows 64 bits", file,
                       shown(nb, sizeof nb, name), sb, elem);
    if (total != nbytes)
        return dc_fail("%s: tensor '%s': shape %s x %zu bytes = %" PRIu64 " bytes, but %s %" PRIu64, file,
                       shown(nb, sizeof nb, name), sb, elem, total, what, nbytes);
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* A name that occurs twice among names[0..n), or NULL. */
static const char *find_duplicate(char *const *names, int n) {
    if (n < 2)
        return NULL;
    char **sorted = malloc((size_t)n * sizeof *sorted);
    if (!sorted)
        return NULL;
    memcpy(sorted, names, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_str_ptr);
    const char *dup = NULL;
    for (int i = 1; i < n && !dup; i++)
        if (!strcmp(sorted[i - 1], sorted[i]))
            dup = sorted[i];
    free(sorted);
    return dup;
}

/* ---- reader ---- */

typedef struct {
    const char *file;          /* path or "<buffer>", for messages */
    const unsigned char *data; /* the data block */
    uint64_t data_size;
} parse_ctx;

static const char *json_type(const cJSON *v) {
    return cJSON_IsObject(v)   ? "an object"
           : cJSON_IsArray(v)  ? "an array"
           : cJSON_IsString(v) ? "a string"
           : cJSON_IsNumber(v) ? "a number"
           : cJSON_IsBool(v)   ? "a boolean"
                               : "null";
}

/* A non-negative integer that a double holds exactly. */
static int json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= MAX_EXACT) || d != floor(d))
        return -1;
    *out = (uint64_t)d;
    return 0;
}

static int parse_shape(const parse_ctx *c, const char *name, const cJSON *shape, dc_st_tensor *t) {
    char nb[128];
    if (!cJSON_IsArray(shape))
        return dc_fail("%s: tensor '%s': \"shape\" is %s, not an array", c->file, shown(nb, sizeof nb, name),
                       shape ? json_type(shape) : "missing");
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > DC_ST_MAX_DIMS)
        return dc_fail("%s: tensor '%s': shape has %d dimensions, at most %d are allowed", c->file,
                       shown(nb, sizeof nb, name), ndim, DC_ST_MAX_DIMS);
    int i = 0;
    for (const cJSON *d = shape->child; d; d = d->next, i++) {
        uint64_t v;
        if (json_uint(d, &v)) {
            if (cJSON_IsNumber(d))
                return dc_fail("%s: tensor '%s': dimension %d is %.17g, not an integer in [0, 2^53]", c->file,
                               shown(nb, sizeof nb, name), i, d->valuedouble);
            return dc_fail("%s: tensor '%s': dimension %d is %s, not an integer", c->file,
                           shown(nb, sizeof nb, name), i, json_type(d));
        }
        t->shape[i] = (int64_t)v;
    }
    t->ndim = ndim;
    return 0;
}

static int parse_offsets(const parse_ctx *c, const char *name, const cJSON *offs, uint64_t *begin,
                         uint64_t *end) {
    char nb[128];
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || json_uint(offs->child, begin) ||
        json_uint(offs->child->next, end))
        return dc_fail("%s: tensor '%s': \"data_offsets\" is %s, not [begin, end] with integer offsets",
                       c->file, shown(nb, sizeof nb, name), offs ? json_type(offs) : "missing");
    if (*begin > *end)
        return dc_fail("%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                       c->file, shown(nb, sizeof nb, name), *begin, *end);
    if (*end > c->data_size)
        return dc_fail("%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                       "] run past the end of the data (%" PRIu64 " bytes)",
                       c->file, shown(nb, sizeof nb, name), *begin, *end, c->data_size);
    return 0;
}

static int parse_tensor(const parse_ctx *c, const cJSON *item, dc_st_tensor *t) {
    char nb[128];
    if (!(t->name = strdup(item->string)))
        return dc_fail("%s: out of memory", c->file);
    const char *name = t->name;
    if (!cJSON_IsObject(item))
        return dc_fail("%s: tensor '%s': entry is %s, not an object", c->file, shown(nb, sizeof nb, name),
                       json_type(item));
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    if (!cJSON_IsString(dt))
        return dc_fail("%s: tensor '%s': \"dtype\" is %s, not a string", c->file, shown(nb, sizeof nb, name),
                       dt ? json_type(dt) : "missing");
    const st_dtype *d = dtype_by_name(dt->valuestring);
    if (!d) {
        char db[64];
        return dc_fail("%s: tensor '%s': unknown dtype '%s'", c->file, shown(nb, sizeof nb, name),
                       shown(db, sizeof db, dt->valuestring));
    }
    snprintf(t->dtype_name, sizeof t->dtype_name, "%s", d->name);
    t->dtype = d->dtype;
    t->elem_size = d->size;
    uint64_t begin = 0, end = 0;
    if (parse_shape(c, name, cJSON_GetObjectItemCaseSensitive(item, "shape"), t) ||
        parse_offsets(c, name, cJSON_GetObjectItemCaseSensitive(item, "data_offsets"), &begin, &end) ||
        check_shape(c->file, name, t->ndim, t->shape, t->elem_size, end - begin, "data_offsets span"))
        return -1;
    t->data = c->data + begin;
    t->nbytes = (size_t)(end - begin);
    return 0;
}

static int parse_meta(const parse_ctx *c, const cJSON *meta, dc_st_file *f) {
    char kb[128];
    if (!cJSON_IsObject(meta))
        return dc_fail("%s: \"%s\" is %s, not an object of strings", c->file, META_KEY, json_type(meta));
    int n = cJSON_GetArraySize(meta);
    f->meta_keys = calloc((size_t)n + 1, sizeof *f->meta_keys);
    f->meta_values = calloc((size_t)n + 1, sizeof *f->meta_values);
    if (!f->meta_keys || !f->meta_values)
        return dc_fail("%s: out of memory", c->file);
    for (const cJSON *m = meta->child; m; m = m->next) {
        if (!cJSON_IsString(m))
            return dc_fail("%s: %s key '%s' is %s, not a string", c->file, META_KEY,
                           shown(kb, sizeof kb, m->string), json_type(m));
        int i = f->n_meta++;
        f->meta_keys[i] = strdup(m->string);
        f->meta_values[i] = strdup(m->valuestring);
        if (!f->meta_keys[i] || !f->meta_values[i])
            return dc_fail("%s: out of memory", c->file);
    }
    const char *dup = find_duplicate(f->meta_keys, f->n_meta);
    if (dup)
        return dc_fail("%s: %s key '%s' appears twice", c->file, META_KEY, shown(kb, sizeof kb, dup));
    return 0;
}

/* The fixed part: the length prefix, and a header of text that is valid UTF-8
 * without control bytes (JSON allows none outside whitespace). */
static int check_prefix(const char *file, const unsigned char *buf, size_t size, uint64_t *n) {
    if (size < 8)
        return dc_fail("%s: file is %zu bytes, too short for a safetensors file (8-byte header length)", file,
                       size);
    *n = 0;
    for (int i = 7; i >= 0; i--)
        *n = *n << 8 | buf[i];
    if (*n > size - 8)
        return dc_fail("%s: header length %" PRIu64 " runs past the end of the file (%zu bytes)", file, *n,
                       size);
    if (*n > MAX_HEADER)
        return dc_fail("%s: header length %" PRIu64 " is over the %u-byte limit", file, *n, MAX_HEADER);
    const unsigned char *h = buf + 8;
    size_t bad = utf8_valid_prefix(h, (size_t)*n);
    if (bad < *n)
        return dc_fail("%s: header is not valid UTF-8 (byte %zu)", file, bad);
    for (size_t i = 0; i < *n; i++)
        if (h[i] < 0x20 && h[i] != ' ' && h[i] != '\t' && h[i] != '\n' && h[i] != '\r')
            return dc_fail("%s: header has control byte 0x%02x at byte %zu", file, h[i], i);
    return 0;
}

static int cmp_data(const void *a, const void *b) {
    const dc_st_tensor *x = a, *y = b;
    const char *px = x->data, *py = y->data;
    if (px != py)
        return px < py ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Sorted by data offset, each range must end before the next one begins. */
static int check_layout(const parse_ctx *c, dc_st_file *f) {
    char ab[128], bb[128];
    qsort(f->tensors, (size_t)f->n, sizeof *f->tensors, cmp_data);
    for (int i = 1; i < f->n; i++) {
        const dc_st_tensor *a = &f->tensors[i - 1], *b = &f->tensors[i];
        size_t a0 = (size_t)((const unsigned char *)a->data - c->data),
               b0 = (size_t)((const unsigned char *)b->data - c->data);
        if (a0 + a->nbytes > b0)
            return dc_fail("%s: tensor '%s': data_offsets [%zu, %zu] overlap tensor '%s' [%zu, %zu]", c->file,
                           shown(bb, sizeof bb, b->name), b0, b0 + b->nbytes, shown(ab, sizeof ab, a->name),
                           a0, a0 + a->nbytes);
    }
    char **names = malloc(((size_t)f->n + 1) * sizeof *names);
    if (!names)
        return dc_fail("%s: out of memory", c->file);
    for (int i = 0; i < f->n; i++)
        names[i] = f->tensors[i].name;
    const char *dup = find_duplicate(names, f->n);
    int rc = dup ? dc_fail("%s: tensor '%s' appears twice", c->file, shown(ab, sizeof ab, dup)) : 0;
    free(names);
    return rc;
}

static int parse_root(const parse_ctx *c, const cJSON *root, dc_st_file *f) {
    if (!cJSON_IsObject(root))
        return dc_fail("%s: header is %s, not a JSON object", c->file, json_type(root));
    int n_items = cJSON_GetArraySize(root), n_meta = 0;
    for (const cJSON *it = root->child; it; it = it->next)
        n_meta += !strcmp(it->string, META_KEY);
    if (n_meta > 1)
        return dc_fail("%s: \"%s\" appears %d times", c->file, META_KEY, n_meta);
    f->tensors = calloc((size_t)(n_items - n_meta) + 1, sizeof *f->tensors);
    if (!f->tensors)
        return dc_fail("%s: out of memory", c->file);
    for (const cJSON *it = root->child; it; it = it->next) {
        int rc =
            !strcmp(it->string, META_KEY) ? parse_meta(c, it, f) : parse_tensor(c, it, &f->tensors[f->n++]);
        if (rc)
            return rc;
    }
    return check_layout(c, f);
}

static int parse_image(dc_st_file *f, const void *buf, size_t size, const char *file) {
    memset(f, 0, sizeof *f);
    uint64_t n;
    if (check_prefix(file, buf, size, &n))
        return -1;
    const char *header = (const char *)buf + 8, *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(header, (size_t)n, &end, 0);
    if (!root)
        return dc_fail("%s: header is not valid JSON (error at byte %td of %" PRIu64 ")", file,
                       end ? end - header : 0, n);
    for (const char *p = end; p < header + n; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return dc_fail("%s: header has bytes after the JSON object (byte %td of %" PRIu64 ")", file,
                           p - header, n);
        }
    parse_ctx c = {file, (const unsigned char *)header + n, size - 8 - n};
    int rc = parse_root(&c, root, f);
    cJSON_Delete(root);
    if (rc)
        dc_st_close(f);
    return rc;
}

int dc_st_parse(dc_st_file *f, const void *buf, size_t size) { return parse_image(f, buf, size, "<buffer>"); }

int dc_st_open(dc_st_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dc_fail("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return dc_fail("%s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return dc_fail("%s: %s, not a safetensors file", path,
                       S_ISDIR(st.st_mode) ? "a directory" : "a special file");
    }
    uint64_t n;
    size_t size = (size_t)st.st_size;
    if (size < 8) { /* nothing to map: report the short file */
        close(fd);
        return check_prefix(path, NULL, size, &n);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (map == MAP_FAILED)
        return dc_fail("%s: cannot map %zu bytes: %s", path, size, strerror(err));
    if (parse_image(f, map, size, path)) {
        munmap(map, size);
        return -1;
    }
    f->map = map;
    f->map_size = size;
    return 0;
}

void dc_st_close(dc_st_file *f) {
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->map_size);
    for (int i = 0; i < f->n; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    for (int i = 0; i < f->n_meta; i++)
        free(f->meta_keys[i]), free(f->meta_values[i]);
    free(f->meta_keys);
    free(f->meta_values);
    memset(f, 0, sizeof *f);
}

const dc_st_tensor *dc_st_find(const dc_st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->tensors[i].name, name))
            return &f->tensors[i];
    return NULL;
}

const char *dc_st_meta(const dc_st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], key))
            return f->meta_values[i];
    return NULL;
}

/* ---- writer ---- */

/* A growing string for the header; a failed allocation sticks. */
typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n) {
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_printf(strbuf *b, const char *fmt, ...) DC_PRINTF(2, 3);
static void sb_printf(strbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A JSON string literal: quotes, backslashes and control bytes escaped. */
static void sb_json_string(strbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            sb_put(b, "\\", 1), sb_put(b, s, 1);
        else if (ch < 0x20)
            sb_printf(b, "\\u%04x", ch);
        else
            sb_put(b, s, 1);
    }
    sb_put(b, "\"", 1);
}

/* What the writer stores for each input tensor. */
typedef struct {
    const dc_st_tensor *t;
    const st_dtype *dtype;
} out_tensor;

static int prepare_tensor(const char *path, const dc_st_tensor *t, out_tensor *o) {
    char nb[128];
    if (!t->name)
        return dc_fail("%s: a tensor has no name", path);
    if (!strcmp(t->name, META_KEY) || !utf8_ok(t->name))
        return dc_fail("%s: tensor '%s': the name is %s", path, shown(nb, sizeof nb, t->name),
                       strcmp(t->name, META_KEY) ? "not valid UTF-8" : "reserved for metadata");
    o->t = t;
    o->dtype = t->dtype_name[0] ? dtype_by_name(t->dtype_name) : dtype_by_dc(t->dtype);
    if (!o->dtype)
        return dc_fail("%s: tensor '%s': unknown dtype %s (%d)", path, shown(nb, sizeof nb, t->name),
                       t->dtype_name[0] ? t->dtype_name : "", t->dtype);
    if (check_shape(path, t->name, t->ndim, t->shape, o->dtype->size, t->nbytes, "nbytes is"))
        return -1;
    if (t->nbytes && !t->data)
        return dc_fail("%s: tensor '%s': no data", path, shown(nb, sizeof nb, t->name));
    return 0;
}

static int cmp_out(const void *a, const void *b) {
    const out_tensor *x = a, *y = b;
    if (x->dtype->size != y->dtype->size)
        return x->dtype->size > y->dtype->size ? -1 : 1;
    return x->t < y->t ? -1 : x->t > y->t; /* stable: input order */
}

/* The header JSON, padded with spaces to a multiple of 8 bytes. */
static int build_header(const char *path, const out_tensor *o, int n, const char *const *keys,
                        const char *const *values, int n_meta, strbuf *b) {
    char kb[128];
    sb_put(b, "{", 1);
    if (n_meta > 0) {
        sb_json_string(b, META_KEY);
        sb_put(b, ":{", 2);
        for (int i = 0; i < n_meta; i++) {
            if (!keys[i] || !values[i] || !utf8_ok(keys[i]) || !utf8_ok(values[i]))
                return dc_fail("%s: metadata entry %d ('%s') is missing or not valid UTF-8", path, i,
                               keys[i] ? shown(kb, sizeof kb, keys[i]) : "");
            if (i)
                sb_put(b, ",", 1);
            sb_json_string(b, keys[i]);
            sb_put(b, ":", 1);
            sb_json_string(b, values[i]);
        }
        sb_put(b, "}", 1);
        const char *dup = find_duplicate((char *const *)keys, n_meta);
        if (dup)
            return dc_fail("%s: metadata key '%s' appears twice", path, shown(kb, sizeof kb, dup));
    }
    uint64_t offset = 0, end;
    for (int i = 0; i < n; i++) {
        const dc_st_tensor *t = o[i].t;
        if (__builtin_add_overflow(offset, (uint64_t)t->nbytes, &end))
            return dc_fail("%s: the tensors add up to more than 2^64 bytes", path);
        if (n_meta > 0 || i)
            sb_put(b, ",", 1);
        sb_json_string(b, t->name);
        sb_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", o[i].dtype->name);
        for (int d = 0; d < t->ndim; d++)
            sb_printf(b, d ? ",%" PRId64 : "%" PRId64, t->shape[d]);
        sb_printf(b, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", offset, end);
        offset = end;
    }
    sb_put(b, "}", 1);
    while (!b->failed && b->len % 8)
        sb_put(b, " ", 1);
    return b->failed ? dc_fail("%s: out of memory for the header", path) : 0;
}

static int write_file(const char *path, const strbuf *hdr, const out_tensor *o, int n) {
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp)
        return dc_fail("%s: out of memory", path);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        int err = errno;
        dc_fail("%s: cannot create %s: %s", path, tmp, strerror(err));
        free(tmp);
        return -1;
    }
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)((uint64_t)hdr->len >> (8 * i));
    int ok = fwrite(len, 1, 8, fp) == 8 && fwrite(hdr->p, 1, hdr->len, fp) == hdr->len;
    for (int i = 0; ok && i < n; i++)
        ok = !o[i].t->nbytes || fwrite(o[i].t->data, 1, o[i].t->nbytes, fp) == o[i].t->nbytes;
    ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    int err = ok ? 0 : errno;
    if (fclose(fp) != 0 && ok)
        ok = 0, err = errno;
    if (ok && rename(tmp, path) != 0)
        ok = 0, err = errno;
    if (!ok) {
        unlink(tmp);
        dc_fail("%s: cannot write: %s", path, strerror(err ? err : EIO));
    }
    free(tmp);
    if (ok)
        (void)dc_sync_parent(path); /* best effort: the file is complete either way */
    return ok ? 0 : -1;
}

int dc_st_write(const char *path, const dc_st_tensor *tensors, int n, const char *const *meta_keys,
                const char *const *meta_values, int n_meta) {
    char nb[128];
    if (n < 0 || n_meta < 0 || (n > 0 && !tensors) || (n_meta > 0 && (!meta_keys || !meta_values)))
        return dc_fail("%s: bad arguments: %d tensors, %d metadata entries", path, n, n_meta);
    out_tensor *o = calloc((size_t)n + 1, sizeof *o);
    char **names = calloc((size_t)n + 1, sizeof *names);
    strbuf hdr = {0};
    int rc = o && names ? 0 : dc_fail("%s: out of memory", path);
    for (int i = 0; !rc && i < n; i++) {
        rc = prepare_tensor(path, &tensors[i], &o[i]);
        names[i] = tensors[i].name;
    }
    const char *dup = rc ? NULL : find_duplicate(names, n);
    if (dup)
        rc = dc_fail("%s: tensor '%s' appears twice", path, shown(nb, sizeof nb, dup));
    if (!rc) {
        qsort(o, (size_t)n, sizeof *o, cmp_out);
        rc = build_header(path, o, n, meta_keys, meta_values, n_meta, &hdr);
    }
    if (!rc)
        rc = write_file(path, &hdr, o, n);
    free(hdr.p);
    free(names);
    free(o);
    return rc;
}

/* ---- sharded weights: the index and the set of files ---- */

static bool ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), k = strlen(tail);
    return n >= k && !strcmp(s + n - k, tail);
}

static bool has_control(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

/* Why `file` cannot be a shard beside the index, or NULL. */
static const char *bad_shard_name(const char *file) {
    return strchr(file, '/') || strchr(file, '\\') ? "a path, not a file name beside the index"
           : has_control(file)                     ? "a control character in the name"
           : strlen(file) > 255                    ? "a name longer than 255 bytes"
           : !ends_with(file, ".safetensors")      ? "not a .safetensors file"
                                                   : NULL;
}

typedef struct {
    const char *name, *file;
} index_entry;

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const index_entry *)a)->name, ((const index_entry *)b)->name);
}

/* Each entry of weight_map checked, into e[0..n) and files[0..n). */
static int read_entries(const cJSON *map, const char *what, index_entry *e, const char **files) {
    char nb[96], fb[96];
    int i = 0;
    for (const cJSON *m = map->child; m; m = m->next, i++) {
        const char *why = !cJSON_IsString(m) ? "not a string" : bad_shard_name(m->valuestring);
        if (why)
            return dc_fail("%s: weight_map: '%s' -> %s%s%s: %s", what, shown(nb, sizeof nb, m->string),
                           cJSON_IsString(m) ? "'" : "",
                           cJSON_IsString(m) ? shown(fb, sizeof fb, m->valuestring) : json_type(m),
                           cJSON_IsString(m) ? "'" : "", why);
        e[i] = (index_entry){m->string, m->valuestring};
        files[i] = m->valuestring;
    }
    return 0;
}

/* The sorted entries and their distinct files into ix. */
static int fill_index(dc_st_index *ix, const index_entry *e, const char **files, int n,
                      const char *what) {
    int nf = 0;
    for (int i = 0; i < n; i++)
        if (!nf || strcmp(files[nf - 1], files[i]))
            files[nf++] = files[i];
    if (nf > DC_ST_MAX_SHARDS)
        return dc_fail("%s: %d shard files, at most %d are allowed", what, nf, DC_ST_MAX_SHARDS);
    ix->names = calloc((size_t)n, sizeof *ix->names);
    ix->shard = calloc((size_t)n, sizeof *ix->shard);
    ix->files = calloc((size_t)nf, sizeof *ix->files);
    if (!ix->names || !ix->shard || !ix->files)
        return dc_fail("%s: out of memory", what);
    ix->n = n, ix->n_files = nf;
    for (int j = 0; j < nf; j++)
        if (!(ix->files[j] = strdup(files[j])))
            return dc_fail("%s: out of memory", what);
    for (int i = 0; i < n; i++) {
        const char **hit = bsearch(&e[i].file, files, (size_t)nf, sizeof *files, cmp_str_ptr);
        ix->shard[i] = (int)(hit - files);
        if (!(ix->names[i] = strdup(e[i].name)))
            return dc_fail("%s: out of memory", what);
    }
    return 0;
}

static int parse_index(dc_st_index *ix, const cJSON *root, const char *what) {
    const cJSON *map = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(root))
        return dc_fail("%s: a safetensors index must be a JSON object, got %s", what, json_type(root));
    if (!cJSON_IsObject(map) || !map->child)
        return dc_fail("%s: weight_map must be an object naming each tensor's shard, got %s", what,
                       !map ? "nothing" : cJSON_IsObject(map) ? "an empty object" : json_type(map));
    int n = cJSON_GetArraySize(map);
    index_entry *e = malloc((size_t)n * sizeof *e);
    const char **files = malloc((size_t)n * sizeof *files);
    int rc = !e || !files ? dc_fail("%s: out of memory", what) : read_entries(map, what, e, files);
    if (!rc) {
        qsort(e, (size_t)n, sizeof *e, cmp_entry);
        qsort(files, (size_t)n, sizeof *files, cmp_str_ptr);
        rc = fill_index(ix, e, files, n, what);
    }
    free(e);
    free(files);
    return rc;
}

int dc_st_index_parse(dc_st_index *ix, const char *text, size_t len, const char *what) {
    memset(ix, 0, sizeof *ix);
    if (len > DC_ST_MAX_INDEX)
        return dc_fail("%s: %zu bytes, over the %u-byte limit of an index", what, len, DC_ST_MAX_INDEX);
    cJSON *root = dc_json_parse(text, len, what); /* refuses a tensor listed twice */
    int rc = root ? parse_index(ix, root, what) : -1;
    cJSON_Delete(root);
    if (rc)
        dc_st_index_free(ix);
    return rc;
}

int dc_st_index_load(dc_st_index *ix, const char *path) {
    memset(ix, 0, sizeof *ix);
    size_t n;
    char *text = dc_read_file(path, DC_ST_MAX_INDEX, &n);
    int rc = text ? dc_st_index_parse(ix, text, n, path) : -1;
    free(text);
    return rc;
}

void dc_st_index_free(dc_st_index *ix) {
    if (!ix)
        return;
    for (int i = 0; ix->names && i < ix->n; i++)
        free(ix->names[i]);
    for (int j = 0; ix->files && j < ix->n_files; j++)
        free(ix->files[j]);
    free(ix->names);
    free(ix->shard);
    free(ix->files);
    memset(ix, 0, sizeof *ix);
}

/* Every tensor of every shard where the index puts it, and every entry found. */
static int check_shards(const dc_st_set *s, const dc_st_index *ix, const char *index) {
    bool *seen = calloc((size_t)ix->n, sizeof *seen);
    if (!seen)
        return dc_fail("%s: out of memory", index);
    char nb[96];
    int rc = 0;
    for (int f = 0; !rc && f < s->n; f++)
        for (int i = 0; !rc && i < s->files[f].n; i++) {
            const char *name = s->files[f].tensors[i].name;
            char **hit = bsearch(&name, ix->names, (size_t)ix->n, sizeof *ix->names, cmp_str_ptr);
            int k = hit ? (int)(hit - ix->names) : -1;
            if (k < 0)
                rc = dc_fail("%s: %s holds '%s', which the index does not list", index, s->paths[f],
                             shown(nb, sizeof nb, name));
            else if (ix->shard[k] != f)
                rc = dc_fail("%s: '%s' is in %s, but the index puts it in %s", index,
                             shown(nb, sizeof nb, name), s->paths[f], ix->files[ix->shard[k]]);
            else
                seen[k] = true;
        }
    for (int k = 0; !rc && k < ix->n; k++)
        if (!seen[k])
            rc = dc_fail("%s: the index puts '%s' in %s, which does not hold it", index,
                         shown(nb, sizeof nb, ix->names[k]), s->paths[ix->shard[k]]);
    free(seen);
    return rc;
}

/* The folder part of `path` ("." when it has none), malloc'ed. */
static char *folder_of(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
}

/* Room for n files; the paths to be set by the caller. */
static int set_alloc(dc_st_set *s, int n, const char *what) {
    s->files = calloc((size_t)n, sizeof *s->files);
    s->paths = calloc((size_t)n, sizeof *s->paths);
    return s->files && s->paths ? 0 : dc_fail("%s: out of memory", what);
}

static int open_shards(dc_st_set *s, const dc_st_index *ix, const char *index) {
    char *dir = folder_of(index);
    int rc = !dir ? dc_fail("%s: out of memory", index) : set_alloc(s, ix->n_files, index);
    for (int f = 0; !rc && f < ix->n_files; f++) {
        s->paths[f] = dc_path_join(dir, ix->files[f]);
        rc = !s->paths[f] ? -1 : dc_st_open(&s->files[f], s->paths[f]) ? dc_fail_prefix(index) : 0;
        s->n = f + 1;
    }
    free(dir);
    return rc ? rc : check_shards(s, ix, index);
}

int dc_st_set_open(dc_st_set *s, const char *path) {
    memset(s, 0, sizeof *s);
    int rc;
    if (!ends_with(path, ".json")) {
        rc = set_alloc(s, 1, path);
        if (!rc && !(s->paths[0] = strdup(path)))
            rc = dc_fail("%s: out of memory", path);
        s->n = 1;
        rc = rc ? rc : dc_st_open(&s->files[0], path);
    } else {
        dc_st_index ix;
        rc = dc_st_index_load(&ix, path) || open_shards(s, &ix, path) ? -1 : 0;
        dc_st_index_free(&ix);
    }
    if (rc)
        dc_st_set_close(s);
    return rc;
}

void dc_st_set_close(dc_st_set *s) {
    if (!s)
        return;
    for (int f = 0; f < s->n; f++) {
        dc_st_close(&s->files[f]);
        free(s->paths[f]);
    }
    free(s->files);
    free(s->paths);
    memset(s, 0, sizeof *s);
}

void dc_st_set_release(const dc_st_set *s, const dc_st_tensor *t) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), lo = (uintptr_t)t->data, hi = lo + t->nbytes;
    for (int i = 0; i < s->n; i++) {
        uintptr_t map = (uintptr_t)s->files[i].map;
        if (!map || lo < map || hi > map + s->files[i].map_size)
            continue;
        uintptr_t first = (lo + page - 1) / page * page, last = hi / page * page;
        if (first < last)
            madvise((void *)first, last - first, MADV_DONTNEED);
        return;
    }
}
