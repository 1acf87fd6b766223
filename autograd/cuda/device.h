/* CUDA device queries, callable from C. Built only when nvcc is present. */
#ifndef DC_CUDA_DEVICE_H
#define DC_CUDA_DEVICE_H

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when there is no GPU or no driver. */
int cuda_device_count(void);

#ifdef __cplusplus
}
#endif

#endif
