/* Device memory and copies (see memory.h). Arenas take one block each with
 * cudaMalloc; nothing else allocates device memory after setup. */
#include "common.cuh"
#include "memory.h"

#include <stdio.h>

extern "C" void *cuda_alloc(int device, size_t bytes, const char *what) {
    cuda_select(device);
    if (cuda_failed(device))
        return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaSuccess)
        return p;
    cudaGetLastError(); /* out of memory is not sticky in CUDA: leave the device usable */
    size_t free_b = 0, total = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total));
    dc_fail("%s: out of GPU memory on cuda:%d: cudaMalloc of %zu bytes (%.1f MiB) failed at "
            "%s:%d (%s); %.1f MiB free of %.1f MiB",
            what, device, bytes, bytes / 1048576.0, __FILE__, __LINE__, cudaGetErrorString(e),
            free_b / 1048576.0, total / 1048576.0);
    return NULL;
}

extern "C" void cuda_free(int device, void *p) {
    if (!p)
        return;
    cuda_select(device);
    CUDA_CHECK(cudaFree(p));
}

extern "C" int cuda_mem_info(int device, size_t *free_bytes, size_t *total_bytes) {
    cuda_select(device);
    if (cuda_failed(device))
        return -1;
    return CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes)) ? 0 : -1;
}

extern "C" int cuda_memcpy(void *dst, int dst_device, const void *src, int src_device,
                           size_t bytes) {
    int device = dst_device >= 0 ? dst_device : src_device;
    cuda_select(device);
    if (cuda_failed(device))
        return -1;
    cudaStream_t s = cuda_st()->stream;
    /* Unified addressing tells the driver where each side lives. */
    if (!CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s)))
        return -1;
    if (dst_device < 0 && !CUDA_CHECK(cudaStreamSynchronize(s)))
        return -1;
    return 0;
}

extern "C" int cuda_memset(void *p, int device, int byte, size_t bytes) {
    cuda_select(device);
    if (cuda_failed(device))
        return -1;
    return CUDA_CHECK(cudaMemsetAsync(p, byte, bytes, cuda_st()->stream)) ? 0 : -1;
}
