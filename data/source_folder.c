/*
 * An image folder: PNG and JPEG files found recursively, recognised by their
 * content, in sorted order of their paths (strcmp), so the order is the same
 * on every machine.
 *
 * - Hidden files and folders (a name starting with '.') are not read.
 *   Symbolic links are followed, but a folder already visited (same device
 *   and inode) is not entered again, so a link loop ends.
 * - Classes are the first-level subfolders, sorted by name (strcmp), as
 *   torchvision's ImageFolder does; an image's class is the subfolder it lies
 *   under, however deep. With no subfolder the set is unlabelled. When there
 *   are subfolders, images lying directly in the root belong to no class:
 *   they are skipped like bad files (one warning each), not guessed at.
 * - A file is an image when its content says PNG or JPEG. A file that does
 *   not, but whose name ends like an image (.png, .jpg, .gif, .webp, ...),
 *   is skipped with a warning ("not a PNG or JPEG file"); any other file
 *   (notes, label lists, metadata.jsonl) is ignored without a word.
 * - metadata.jsonl in the root, one JSON object per line, gives captions:
 *   {"file_name": "cats/01.png", "text": "a cat"} with file_name relative to
 *   the root (another key than "text" when the dataset's caption_column says). A line that is not such an object, names no image of the
 *   folder, or repeats one, is an error naming the line.
 */
#include "source.h"

#include "autograd/error.h"
#include "metadata.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILE_BYTES ((int64_t)1 << 30)

typedef struct {
    int n_classes;
    char **classes;  /* first-level subfolders, sorted */
    dev_t *seen_dev; /* folders visited, to end symlink loops */
    ino_t *seen_ino;
    int n_seen;
    uint8_t *outside; /* [count]: in the root of a folder with classes */
} folder_impl;

static const dc_source_ops folder_ops;

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int cmp_file(const void *a, const void *b) {
    return strcmp(((const dc_source_file *)a)->path, ((const dc_source_file *)b)->path);
}

/* ---- scanning ---- */

/* 1 when the folder was visited before, else records it. */
static int seen_before(folder_impl *m, const struct stat *st) {
    for (int i = 0; i < m->n_seen; i++)
        if (m->seen_dev[i] == st->st_dev && m->seen_ino[i] == st->st_ino)
            return 1;
    if (m->n_seen % 32 == 0) {
        dev_t *d = realloc(m->seen_dev, ((size_t)m->n_seen + 32) * sizeof *d);
        if (d)
            m->seen_dev = d;
        ino_t *n = realloc(m->seen_ino, ((size_t)m->n_seen + 32) * sizeof *n);
        if (n)
            m->seen_ino = n;
        if (!d || !n)
            return dc_fail("out of memory");
    }
    m->seen_dev[m->n_seen] = st->st_dev;
    m->seen_ino[m->n_seen++] = st->st_ino;
    return 0;
}

static int add_class(folder_impl *m, const char *name) {
    char **c = realloc(m->classes, ((size_t)m->n_classes + 1) * sizeof *c);
    if (!c)
        return dc_fail("out of memory");
    m->classes = c;
    return (c[m->n_classes] = dc_strdup(name)) ? (m->n_classes++, 0) : -1;
}

/* A file the cache itself may leave in the folder when the cache dir is
 * inside it: never part of the source (it would change on every build). */
static int is_cache_file(const char *name) {
    size_t n = strlen(name), k = strlen(DC_CACHE_SUFFIX);
    return (n > k && !strcmp(name + n - k, DC_CACHE_SUFFIX)) || strstr(name, DC_CACHE_SUFFIX ".tmp.");
}

static int walk(dc_source *s, folder_impl *m, const char *rel);

static int visit(dc_source *s, folder_impl *m, const char *rel, const char *name) {
    char path[PATH_MAX], sub[PATH_MAX];
    if ((size_t)snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", name) >= sizeof sub ||
        (size_t)snprintf(path, sizeof path, "%s/%s", s->root, sub) >= sizeof path)
        return dc_fail("%s/%s: path too long", s->root, sub);
    struct stat st;
    if (stat(path, &st) != 0) /* a dangling link: nothing to read */
        return 0;
    if (S_ISREG(st.st_mode))
        return is_cache_file(name) ? 0 : dc_source_add_file(s, sub, path);
    if (!S_ISDIR(st.st_mode))
        return 0;
    int rc = seen_before(m, &st);
    if (rc)
        return rc < 0 ? -1 : 0;
    if (!*rel && add_class(m, name))
        return -1;
    return walk(s, m, sub);
}

static int walk(dc_source *s, folder_impl *m, const char *rel) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s%s%s", s->root, *rel ? "/" : "", rel);
    DIR *d = opendir(path);
    if (!d)
        return dc_fail("%s: cannot list the folder: %s", path, strerror(errno));
    int rc = 0;
    for (struct dirent *e; !rc && (e = readdir(d));)
        if (e->d_name[0] != '.')
            rc = visit(s, m, rel, e->d_name);
    closedir(d);
    return rc;
}

