/*
 * Building a dataset cache from a loaded source: items are decoded, brought
 * to the requested channels and resolution in parallel (dc_source_each), and
 * written in item order, so the file is the same whatever the thread count.
 *
 * Channels 0 keeps the source's: gray when every image is gray, RGB as soon
 * as one is RGB. The first RGB image after gray ones widens what was already
 * written (gray replicated, exactly what converting first would give), so
 * the common cases (all gray, all RGB) never rewrite anything.
 *
 * A skipped item gets one warning line and an entry in the cache's list; in
 * strict mode it is an error instead.
 */
#include "source.h"

#include "autograd/error.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const dc_source *s;
    const dc_dataset_options *o;
    dc_cache_writer w;
    int h, w_, c; /* of every image written; 0 before the first */
    int64_t kept;
    int64_t first;   /* the item that set h and w, for messages */
    int32_t *labels; /* [kept] */
    char **captions; /* [kept] pointers into the source's, or NULL */
    int n_skipped;
    dc_dataset_skip *skipped;
} build;

static int skip(build *b, int64_t i, const char *reason) {
    char buf[64];
    const char *name = dc_source_item_name(b->s, i, buf, sizeof buf);
    if (b->o->strict)
        return dc_fail("%s/%s: %s (strict: a bad file is an error)", b->s->root, name, reason);
    if (!b->o->quiet)
        fprintf(stderr, "diffc: warning: skipping %s: %s\n", name, reason);
    dc_dataset_skip *grown = realloc(b->skipped, ((size_t)b->n_skipped + 1) * sizeof *grown);
    if (!grown)
        return dc_fail("out of memory");
    b->skipped = grown;
    dc_dataset_skip *k = &grown[b->n_skipped];
    k->path = dc_strdup(name);
    k->reason = dc_strdup(reason);
    b->n_skipped++;
    return k->path && k->reason ? 0 : -1;
}

/* Every image the same size: given by the resolution, or by the first. */
static int check_size(build *b, int64_t i, const dc_image *img) {
    if (!b->h) {
        b->h = img->h, b->w_ = img->w, b->first = i;
        return 0;
    }
    if (img->h == b->h && img->w == b->w_)
        return 0;
    char x[64], y[64];
    return dc_fail("%s: %s is %dx%d but %s is %dx%d: the images differ in size, so give a resolution",
                   b->s->root, dc_source_item_name(b->s, i, x, sizeof x), img->w, img->h,
                   dc_source_item_name(b->s, b->first, y, sizeof y), b->w_, b->h);
}

/* Bring img to the channels of the file, or the file to img's. */
static int match_channels(build *b, dc_image *img) {
    if (!b->c || img->c == b->c) {
        b->c = img->c;
        return 0;
    }
    if (img->c == 3) { /* the first RGB image after gray ones */
        if (dc_cache_writer_widen(&b->w, b->kept, (size_t)b->h * b->w_))
            return -1;
        b->c = 3;
        return 0;
    }
    dc_image rgb;
    if (dc_image_convert(&rgb, img, 3))
        return -1;
    dc_image_free(img);
    *img = rgb;
    return 0;
}

static int commit(void *ctx, int64_t i, dc_image *img, const char *reason) {
    build *b = ctx;
    if (!img)
        return skip(b, i, reason);
    if (check_size(b, i, img) || match_channels(b, img) ||
        dc_cache_writer_append(&b->w, img->px, (size_t)img->w * img->h * img->c))
        return -1;
    b->labels[b->kept] = b->s->labels[i];
    if (b->captions)
        b->captions[b->kept] = b->s->captions[i];
    b->kept++;
    return 0;
}

static int finish(build *b, uint64_t fingerprint) {
    const dc_source *s = b->s;
    if (b->kept == 0 && b->n_skipped)
        return dc_fail("%s: no usable image: all %d were skipped (the first, %s: %s)", s->root, b->n_skipped,
                       b->skipped[0].path, b->skipped[0].reason);
    if (b->kept == 0)
        return dc_fail("%s: no image in the dataset", s->root);
    if (b->n_skipped && !b->o->quiet)
        fprintf(stderr, "diffc: warning: skipped %d of %" PRId64 " files in %s\n", b->n_skipped, s->count,
                s->root);
    dc_cache_meta m = {
        .count = b->kept,
        .h = b->h,
        .w = b->w_,
        .c = b->c,
        .num_classes = s->num_classes,
        .class_names = s->class_names,
        .labels = b->labels,
        .captions = b->captions,
        .n_skipped = b->n_skipped,
        .skipped = b->skipped,
        .kind = s->kind,
        .source = s->root,
        .fingerprint = fingerprint,
    };
    return dc_cache_writer_finish(&b->w, &m);
}

int dc_cache_build(const dc_source *s, const dc_dataset_options *o, const char *path, uint64_t fingerprint) {
    build b = {.s = s, .o = o, .c = o->channels};
    if (o->resolution)
        b.h = b.w_ = o->resolution;
    b.labels = malloc(((size_t)s->count + 1) * sizeof *b.labels);
    if (s->captions)
        b.captions = calloc((size_t)s->count + 1, sizeof *b.captions);
    if (!b.labels || (s->captions && !b.captions)) {
        free(b.labels);
        return dc_fail("out of memory");
    }
    int rc = dc_cache_writer_open(&b.w, path);
    rc = rc ? rc : dc_source_each(s, o->channels, o->resolution, commit, &b);
    rc = rc ? rc : finish(&b, fingerprint);
    if (rc)
        dc_cache_writer_abort(&b.w);
    free(b.labels);
    free(b.captions);
    for (int k = 0; k < b.n_skipped; k++)
        free(b.skipped[k].path), free(b.skipped[k].reason);
    free(b.skipped);
    return rc;
}
