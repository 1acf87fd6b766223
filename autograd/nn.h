/*
 * Parameters and the layers that own them.
 *
 * A model declares every parameter first, under its state_dict name
 * ("down_blocks.0.resnets.0.conv1.weight"), with its shape in OUR memory
 * layout, its file layout and its init rule. dc_params_alloc() then places
 * all values in one flat f32 buffer and all gradients in a second one with
 * the same offsets, so one all-reduce and one fused optimizer kernel cover
 * the whole model. Each tensor starts on a 16-float (64-byte) boundary; the
 * padding between tensors is zero in both buffers and stays zero under AdamW
 * and EMA.
 *
 * The buffers live on one device, chosen at alloc: the host or a GPU (then
 * every parameter tensor is a device tensor, for contexts on that GPU).
 * Initial values, loading and saving go through host memory either way: on a
 * GPU a host staging copy of the whole buffer is filled (or read) by the same
 * code as on the CPU, then copied over, so both devices start from the same
 * bits.
 *
 * Weight files hold the PyTorch layout (conv [Cout, Cin, kh, kw]); memory holds
 * the layout our kernels want (conv [Cout, kh, kw, Cin]). Save and load convert,
 * so a diffusers user can read our files and we can read theirs.
 *
 * Layers (dc_nn_linear, dc_nn_conv2d, ...) register their parameters under a
 * prefix in _init and call the ops of ops.h in _forward. A layer's tensor
 * pointers are valid from _init on; their data only after dc_params_alloc().
 */
#ifndef DC_NN_H
#define DC_NN_H

#include "ops.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How a parameter is laid out in a weight file. */
typedef enum {
    DC_LAYOUT_PLAIN,  /* as in memory (norms and biases [C], tables [V, C]) */
    DC_LAYOUT_LINEAR, /* as in memory, a linear layer's weight [out, in] (dc_params_pack packs it) */
    DC_LAYOUT_CONV,   /* memory [Cout, kh, kw, Cin], file [Cout, Cin, kh, kw] */
} dc_layout;

/* Initial values. Random ones come from Philox keyed by (seed, stream = FNV-1a
 * hash of the name), element i at counter i: a parameter's start depends only
 * on the seed and its own name, not on what else the model declares. */
typedef enum {
    DC_INIT_ZEROS,
    DC_INIT_ONES,
    DC_INIT_UNIFORM, /* uniform(-scale, scale) */
    DC_INIT_NORMAL,  /* normal(0, scale^2) */
} dc_init;

typedef struct dc_param {
    char *name;      /* "conv_in.weight" */
    dc_layout layout;
    dc_init init;
    float scale;     /* the bound of DC_INIT_UNIFORM, the std of DC_INIT_NORMAL */
    size_t offset;   /* floats from the start of the flat buffers */
    dc_tensor value; /* f32, memory layout; data = data + offset, grad = &grad once allocated */
    dc_tensor grad;  /* f32, same shape; data = grad + offset */
} dc_param;

typedef struct dc_params {
    int n, cap;
    dc_param **p;      /* [n] in declaration order (iterate p[0..n)) */
    float *data;       /* [total] every value, on `device`; NULL until dc_params_alloc */
    float *grad;       /* [total] every gradient, at the same offsets, on `device` */
    size_t total;      /* floats in each buffer, padding included */
    size_t extent;     /* floats up to the end of the last parameter (aligned): total before rounding */
    size_t multiple;   /* set before alloc, or 0: total is rounded up to a multiple of it (shards) */
    bool pack_half_on_load; /* set before dc_params_alloc_load: each weight dc_params_pack_half
                               packs is packed as soon as it is read, so the f32 values are never
                               all resident (the peak memory of loading) */
    int device;        /* where both buffers live: DC_CPU or a CUDA ordinal (set by alloc) */
    bool failed;       /* a declaration failed: later ones and alloc fail too */
    dc_arena values;   /* "parameters" */
    dc_arena grads;    /* "gradients" */
} dc_params;

void dc_params_init(dc_params *ps);
void dc_params_free(dc_params *ps);

/* Declare "prefix.name" (just "name" when prefix is NULL or ""), shape in
 * memory layout. Returns the parameter's tensor, whose pointer stays valid
 * until dc_params_free; its data arrives with dc_params_alloc. NULL on a
 * duplicate name, a bad shape, a conv layout that is not 4-D, or a
 * declaration after alloc; errors are sticky like the ops' (the first message
 * is kept, every later declaration and alloc fail). */
