/*
 * The parameter registry (declare, allocate flat, initialise, save and load by
 * name with layout conversion) and the layers built on it. See nn.h.
 */
#include "nn.h"

#include "cpu/conv.h"
#include "device.h"
#include "error.h"
#include "rng.h"
#include "safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN_FLOATS 16 /* 64 bytes: a cache line, and whole vectors for any kernel */

void dc_params_init(dc_params *ps) {
    memset(ps, 0, sizeof *ps);
    ps->device = DC_CPU;
}

void dc_params_free(dc_params *ps) {
    if (!ps)
        return;
    for (int i = 0; i < ps->n; i++) {
        free(ps->p[i]->name);
        free(ps->p[i]);
    }
    free(ps->p);
    dc_arena_free(&ps->values);
    dc_arena_free(&ps->grads);
    memset(ps, 0, sizeof *ps);
}

static int find_index(const dc_params *ps, const char *name) {
    for (int i = 0; i < ps->n; i++)
        if (!strcmp(ps->p[i]->name, name))
            return i;
    return -1;
}

dc_param *dc_params_find(const dc_params *ps, const char *name) {
    int i = find_index(ps, name);
    return i < 0 ? NULL : ps->p[i];
}

/* "prefix.name", malloc'ed. */
static char *join_name(const char *prefix, const char *name) {
    bool has_prefix = prefix && *prefix;
    size_t n = (has_prefix ? strlen(prefix) + 1 : 0) + strlen(name) + 1;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s%s%s", has_prefix ? prefix : "", has_prefix ? "." : "", name);
    return s;
}

/* Sticky failure: keep the first message, as failed ops do. */
static dc_tensor *declare_fail(dc_params *ps, const char *fmt, ...) DC_PRINTF(2, 3);
static dc_tensor *declare_fail(dc_params *ps, const char *fmt, ...) {
    if (!ps->failed) {
        va_list ap;
        va_start(ap, fmt);
        dc_vfail(fmt, ap);
        va_end(ap);
    }
    ps->failed = true;
    return NULL;
}

static const char *check_declaration(const dc_params *ps, const char *name, int ndim,
                                     const int64_t *shape, dc_layout layout) {
    if (ps->data)
        return "declared after dc_params_alloc";
    if (ndim < 1 || ndim > DC_MAX_DIMS)
        return "needs 1 to 4 dimensions";
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 1)
            return "has a dimension below 1";
    size_t bytes;
    if (!dc_shape_bytes(ndim, shape, DC_F32, &bytes))
        return "has more elements than memory can address";
    if (layout == DC_LAYOUT_CONV && ndim != 4)
        return "has a conv layout but is not 4-D";
    if (find_index(ps, name) >= 0)
        return "is declared twice";
    return NULL;
}

static dc_param *new_param(char *name, int ndim, const int64_t *shape, dc_layout layout,
                           dc_init init, float scale) {
    dc_param *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->name = name;
    p->layout = layout;
    p->init = init;
    p->scale = scale;
    p->value.dtype = DC_F32;
    p->value.device = DC_CPU;
    p->value.ndim = ndim;
    memcpy(p->value.shape, shape, (size_t)ndim * sizeof *shape);
    p->value.numel = dc_shape_numel(ndim, shape);
    p->value.requires_grad = true;
    p->grad = p->value;
    p->grad.requires_grad = false;
    return p;
}

dc_tensor *dc_params_add(dc_params *ps, const char *prefix, const char *name, int ndim,
                         const int64_t *shape, dc_layout layout, dc_init init, float scale) {
    if (ps->failed)
        return NULL;
    char *full = join_name(prefix, name);
    if (!full)
        return declare_fail(ps, "parameters: out of memory");
    const char *why = check_declaration(ps, full, ndim, shape, layout);
    if (why) {
        declare_fail(ps, "parameter %s %s", full, why);
        free(full);
        return NULL;
    }
    if (ps->n == ps->cap) {
        int cap = ps->cap ? 2 * ps->cap : 64;
        dc_param **p = realloc(ps->p, (size_t)cap * sizeof *p);
        if (!p) {
            free(full);
            return declare_fail(ps, "parameters: out of memory");
        }
        ps->p = p;
        ps->cap = cap;
    }
    dc_param *p = new_param(full, ndim, shape, layout, init, scale);
    if (!p) {
        free(full);
        return declare_fail(ps, "parameters: out of memory");
    }
    ps->p[ps->n++] = p;
    return &p->value;
}

