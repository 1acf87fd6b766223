/* Tensors, dtypes and arenas (see tensor.h). */
#include "tensor.h"

#include "device.h"
#include "error.h"

#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h> /* sysconf */

#define ALIGN 64

/* ---- the bytes in use per device, over all its arenas ---- */

#define TRACKED 64 /* DC_CPU and GPU ordinals 0..62: slot device + 1 */

/* Atomic: arenas of one device may be used from several threads. */
static _Atomic size_t device_used[TRACKED], device_peak[TRACKED];

static _Atomic size_t *slot(_Atomic size_t *counts, int device) {
    return device >= DC_CPU && device < TRACKED - 1 ? &counts[device + 1] : NULL;
}

static void count_alloc(int device, size_t bytes) {
    _Atomic size_t *used = slot(device_used, device), *peak = slot(device_peak, device);
    if (!used)
        return;
    size_t now = atomic_fetch_add(used, bytes) + bytes, was = atomic_load(peak);
    while (now > was && !atomic_compare_exchange_weak(peak, &was, now))
        ;
}

static void count_free(int device, size_t bytes) {
    _Atomic size_t *used = slot(device_used, device);
    if (used)
        atomic_fetch_sub(used, bytes);
}

size_t dc_arena_used_bytes(int device) {
    _Atomic size_t *used = slot(device_used, device);
    return used ? atomic_load(used) : 0;
}

size_t dc_arena_peak_bytes(int device) {
    _Atomic size_t *peak = slot(device_peak, device);
    return peak ? atomic_load(peak) : 0;
}

/* ---- arenas ---- */

size_t dc_dtype_size(dc_dtype t) {
    static const size_t sizes[DC_DTYPE_COUNT] = {4, 2, 2, 4, 1};
    return (unsigned)t < DC_DTYPE_COUNT ? sizes[t] : 0;
}

const char *dc_dtype_name(dc_dtype t) {
    static const char *names[DC_DTYPE_COUNT] = {"f32", "bf16", "f16", "i32", "u8"};
    return (unsigned)t < DC_DTYPE_COUNT ? names[t] : "?";
}

/* n rounded up to a multiple of ALIGN; false when that overflows. */
static bool align_up(size_t n, size_t *out) {
    if (n > SIZE_MAX - (ALIGN - 1))
        return false;
    *out = (n + ALIGN - 1) / ALIGN * ALIGN;
    return true;
}

int dc_arena_init(dc_arena *a, const char *name, int device, size_t cap) {
    memset(a, 0, sizeof *a);
    a->name = name;
    a->device = device;
    if (!align_up(cap, &cap))
        return dc_fail("%s arena: %zu bytes is more than any machine has", name, cap);
    if (device != DC_CPU) { /* device memory is committed at once: ask for what is needed */
        char what[96];
        snprintf(what, sizeof what, "%s arena", name);
        a->base = dc_device_alloc(device, cap, what);
        if (!a->base)
            return -1;
        a->cap = cap;
        return 0;
    }
    void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return dc_fail("%s arena: cannot reserve %zu bytes", name, cap);
#ifdef MADV_HUGEPAGE
    /* Transparent huge pages where the system gives them on request: one page
     * fault per 2 MiB instead of per 4 KiB when a step first touches its
     * memory (in a VM, faults were 16% of a 20-step sampling run). Advice only:
     * failure changes nothing. */
    madvise(p, cap, MADV_HUGEPAGE);
#endif
    a->base = p;
    a->cap = cap;
    return 0;
}

void dc_arena_free(dc_arena *a) {
    if (a)
        count_free(a->device, a->used);
    if (a && a->base && a->device != DC_CPU)
        dc_device_free(a->device, a->base);
    else if (a && a->base)
        munmap(a->base, a->cap);
    if (a)
        a->base = NULL, a->cap = a->used = 0;
}

void *dc_arena_alloc(dc_arena *a, size_t bytes) {
    size_t need;
    if (!a->base || !align_up(bytes, &need) || need > a->cap - a->used) {
        dc_fail("%s arena: out of memory: need %zu more bytes, %zu of %zu in use", a->name, bytes,
                a->used, a->cap);
        return NULL;
    }
    void *p = a->base + a->used;
    a->used += need;
    if (a->used > a->peak)
        a->peak = a->used;
    count_alloc(a->device, need);
    return p;
}

void dc_arena_reset(dc_arena *a) { dc_arena_rewind(a, 0); }

void dc_arena_rewind(dc_arena *a, size_t mark) {
    if (mark < a->used) {
        count_free(a->device, a->used - mark);
        a->used = mark;
    }
}

void dc_arena_discard(dc_arena *a, void *p, size_t bytes) {
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), at = (uintptr_t)p;
    const uintptr_t first = (at + page - 1) / page * page, last = (at + bytes) / page * page;
    if (a->device == DC_CPU && last > first)
        madvise((void *)first, last - first, MADV_DONTNEED);
}

int64_t dc_shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    bool overflow = false;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return -1;
        overflow |= __builtin_mul_overflow(n, shape[i], &n);
    }
    for (int i = 0; overflow && i < ndim; i++)
        if (shape[i] == 0) /* empty, however large the other dimensions */
            return 0;
    return overflow ? -1 : n;
}

