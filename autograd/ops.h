/*
 * The op API: every differentiable operation of the engine.
 *
 * Ops are eager: each one checks its arguments, allocates its output from the
 * context's activation arena, runs the kernel of the tensors' device, and,
 * when gradients are enabled and an input requires them, appends a node to
 * the tape. dc_backward() walks the tape in reverse and *accumulates* into
 * each tensor's ->grad. dc_ctx_reset() clears tape and activations together,
 * once per step.
 *
 * Errors are sticky: an op that fails (bad shapes, arena exhausted) records a
 * message (dc_error()), marks the context failed and returns NULL; every later
 * op given a NULL input or a failed context returns NULL too. So a model can
 * build its whole graph and check once: `if (!loss) return dc_ctx_status(ctx);`.
 *
 * Float ops take and return f32 tensors; indices are i32. Images are NHWC and
 * token sequences [N, L, C]; "channels" always means the last dimension.
 */
#ifndef DC_OPS_H
#define DC_OPS_H

#include "tensor.h"

/* Shape literal: dc_new(ctx, DC_F32, DC_SHAPE(2, 8, 8, 4)). */
#define DC_SHAPE(...) \
    (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (const int64_t[]){__VA_ARGS__}

typedef enum dc_op {
    DC_OP_RESHAPE,
    DC_OP_ADD,
    DC_OP_SUB,
    DC_OP_MUL,
    DC_OP_AFFINE,
    DC_OP_LINEAR,
    DC_OP_MATMUL,
    DC_OP_CONV2D,
    DC_OP_GROUP_NORM,
    DC_OP_LAYER_NORM,
    DC_OP_GROUP_NORM_SILU,
    DC_OP_SILU,
    DC_OP_GELU,
    DC_OP_MISH,
    DC_OP_QUICK_GELU,
    DC_OP_SOFTMAX,
    DC_OP_ATTENTION,
    DC_OP_UPSAMPLE2X,
    DC_OP_CONCAT,
    DC_OP_SLICE,
    DC_OP_DROPOUT,
    DC_OP_EMBEDDING,
    DC_OP_TIMESTEP_EMBEDDING,
    DC_OP_FOURIER_EMBEDDING,
    DC_OP_SUM,
    DC_OP_MEAN,
    DC_OP_MSE_LOSS,
    DC_OP_CROSS_ENTROPY,
    DC_OP_Q_SAMPLE,       /* diffusion.h */
    DC_OP_DIFFUSION_LOSS, /* diffusion.h */
    DC_OP_CHECKPOINT,     /* dc_checkpoint: a function run again in backward */
    DC_OP_COUNT
} dc_op;

const char *dc_op_name(dc_op op);

typedef struct dc_ctx dc_ctx;
typedef struct dc_node dc_node;
typedef int (*dc_backward_fn)(dc_ctx *ctx, dc_node *n);
/* Told during a backward pass that t's gradient is final: t is an input
 * whose gradient buffer was set before the pass (a parameter, nn.h) and the
 * walk has passed the last node that adds to it (its kernels are queued).
 * Non-zero fails the pass. Inputs the tape does not use are not told. */
typedef int (*dc_grad_ready_fn)(void *user, dc_tensor *t);

/* One recorded op. Backward functions read what they need from here. */
struct dc_node {
    dc_op op;
    dc_backward_fn backward;
    dc_node *prev;         /* the node recorded before this one */
    dc_tensor *out;
    dc_tensor *in[3];      /* inputs, NULL where absent */
    dc_tensor *saved[3];   /* extra tensors kept for backward (statistics, masks) */
    int64_t iarg[4];       /* integer arguments of the op */
    float farg[4];         /* float arguments of the op */
    dc_tensor **reads;     /* [n_reads] more tensors the backward adds gradients to: what a
                              checkpointed function reads besides in[] (its parameters) */
    int n_reads;
};

struct dc_ctx {
    int device;            /* where this context's tensors live */
    dc_arena act;          /* activations and their gradients; reset per step */
    dc_arena meta;         /* host memory for tensor structs and tape nodes; reset with act */
    dc_node *tape;         /* last recorded node, NULL when empty */
    bool grad_enabled;     /* record the tape (default true) */
    bool training;         /* dropout active (default true) */
    uint64_t seed;         /* Philox key for dropout in this step */
    uint64_t rng_calls;    /* dropout calls so far this step: the Philox stream */
    bool failed;           /* sticky error, see above */
    bool poison;           /* fill new outputs with NaN first (tests: catches unwritten elements) */
    dc_grad_ready_fn grad_ready; /* NULL, or told of each final parameter gradient (overlap) */
    void *grad_ready_user;
    struct dc_reads *reads; /* set while dc_checkpoint runs its function without a tape: told of
                               the tensors requiring grad that the function's ops read */
    size_t act_held;       /* this step's most activation bytes held at once before a
                              checkpoint gave its recomputation back (dc_act_held) */
};

/* A context on `device` (DC_CPU or a CUDA ordinal, see device.h) with an
 * activation arena of `act_bytes` (on that device). */
int dc_ctx_init(dc_ctx *ctx, int device, size_t act_bytes);
void dc_ctx_free(dc_ctx *ctx);
/* Start a step: empty the tape and the activation arena, clear the error. */
void dc_ctx_reset(dc_ctx *ctx);
/* 0, or -1 when an op has failed (message in dc_error()). */
int dc_ctx_status(const dc_ctx *ctx);
/* Turn tape recording on or off; returns the previous setting. */
bool dc_set_grad_enabled(dc_ctx *ctx, bool on);

/* An uninitialised activation tensor, and one filled from host memory. */
dc_tensor *dc_new(dc_ctx *ctx, dc_dtype dtype, int ndim, const int64_t *shape);
dc_tensor *dc_from_host(dc_ctx *ctx, dc_dtype dtype, int ndim, const int64_t *shape,
                        const void *host);
/* A copy of x (from any device) in the context, on its device; not recorded. */
dc_tensor *dc_clone(dc_ctx *ctx, const dc_tensor *x);
/* Where the activation arena stands now: a mark for dc_keep. */
size_t dc_mark(const dc_ctx *ctx);
/* Without a tape (grad disabled), on the CPU: gives back the activation
 * memory allocated since `mark` except t's data, which moves down to the
 * mark (nothing else made since then may be used again); returns t. A
 * no-grad forward pass that keeps each block's output only touches the
 * memory of one block at a time. Elsewhere (recording, or a GPU, whose
 * memory is committed at once) it returns t and frees nothing. */
dc_tensor *dc_keep(dc_ctx *ctx, size_t mark, dc_tensor *t);

/* The most activation bytes this step has held at once outside one
 * kernel's scratch: what a step keeps per image. Without checkpoints that
 * is the arena's use once backward is done; with them, the highest point of
 * a checkpoint's backward, its recomputation and their gradients held. */
size_t dc_act_held(const dc_ctx *ctx);

/* Backpropagate from a one-element `loss` (its gradient seeded with 1). */
int dc_backward(dc_ctx *ctx, dc_tensor *loss);
/* Backpropagate from any tensor `out`, its gradient seeded with `grad_out` (same shape, f32). */
int dc_backward_from(dc_ctx *ctx, dc_tensor *out, const dc_tensor *grad_out);

/* ---- gradient checkpointing ---- */
/* The function dc_checkpoint runs: its output from in[0, n) (entries may be
 * NULL) and what it reaches through args (parameters, settings). It is run
 * twice and must give the same output both times: only ops, no state of
 * its own (dropout is fine: it draws again what it drew). */
typedef dc_tensor *(*dc_checkpoint_fn)(dc_ctx *ctx, const void *args, dc_tensor *const *in);
#define DC_CHECKPOINT_INPUTS 3
/* fn(ctx, args, in) without keeping its intermediate activations (PyTorch's
 * torch.utils.checkpoint): run once without a tape, its temporaries given
 * back to the arena but for the output; one node recorded. Its backward
 * runs fn again with the tape on (the same dropout masks), backpropagates
 * through that, adding into the inputs' and parameters' gradients what a
 * plain fn would have added, and gives the recomputation back. Memory for
 * compute: a step keeps only the checkpoints' inputs and outputs, and holds
 * one function's activations at a time. args (args_bytes, copied) must stay
 * meaningful until backward; a tensor fn reads that requires grad may come
 * through args too (it is found as it is read). Without a tape it is fn
 * with its temporaries given back. n <= DC_CHECKPOINT_INPUTS. With a
 * grad_ready hook a parameter read inside counts as one use of the node. */
dc_tensor *dc_checkpoint(dc_ctx *ctx, dc_checkpoint_fn fn, const void *args, size_t args_bytes,
                         int n, dc_tensor *const *in);

/* ---- shape ---- */
/* The same data seen with another shape of the same element count. */
dc_tensor *dc_reshape(dc_ctx *ctx, dc_tensor *x, int ndim, const int64_t *shape);

/* ---- elementwise ---- */
/* a op b, where b is a's shape or broadcasts to it: b's dimensions, aligned to
 * the right of a's, are each 1 or equal (e.g. [N,H,W,C] with [N,1,1,C] or [C]).
 * The result has a's shape. */
dc_tensor *dc_add(dc_ctx *ctx, dc_tensor *a, dc_tensor *b);
dc_tensor *dc_sub(dc_ctx *ctx, dc_tensor *a, dc_tensor *b);
dc_tensor *dc_mul(dc_ctx *ctx, dc_tensor *a, dc_tensor *b);
/* alpha * x + beta. */
dc_tensor *dc_affine(dc_ctx *ctx, dc_tensor *x, float alpha, float beta);
#define dc_scale(ctx, x, s) dc_affine((ctx), (x), (s), 0.0f)

/* ---- matrix products ---- */
/* x [..., in] times w [out, in] transposed, plus b [out] (or NULL): [..., out]. */
dc_tensor *dc_linear(dc_ctx *ctx, dc_tensor *x, dc_tensor *w, dc_tensor *b);
/* a [M, K] @ b [K, N] -> [M, N]; or batched a [B, M, K] @ b [B, K, N] -> [B, M, N]. */
dc_tensor *dc_matmul(dc_ctx *ctx, dc_tensor *a, dc_tensor *b);
/* x [N, H, W, Cin] * w [Cout, kh, kw, Cin] + b [Cout] (or NULL), zero padding `pad`
 * on every side: [N, (H + 2 pad - kh) / stride + 1, ..., Cout]. */
dc_tensor *dc_conv2d(dc_ctx *ctx, dc_tensor *x, dc_tensor *w, dc_tensor *b, int stride, int pad);

/* ---- normalisation and activations ---- */
/* x [N, ..., C] normalised over (spatial, C/groups) per sample and group, then
 * * w [C] + b [C] (either may be NULL). */
dc_tensor *dc_group_norm(dc_ctx *ctx, dc_tensor *x, int groups, dc_tensor *w, dc_tensor *b,
                         float eps);
/* silu(dc_group_norm(...)) in one op: one pass less, and one activation
 * less kept for the backward pass. */
dc_tensor *dc_group_norm_silu(dc_ctx *ctx, dc_tensor *x, int groups, dc_tensor *w, dc_tensor *b,
                              float eps);
/* x [..., C] normalised over the last dimension, then * w [C] + b [C] (NULL allowed). */
dc_tensor *dc_layer_norm(dc_ctx *ctx, dc_tensor *x, dc_tensor *w, dc_tensor *b, float eps);
dc_tensor *dc_silu(dc_ctx *ctx, dc_tensor *x);
/* Exact (erf) GELU, as PyTorch's default. */
dc_tensor *dc_gelu(dc_ctx *ctx, dc_tensor *x);
/* x * tanh(softplus(x)), softplus(x) = x past 20 as in PyTorch. */
dc_tensor *dc_mish(dc_ctx *ctx, dc_tensor *x);
/* x * sigmoid(1.702 x): OpenAI CLIP's GELU approximation (transformers' "quick_gelu"). */
dc_tensor *dc_quick_gelu(dc_ctx *ctx, dc_tensor *x);
/* Softmax over the last dimension. */
dc_tensor *dc_softmax(dc_ctx *ctx, dc_tensor *x);

/* ---- attention ---- */
/* Multi-head scaled-dot-product attention. q [N, Lq, heads*d], k and v
 * [N, Lk, heads*d] (Lk may differ from Lq: cross-attention). Head h uses
 * channels [h*d, (h+1)*d). softmax(q k^T * scale [+ causal mask]) v, with
 * scale = 1/sqrt(d) when `scale` is 0. `causal` masks key j > i + Lk - Lq for
 * query i (Lk >= Lq): the queries are the last Lq positions of the keys' sequence,
 * as a decoder's new tokens after Lk - Lq cached ones.
 * Result [N, Lq, heads*d]. */
dc_tensor *dc_attention(dc_ctx *ctx, dc_tensor *q, dc_tensor *k, dc_tensor *v, int heads,
                        bool causal, float scale);

/* ---- resampling and channels ---- */
/* Nearest-neighbour 2x: [N, H, W, C] -> [N, 2H, 2W, C]. */
dc_tensor *dc_upsample2x(dc_ctx *ctx, dc_tensor *x);
/* Concatenate along the last dimension; all other dimensions equal. */
dc_tensor *dc_concat(dc_ctx *ctx, dc_tensor *a, dc_tensor *b);
/* Channels [start, start + count) of the last dimension, copied. */
dc_tensor *dc_slice(dc_ctx *ctx, dc_tensor *x, int64_t start, int64_t count);

/* ---- randomness, lookup, embeddings ---- */
/* Inverted dropout with probability p (identity when !ctx->training or p == 0).
 * The mask comes from Philox keyed by (ctx->seed, ctx->rng_calls++). */
dc_tensor *dc_dropout(dc_ctx *ctx, dc_tensor *x, float p);
/* Rows of table [V, C] picked by idx (i32, any shape S): [S..., C]. An index
 * outside [0, V) is an error. */
dc_tensor *dc_embedding(dc_ctx *ctx, dc_tensor *table, dc_tensor *idx);
/* diffusers' get_timestep_embedding: t [N] (f32 or i32) -> [N, dim]:
 * exponent_k = -ln(max_period) * k / (dim/2 - shift), emb = t * exp(exponent);
 * [sin, cos] (or [cos, sin] when flip_sin_to_cos), zero-padded when dim is odd.
 * Not differentiable (timesteps are data). */
dc_tensor *dc_timestep_embedding(dc_ctx *ctx, dc_tensor *t, int dim, bool flip_sin_to_cos,
                                 float shift, float max_period);
/* diffusers' GaussianFourierProjection (log=True): t [N] (f32 or i32; noise
 * levels, > 0) and w [D] f32 -> [N, 2D]: angle_k = 2 pi log(t) w_k, [sin, cos]
 * (or [cos, sin] when flip_sin_to_cos), computed in double. Not
 * differentiable: t is data and diffusers freezes w (requires_grad False). */
dc_tensor *dc_fourier_embedding(dc_ctx *ctx, dc_tensor *t, dc_tensor *w, bool flip_sin_to_cos);

/* ---- reductions and losses ---- */
/* Sum / mean of all elements: a one-element tensor of shape [1]. */
dc_tensor *dc_sum(dc_ctx *ctx, dc_tensor *x);
dc_tensor *dc_mean(dc_ctx *ctx, dc_tensor *x);
/* mean over samples n of w[n] * mean over the rest of (pred - target)^2.
 * pred and target [N, ...]; w [N] or NULL (all ones). Gradients reach pred, and
 * target (the opposite of pred's) and w when they require grad. */
dc_tensor *dc_mse_loss(dc_ctx *ctx, dc_tensor *pred, dc_tensor *target, dc_tensor *w);
/* Softmax cross-entropy: mean over n of logsumexp(logits[n]) - logits[n, labels[n]].
 * logits [N, K] f32, labels [N] i32 in [0, K) (data: no gradient). */
dc_tensor *dc_cross_entropy(dc_ctx *ctx, dc_tensor *logits, dc_tensor *labels);
/* The same as PyTorch's cross_entropy(logits, labels, ignore_index=,
 * label_smoothing=, reduction="mean"): rows whose label is ignore_index are
 * left out, and the mean is over the kept rows (NaN when none is kept, as
 * PyTorch gives); with smoothing e a kept row's term is
 * (1 - e) (lse - logits[y]) + e (lse - mean_j logits[j]). Other labels
 * must be in [0, K). DC_CE_NO_IGNORE: no label is ignored. */
#define DC_CE_NO_IGNORE INT64_MIN
dc_tensor *dc_cross_entropy_ex(dc_ctx *ctx, dc_tensor *logits, dc_tensor *labels, int64_t ignore_index,
                               float label_smoothing);

#endif
