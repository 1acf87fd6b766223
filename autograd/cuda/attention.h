/* CUDA attention: strided batched GEMMs (cuBLASLt) over the heads or the samples around a
 * softmax kernel, P materialised; the contracts of cpu/attention.h, device pointers. */
#ifndef DC_CUDA_ATTENTION_H
#define DC_CUDA_ATTENTION_H

#include "../cpu/attention.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Floats of scratch: the whole P (forward without a tape) or dP (backward),
 * [N, heads, Lq, Lk]. */
int64_t cuda_attention_scratch(const cpu_attention_dims *a);
/* p: [N, heads, Lq, Lk] in both cases (keep_p only says whether backward reads it). */
void cuda_attention_forward(const cpu_attention_dims *a, float *out, float *p, const float *q,
                            const float *k, const float *v, bool keep_p);
void cuda_attention_backward(const cpu_attention_dims *a, const float *dout, const float *p,
                             const float *q, const float *k, const float *v, float *dq,
                             float *dk, float *dv, float *work);

#ifdef __cplusplus
}
#endif

#endif