static uint64_t fnv1a(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* p's initial values into x (host memory, zero on entry). */
static void init_values(const dc_param *p, float *x, uint64_t seed) {
    float s = p->scale;
    int64_t n = p->value.numel;
    uint64_t stream = fnv1a(p->name);
    switch (p->init) {
    case DC_INIT_ZEROS: break; /* zero already */
    case DC_INIT_ONES:
#pragma omp parallel for
        for (int64_t i = 0; i < n; i++)
            x[i] = 1.0f;
        break;
    case DC_INIT_UNIFORM:
#pragma omp parallel for
        for (int64_t i = 0; i < n; i++)
            x[i] = -s + 2.0f * s * dc_rand_uniform(seed, stream, (uint64_t)i);
        break;
    case DC_INIT_NORMAL:
#pragma omp parallel for
        for (int64_t i = 0; i < n; i++)
            x[i] = s * dc_rand_normal(seed, stream, (uint64_t)i);
        break;
    }
}

/* ---- host staging: one path for every device ----
 *
 * Values are made, converted and permuted in host memory. On the CPU that
 * memory is the buffer itself; on a GPU it is a host copy of the whole flat
 * buffer, copied over in one transfer. */

static size_t buffer_bytes(const dc_params *ps) { return ps->total * sizeof(float); }

/* Host memory laid out like `dst` (a flat buffer on ps's device) to write
 * values into: dst itself on the CPU, else a zeroed staging buffer (so the
 * padding between tensors is zero). NULL with a message on failure. */
static float *stage_for_write(const dc_params *ps, float *dst) {
    if (ps->device == DC_CPU)
        return dst;
    float *host = calloc(ps->total + 1, sizeof *host);
    if (!host)
        dc_fail("parameters: out of host memory for a staging copy of %zu bytes",
                buffer_bytes(ps));
    return host;
}

/* Finish stage_for_write: when `rc` (the status of the writing) is 0, copy
 * the staged values into dst; free the staging buffer. Returns the status. */
static int commit_staged(const dc_params *ps, float *dst, float *host, int rc) {
    if (!host)
        return -1; /* stage_for_write has said why */
    if (host == dst)
        return rc;
    if (!rc)
        rc = dc_memcpy(dst, ps->device, host, DC_CPU, buffer_bytes(ps));
    free(host);
    return rc;
}

/* Host memory holding what `src` (a flat buffer on ps's device) holds: src
 * itself on the CPU, else a copy. Give it back with release_view. NULL with a
 * message on failure. */
static const float *stage_for_read(const dc_params *ps, const float *src) {
    if (ps->device == DC_CPU)
        return src;
    float *host = malloc((ps->total + 1) * sizeof *host);
    if (!host) {
        dc_fail("parameters: out of host memory for a staging copy of %zu bytes",
                buffer_bytes(ps));
        return NULL;
    }
    if (dc_memcpy(host, DC_CPU, src, ps->device, buffer_bytes(ps))) {
        free(host);
        return NULL;
    }
    return host;
}

static void release_view(const float *view, const float *src) {
    if (view != src)
        free((void *)view);
}

/* ---- allocation ---- */

/* Every parameter's initial values into ps->data. */
static int init_all(dc_params *ps, uint64_t seed) {
    float *host = stage_for_write(ps, ps->data);
    for (int i = 0; host && i < ps->n; i++)
        init_values(ps->p[i], host + ps->p[i]->offset, seed);
    return commit_staged(ps, ps->data, host, 0);
}

/* x rounded up to a multiple of m (> 0) into *out; false on overflow. */
static bool round_up(size_t x, size_t m, size_t *out) {
    if (x > SIZE_MAX - (m - 1))
        return false;
    *out = (x + m - 1) / m * m;
    return true;
}

/* Give every parameter its offset; *total: the floats of each buffer, which
 * must be addressable in bytes. A model declared from a hostile config must
 * fail here, not wrap around to a small buffer. */
static int place_all(dc_params *ps, size_t *total) {
    size_t at = 0, len;
    for (int i = 0; i < ps->n; i++) {
        ps->p[i]->offset = at;
        if (!round_up((size_t)ps->p[i]->value.numel, ALIGN_FLOATS, &len) ||
            __builtin_add_overflow(at, len, &at))
            return dc_fail("parameters: the model is too large: the sizes overflow at %s",
                           ps->p[i]->name);
    }
    size_t extent = at;
    if ((ps->multiple > 1 && !round_up(extent, ps->multiple, &at)) || at > SIZE_MAX / sizeof(float))
        return dc_fail("parameters: the model is too large: %zu floats overflow a size in bytes", extent);
    ps->extent = extent;
    *total = at;
    return 0;
}

/* Both buffers on `device`, with initial values from *seed, or none (NULL:
 * the caller writes every value; the padding is zero either way). */
static int alloc_buffers(dc_params *ps, int device, const uint64_t *seed) {
    if (ps->failed)
        return -1; /* dc_error() still names the declaration that failed */
    if (ps->data)
        return dc_fail("parameters: already allocated");
    size_t total = 0;
    if (place_all(ps, &total))
        return -1;
    size_t bytes = total ? total * sizeof(float) : ALIGN_FLOATS * sizeof(float);
    /* On the CPU the buffers are fresh anonymous pages, zero already (the
     * DC_INIT_ZEROS parameters and the padding rely on it); on a GPU the
     * staged values and zero_grad write every byte. */
    float *data = NULL, *grad = NULL;
    ps->device = device;
    ps->total = total;
    if (dc_arena_init(&ps->values, "parameters", device, bytes) ||
        dc_arena_init(&ps->grads, "gradients", device, bytes) ||
        !(data = dc_arena_alloc(&ps->values, bytes)) || !(grad = dc_arena_alloc(&ps->grads, bytes)))
        goto fail;
    ps->data = data;
    ps->grad = grad;
    /* the CPU's gradients stay untouched pages until a backward pass writes them: inference
     * (a captioner's hundreds of MB of weights) never pays for them */
    if ((seed && init_all(ps, *seed)) || (device != DC_CPU && dc_params_zero_grad(ps)))
        goto fail;
    for (int i = 0; i < ps->n; i++) {
        dc_param *p = ps->p[i];
        p->value.device = p->grad.device = device;
        p->value.data = ps->data + p->offset;
        p->grad.data = ps->grad + p->offset;
        p->value.grad = &p->grad;
    }
    return 0;
fail:
    dc_arena_free(&ps->values);
    dc_arena_free(&ps->grads);
    ps->data = ps->grad = NULL;
    ps->total = ps->extent = 0;
    ps->device = DC_CPU;
    return -1;
}

int dc_params_alloc_on(dc_params *ps, int device, uint64_t seed) {
    return alloc_buffers(ps, device, &seed);
}

int dc_params_alloc(dc_params *ps, uint64_t seed) { return dc_params_alloc_on(ps, DC_CPU, seed); }

int dc_params_zero_grad(dc_params *ps) {
    return ps->grad ? dc_memset(ps->grad, ps->device, 0, buffer_bytes(ps)) : 0;
}

/* The float offset of `at` in base[total], if it lies there. */
static bool offset_in(const float *base, size_t total, const void *at, size_t *off) {
    uintptr_t b = (uintptr_t)base, a = (uintptr_t)at;
    if (!base || a < b || a >= b + total * sizeof(float))
        return false;
    *off = (a - b) / sizeof(float);
    return true;
}

bool dc_params_span(const dc_params *ps, const dc_tensor *t, size_t *offset, size_t *len) {
    size_t off;
    if (!t || ps->n == 0 ||
        !(offset_in(ps->data, ps->total, t->data, &off) || offset_in(ps->grad, ps->total, t->data, &off)))
        return false;
    int lo = 0, hi = ps->n - 1; /* offsets grow in declaration order */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (ps->p[mid]->offset <= off)
            lo = mid;
        else
            hi = mid - 1;
    }
    if (ps->p[lo]->offset != off)
        return false;
    *offset = off;
    *len = (lo + 1 < ps->n ? ps->p[lo + 1]->offset : ps->total) - off;
    return true;
}

