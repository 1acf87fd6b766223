/*
 * What a dataset holds, for `diffc info`: dc_dataset_summarize reads a
 * source without building a cache (every image is decoded, since that is
 * how bad files show), or checks a cache file through and through;
 * dc_dataset_recognise tells whether a path is a dataset at all.
 */
#include "source.h"

#include "autograd/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int set_classes(dc_dataset_summary *sum, int n, char *const *names) {
    sum->num_classes = n;
    sum->class_names = calloc((size_t)n + 1, sizeof *sum->class_names);
    sum->class_counts = calloc((size_t)n + 1, sizeof *sum->class_counts);
    if (!sum->class_names || !sum->class_counts)
        return dc_fail("out of memory");
    for (int i = 0; i < n; i++)
        if (!(sum->class_names[i] = dc_strdup(names[i])))
            return -1;
    return 0;
}

static int add_skip(dc_dataset_summary *sum, const char *path, const char *reason) {
    dc_dataset_skip *grown = realloc(sum->skipped, ((size_t)sum->n_skipped + 1) * sizeof *grown);
    if (!grown)
        return dc_fail("out of memory");
    sum->skipped = grown;
    grown[sum->n_skipped].path = dc_strdup(path);
    grown[sum->n_skipped].reason = dc_strdup(reason);
    sum->n_skipped++;
    return grown[sum->n_skipped - 1].path && grown[sum->n_skipped - 1].reason ? 0 : -1;
}

/* One more usable image of w x h x c. */
static void count_image(dc_dataset_summary *sum, int w, int h, int c, int32_t label, const char *caption) {
    if (sum->count++ == 0) {
        sum->min_w = sum->max_w = w, sum->min_h = sum->max_h = h, sum->min_c = sum->max_c = c;
    } else {
        sum->min_w = w < sum->min_w ? w : sum->min_w, sum->max_w = w > sum->max_w ? w : sum->max_w;
        sum->min_h = h < sum->min_h ? h : sum->min_h, sum->max_h = h > sum->max_h ? h : sum->max_h;
        sum->min_c = c < sum->min_c ? c : sum->min_c, sum->max_c = c > sum->max_c ? c : sum->max_c;
    }
    if (label >= 0)
        sum->class_counts[label]++;
    sum->captioned += caption && *caption;
}

/* ---- a source ---- */

typedef struct {
    dc_dataset_summary *sum;
    const dc_source *s;
} tally;

static int tally_item(void *ctx, int64_t i, dc_image *img, const char *reason) {
    tally *t = ctx;
    char buf[64];
    if (!img)
        return add_skip(t->sum, dc_source_item_name(t->s, i, buf, sizeof buf), reason);
    count_image(t->sum, img->w, img->h, img->c, t->s->labels[i], t->s->captions ? t->s->captions[i] : NULL);
    return 0;
}

/* The number of images of split "test" beside a folder's "train": -1 when
 * there is no test split, -1 with an error when it is broken. */
static int test_count(const char *source, int64_t *count) {
    dc_source s;
    struct stat st;
    *count = -1;
    if (stat(source, &st) != 0 || !S_ISDIR(st.st_mode) || dc_source_scan(&s, source, "test"))
        return 0;
    int rc = s.ops->load(&s);
    if (!rc)
        *count = s.count;
    dc_source_free(&s);
    return rc;
}

static int summarize_source(dc_dataset_summary *sum, const char *source) {
    dc_source s;
    if (dc_source_scan(&s, source, "train"))
        return -1;
    sum->kind = s.kind;
    tally t = {sum, &s};
    int rc = s.ops->load(&s) || set_classes(sum, s.num_classes, s.class_names) ||
             dc_source_each(&s, 0, 0, tally_item, &t);
    if (!rc && strcmp(s.kind, "image folder"))
        rc = test_count(source, &sum->test_count);
    if (!rc && sum->count == 0 && sum->n_skipped == 0)
        rc = dc_fail("%s: no image in the dataset", source);
    dc_source_free(&s);
    return rc;
}

/* ---- a cache ---- */

static int summarize_cache(dc_dataset_summary *sum, const char *path) {
    dc_dataset ds;
    dc_cache_info info;
    if (dc_dataset_open_cache_info(&ds, &info, path))
        return -1;
    sum->kind = "cache";
    size_t n = strlen(info.kind) + strlen(info.source) + 2;
    int rc = dc_cache_verify_pixels(&ds, &info, path) || set_classes(sum, ds.num_classes, ds.class_names);
    if (!rc && (sum->built_from = malloc(n)))
        snprintf(sum->built_from, n, "%s %s", info.kind, info.source);
    else if (!rc)
        rc = dc_fail("out of memory");
    for (int64_t i = 0; !rc && i < ds.count; i++)
        count_image(sum, ds.w, ds.h, ds.c, ds.labels[i], ds.captions ? ds.captions[i] : NULL);
    for (int k = 0; !rc && k < ds.n_skipped; k++)
        rc = add_skip(sum, ds.skipped[k].path, ds.skipped[k].reason);
    dc_dataset_close(&ds);
    return rc;
}

int dc_dataset_summarize(dc_dataset_summary *sum, const char *source) {
    memset(sum, 0, sizeof *sum);
    sum->test_count = -1;
    int rc = dc_is_cache_file(source) ? summarize_cache(sum, source) : summarize_source(sum, source);
    if (rc)
        dc_dataset_summary_free(sum);
    return rc;
}

void dc_dataset_summary_free(dc_dataset_summary *sum) {
    if (!sum)
        return;
    for (int i = 0; sum->class_names && i < sum->num_classes; i++)
        free(sum->class_names[i]);
    free(sum->class_names);
    free(sum->class_counts);
    for (int k = 0; k < sum->n_skipped; k++)
        free(sum->skipped[k].path), free(sum->skipped[k].reason);
    free(sum->skipped);
    free(sum->built_from);
    memset(sum, 0, sizeof *sum);
    sum->test_count = -1;
}

bool dc_dataset_recognise(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        return false;
    if (S_ISREG(st.st_mode) && dc_is_cache_file(path))
        return true;
    dc_source s;
    memset(&s, 0, sizeof s);
    int rc = dc_idx_scan(&s, path, "train");
    if (rc == 0)
        rc = dc_cifar_scan(&s, path, "train");
    if (rc == 0 && S_ISDIR(st.st_mode))
        rc = dc_folder_has_images(path);
    if (rc > 0)
        dc_source_free(&s);
    dc_clear_error();
    return rc != 0;
}