bool dc_shape_bytes(int ndim, const int64_t *shape, dc_dtype dtype, size_t *bytes) {
    int64_t n = dc_shape_numel(ndim, shape);
    return n >= 0 && (uint64_t)n <= SIZE_MAX && !__builtin_mul_overflow((size_t)n, dc_dtype_size(dtype), bytes);
}

bool dc_same_shape(const dc_tensor *a, const dc_tensor *b) {
    if (a->ndim != b->ndim)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return false;
    return true;
}

char *dc_shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t len = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, i ? ", %" PRId64 : "%" PRId64, shape[i]);
    if (len < n)
        snprintf(buf + len, n - len, "]");
    return buf;
}

size_t dc_tensor_bytes(const dc_tensor *t) { return (size_t)t->numel * dc_dtype_size(t->dtype); }

dc_tensor *dc_tensor_new2(dc_arena *meta, dc_arena *data, dc_dtype dtype, int ndim,
                          const int64_t *shape) {
    if (ndim < 0 || ndim > DC_MAX_DIMS) {
        dc_fail("tensor: %d dimensions (at most %d)", ndim, DC_MAX_DIMS);
        return NULL;
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) {
            dc_fail("tensor: negative dimension %" PRId64, shape[i]);
            return NULL;
        }
    size_t bytes;
    if (!dc_shape_bytes(ndim, shape, dtype, &bytes)) {
        char s[160];
        dc_fail("tensor: %s %s is more bytes than a size_t holds", dc_dtype_name(dtype),
                dc_shape_str(s, sizeof s, ndim, shape));
        return NULL;
    }
    dc_tensor *t = dc_arena_alloc(meta, sizeof *t);
    if (!t)
        return NULL;
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->device = data->device;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->numel = dc_shape_numel(ndim, shape);
    t->data = dc_arena_alloc(data, bytes);
    return t->data ? t : NULL;
}

dc_tensor *dc_tensor_new(dc_arena *a, dc_dtype dtype, int ndim, const int64_t *shape) {
    return dc_tensor_new2(a, a, dtype, ndim, shape);
}

int dc_tensor_copy(dc_tensor *dst, const dc_tensor *src) {
    if (dst->dtype != src->dtype || dst->numel != src->numel) {
        char a[64], b[64];
        return dc_fail("copy: %s %s into %s %s: dtypes or sizes differ", dc_dtype_name(src->dtype),
                       dc_shape_str(a, sizeof a, src->ndim, src->shape), dc_dtype_name(dst->dtype),
                       dc_shape_str(b, sizeof b, dst->ndim, dst->shape));
    }
    return dc_memcpy(dst->data, dst->device, src->data, src->device, dc_tensor_bytes(src));
}

float dc_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t dc_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet and a NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float dc_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    int exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ffu;
    float f;
    if (exp == 0)
        f = ldexpf((float)man, -24); /* zero and subnormals */
    else if (exp == 31) {
        uint32_t u = 0x7f800000u | (man << 13);
        memcpy(&f, &u, 4);
    } else
        f = ldexpf((float)(man | 0x400u), exp - 25);
    uint32_t u;
    memcpy(&u, &f, 4);
    u |= sign;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t dc_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    float a = fabsf(f);
    if (isnan(f))
        return sign | 0x7e00u;
    if (a >= 65520.0f) /* rounds past the largest finite half */
        return sign | 0x7c00u;
    if (a < 6.103515625e-05f) /* subnormal range: multiples of 2^-24, nearest even */
        return sign | (uint16_t)nearbyintf(a * 16777216.0f);
    memcpy(&u, &a, 4);
    uint32_t exp = (u >> 23) - 127 + 15;
    uint32_t man = u & 0x7fffffu;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++;
    return sign | (uint16_t)h;
}

/* Element i of p as a double. memcpy because file data need not be aligned. */
static double load(const void *p, dc_dtype t, size_t i) {
    const char *b = (const char *)p + i * dc_dtype_size(t);
    float f;
    uint16_t h;
    int32_t v;
    switch (t) {
    case DC_F32: memcpy(&f, b, 4); return f;
    case DC_BF16: memcpy(&h, b, 2); return dc_bf16_to_f32(h);
    case DC_F16: memcpy(&h, b, 2); return dc_f16_to_f32(h);
    case DC_I32: memcpy(&v, b, 4); return v;
    case DC_U8: return *(const uint8_t *)b;
    default: return 0;
    }
}

static void store(void *p, dc_dtype t, size_t i, double v) {
    char *b = (char *)p + i * dc_dtype_size(t);
    float f = (float)v;
    uint16_t h;
    int32_t n;
    switch (t) {
    case DC_F32: memcpy(b, &f, 4); break;
    case DC_BF16: h = dc_f32_to_bf16(f); memcpy(b, &h, 2); break;
    case DC_F16: h = dc_f32_to_f16(f); memcpy(b, &h, 2); break;
    case DC_I32: n = (int32_t)v; memcpy(b, &n, 4); break;
    case DC_U8: *(uint8_t *)b = (uint8_t)v; break;
    default: break;
    }
}

int dc_convert(void *dst, dc_dtype dt, const void *src, dc_dtype st, size_t n) {
    if ((unsigned)dt >= DC_DTYPE_COUNT || (unsigned)st >= DC_DTYPE_COUNT)
        return dc_fail("convert: unknown dtype");
    if (dt == st) {
        memcpy(dst, src, n * dc_dtype_size(dt));
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        store(dst, dt, i, load(src, st, i));
    return 0;
}