dc_tensor *dc_params_add(dc_params *ps, const char *prefix, const char *name, int ndim,
                         const int64_t *shape, dc_layout layout, dc_init init, float scale);

/* Allocate both buffers on `device` (DC_CPU or a CUDA ordinal) and give every
 * parameter its initial values from `seed`, the same bits on every device;
 * gradients start at zero. A GPU needs a host staging buffer of the model's
 * size for the duration of the call. */
int dc_params_alloc_on(dc_params *ps, int device, uint64_t seed);
/* dc_params_alloc_on(ps, DC_CPU, seed). */
int dc_params_alloc(dc_params *ps, uint64_t seed);
/* Zero the gradient buffer (padding included); fails only on a failed GPU. */
int dc_params_zero_grad(dc_params *ps);
/* When t is a parameter's value or gradient tensor: its range of the flat
 * buffers, the padding after it included (so the ranges of all parameters
 * tile [0, total)), and true; false for any other tensor. */
bool dc_params_span(const dc_params *ps, const dc_tensor *t, size_t *offset, size_t *len);
/* NULL when no parameter has that name. */
dc_param *dc_params_find(const dc_params *ps, const char *name);
/* The parameter's shape in its file layout (conv: [Cout, Cin, kh, kw]). */
void dc_param_file_shape(const dc_param *p, int64_t shape[DC_MAX_DIMS]);

/* Map a tensor name found in a file to a parameter name: return `file_name`
 * itself, or a new name written into buf (size bytes), or NULL to skip the
 * tensor. Lets the loader accept older names (diffusers' query/key/value/
 * proj_attn for to_q/to_k/to_v/to_out.0). */
typedef const char *(*dc_rename_fn)(const char *file_name, char *buf, size_t size);

/* Write every parameter by name as f32 in file layout, with metadata pairs.
 * `data` is a buffer laid out like ps->data and on the same device (an EMA
 * shadow, say); NULL means ps->data. */
int dc_params_save(const dc_params *ps, const float *data, const char *path,
                   const char *const *meta_keys, const char *const *meta_values, int n_meta);

/* Read every parameter by name from `path` into `data` (laid out like
 * ps->data, on its device; NULL: ps->data), converting f32/bf16/f16 to f32 and file layout to memory layout.
 * `path` is a safetensors file or a sharded set's index (*.json, see dc_st_set_open). `rename`
 * may be NULL. A parameter missing from the file, a tensor the model does not
 * have, a shape mismatch ("NAME: file has [64, 32, 3, 3], model expects
 * [64, 64, 3, 3]", both in file layout) or a dtype that is not a float is an
 * error, found before any value changes. */
int dc_params_load(dc_params *ps, float *data, const char *path, dc_rename_fn rename);

/* The checks of dc_params_load, made from the declarations and the file's
 * header alone, before anything is allocated: a config that does not fit
 * its weights (say 65536 channels next to a small model's file) is refused
 * with the first tensor that differs, instead of first allocating and
 * initialising the model it describes. Callable before or after alloc. */
int dc_params_check_file(const dc_params *ps, const char *path, dc_rename_fn rename);

/* Allocate on `device` and load `path`: dc_params_check_file first, then
 * dc_params_alloc_on without drawing initial values (the file has them all),
 * then dc_params_load. How every command that starts from a weight file
 * should allocate its parameters. */
int dc_params_alloc_load(dc_params *ps, int device, const char *path, dc_rename_fn rename);

/* For inference on the CPU: every conv and linear weight whose output
 * channels fill whole blocks of the direct kernels is rearranged, in place,
 * into the layout they read (cpu_conv_pack), so no forward pass repacks it
 * (for Stable Diffusion's UNet that is 5% of a 512x512 step, 23% at
 * 256x256). The ops then refuse to record a backward pass through those
 * weights, and the parameters can no longer be saved or loaded. Nothing
 * happens on a GPU or where no direct kernel runs. */
int dc_params_pack(dc_params *ps);
/* The same with the packed weights as f16 (cpu_conv_pack_half: round to
 * nearest even; the kernels widen them to f32 as they load them, the sums
 * stay f32), value.dtype DC_F16, and the upper half of each one's f32 bytes
 * given back (dc_arena_discard): half the resident memory of the weights
 * and half the bytes a forward pass reads. A weight with a value that f16
 * does not hold (|w| >= 65520, NaN) stays f32. Weights packed as f32
 * already (dc_params_pack: after a LoRA was fused) are repacked. */
