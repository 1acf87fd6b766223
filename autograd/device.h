/*
 * Devices: which one to run on, memory on it, copies between it and the
 * host, and the arithmetic of its matrix products.
 *
 * A device is DC_CPU or a CUDA ordinal (tensor.h). Everything here works in a
 * build without CUDA too: there, every CUDA device is an error that says the
 * build has no CUDA. This file and tensor.c are the only places outside the
 * ops (op_util.h's DC_KERNEL) that choose between the host and a GPU.
 *
 * CUDA errors are sticky per device, like a failed op context: the first
 * failing call records a message (file:line, the call, the CUDA/cuDNN/cuBLAS
 * error) in dc_error() and dc_device_failed() stays true until
 * dc_device_clear_error(); the ops see it and fail their context.
 */
#ifndef DC_DEVICE_H
#define DC_DEVICE_H

#include <stdbool.h>
#include <stddef.h>

/* Usable CUDA devices: 0 without a GPU, a driver, or CUDA in this build. */
int dc_device_count(void);

/* "auto" (a GPU when there is one, else the CPU), "cpu", "cuda" (= "cuda:0")
 * or "cuda:N" into *device. Asking for CUDA in a build without it, on a
 * machine without a GPU, or for an ordinal past the last GPU is an error
 * that says which. */
int dc_device_resolve(const char *name, int *device);

/* "cpu", "cuda:0", ... into buf; returns buf. */
char *dc_device_name(char *buf, size_t n, int device);

/* The CPU kernels this process runs, for logs and benchmarks: the vector ISA
 * chosen at run time (DC_CPU_ISA may lower it) and OpenBLAS's own choice,
 * e.g. "avx2 (OpenBLAS Haswell)". */
const char *dc_device_cpu_kernels(void);

/* How convolutions, GEMMs and attention multiply on a GPU. Storage is f32
 * whatever the setting, and so is the arithmetic of every other kernel. */
typedef enum {
    DC_MATH_F32,  /* plain f32 FMA: what the CPU computes (tests) */
    DC_MATH_TF32, /* f32 with TF32 tensor cores (the default, as PyTorch's cuDNN convolutions) */
    DC_MATH_BF16, /* bf16 operands, f32 accumulation (mixed_precision=bf16) */
} dc_math;

/* diffusers' --mixed_precision: "no" (TF32) or "bf16"; anything else is an error. */
int dc_math_parse(const char *mixed_precision, dc_math *out);
/* The setting of `device` (a no-op on the CPU). */
int dc_device_set_math(int device, dc_math m);

/* Device memory (plain cudaMalloc, never managed memory). NULL with a message
 * that names `what`, the size asked and the memory free on the device. */
void *dc_device_alloc(int device, size_t bytes, const char *what);
void dc_device_free(int device, void *p);

/* The size of an activation arena (dc_ctx_init) for `device`: `cpu_bytes` on
 * the CPU, where the arena is reserved and only what is touched is used, but
 * at most the memory available now (so a step too large for the machine
 * fails with the arena's message instead of swapping or meeting the OOM
 * killer); on a GPU, whose memory is committed at once, DC_DEVICE_ARENA_SHARE
 * of what is free now (call it after the other buffers are allocated). */
#define DC_DEVICE_ARENA_SHARE 0.85
int dc_device_arena_bytes(int device, size_t cpu_bytes, size_t *bytes);

/* Memory that `device` can still give: on the CPU the kernel's MemAvailable
 * (/proc/meminfo; free pages where there is none), on a GPU cudaMemGetInfo's
 * free bytes. */
int dc_device_mem_available(int device, size_t *bytes);

/* Copy between any two devices; copies that land on the host wait for the
 * data. Ordered after every kernel queued on the device. */
int dc_memcpy(void *dst, int dst_device, const void *src, int src_device, size_t bytes);
/* Set `bytes` bytes to `byte`. */
int dc_memset(void *p, int device, int byte, size_t bytes);
/* Wait for everything queued on the device; reports asynchronous kernel errors. */
int dc_device_synchronize(int device);

/* True when a CUDA call on `device` has failed since the last clear. */
bool dc_device_failed(int device);
void dc_device_clear_error(int device);

#endif