int dc_folder_scan(dc_source *s, const char *path) {
    folder_impl *m = calloc(1, sizeof *m);
    if (!m)
        return dc_fail("out of memory");
    if (dc_source_init(s, "image folder", path, NULL, &folder_ops)) {
        free(m);
        return -1;
    }
    s->impl = m;
    struct stat st;
    int rc = stat(s->root, &st) == 0 ? seen_before(m, &st) : dc_fail("%s: %s", s->root, strerror(errno));
    rc = rc ? rc : walk(s, m, "");
    if (rc) {
        dc_source_free(s);
        return -1;
    }
    if (s->n_files)
        qsort(s->files, (size_t)s->n_files, sizeof *s->files, cmp_file);
    if (m->n_classes)
        qsort(m->classes, (size_t)m->n_classes, sizeof *m->classes, cmp_str);
    return 1;
}

/* ---- loading ---- */

static int has_image_name(const char *path) {
    static const char *const exts[] = {"png",  "jpg", "jpeg", "jpe", "jfif", "gif",  "bmp",  "webp", "tif",
                                       "tiff", "ppm", "pgm",  "pbm", "avif", "heic", "heif", "jxl",  "ico"};
    const char *dot = strrchr(path, '.');
    if (!dot || strchr(dot, '/'))
        return 0;
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++)
        if (!strcasecmp(dot + 1, exts[i]))
            return 1;
    return 0;
}

/* The format by the file's first bytes; UNKNOWN when unreadable. */
static dc_image_format sniff_file(const char *path) {
    uint8_t head[16];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, head, sizeof head) : -1;
    if (fd >= 0)
        close(fd);
    return n > 0 ? dc_image_sniff(head, (size_t)n) : DC_IMAGE_UNKNOWN;
}

/* The class of a relative path: its first folder's index, or -1 in the root. */
static int class_of(const folder_impl *m, const char *rel) {
    const char *slash = strchr(rel, '/');
    if (!slash)
        return -1;
    char first[NAME_MAX + 1];
    snprintf(first, sizeof first, "%.*s", (int)(slash - rel), rel);
    const char *key = first;
    char **hit = bsearch(&key, m->classes, (size_t)m->n_classes, sizeof *m->classes, cmp_str);
    return hit ? (int)(hit - m->classes) : -1;
}

static int is_item(const dc_source *s, const char *rel) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", s->root, rel);
    return strcmp(rel, DC_METADATA_FILE) && (sniff_file(path) != DC_IMAGE_UNKNOWN || has_image_name(rel));
}

int dc_folder_has_images(const char *path) {
    dc_source s;
    if (dc_folder_scan(&s, path) < 0)
        return -1;
    int found = 0;
    for (int f = 0; f < s.n_files && !found; f++)
        found = is_item(&s, s.files[f].path);
    dc_source_free(&s);
    return found;
}

/* The items: files that are images by content or by name, in path order. */
static int list_items(dc_source *s, folder_impl *m) {
    s->names = calloc((size_t)s->n_files + 1, sizeof *s->names);
    s->labels = calloc((size_t)s->n_files + 1, sizeof *s->labels);
    m->outside = calloc((size_t)s->n_files + 1, 1);
    if (!s->names || !s->labels || !m->outside)
        return dc_fail("out of memory");
    for (int f = 0; f < s->n_files; f++) {
        const char *rel = s->files[f].path;
        if (!is_item(s, rel))
            continue;
        int64_t i = s->count;
        if (!(s->names[i] = dc_strdup(rel)))
            return -1;
        s->labels[i] = m->n_classes ? class_of(m, rel) : -1;
        m->outside[i] = m->n_classes && s->labels[i] < 0;
        s->count++;
    }
    return 0;
}

/* ---- metadata.jsonl ---- */

typedef struct {
    const char *path;
    const char *column; /* the captions' key */
    int line;
} meta_ctx;

static int meta_fail(const meta_ctx *c, const char *fmt, ...) DC_PRINTF(2, 3);
static int meta_fail(const meta_ctx *c, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *q = msg; *q; q++) /* names from the file stay on one line */
        if ((unsigned char)*q < 0x20 || *q == 0x7f)
            *q = '?';
    return dc_fail("%s line %d: %s", c->path, c->line, msg);
}

/* The item named by a file_name, or -1. */
static int64_t find_item(const dc_source *s, const char *name) {
    while (!strncmp(name, "./", 2))
        name += 2;
    char **hit = bsearch(&name, s->names, (size_t)s->count, sizeof *s->names, cmp_str);
    return hit ? hit - s->names : -1;
}