void dc_param_file_shape(const dc_param *p, int64_t shape[DC_MAX_DIMS]) {
    const int64_t *s = p->value.shape;
    memcpy(shape, s, DC_MAX_DIMS * sizeof *shape);
    if (p->layout == DC_LAYOUT_CONV) { /* [O, kh, kw, I] -> [O, I, kh, kw] */
        shape[1] = s[3];
        shape[2] = s[1];
        shape[3] = s[2];
    }
}

/* Between memory [O, kh, kw, I] and file [O, I, kh, kw] (shape: the memory one). */
static void conv_permute(float *dst, const float *src, const int64_t *shape, bool to_file) {
    int64_t O = shape[0], kh = shape[1], kw = shape[2], I = shape[3];
#pragma omp parallel for
    for (int64_t o = 0; o < O; o++)
        for (int64_t y = 0; y < kh; y++)
            for (int64_t x = 0; x < kw; x++)
                for (int64_t i = 0; i < I; i++) {
                    int64_t m = ((o * kh + y) * kw + x) * I + i, f = ((o * I + i) * kh + y) * kw + x;
                    if (to_file)
                        dst[f] = src[m];
                    else
                        dst[m] = src[f];
                }
}

/* ---- save ---- */

/* Packed weights (dc_params_pack) are in no layout a file knows. */
static int check_unpacked(const dc_params *ps, const char *path) {
    for (int k = 0; k < ps->n; k++)
        if (ps->p[k]->value.packed)
            return dc_fail("%s: the parameters are packed for inference (%s)", path, ps->p[k]->name);
    return 0;
}

