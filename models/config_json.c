/*
 * The config.json reading and writing that diffusers models share. See
 * config_json.h.
 */
#include "config_json.h"

#include "autograd/error.h"
#include "autograd/fileio.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_CONFIG_BYTES (1 << 20) /* a config.json is a few hundred bytes */

int dc_cfg_int(const cJSON *v, const char *what, const char *key, int *out) {
    if (!cJSON_IsNumber(v))
        return dc_fail("%s: %s must be an integer, got %s", what, key, dc_json_type(v));
    double d = v->valuedouble;
    if (d != floor(d) || d < INT_MIN || d > INT_MAX)
        return dc_fail("%s: %s must be an integer, got %.17g", what, key, d);
    *out = (int)d;
    return 0;
}

static int read_key(void *config, const cJSON *root, const char *what, const dc_cfg_key *k) {
    void *field = (char *)config + k->offset;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, k->key);
    if (!v || (cJSON_IsNull(v) && k->kind == DC_CFG_INT_OR_NULL)) {
        double def = v ? 0 : k->def;
        if (k->kind == DC_CFG_BOOL)
            *(bool *)field = def != 0;
        else if (k->kind == DC_CFG_FLOAT)
            *(float *)field = (float)def;
        else
            *(int *)field = (int)def;
        return 0;
    }
    switch (k->kind) {
    case DC_CFG_BOOL:
        if (!cJSON_IsBool(v))
            return dc_fail("%s: %s must be true or false, got %s", what, k->key, dc_json_type(v));
        *(bool *)field = cJSON_IsTrue(v);
        return 0;
    case DC_CFG_FLOAT:
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
            return dc_fail("%s: %s must be a finite number, got %s", what, k->key, dc_json_type(v));
        *(float *)field = (float)v->valuedouble;
        return 0;
    case DC_CFG_INT: return dc_cfg_int(v, what, k->key, field);
    case DC_CFG_INT_OR_NULL:
        if (dc_cfg_int(v, what, k->key, field))
            return -1;
        if (*(int *)field < 1)
            return dc_fail("%s: %s %d must be positive or null", what, k->key, *(int *)field);
        return 0;
    }
    return 0;
}

int dc_cfg_read_keys(void *config, const cJSON *root, const char *what, const dc_cfg_key *keys,
                     int n) {
    for (int k = 0; k < n; k++)
        if (read_key(config, root, what, &keys[k]))
            return -1;
    return 0;
}

int dc_cfg_int_or_list(const cJSON *root, const char *what, const char *key, int def, int n,
                       int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    int one = def;
    if (v && !cJSON_IsArray(v) && !cJSON_IsNumber(v))
        return dc_fail("%s: %s must be an integer or a list of %d integers, got %s", what, key, n,
                       dc_json_type(v));
    if (v && !cJSON_IsArray(v) && dc_cfg_int(v, what, key, &one))
        return -1;
    if (!v || !cJSON_IsArray(v)) {
        for (int i = 0; i < n; i++)
            out[i] = one;
        return 0;
    }
    if (cJSON_GetArraySize(v) != n)
        return dc_fail("%s: %s has %d entries but block_out_channels has %d", what, key,
                       cJSON_GetArraySize(v), n);
    int i = 0;
    for (const cJSON *e = v->child; e; e = e->next, i++)
        if (dc_cfg_int(e, what, key, &out[i]))
            return -1;
    return 0;
}

int dc_cfg_int_list(const cJSON *root, const char *what, const char *key, const int *def,
                    int n_def, int max_n, int *out, int *n) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v) {
        *n = n_def;
        memcpy(out, def, (size_t)n_def * sizeof *out);
        return 0;
    }
    if (!cJSON_IsArray(v))
        return dc_fail("%s: %s must be a list of integers, got %s", what, key, dc_json_type(v));
    int len = cJSON_GetArraySize(v);
    if (len < 1 || len > max_n)
        return dc_fail("%s: %s has %d entries (diffc builds 1 to %d levels)", what, key, len, max_n);
    *n = len;
    int i = 0;
    for (const cJSON *e = v->child; e; e = e->next, i++)
        if (dc_cfg_int(e, what, key, &out[i]))
            return -1;
    return 0;
}

int dc_cfg_choice(const cJSON *root, const char *what, const char *key, const char *def,
                  const char *const *allowed, int n_allowed) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    const char *s = !v ? def : cJSON_IsString(v) ? v->valuestring : NULL;
    if (v && !cJSON_IsString(v) && !cJSON_IsNull(v))
        return dc_fail("%s: %s must be a string, got %s", what, key, dc_json_type(v));
    char supported[160] = "";
    for (int i = 0; i < n_allowed; i++) {
        if (allowed[i] ? s && !strcmp(s, allowed[i]) : !s)
            return i;
        size_t len = strlen(supported);
        snprintf(supported + len, sizeof supported - len, "%s%s%s%s", i ? ", " : "",
                 allowed[i] ? "\"" : "", allowed[i] ? allowed[i] : "null", allowed[i] ? "\"" : "");
    }
    if (!s)
        return dc_fail("%s: %s null is not supported (supported: %s)", what, key, supported);
    return dc_fail("%s: %s \"%.64s\" is not supported (supported: %s)", what, key, s, supported);
}