static int meta_line(dc_source *s, const meta_ctx *c, const char *text, size_t len, int *first_line) {
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    int rc = 0;
    const cJSON *fn = o ? cJSON_GetObjectItemCaseSensitive(o, "file_name") : NULL,
                *tx = o ? cJSON_GetObjectItemCaseSensitive(o, c->column) : NULL;
    int64_t i = cJSON_IsString(fn) ? find_item(s, fn->valuestring) : -1;
    if (!o)
        rc = meta_fail(c, "not valid JSON (column %td)", end ? end - text + 1 : 1);
    else if (!cJSON_IsObject(o))
        rc = meta_fail(c, "not a JSON object");
    else if (!cJSON_IsString(fn))
        rc = meta_fail(c, "no \"file_name\" string");
    else if (i < 0)
        rc = meta_fail(c, "file_name '%s' is not an image in the folder", fn->valuestring);
    else if (first_line[i])
        rc = meta_fail(c, "'%s' is listed a second time (first on line %d)", fn->valuestring, first_line[i]);
    else if (tx && !cJSON_IsString(tx))
        rc = meta_fail(c, "\"%s\" is not a string", c->column);
    else if (tx && !(s->captions[i] = dc_strdup(tx->valuestring)))
        rc = -1;
    if (!rc && i >= 0)
        first_line[i] = c->line;
    cJSON_Delete(o);
    return rc;
}

static int is_blank(const char *p, const char *e) {
    for (; p < e; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r')
            return 0;
    return 1;
}

static int read_metadata(dc_source *s) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", s->root, DC_METADATA_FILE);
    if (access(path, F_OK) != 0)
        return 0;
    const void *map;
    size_t size;
    if (dc_map_file(path, &map, &size))
        return -1;
    s->captions = calloc((size_t)s->count + 1, sizeof *s->captions);
    int *first_line = calloc((size_t)s->count + 1, sizeof *first_line);
    int rc = s->captions && first_line ? 0 : dc_fail("out of memory");
    meta_ctx c = {path, s->caption_column ? s->caption_column : "text", 0};
    const char *p = map, *end = size ? p + size : p; /* an empty file maps to NULL */
    if (size >= 3 && !memcmp(p, "\xef\xbb\xbf", 3)) /* a UTF-8 byte order mark */
        p += 3;
    while (!rc && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p)), *e = nl ? nl : end;
        c.line++;
        if (!is_blank(p, e))
            rc = meta_line(s, &c, p, (size_t)(e - p), first_line);
        p = e + 1;
    }
    free(first_line);
    dc_unmap_file(map, size);
    return rc;
}

static int folder_load(dc_source *s) {
    folder_impl *m = s->impl;
    if (list_items(s, m) || read_metadata(s))
        return -1;
    if (s->count == 0)
        return dc_fail("%s: no PNG or JPEG image in the folder", s->root);
    return dc_source_set_classes(s, m->n_classes, (const char *const *)m->classes);
}

/* ---- one image ---- */

static uint8_t *read_file(const char *path, size_t *n) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        dc_fail("cannot open: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    uint8_t *buf = NULL;
    if (fstat(fd, &st) != 0)
        dc_fail("cannot stat: %s", strerror(errno));
    else if (st.st_size == 0)
        dc_fail("empty file");
    else if (st.st_size > MAX_FILE_BYTES)
        dc_fail("file of %lld bytes, over the %lld-byte limit", (long long)st.st_size,
                (long long)MAX_FILE_BYTES);
    else if (!(buf = malloc((size_t)st.st_size)))
        dc_fail("out of memory for %lld bytes", (long long)st.st_size);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t k = read(fd, buf + got, (size_t)st.st_size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            dc_fail("read failed: %s", k ? strerror(errno) : "the file shrank");
            free(buf);
            buf = NULL;
        }
        got += k > 0 ? (size_t)k : 0;
    }
    close(fd);
    *n = got;
    return buf;
}

/* The decoder's message names the file; ours are reasons after the name. */
static void strip_name(const char *name) {
    const char *msg = dc_error();
    size_t k = strlen(name);
    if (!strncmp(msg, name, k) && !strncmp(msg + k, ": ", 2)) {
        char reason[1024];
        snprintf(reason, sizeof reason, "%s", msg + k + 2);
        dc_fail("%s", reason);
    }
}

static int folder_image(const dc_source *s, int64_t i, dc_image *img) {
    const folder_impl *m = s->impl;
    if (m->outside[i])
        return dc_fail("outside the class folders (the root has class subfolders)"), 1;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", s->root, s->names[i]);
    size_t n;
    uint8_t *buf = read_file(path, &n);
    if (!buf)
        return 1;
    int rc = dc_image_decode(img, buf, n, s->names[i]);
    free(buf);
    if (rc)
        strip_name(s->names[i]);
    return rc ? 1 : 0;
}

static void folder_free(dc_source *s) {
    folder_impl *m = s->impl;
    if (!m)
        return;
    for (int i = 0; i < m->n_classes; i++)
        free(m->classes[i]);
    free(m->classes);
    free(m->seen_dev);
    free(m->seen_ino);
    free(m->outside);
    free(m);
    s->impl = NULL;
}

static const dc_source_ops folder_ops = {folder_load, folder_image, folder_free};