int dc_params_save(const dc_params *ps, const float *data, const char *path,
                   const char *const *meta_keys, const char *const *meta_values, int n_meta) {
    if (!ps->data)
        return dc_fail("%s: parameters are not allocated", path);
    if (check_unpacked(ps, path))
        return -1;
    const float *src = data ? data : ps->data;
    const float *host = stage_for_read(ps, src);
    if (!host)
        return -1;
    size_t conv_floats = 0;
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i]->layout == DC_LAYOUT_CONV)
            conv_floats += (size_t)ps->p[i]->value.numel;
    dc_st_tensor *ts = calloc((size_t)ps->n + 1, sizeof *ts);
    float *scratch = malloc((conv_floats + 1) * sizeof *scratch);
    if (!ts || !scratch) {
        free(ts);
        free(scratch);
        release_view(host, src);
        return dc_fail("%s: out of memory", path);
    }
    float *next = scratch;
    for (int i = 0; i < ps->n; i++) {
        const dc_param *p = ps->p[i];
        dc_st_tensor *t = &ts[i];
        const float *v = host + p->offset;
        t->name = p->name;
        snprintf(t->dtype_name, sizeof t->dtype_name, "F32");
        t->dtype = DC_F32;
        t->elem_size = sizeof(float);
        t->ndim = p->value.ndim;
        dc_param_file_shape(p, t->shape);
        t->nbytes = (size_t)p->value.numel * sizeof(float);
        if (p->layout == DC_LAYOUT_CONV) {
            conv_permute(next, v, p->value.shape, true);
            v = next;
            next += p->value.numel;
        }
        t->data = v;
    }
    int rc = dc_st_write(path, ts, ps->n, meta_keys, meta_values, n_meta);
    free(ts);
    free(scratch);
    release_view(host, src);
    return rc;
}

/* ---- load ---- */

static bool is_float(int dtype) { return dtype == DC_F32 || dtype == DC_BF16 || dtype == DC_F16; }

