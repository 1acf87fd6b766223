/* The plain names of the kernels compiled once per ISA (isa.h): each calls
 * the variant of cpu_isa_active(). Their declarations are the kernels'
 * headers; the variants share them but for the suffix. */
#include "activation.h"
#include "attention.h"
#include "gemm.h"
#include "isa.h"
#include "norm.h"

/* The variants of `name`, declared with `params`; the one to call. x86-64
 * builds compile three passes, others the baseline alone. */
#if defined(__x86_64__)
#define DECLARE(ret, name, params)                                                                 \
    ret name##_baseline params;                                                                    \
    ret name##_avx2 params;                                                                        \
    ret name##_avx512 params;
#define VARIANT(name)                                                                              \
    (cpu_isa_active() == CPU_ISA_AVX512 ? name##_avx512                                            \
     : cpu_isa_active() == CPU_ISA_AVX2 ? name##_avx2                                              \
                                        : name##_baseline)
#else
#define DECLARE(ret, name, params) ret name##_baseline params;
#define VARIANT(name) name##_baseline
#endif

/* The plain name, calling the variant with `args`. */
#define DISPATCH(name, params, args)                                                               \
    DECLARE(void, name, params)                                                                    \
    void name params { VARIANT(name) args; }
#define DISPATCH_VALUE(ret, name, params, args)                                                    \
    DECLARE(ret, name, params)                                                                     \
    ret name params { return VARIANT(name) args; }

/* activation.c */
DISPATCH(cpu_silu_forward, (float *y, const float *x, int64_t n), (y, x, n))
DISPATCH(cpu_silu_backward, (const float *dy, const float *x, float *dx, int64_t n),
         (dy, x, dx, n))
DISPATCH(cpu_gelu_forward, (float *y, const float *x, int64_t n), (y, x, n))
DISPATCH(cpu_gelu_backward, (const float *dy, const float *x, float *dx, int64_t n),
         (dy, x, dx, n))
DISPATCH(cpu_quick_gelu_forward, (float *y, const float *x, int64_t n), (y, x, n))
DISPATCH(cpu_quick_gelu_backward, (const float *dy, const float *x, float *dx, int64_t n),
         (dy, x, dx, n))
DISPATCH(cpu_mish_forward, (float *y, const float *x, int64_t n), (y, x, n))
DISPATCH(cpu_mish_backward, (const float *dy, const float *x, float *dx, int64_t n),
         (dy, x, dx, n))
DISPATCH(cpu_softmax_forward, (float *y, const float *x, int64_t rows, int64_t C),
         (y, x, rows, C))
DISPATCH(cpu_softmax_backward,
         (const float *dy, const float *y, float *dx, int64_t rows, int64_t C),
         (dy, y, dx, rows, C))

/* norm.c */
DISPATCH(cpu_group_norm_forward,
         (float *y, float *stats, const float *x, const float *w, const float *b, int64_t N,
          int64_t S, int64_t C, int64_t G, float eps, bool silu),
         (y, stats, x, w, b, N, S, C, G, eps, silu))
DISPATCH(cpu_group_norm_backward,
         (const float *dy, const float *x, const float *w, const float *b, const float *stats,
          float *dx, float *dw, float *db, void *work, int64_t N, int64_t S, int64_t C, int64_t G,
          bool silu),
         (dy, x, w, b, stats, dx, dw, db, work, N, S, C, G, silu))
DISPATCH_VALUE(size_t, cpu_group_norm_work_bytes, (int64_t N, int64_t S, int64_t C, bool silu),
         (N, S, C, silu))

/* attention.c */
DISPATCH_VALUE(int64_t, cpu_attention_forward_scratch, (const cpu_attention_dims *a, bool keep_p),
               (a, keep_p))
DISPATCH_VALUE(int64_t, cpu_attention_scratch, (const cpu_attention_dims *a), (a))
DISPATCH(cpu_attention_forward,
         (const cpu_attention_dims *a, float *out, float *p, const float *q, const float *k,
          const float *v, float *work),
         (a, out, p, q, k, v, work))
DISPATCH(cpu_attention_backward,
         (const cpu_attention_dims *a, const float *dout, const float *p, const float *q,
          const float *k, const float *v, float *dq, float *dk, float *dv, float *work),
         (a, dout, p, q, k, v, dq, dk, dv, work))

/* linear_rows.c */
DISPATCH(cpu_linear_rows,
         (float *y, const float *x, const float *w, const float *b, int64_t M, int64_t K, int64_t N),
         (y, x, w, b, M, K, N))
