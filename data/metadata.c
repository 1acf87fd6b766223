/* metadata.jsonl lines and prompt files (see metadata.h). */
#define _GNU_SOURCE /* strndup */
#include "metadata.h"

#include "autograd/error.h"
#include "autograd/fileio.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_PROMPT_FILE ((size_t)64 << 20)

int dc_metadata_append(int fd, const char *what, const char *file_name, const char *text) {
    char *line = NULL;
    cJSON *o = cJSON_CreateObject();
    if (o && cJSON_AddStringToObject(o, "file_name", file_name) && cJSON_AddStringToObject(o, "text", text))
        line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!line)
        return dc_fail("%s: out of memory", what);
    size_t n = strlen(line);
    line[n] = '\n'; /* over the NUL: one write of the whole line */
    ssize_t w = write(fd, line, n + 1);
    free(line);
    if (w != (ssize_t)(n + 1))
        return dc_fail("%s: cannot write: %s", what, w < 0 ? strerror(errno) : "short write");
    return 0;
}

/* Add a copy of text[0, len) to the list. */
static int add_prompt(char ***out, int64_t *n, int64_t *cap, const char *text, size_t len) {
    if (*n == *cap) {
        int64_t c = *cap ? 2 * *cap : 16;
        char **grown = realloc(*out, (size_t)c * sizeof *grown);
        if (!grown)
            return dc_fail("out of memory for %lld prompts", (long long)c);
        *out = grown, *cap = c;
    }
    if (!((*out)[*n] = strndup(text, len)))
        return dc_fail("out of memory");
    (*n)++;
    return 0;
}

static int add_lines(char ***out, int64_t *n, int64_t *cap, const char *path) {
    size_t size;
    char *text = dc_read_file(path, MAX_PROMPT_FILE, &size);
    if (!text)
        return -1;
    int rc = 0;
    for (char *line = text, *nl; !rc && line < text + size; line = nl + 1) {
        nl = memchr(line, '\n', (size_t)(text + size - line));
        nl = nl ? nl : text + size;
        size_t len = (size_t)(nl - line);
        len -= len && line[len - 1] == '\r';
        if (memchr(line, 0, len))
            rc = dc_fail("%s: a line holds a NUL byte: not a text file", path);
        else if (len)
            rc = add_prompt(out, n, cap, line, len);
    }
    free(text);
    return rc;
}

int dc_prompts_read(const char *prompt, const char *path, char ***out, int64_t *n) {
    int64_t cap = 0;
    *out = NULL, *n = 0;
    int rc = prompt ? add_prompt(out, n, &cap, prompt, strlen(prompt)) : 0;
    if (!rc && path)
        rc = add_lines(out, n, &cap, path);
    if (!rc && !*n)
        rc = path ? dc_fail("%s: no prompt in the file (one a line)", path)
                  : dc_fail("text-to-image needs --prompt TEXT or --prompt-file FILE");
    if (rc) {
        for (int64_t i = 0; i < *n; i++)
            free((*out)[i]);
        free(*out);
        *out = NULL, *n = 0;
    }
    return rc;
}

/* The length of the prompt, and it written into out when out is not NULL. */
static size_t fill_template(const char *tmpl, const char *class_name, const char *caption, char *out) {
    size_t n = 0;
    for (const char *p = tmpl; *p;) {
        const char *value = NULL;
        bool is_class = !strncmp(p, "{class}", 7), is_caption = !strncmp(p, "{caption}", 9);
        if (is_class || is_caption) {
            value = is_class ? class_name : caption;
            for (size_t k = 0; value[k]; k++, n++)
                if (out)
                    out[n] = is_class && value[k] == '_' ? ' ' : value[k];
            p += is_class ? 7 : 9;
            continue;
        }
        if (out)
            out[n] = *p;
        n++, p++;
    }
    if (out)
        out[n] = '\0';
    return n;
}

char *dc_prompt_from_template(const char *tmpl, const char *class_name, const char *caption) {
    if ((strstr(tmpl, "{class}") && !class_name) || (strstr(tmpl, "{caption}") && !caption)) {
        dc_fail("prompt template '%s': the image has no %s", tmpl, class_name ? "caption" : "class");
        return NULL;
    }
    char *out = malloc(fill_template(tmpl, class_name, caption, NULL) + 1);
    if (!out) {
        dc_fail("out of memory");
        return NULL;
    }
    fill_template(tmpl, class_name, caption, out);
    return out;
}