int dc_params_pack_half(dc_params *ps);

/* Freeze every parameter (a LoRA's base model): none requires a gradient,
 * so backward passes record and compute nothing for them, and the gradient
 * buffer is given back (ps->grad NULL). The values stay. */
void dc_params_freeze(dc_params *ps);

/* ---- layers ---- */

/* A low-rank adapter on a linear layer (LoRA, as PEFT's lora.Linear):
 * y = W x + b + scale B (A x), scale = lora_alpha / rank. PEFT's default
 * init: A kaiming-uniform (a = sqrt(5), the bound 1/sqrt(in)), B zero, so a
 * fresh adapter changes nothing. models/lora.h attaches them to a model. */
typedef struct dc_nn_lora {
    dc_tensor *A; /* [rank, in] lora_A.weight */
    dc_tensor *B; /* [out, rank] lora_B.weight */
    float scale;  /* lora_alpha / rank */
} dc_nn_lora;
/* Declare prefix.lora_A.weight and prefix.lora_B.weight in `ps`. */
int dc_nn_lora_init(dc_nn_lora *a, dc_params *ps, const char *prefix, int64_t in, int64_t out,
                    int rank, float alpha);

/* x [..., in] -> [..., out]; PyTorch's nn.Linear init. */
typedef struct dc_nn_linear {
    dc_tensor *weight; /* [out, in] */
    dc_tensor *bias;   /* [out], NULL without bias */
    const dc_nn_lora *lora; /* NULL, or an adapter added to the output (set by its owner) */
} dc_nn_linear;
int dc_nn_linear_init(dc_nn_linear *l, dc_params *ps, const char *prefix, int64_t in, int64_t out,
                      bool bias);
dc_tensor *dc_nn_linear_forward(dc_ctx *ctx, const dc_nn_linear *l, dc_tensor *x);

/* x [N, H, W, Cin] -> [N, H', W', Cout], square kernel, zero padding; nn.Conv2d's init. */
typedef struct dc_nn_conv2d {
    dc_tensor *weight; /* [Cout, k, k, Cin] (file: [Cout, Cin, k, k]) */
    dc_tensor *bias;   /* [Cout], NULL without bias */
    int stride, pad;
} dc_nn_conv2d;
int dc_nn_conv2d_init(dc_nn_conv2d *l, dc_params *ps, const char *prefix, int64_t cin,
                      int64_t cout, int kernel, int stride, int pad, bool bias);
dc_tensor *dc_nn_conv2d_forward(dc_ctx *ctx, const dc_nn_conv2d *l, dc_tensor *x);

/* x [N, ..., C] normalised per sample over groups of C/groups channels; weight 1, bias 0. */
typedef struct dc_nn_group_norm {
    dc_tensor *weight; /* [C] */
    dc_tensor *bias;   /* [C] */
    int groups;
    float eps;
} dc_nn_group_norm;
int dc_nn_group_norm_init(dc_nn_group_norm *l, dc_params *ps, const char *prefix, int groups,
                          int64_t channels, float eps);
dc_tensor *dc_nn_group_norm_forward(dc_ctx *ctx, const dc_nn_group_norm *l, dc_tensor *x);
/* silu(the group norm of x), fused. */
dc_tensor *dc_nn_group_norm_silu_forward(dc_ctx *ctx, const dc_nn_group_norm *l, dc_tensor *x);

/* x [..., C] normalised over C; weight 1, bias 0. */
typedef struct dc_nn_layer_norm {
    dc_tensor *weight; /* [C] */
    dc_tensor *bias;   /* [C] */
    float eps;
} dc_nn_layer_norm;
int dc_nn_layer_norm_init(dc_nn_layer_norm *l, dc_params *ps, const char *prefix, int64_t channels,
                          float eps);
dc_tensor *dc_nn_layer_norm_forward(dc_ctx *ctx, const dc_nn_layer_norm *l, dc_tensor *x);

/* idx (i32, any shape S) -> [S..., C]; rows drawn from N(0, 1) as nn.Embedding. */
typedef struct dc_nn_embedding {
    dc_tensor *weight; /* [V, C] */
} dc_nn_embedding;
int dc_nn_embedding_init(dc_nn_embedding *l, dc_params *ps, const char *prefix, int64_t num,
                         int64_t dim);
dc_tensor *dc_nn_embedding_forward(dc_ctx *ctx, const dc_nn_embedding *l, dc_tensor *idx);

#endif
