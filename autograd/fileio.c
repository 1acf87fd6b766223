/*
 * File system chores of training (see files.h). Durable means fsync'ed: a
 * checkpoint that the OS still holds in its page cache when the machine
 * loses power is not a checkpoint.
 */
#define _GNU_SOURCE /* nftw's FTW_PHYS, O_DIRECTORY */
#include "fileio.h"

#include "autograd/error.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *dc_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) {
        dc_fail("%s/%s: out of memory", dir, name);
        return NULL;
    }
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* ---- folders ---- */

static int mkdir_one(const char *path) {
    if (mkdir(path, 0777) == 0)
        return 0;
    int err = errno;
    struct stat st;
    if (err == EEXIST && stat(path, &st) == 0)
        return S_ISDIR(st.st_mode) ? 0 : dc_fail("%s: exists and is not a folder", path);
    return dc_fail("%s: cannot create the folder: %s", path, strerror(err));
}

int dc_mkdirs(const char *path) {
    char *p = strdup(path);
    if (!p)
        return dc_fail("%s: out of memory", path);
    int rc = 0;
    for (char *s = p + 1; !rc && *s; s++) /* every parent, then the folder itself */
        if (*s == '/' && s[-1] != '/') {
            *s = '\0';
            rc = mkdir_one(p);
            *s = '/';
        }
    if (!rc)
        rc = mkdir_one(p);
    free(p);
    return rc;
}

int dc_dir_check_writable(const char *path) {
    if (dc_mkdirs(path))
        return -1;
    char name[64];
    snprintf(name, sizeof name, ".diffc-write-test.%ld", (long)getpid());
    char *probe = dc_path_join(path, name);
    if (!probe)
        return -1;
    int fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    int err = errno;
    if (fd >= 0) {
        close(fd);
        unlink(probe);
    }
    free(probe);
    return fd >= 0 ? 0 : dc_fail("%s: cannot write in this folder: %s", path, strerror(err));
}

/* 1 (which stops nftw) after recording why `path` could not be removed. */
static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    if (remove(path) != 0 && errno != ENOENT) {
        dc_fail("%s: cannot remove: %s", path, strerror(errno));
        return 1;
    }
    return 0;
}

int dc_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : dc_fail("%s: %s", path, strerror(errno));
    int rc = S_ISDIR(st.st_mode) ? nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS)
                                 : remove_entry(path, &st, 0, NULL);
    if (rc > 0) /* the message is recorded */
        return -1;
    if (rc < 0 && errno != ENOENT)
        return dc_fail("%s: cannot remove: %s", path, strerror(errno));
    return 0;
}

int dc_sync_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return dc_fail("%s: cannot open the folder: %s", path, strerror(errno));
    int rc = fsync(fd) == 0 ? 0 : dc_fail("%s: cannot sync the folder: %s", path, strerror(errno));
    close(fd);
    return rc;
}

int dc_sync_parent(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        return dc_sync_dir(".");
    char *dir = strndup(path, slash == path ? 1 : (size_t)(slash - path));
    int rc = dir ? dc_sync_dir(dir) : dc_fail("%s: out of memory", path);
    free(dir);
    return rc;
}

/* ---- files ---- */

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Create `path`, write and fsync; on failure the file is removed and the
 * message names `shown` (the name the caller asked for). */
static int write_synced(const char *path, const char *shown, const void *data, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        return dc_fail("%s: cannot create: %s", shown, strerror(errno));
    int err = write_all(fd, data, n) || fsync(fd) ? errno : 0;
    if (close(fd) != 0 && !err)
        err = errno;
    if (!err)
        return 0;
    unlink(path);
    return dc_fail("%s: cannot write: %s", shown, strerror(err ? err : EIO));
}

