/*
 * Tensors and arenas: the data model of the engine.
 *
 * A dc_tensor is a contiguous row-major block of up to 4 dimensions on one
 * device. Images are NHWC, token sequences [N, L, C]. There are no strides:
 * a view is only ever a reshape; anything else is an op that copies.
 *
 * Memory comes from arenas (bump allocators). The caller owns three kinds:
 * parameters (persistent), gradients (one flat buffer, see nn.h) and
 * activations (reset at the start of every step). Allocation never calls
 * malloc once an arena is set up.
 */
#ifndef DC_TENSOR_H
#define DC_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DC_MAX_DIMS 4
#define DC_CPU (-1) /* device id of the host; CUDA devices are their ordinal >= 0 */

typedef enum { DC_F32, DC_BF16, DC_F16, DC_I32, DC_U8, DC_DTYPE_COUNT } dc_dtype;

size_t dc_dtype_size(dc_dtype t);
const char *dc_dtype_name(dc_dtype t); /* "f32", "bf16", ... */

typedef struct dc_tensor dc_tensor;
struct dc_tensor {
    dc_dtype dtype;
    int device; /* DC_CPU or a CUDA ordinal */
    int ndim;
    int64_t shape[DC_MAX_DIMS];
    int64_t numel;
    void *data;
    dc_tensor *grad; /* f32, same shape; NULL until backward reaches it */
    bool requires_grad;
    bool packed;      /* a CPU weight [cout, ...] held as the direct convolution kernels
                         read it (dc_params_pack): forward passes only */
    int pending_uses; /* backward: nodes yet to add to a preset grad (ops.h, dc_grad_ready_fn) */
};

/* A bump allocator over one block of memory on one device. */
typedef struct dc_arena {
    const char *name; /* for error messages: "activations", "parameters" */
    int device;
    char *base;
    size_t cap, used, peak;
} dc_arena;

/* Reserve `cap` bytes. On the CPU the block is mapped lazily, so a generous
 * capacity costs only what is touched; on a GPU it is one cudaMalloc. */
int dc_arena_init(dc_arena *a, const char *name, int device, size_t cap);
void dc_arena_free(dc_arena *a);
/* 64-byte aligned; NULL with a message naming the arena and the size needed. */
void *dc_arena_alloc(dc_arena *a, size_t bytes);
void dc_arena_reset(dc_arena *a);
/* Give back what was allocated since `mark` (an earlier a->used): scratch. */
void dc_arena_rewind(dc_arena *a, size_t mark);
/* On the CPU, the whole pages within [p, p + bytes) of a's block go back to
 * the system (they read as zeros if touched again): memory a tensor no
 * longer uses (weights packed as f16 into half their f32 bytes). The arena's
 * counts do not change. Nothing happens on a GPU. */
void dc_arena_discard(dc_arena *a, void *p, size_t bytes);
/* The bytes in use in all arenas of `device` (DC_CPU or a GPU ordinal)
 * together: now, and their high-water mark since the process started. That
 * mark is what a run needed of the device, where a GPU's activation arena
 * reserves most of its memory up front (what nvidia-smi shows in use).
 * Counted as allocated, not as reserved; 0 for ordinals past 62. */
size_t dc_arena_used_bytes(int device);
size_t dc_arena_peak_bytes(int device);

/* Shape helpers. The element count; 0 when a dimension is 0; -1 when a
 * dimension is negative or the product overflows int64 (a hostile shape
 * must not wrap around to a small size). */
int64_t dc_shape_numel(int ndim, const int64_t *shape);
/* numel x the dtype's size into *bytes; false when a dimension is negative
 * or that does not fit a size_t. */
bool dc_shape_bytes(int ndim, const int64_t *shape, dc_dtype dtype, size_t *bytes);
bool dc_same_shape(const dc_tensor *a, const dc_tensor *b);
/* "[2, 3, 4]" into buf; returns buf. */
char *dc_shape_str(char *buf, size_t n, int ndim, const int64_t *shape);
size_t dc_tensor_bytes(const dc_tensor *t);

/* A tensor whose struct and data both come from `a` (data uninitialised). */
dc_tensor *dc_tensor_new(dc_arena *a, dc_dtype dtype, int ndim, const int64_t *shape);
/* A tensor with the struct from `meta` (host) and data from `data`. */
dc_tensor *dc_tensor_new2(dc_arena *meta, dc_arena *data, dc_dtype dtype, int ndim,
                          const int64_t *shape);

/* Copy src's data into dst (same dtype and element count; any two devices,
 * see device.h's dc_memcpy). */
int dc_tensor_copy(dc_tensor *dst, const dc_tensor *src);

/* bf16/f16 <-> f32 on the host (round to nearest even). */
float dc_bf16_to_f32(uint16_t h);
uint16_t dc_f32_to_bf16(float f);
float dc_f16_to_f32(uint16_t h);
uint16_t dc_f32_to_f16(float f);

/* Copy n elements between dtypes on the host (f32/bf16/f16/i32/u8; numeric conversion). */
int dc_convert(void *dst, dc_dtype dt, const void *src, dc_dtype st, size_t n);

#endif
