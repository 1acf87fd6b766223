/* CUDA attention: strided batched GEMMs (cuBLASLt) over the heads or the samples around a
 * softmax kernel, P materialised; the contracts of cpu/attention.h, device pointers. */
#ifndef DC_CUDA_ATTENTION_H
#define DC_CUDA_ATTENTION_H

#include "../cpu/attention.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Floats of scratch: for the forward, the whole P when it is not kept; for
 * the backward, dP [N, heads, Lq, Lk]. */
int64_t cuda_attention_forward_scratch(const cpu_attention_dims *a, bool keep_p);
int64_t cuda_attention_scratch(const cpu_attention_dims *a);
/* P goes to p, or to work when p is NULL (not kept). */
void cuda_attention_forward(const cpu_attention_dims *a, float *out, float *p, const float *q,
                            const float *k, const float *v, float *work);
void cuda_attention_backward(const cpu_attention_dims *a, const float *dout, const float *p,
                             const float *q, const float *k, const float *v, float *dq,
                             float *dk, float *dv, float *work);

#ifdef __cplusplus
}
#endif

#endif
