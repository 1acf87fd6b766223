/*
 * The text files that pair images with text: an image folder's
 * metadata.jsonl (one {"file_name": ..., "text": ...} object a line, what
 * diffusers' training scripts and datasets' imagefolder read; written by
 * `diffc caption` and text-to-image `diffc sample`, read by the folder
 * source), and a prompt file (one prompt a line).
 */
#ifndef DC_DATA_METADATA_H
#define DC_DATA_METADATA_H

#include <stdint.h>

#define DC_METADATA_FILE "metadata.jsonl"

/* Append {"file_name": file_name, "text": text} and a newline to fd in one
 * write, so a line is never cut by another writer; `what` names the file in
 * errors. */
int dc_metadata_append(int fd, const char *what, const char *file_name, const char *text);

/* The prompts of a run: `prompt` (NULL: none), then the lines of the file
 * at `path` (NULL: none; a trailing '\r' dropped, empty lines skipped).
 * *out (malloc'ed, each prompt too) holds *n >= 1; none at all is an error. */
int dc_prompts_read(const char *prompt, const char *path, char ***out, int64_t *n);

/* The prompt a template makes for an image: "{class}" becomes class_name
 * with underscores as spaces (folder "golden_retriever": "a photo of a
 * golden retriever"), "{caption}" the image's caption; the rest is kept.
 * class_name or caption may be NULL when the template lacks its field.
 * malloc'ed; NULL after dc_fail. */
char *dc_prompt_from_template(const char *tmpl, const char *class_name, const char *caption);

#endif
