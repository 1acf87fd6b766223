/* Device memory and copies for autograd/device.c (C-callable). */
#ifndef DC_CUDA_MEMORY_H
#define DC_CUDA_MEMORY_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cudaMalloc on `device`; NULL with a message naming `what`, the size asked
 * and the memory free. */
void *cuda_alloc(int device, size_t bytes, const char *what);
void cuda_free(int device, void *p);
/* Devices are DC_CPU (-1) or CUDA ordinals; at least one is a GPU. Copies to
 * the host wait for the data. */
int cuda_memcpy(void *dst, int dst_device, const void *src, int src_device, size_t bytes);
int cuda_memset(void *p, int device, int byte, size_t bytes);
/* cudaMemGetInfo of `device`. */
int cuda_mem_info(int device, size_t *free_bytes, size_t *total_bytes);

#ifdef __cplusplus
}
#endif

#endif