int dc_cfg_sample_size(const cJSON *root, const char *what, int out[2]) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "sample_size");
    out[0] = out[1] = 0;
    if (!v || cJSON_IsNull(v))
        return 0;
    if (cJSON_IsNumber(v)) {
        if (dc_cfg_int(v, what, "sample_size", &out[0]))
            return -1;
        out[1] = out[0];
        return 0;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2)
        return dc_fail("%s: sample_size must be an integer or [height, width], got %s", what,
                       cJSON_IsArray(v) ? "an array of another length" : dc_json_type(v));
    if (dc_cfg_int(v->child, what, "sample_size[0]", &out[0]) ||
        dc_cfg_int(v->child->next, what, "sample_size[1]", &out[1]))
        return -1;
    return 0;
}

int dc_cfg_limit(const char *what, const char *key, int value, int max) {
    if (value > max)
        return dc_fail("%s: %s %d is implausibly large (diffc builds at most %d)", what, key, value, max);
    return 0;
}

int dc_cfg_check_class(const cJSON *root, const char *what, const char *model_type,
                       const char *desc, const char *architecture) {
    const char *type = model_type;
    if (dc_json_get_string(root, "model_type", what, &type))
        return -1;
    if (strcmp(type, model_type))
        return dc_fail("%s: model_type \"%.64s\" is not %s", what, type, desc);
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *first = cJSON_IsArray(arch) ? cJSON_GetArrayItem(arch, 0) : NULL;
    if (cJSON_IsString(first) && strcmp(first->valuestring, architecture))
        return dc_fail("%s: architectures \"%.64s\" is not supported (supported: \"%s\")", what,
                       first->valuestring, architecture);
    return 0;
}

char *dc_cfg_read_text(const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        dc_fail("%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *text = malloc(MAX_CONFIG_BYTES + 1);
    size_t n = text ? fread(text, 1, MAX_CONFIG_BYTES + 1, fp) : 0;
    int rc = !text        ? dc_fail("%s: out of memory", path)
             : ferror(fp) ? dc_fail("%s: cannot read: %s", path, strerror(errno))
             : n > MAX_CONFIG_BYTES
                 ? dc_fail("%s: larger than %d bytes, not a config", path, MAX_CONFIG_BYTES)
                 : 0;
    fclose(fp);
    if (!rc) {
        text[n] = '\0';
        rc = strlen(text) != n ? dc_fail("%s: contains a NUL byte, not a JSON text", path) : 0;
    }
    if (rc) {
        free(text);
        return NULL;
    }
    return text;
}

int dc_cfg_save_text(const char *text, const char *path) {
    if (!text)
        return dc_fail("%s: the config has no text to save", path);
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return dc_fail("%s: path too long", path);
    FILE *fp = fopen(tmp, "wb");
    if (!fp)
        return dc_fail("%s: cannot create %s: %s", path, tmp, strerror(errno));
    size_t n = strlen(text);
    bool ok = fwrite(text, 1, n, fp) == n && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    int err = ok ? 0 : errno;
    if (fclose(fp) != 0 && ok)
        ok = false, err = errno;
    if (ok && rename(tmp, path) != 0)
        ok = false, err = errno;
    if (!ok) {
        unlink(tmp);
        return dc_fail("%s: cannot write: %s", path, strerror(err ? err : EIO));
    }
    return 0;
}

int dc_cfg_parse_text(void *cfg, size_t size, const char *json, const char *what,
                      dc_cfg_parse_fn parse, char **keep) {
    memset(cfg, 0, size);
    cJSON *root = dc_json_parse(json, strlen(json), what);
    int rc = root ? parse(cfg, root, what) : -1;
    cJSON_Delete(root);
    char *copy = NULL;
    if (!rc && keep && !(copy = strdup(json)))
        rc = dc_fail("%s: out of memory", what);
    if (rc)
        memset(cfg, 0, size);
    else if (keep)
        *keep = copy;
    return rc;
}

int dc_cfg_load(void *cfg, size_t size, const char *path, dc_cfg_parse_fn parse, char **keep) {
    memset(cfg, 0, size);
    char *text = dc_cfg_read_text(path);
    int rc = text ? dc_cfg_parse_text(cfg, size, text, path, parse, keep) : -1;
    free(text);
    return rc;
}

int dc_cfg_load_folder(void *cfg, size_t size, const char *dir, const char *file,
                       const char *library, dc_cfg_parse_fn parse) {
    memset(cfg, 0, size);
    char *path = dc_path_join(dir, file);
    struct stat st;
    int rc = !path ? -1
             : stat(path, &st) || !S_ISREG(st.st_mode)
                 ? dc_fail("%s: no %s (not a %s model folder)", dir, file, library)
                 : dc_cfg_load(cfg, size, path, parse, NULL);
    free(path);
    return rc;
}