/* Check one file tensor against the parameter it names; fill src[]. */
static int match_tensor(const dc_params *ps, const dc_st_tensor *t, const char *name,
                        const char *path, const dc_st_tensor **src) {
    int k = find_index(ps, name);
    if (k < 0 && name == t->name)
        return dc_fail("%s: %s: the model has no such parameter", path, name);
    if (k < 0)
        return dc_fail("%s: %s (renamed %s): the model has no such parameter", path, t->name, name);
    if (src[k])
        return dc_fail("%s: %s: given twice (%s and %s)", path, name, src[k]->name, t->name);
    if (!is_float(t->dtype))
        return dc_fail("%s: %s: dtype %s cannot be loaded into an f32 parameter", path, name,
                       t->dtype_name);
    const dc_param *p = ps->p[k];
    int64_t want[DC_MAX_DIMS];
    dc_param_file_shape(p, want);
    bool same = t->ndim == p->value.ndim;
    for (int d = 0; same && d < t->ndim; d++)
        same = t->shape[d] == want[d];
    if (!same) {
        char a[128], b[128];
        return dc_fail("%s: %s: file has %s, model expects %s", path, name,
                       dc_shape_str(a, sizeof a, t->ndim, t->shape),
                       dc_shape_str(b, sizeof b, p->value.ndim, want));
    }
    src[k] = t;
    return 0;
}

/* Pair every parameter with its tensor in one of the files, or fail without
 * touching anything. */
static int match_all(const dc_params *ps, const dc_st_set *s, const char *path,
                     dc_rename_fn rename, const dc_st_tensor **src) {
    char buf[512];
    for (int f = 0; f < s->n; f++)
        for (int i = 0; i < s->files[f].n; i++) {
            const dc_st_tensor *t = &s->files[f].tensors[i];
            const char *name = rename ? rename(t->name, buf, sizeof buf) : t->name;
            if (name && match_tensor(ps, t, name, s->paths[f], src))
                return -1;
        }
    int missing = 0, first = -1;
    for (int k = 0; k < ps->n; k++)
        if (!src[k] && missing++ == 0)
            first = k;
    if (missing)
        return dc_fail("%s: %d parameter%s missing, the first %s", path, missing,
                       missing == 1 ? "" : "s", ps->p[first]->name);
    return 0;
}

/* One tensor into its parameter's place: converted to f32 and, for a conv
 * weight, permuted into our layout, from the file's bytes when they are
 * aligned f32 already, else through *scratch (grown as needed, kept for
 * the next: fresh pages for every weight would be zeroed by the kernel
 * each time). */
static int copy_in(const dc_param *p, const dc_st_tensor *t, float *dst, float **scratch, size_t *cap) {
    size_t n = (size_t)p->value.numel;
    if (p->layout != DC_LAYOUT_CONV)
        return dc_convert(dst, DC_F32, t->data, (dc_dtype)t->dtype, n);
    const float *src = t->data;
    if (t->dtype != DC_F32 || (uintptr_t)src % sizeof(float)) {
        if (n > *cap) {
            free(*scratch);
            *cap = 0;
            if (!(*scratch = malloc(n * sizeof **scratch)))
                return dc_fail("%s: out of memory", p->name);
            *cap = n;
        }
        if (dc_convert(*scratch, DC_F32, t->data, (dc_dtype)t->dtype, n))
            return -1;
        src = *scratch;
    }
    conv_permute(dst, src, p->value.shape, false);
    return 0;
}

/* A weight file whose header has been checked against the declarations:
 * src[k] is the tensor of ps->p[k]. Opening it reads the header alone. */
typedef struct matched_file {
    dc_st_set f;
    const dc_st_tensor **src;
} matched_file;

static void close_matched(matched_file *m) {
    free(m->src);
    dc_st_set_close(&m->f);
    m->src = NULL;
}

static int open_matched(const dc_params *ps, const char *path, dc_rename_fn rename, matched_file *m) {
    m->src = NULL;
    if (dc_st_set_open(&m->f, path))
        return -1;
    m->src = calloc((size_t)ps->n + 1, sizeof *m->src);
    int rc = m->src ? match_all(ps, &m->f, path, rename, m->src) : dc_fail("%s: out of memory", path);
    if (rc)
        close_matched(m);
    return rc;
}

