/* CUDA kernels: dropout, embeddings, timestep embedding, MSE loss; the contracts of cpu/misc.h,
 * device pointers. */
#ifndef DC_CUDA_MISC_H
#define DC_CUDA_MISC_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void cuda_dropout_forward(float *out, const float *x, int64_t n, float p, uint64_t seed,
                          uint64_t stream);
void cuda_dropout_backward(const float *dout, float *dx, int64_t n, float p, uint64_t seed,
                           uint64_t stream);
/* Waits for the device: the answer decides whether the op goes on. */
int64_t cuda_embedding_check(const int32_t *idx, int64_t n, int64_t v);
void cuda_embedding_forward(float *out, const float *table, const int32_t *idx, int64_t n,
                            int64_t c);
void cuda_embedding_backward(const float *dout, float *dtable, const int32_t *idx, int64_t n,
                             int64_t c);
void cuda_fourier_embedding_forward(float *out, const float *tf, const int32_t *ti, const float *w,
                                    int64_t n, int64_t d, bool flip_sin_to_cos);
void cuda_timestep_embedding_forward(float *out, const float *tf, const int32_t *ti, int64_t n,
                                     int64_t dim, bool flip_sin_to_cos, float shift,
                                     float max_period);
void cuda_mse_loss_forward(float *out, const float *pred, const float *target, const float *w,
                           int64_t n, int64_t d);
void cuda_mse_loss_backward(const float *g, const float *pred, const float *target, const float *w,
                            float *dpred, float *dtarget, float *dw, int64_t n, int64_t d);
void cuda_cross_entropy_forward(float *out, const float *logits, const int32_t *labels, int64_t n,
                                int64_t k, int64_t ignore, float smoothing, int64_t kept);
void cuda_cross_entropy_backward(const float *g, const float *logits, const int32_t *labels,
                                 float *dlogits, int64_t n, int64_t k, int64_t ignore, float smoothing,
                                 int64_t kept);

#ifdef __cplusplus
}
#endif

#endif
