/* CUDA devices, callable from C: the per-device state (one stream, the
 * cuBLASLt and cuDNN handles, small persistent buffers) is set up on first
 * use and lives until the process ends. Built only when nvcc is present;
 * C code reaches it through autograd/device.h and op_util.h's DC_KERNEL. */
#ifndef DC_CUDA_DEVICE_H
#define DC_CUDA_DEVICE_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 when there is no GPU or no driver. */
int cuda_device_count(void);
/* Make `device` this thread's current one, setting up its state on first
 * use; a failure is the device's sticky error. */
void cuda_select(int device);
/* The device's one stream (a cudaStream_t), set up on first use; NULL after
 * a failure. For the code that orders its own work against the kernels'
 * (train/dist.c's NCCL stream). */
void *cuda_stream(int device);
/* The arithmetic of convolutions, GEMMs and attention: a dc_math (device.h). */
int cuda_set_math(int device, int math);
/* Wait for the device's stream; reports asynchronous errors. */
int cuda_synchronize(int device);
/* Milliseconds the device's stream spends on what fn(arg) queues, measured
 * with CUDA events around it (benchmarks); negative after an error. */
float cuda_time_ms(int device, void (*fn)(void *), void *arg);
/* The device's sticky error (see device.h). */
bool cuda_failed(int device);
void cuda_clear_error(int device);

#ifdef __cplusplus
}
#endif

#endif