/* A conv or linear weight of whole blocks not packed yet, or (with half)
 * packed as f32. */
static bool packable(const dc_param *p, int64_t block, bool half) {
    const dc_tensor *v = &p->value;
    return (p->layout == DC_LAYOUT_LINEAR || p->layout == DC_LAYOUT_CONV) &&
           (!v->packed || (half && v->dtype == DC_F32)) && v->numel > 0 && v->shape[0] % block == 0;
}

/* Scratch for packing ps's weights one at a time (the largest packable
 * one's floats; NULL when there is none, *ok false when out of memory).
 * *block: cpu_conv_pack_block, 0 where nothing is packed (no direct
 * kernel, a GPU, no values). */
static float *pack_scratch(const dc_params *ps, bool half, int64_t *block, bool *ok) {
    *block = ps->data && ps->device == DC_CPU ? cpu_conv_pack_block() : 0;
    *ok = true;
    int64_t most = 0;
    for (int k = 0; *block && k < ps->n; k++)
        if (packable(ps->p[k], *block, half) && ps->p[k]->value.numel > most)
            most = ps->p[k]->value.numel;
    float *tmp = most ? malloc((size_t)most * sizeof *tmp) : NULL;
    if (most && !tmp)
        *ok = !dc_fail("parameters: out of memory to pack %lld floats", (long long)most);
    return tmp;
}

/* Packs weight p (packable) through tmp [its numel]: as f16 with `half`
 * where its values allow, the f32 bytes it no longer uses given back. */
static void pack_one(dc_params *ps, dc_param *p, bool half, float *tmp) {
    dc_tensor *v = &p->value;
    const int64_t rows = v->shape[0], K = v->numel / rows;
    const size_t halves = (size_t)v->numel * sizeof(uint16_t);
    const bool to_half = half && cpu_conv_half_fits(v->data, v->numel); /* either layout */
    if (v->packed && !to_half)
        return; /* stays packed as f32 */
    if (v->packed)
        cpu_conv_unpack(v->data, tmp, rows, K);
    else
        memcpy(tmp, v->data, (size_t)v->numel * sizeof *tmp);
    if (to_half) {
        cpu_conv_pack_half(tmp, v->data, rows, K);
        v->dtype = DC_F16;
        dc_arena_discard(&ps->values, (char *)v->data + halves, halves);
    } else {
        cpu_conv_pack(tmp, v->data, rows, K);
    }
    v->packed = true;
}

/* Every matched tensor into `data` (laid out like ps->data, on its device);
 * into ps->data with ps->pack_half_on_load, each weight packed as f16 once
 * read (dc_params_pack_half), before the next is. */
static int copy_matched(dc_params *ps, float *data, const matched_file *m) {
    float *host = stage_for_write(ps, data), *scratch = NULL, *tmp = NULL;
    int64_t block = 0;
    bool ok = true;
    if (ps->pack_half_on_load && data == ps->data)
        tmp = pack_scratch(ps, true, &block, &ok);
    size_t cap = 0;
    int rc = ok ? 0 : -1;
    for (int k = 0; host && !rc && k < ps->n; k++) {
        rc = copy_in(ps->p[k], m->src[k], host + ps->p[k]->offset, &scratch, &cap);
        dc_st_set_release(&m->f, m->src[k]);
        if (!rc && block && packable(ps->p[k], block, true))
            pack_one(ps, ps->p[k], true, tmp);
    }
    free(tmp);
    free(scratch);
    return commit_staged(ps, data, host, rc);
}

int dc_params_check_file(const dc_params *ps, const char *path, dc_rename_fn rename) {
    matched_file m;
    if (ps->failed)
        return -1;
    if (open_matched(ps, path, rename, &m))
        return -1;
    close_matched(&m);
    return 0;
}