int dc_write_file(const char *path, const void *data, size_t n, bool atomic) {
    if (!atomic)
        return write_synced(path, path, data, n);
    char *tmp = malloc(strlen(path) + 5);
    if (!tmp)
        return dc_fail("%s: out of memory", path);
    strcpy(stpcpy(tmp, path), ".tmp");
    int rc = write_synced(tmp, path, data, n);
    if (!rc && rename(tmp, path) != 0) {
        rc = dc_fail("%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    return rc ? rc : dc_sync_parent(path);
}

char *dc_read_file(const char *path, size_t max_bytes, size_t *n) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        dc_fail("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) != 0)
        dc_fail("%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        dc_fail("%s: %s, not a file", path, S_ISDIR(st.st_mode) ? "a folder" : "a special file");
    else if ((uint64_t)st.st_size > max_bytes)
        dc_fail("%s: %lld bytes, more than the %zu this file may have", path, (long long)st.st_size,
                max_bytes);
    else if (!(buf = malloc((size_t)st.st_size + 1)))
        dc_fail("%s: out of memory", path);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t k = read(fd, buf + got, (size_t)st.st_size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            dc_fail("%s: cannot read: %s", path, k < 0 ? strerror(errno) : "the file shrank");
            free(buf);
            buf = NULL;
            break;
        }
        got += (size_t)k;
    }
    close(fd);
    if (buf) {
        buf[got] = '\0';
        if (n)
            *n = got;
    }
    return buf;
}

/* ---- JSON ---- */

const char *dc_json_type(const cJSON *v) {
    return cJSON_IsObject(v)   ? "an object"
           : cJSON_IsArray(v)  ? "an array"
           : cJSON_IsString(v) ? "a string"
           : cJSON_IsNumber(v) ? "a number"
           : cJSON_IsBool(v)   ? "a boolean"
                               : "null";
}

/* The member under key, NULL when absent or null. */
static const cJSON *member(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

int dc_json_get_number(const cJSON *obj, const char *key, const char *where, double *out) {
    const cJSON *v = member(obj, key);
    if (v && !cJSON_IsNumber(v))
        return dc_fail("%s: %s must be a number, got %s", where, key, dc_json_type(v));
    if (v)
        *out = v->valuedouble;
    return 0;
}

int dc_json_get_int(const cJSON *obj, const char *key, const char *where, int min, int max,
                    int *out) {
    double d = *out;
    if (dc_json_get_number(obj, key, where, &d))
        return -1;
    if (d != floor(d) || d < min || d > max)
        return dc_fail("%s: %s must be an integer in [%d, %d], got %.17g", where, key, min, max, d);
    *out = (int)d;
    return 0;
}

int dc_json_get_string(const cJSON *obj, const char *key, const char *where, const char **out) {
    const cJSON *v = member(obj, key);
    if (v && !cJSON_IsString(v))
        return dc_fail("%s: %s must be a string, got %s", where, key, dc_json_type(v));
    if (v)
        *out = v->valuestring;
    return 0;
}

int dc_json_get_bool(const cJSON *obj, const char *key, const char *where, bool *out) {
    const cJSON *v = member(obj, key);
    if (v && !cJSON_IsBool(v))
        return dc_fail("%s: %s must be true or false, got %s", where, key, dc_json_type(v));
    if (v)
        *out = cJSON_IsTrue(v);
    return 0;
}

static int cmp_key(const void *a, const void *b) {
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* The first key that appears twice in one object anywhere in the tree. */
static const char *duplicate_key(const cJSON *j) {
    if (!cJSON_IsObject(j) && !cJSON_IsArray(j))
        return NULL;
    int n = 0;
    for (const cJSON *c = j->child; c; c = c->next, n++) {
        const char *d = duplicate_key(c);
        if (d)
            return d;
    }
    if (!cJSON_IsObject(j) || n < 2)
        return NULL;
    const cJSON **items = malloc((size_t)n * sizeof *items);
    if (!items)
        return NULL;
    n = 0;
    for (const cJSON *c = j->child; c; c = c->next)
        items[n++] = c;
    qsort(items, (size_t)n, sizeof *items, cmp_key);
    const char *d = NULL;
    for (int i = 1; i < n && !d; i++)
        if (!strcmp(items[i - 1]->string, items[i]->string))
            d = items[i]->string;
    free(items);
    return d;
}

/* Line and column (from 1) of byte `at` in text. */
static void line_col(const char *text, size_t at, int *line, int *col) {
    *line = 1, *col = 1;
    for (size_t i = 0; i < at; i++, (*col)++)
        if (text[i] == '\n')
            (*line)++, *col = 0;
}

/* Python's json module writes NaN, Infinity and -Infinity for floats that
 * JSON cannot hold (diffusers saves DPMSolverMultistepScheduler's
 * lambda_min_clipped as -Infinity), and cJSON reads none of them. So cJSON
 * reads a copy that spells each as a number of the same length, leaving every
 * error position that of the original text: (-)Infinity as (-)1e999 (which
 * strtod reads as an infinity) and NaN as 0, padded with spaces. No number
 * reads as NaN, so the NaNs are remembered by their index among the text's
 * numbers and set after the parse. */
typedef struct {
    char *text;      /* the copy, NUL-terminated */
    size_t *nan;     /* ascending indices of the numbers that were NaN */
    size_t nans, numbers;
} nonfinite_text;

static bool number_char(char c) { return (c >= '0' && c <= '9') || (c && strchr("+-.eE", c)); }

/* A keyword at text[i] that is a whole token start, replaced by `with` (same length). */
static bool respell(char *text, size_t n, size_t i, const char *word, const char *with) {
    size_t len = strlen(word);
    if (i + len > n || memcmp(text + i, word, len) || (i > 0 && number_char(text[i - 1])))
        return false;
    memcpy(text + i, with, len);
    return true;
}

static int respell_nonfinite(nonfinite_text *t, const char *text, size_t n) {
    memset(t, 0, sizeof *t);
    if (!(t->text = malloc(n + 1)) || !(t->nan = malloc((n / 3 + 1) * sizeof *t->nan))) {
        free(t->text);
        return -1;
    }
    memcpy(t->text, text, n);
    t->text[n] = '\0';
    bool in_string = false;
    for (size_t i = 0; i < n; i++) {
        char *c = t->text + i;
        if (in_string) {
            i += *c == '\\';
            in_string = *c != '"';
        } else if (*c == '"') {
            in_string = true;
        } else if (respell(t->text, n, i, "NaN", "0  ")) {
            t->nan[t->nans++] = t->numbers++;
        } else if (respell(t->text, n, i, "-Infinity", "-1e999   ") ||
                   respell(t->text, n, i, "Infinity", "1e999   ") ||
                   ((*c == '-' || (*c >= '0' && *c <= '9')) && (i == 0 || !number_char(c[-1])))) {
            t->numbers++;
        }
    }
    return 0;
}

/* Set the remembered NaNs, visiting the numbers in document order. */
static void set_nans(cJSON *j, const nonfinite_text *t, size_t *number, size_t *next_nan) {
    if (cJSON_IsNumber(j) && *next_nan < t->nans && t->nan[*next_nan] == (*number)++) {
        j->valuedouble = NAN;
        j->valueint = 0;
        ++*next_nan;
    }
    for (cJSON *c = j->child; c; c = c->next)
        set_nans(c, t, number, next_nan);
}

cJSON *dc_json_parse(const char *text, size_t n, const char *what) {
    nonfinite_text t;
    if (respell_nonfinite(&t, text, n)) {
        dc_fail("%s: out of memory for %zu bytes of JSON", what, n);
        return NULL;
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(t.text, n, &end, 0);
    size_t number = 0, next_nan = 0;
    if (j)
        set_nans(j, &t, &number, &next_nan);
    size_t at = end ? (size_t)(end - t.text) : 0;
    free(t.text);
    free(t.nan);
    while (j && at < n && (text[at] == ' ' || text[at] == '\t' || text[at] == '\r' || text[at] == '\n'))
        at++;
    if (!j || at < n) {
        int line, col;
        line_col(text, at < n ? at : n, &line, &col);
        dc_fail("%s:%d:%d: %s", what, line, col, j ? "text after the JSON value" : "not valid JSON here");
        cJSON_Delete(j);
        return NULL;
    }
    const char *dup = duplicate_key(j);
    if (dup) {
        dc_fail("%s: key \"%s\" appears twice in one object", what, dup);
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* Every number of the tree turned into raw text that reads back exactly. */
static bool numbers_to_raw(cJSON *j) {
    for (cJSON *c = j->child; c; c = c->next)
        if (!numbers_to_raw(c))
            return false;
    if (!cJSON_IsNumber(j))
        return true;
    char text[32] = "null";
    for (int digits = 15; isfinite(j->valuedouble) && digits <= 17; digits++) {
        snprintf(text, sizeof text, "%.*g", digits, j->valuedouble);
        if (strtod(text, NULL) == j->valuedouble)
            break;
    }
    if (!(j->valuestring = strdup(text)))
        return false;
    j->type = cJSON_Raw;
    return true;
}

char *dc_json_print(const cJSON *json, bool formatted) {
    cJSON *copy = cJSON_Duplicate(json, 1);
    char *text =
        copy && numbers_to_raw(copy) ? (formatted ? cJSON_Print(copy) : cJSON_PrintUnformatted(copy)) : NULL;
    cJSON_Delete(copy);
    return text;
}

#define MAX_JSON_FILE (64u << 20)

cJSON *dc_json_load(const char *path) {
    size_t n;
    char *text = dc_read_file(path, MAX_JSON_FILE, &n);
    cJSON *j = text ? dc_json_parse(text, n, path) : NULL;
    free(text);
    return j;
}

int dc_json_save(const char *path, const cJSON *json) {
    char *text = dc_json_print(json, true);
    if (!text)
        return dc_fail("%s: out of memory for the JSON text", path);
    size_t n = strlen(text);
    char *line = realloc(text, n + 2);
    if (!line) {
        free(text);
        return dc_fail("%s: out of memory for the JSON text", path);
    }
    memcpy(line + n, "\n", 2);
    int rc = dc_write_file(path, line, n + 1, true);
    free(line);
    return rc;
}
