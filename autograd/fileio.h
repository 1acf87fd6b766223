/*
 * File-system chores shared by every writer and reader of the project's
 * files (weights, dataset caches, images, checkpoints): folders made and
 * checked before hours of work depend on them, files written durably (fsync'ed, and atomically
 * where a reader may look at any moment), folder trees removed, and JSON
 * files read and written with cJSON.
 *
 * Every failure is one dc_fail() message that names the path and the
 * system's reason ("runs/x: cannot create: Permission denied").
 */
#ifndef DC_FILEIO_H
#define DC_FILEIO_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

/* Create `path` and any missing parents; an existing folder is fine. */
int dc_mkdirs(const char *path);
/* dc_mkdirs, then prove that files can be created inside by making and
 * removing a probe file (permissions, a read-only mount, a full inode table). */
int dc_dir_check_writable(const char *path);
/* Remove a file or a whole folder tree (symlinks are removed, not followed).
 * A path that does not exist is not an error. */
int dc_remove_tree(const char *path);
/* fsync a folder, so the names created or renamed in it are durable. */
int dc_sync_dir(const char *path);
/* dc_sync_dir of the folder part of `path` ("." when there is none). */
int dc_sync_parent(const char *path);

/* Write n bytes to `path` and fsync them. With `atomic`, they go to
 * "<path>.tmp" first, which is renamed over `path` (and the folder synced),
 * so `path` holds the old content or the new, never a mix. A failure removes
 * what it wrote. */
int dc_write_file(const char *path, const void *data, size_t n, bool atomic);
/* The whole file, NUL-terminated (length in *n when n is not NULL); files
 * over max_bytes are refused before they are read. NULL on failure. */
char *dc_read_file(const char *path, size_t max_bytes, size_t *n);

/* Parse a JSON file. An error names the file with line and column. A key
 * that appears twice in one object is an error too (cJSON would keep both
 * and callers would see the first). NULL on failure. */
cJSON *dc_json_load(const char *path);
/* The same for text in memory; `what` names it in messages. */
cJSON *dc_json_parse(const char *text, size_t n, const char *what);
/* cJSON_Print (formatted) or cJSON_PrintUnformatted, except that every
 * number is written so that it reads back as exactly the same double: the
 * shortest of %.15g, %.16g and %.17g that does (cJSON's own printing lets
 * the last digit be an ulp off, and a resumed run must see the learning rate
 * it saved). NaN and infinities become null. NULL when out of memory. */
char *dc_json_print(const cJSON *json, bool formatted);
/* Indented JSON with a final newline, written atomically. */
int dc_json_save(const char *path, const cJSON *json);

/* The kind of a JSON value in words ("a string", "null"), for messages. */
const char *dc_json_type(const cJSON *v);
/* Typed members of a config object. An absent key, or null (diffusers'
 * "left at its default"), returns 0 and leaves *out as it is; a value of
 * another type is an error naming `where`, the key and what it holds. */
int dc_json_get_number(const cJSON *obj, const char *key, const char *where, double *out);
int dc_json_get_string(const cJSON *obj, const char *key, const char *where, const char **out);
int dc_json_get_bool(const cJSON *obj, const char *key, const char *where, bool *out);
/* A number with no fraction in [min, max]; otherwise as dc_json_get_number. */
int dc_json_get_int(const cJSON *obj, const char *key, const char *where, int min, int max,
                    int *out);

/* "dir/name" into a new string (NULL, after dc_fail, when out of memory). */
char *dc_path_join(const char *dir, const char *name);

#endif