int dc_params_load(dc_params *ps, float *data, const char *path, dc_rename_fn rename) {
    matched_file m;
    if (!ps->data)
        return dc_fail("%s: parameters are not allocated", path);
    if (check_unpacked(ps, path))
        return -1;
    if (open_matched(ps, path, rename, &m))
        return -1;
    int rc = copy_matched(ps, data ? data : ps->data, &m);
    close_matched(&m);
    return rc;
}

int dc_params_alloc_load(dc_params *ps, int device, const char *path, dc_rename_fn rename) {
    matched_file m;
    if (ps->failed)
        return -1;
    if (ps->data)
        return dc_fail("parameters: already allocated");
    if (open_matched(ps, path, rename, &m))
        return -1;
    int rc = alloc_buffers(ps, device, NULL) || copy_matched(ps, ps->data, &m) ? -1 : 0;
    close_matched(&m);
    return rc;
}

/* dc_params_pack, or dc_params_pack_half with `half`. */
static int pack_params(dc_params *ps, bool half) {
    int64_t block;
    bool ok;
    float *tmp = pack_scratch(ps, half, &block, &ok);
    for (int k = 0; ok && block && k < ps->n; k++)
        if (packable(ps->p[k], block, half))
            pack_one(ps, ps->p[k], half, tmp);
    free(tmp);
    return ok ? 0 : -1;
}

int dc_params_pack(dc_params *ps) { return pack_params(ps, false); }

int dc_params_pack_half(dc_params *ps) { return pack_params(ps, true); }

void dc_params_freeze(dc_params *ps) {
    for (int k = 0; k < ps->n; k++) {
        ps->p[k]->value.requires_grad = false;
        ps->p[k]->value.grad = NULL;
        ps->p[k]->grad.data = NULL;
    }
    dc_arena_free(&ps->grads);
    ps->grad = NULL;
}

/* ---- layers ---- */

/* PyTorch's default for conv and linear: kaiming_uniform(a = sqrt(5)) on the
 * weight is uniform(+-1/sqrt(fan_in)), and so is the bias. */
static float fan_in_bound(int64_t fan_in) { return (float)(1.0 / sqrt((double)fan_in)); }

int dc_nn_linear_init(dc_nn_linear *l, dc_params *ps, const char *prefix, int64_t in, int64_t out,
                      bool bias) {
    float b = in > 0 ? fan_in_bound(in) : 0.0f;
    l->weight = dc_params_add(ps, prefix, "weight", DC_SHAPE(out, in), DC_LAYOUT_LINEAR,
                              DC_INIT_UNIFORM, b);
    l->bias = bias ? dc_params_add(ps, prefix, "bias", DC_SHAPE(out), DC_LAYOUT_PLAIN,
                                   DC_INIT_UNIFORM, b)
                   : NULL;
    l->lora = NULL;
    return ps->failed ? -1 : 0;
}

int dc_nn_lora_init(dc_nn_lora *a, dc_params *ps, const char *prefix, int64_t in, int64_t out,
                    int rank, float alpha) {
    a->A = dc_params_add(ps, prefix, "lora_A.weight", DC_SHAPE(rank, in), DC_LAYOUT_LINEAR,
                         DC_INIT_UNIFORM, in > 0 ? fan_in_bound(in) : 0.0f);
    a->B = dc_params_add(ps, prefix, "lora_B.weight", DC_SHAPE(out, rank), DC_LAYOUT_LINEAR,
                         DC_INIT_ZEROS, 0);
    a->scale = rank > 0 ? alpha / (float)rank : 0.0f;
    return ps->failed ? -1 : 0;
}

/* PEFT's order: B applied to scale * (A x), the scale on the narrow [..., rank]. */
dc_tensor *dc_nn_linear_forward(dc_ctx *ctx, const dc_nn_linear *l, dc_tensor *x) {
    dc_tensor *y = dc_linear(ctx, x, l->weight, l->bias);
    if (!l->lora)
        return y;
    dc_tensor *h = dc_scale(ctx, dc_linear(ctx, x, l->lora->A, NULL), l->lora->scale);
    return dc_add(ctx, y, dc_linear(ctx, h, l->lora->B, NULL));
}

