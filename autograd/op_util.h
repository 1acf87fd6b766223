/*
 * Internal helpers shared by the op files (ops_*.c): argument checks, output
 * allocation, tape recording and lazy gradient buffers. Not part of the
 * public API.
 */
#ifndef DC_OP_UTIL_H
#define DC_OP_UTIL_H

#include "device.h"
#include "error.h"
#include "ops.h"

/* Run kernel `name` on `device`: cpu_<name>(...) or cuda_<name>(...), with
 * the same arguments (device pointers for CUDA; the stream and library
 * handles are the device's, see cuda/device.h). Both return the same type.
 * In a build without CUDA it is the CPU call alone. The one place where the
 * engine picks a device's kernel: the ops through DC_KERNEL (their context's
 * device), the optimizer and the random fills through DC_KERNEL_ON (the
 * device of their buffers). */
#ifdef DC_HAVE_CUDA
#include "cuda/device.h"
#define DC_KERNEL_ON(device, name, ...)                                                            \
    ((device) == DC_CPU ? cpu_##name(__VA_ARGS__) : (cuda_select(device), cuda_##name(__VA_ARGS__)))
#else
#define DC_KERNEL_ON(device, name, ...) ((void)(device), cpu_##name(__VA_ARGS__))
#endif
#define DC_KERNEL(ctx, name, ...) DC_KERNEL_ON((ctx)->device, name, __VA_ARGS__)

/* Fail the context with a message prefixed by the op's name; returns NULL. */
void *op_fail(dc_ctx *ctx, dc_op op, const char *fmt, ...) DC_PRINTF(3, 4);

/* True when the context is healthy and every listed tensor is non-NULL, f32
 * (unless listed via op_ok_any), and on the context's device. */
bool op_ok(dc_ctx *ctx, dc_op op, int n, ...);
/* The same, without the f32 requirement. */
bool op_ok_any(dc_ctx *ctx, dc_op op, int n, ...);

/* An output tensor on the context's device. */
dc_tensor *op_out(dc_ctx *ctx, dc_dtype dtype, int ndim, const int64_t *shape);
/* An output tensor of x's shape and dtype. */
dc_tensor *op_out_like(dc_ctx *ctx, const dc_tensor *x);

/* Scratch memory from the activation arena (freed with the step). */
void *op_scratch(dc_ctx *ctx, size_t bytes);
/* Scratch for one kernel call only: `mark` is the arena position before it,
 * restored by op_scratch_release after the call, so the next op reuses the
 * memory instead of every op of a step keeping its own. Nothing else may be
 * allocated in between. */
void *op_scratch_take(dc_ctx *ctx, size_t bytes, size_t *mark);
void op_scratch_release(dc_ctx *ctx, size_t mark);
/* `n` host floats made readable by the context's device: `host` itself on the
 * CPU, a copy in scratch on a GPU. NULL on failure (ctx failed). */
const float *op_upload(dc_ctx *ctx, const float *host, int64_t n);
/* Element i of the i32 tensor t, read from any device (for error messages). */
int32_t op_i32_at(dc_ctx *ctx, const dc_tensor *t, int64_t i);

/* Append a node for `out` when recording and any input requires grad; marks
 * out->requires_grad. Returns the node (fill iarg/farg/saved) or NULL when
 * nothing is recorded; sets ctx->failed only on allocation failure. */
dc_node *op_record(dc_ctx *ctx, dc_op op, dc_backward_fn backward, dc_tensor *out,
                   dc_tensor *in0, dc_tensor *in1, dc_tensor *in2);

/* dc_keep on any device and with a tape too: the caller knows that nothing
 * made since `mark` but t is on the tape (dc_checkpoint's pass without one). */
dc_tensor *op_keep(dc_ctx *ctx, size_t mark, dc_tensor *t);
/* While dc_checkpoint runs its function without a tape: the inputs of an op
 * that require grad join what the checkpoint reads. */
void op_checkpoint_note(dc_ctx *ctx, dc_tensor *in0, dc_tensor *in1, dc_tensor *in2);
/* Walk `tape` (newest first) as dc_backward does, without the grad_ready
 * hook: a checkpoint's backward through its recomputation. */
int op_walk(dc_ctx *ctx, dc_node *tape);

/* The gradient buffer of t (f32, zeroed on first use) when t requires grad,
 * NULL otherwise or on failure (check ctx->failed). Backward kernels add into it. */
float *grad_of(dc_ctx *ctx, dc_tensor *t);
/* The same, except that a buffer made by this call is left unset and *fresh
 * is true: the kernel must then write every element instead of adding. */
float *grad_of_fresh(dc_ctx *ctx, dc_tensor *t, bool *fresh);

/* When t requires grad and has no gradient yet, t takes `out`'s gradient
 * buffer as its own (a view in t's shape) and this returns true: the
 * backward of an op whose gradient for t is exactly out's (add, sub's first
 * argument, reshape) then needs no zeroing and no copy. Safe because the tape
 * runs newest first: once out's node is done, nothing reads out->grad again. */
bool grad_adopt(dc_ctx *ctx, dc_tensor *t, const dc_tensor *out);

#define F32(t) ((float *)(t)->data)
#define F32C(t) ((const float *)(t)->data)

#endif