int dc_nn_conv2d_init(dc_nn_conv2d *l, dc_params *ps, const char *prefix, int64_t cin,
                      int64_t cout, int kernel, int stride, int pad, bool bias) {
    if (stride < 1 || pad < 0) {
        declare_fail(ps, "conv2d %s: stride %d and padding %d (need stride >= 1, padding >= 0)",
                     prefix, stride, pad);
        return -1;
    }
    int64_t fan_in = cin * kernel * kernel;
    float b = fan_in > 0 ? fan_in_bound(fan_in) : 0.0f;
    l->weight = dc_params_add(ps, prefix, "weight", DC_SHAPE(cout, kernel, kernel, cin),
                              DC_LAYOUT_CONV, DC_INIT_UNIFORM, b);
    l->bias = bias ? dc_params_add(ps, prefix, "bias", DC_SHAPE(cout), DC_LAYOUT_PLAIN,
                                   DC_INIT_UNIFORM, b)
                   : NULL;
    l->stride = stride;
    l->pad = pad;
    return ps->failed ? -1 : 0;
}

dc_tensor *dc_nn_conv2d_forward(dc_ctx *ctx, const dc_nn_conv2d *l, dc_tensor *x) {
    return dc_conv2d(ctx, x, l->weight, l->bias, l->stride, l->pad);
}

/* weight 1, bias 0, as PyTorch's affine norms. */
static void norm_params(dc_tensor **w, dc_tensor **b, dc_params *ps, const char *prefix,
                        int64_t channels) {
    *w = dc_params_add(ps, prefix, "weight", DC_SHAPE(channels), DC_LAYOUT_PLAIN, DC_INIT_ONES, 0);
    *b = dc_params_add(ps, prefix, "bias", DC_SHAPE(channels), DC_LAYOUT_PLAIN, DC_INIT_ZEROS, 0);
}

int dc_nn_group_norm_init(dc_nn_group_norm *l, dc_params *ps, const char *prefix, int groups,
                          int64_t channels, float eps) {
    if (groups < 1 || channels % groups) {
        declare_fail(ps, "group_norm %s: %lld channels do not split into %d groups", prefix,
                     (long long)channels, groups);
        return -1;
    }
    norm_params(&l->weight, &l->bias, ps, prefix, channels);
    l->groups = groups;
    l->eps = eps;
    return ps->failed ? -1 : 0;
}

dc_tensor *dc_nn_group_norm_forward(dc_ctx *ctx, const dc_nn_group_norm *l, dc_tensor *x) {
    return dc_group_norm(ctx, x, l->groups, l->weight, l->bias, l->eps);
}

dc_tensor *dc_nn_group_norm_silu_forward(dc_ctx *ctx, const dc_nn_group_norm *l, dc_tensor *x) {
    return dc_group_norm_silu(ctx, x, l->groups, l->weight, l->bias, l->eps);
}

int dc_nn_layer_norm_init(dc_nn_layer_norm *l, dc_params *ps, const char *prefix, int64_t channels,
                          float eps) {
    norm_params(&l->weight, &l->bias, ps, prefix, channels);
    l->eps = eps;
    return ps->failed ? -1 : 0;
}

dc_tensor *dc_nn_layer_norm_forward(dc_ctx *ctx, const dc_nn_layer_norm *l, dc_tensor *x) {
    return dc_layer_norm(ctx, x, l->weight, l->bias, l->eps);
}

int dc_nn_embedding_init(dc_nn_embedding *l, dc_params *ps, const char *prefix, int64_t num,
                         int64_t dim) {
    l->weight = dc_params_add(ps, prefix, "weight", DC_SHAPE(num, dim), DC_LAYOUT_PLAIN,
                              DC_INIT_NORMAL, 1.0f);
    return ps->failed ? -1 : 0;
}

dc_tensor *dc_nn_embedding_forward(dc_ctx *ctx, const dc_nn_embedding *l, dc_tensor *idx) {
    return dc_embedding(ctx, l->weight, idx);
}
