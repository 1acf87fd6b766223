/* CUDA devices: the per-device state, its lazy setup, the checks (see
 * common.cuh and device.h). */
#include "common.cuh"

#include <stdio.h>

#define MAX_DEVICES 64

static cuda_state states[MAX_DEVICES];
static thread_local int current = -1;

/* Record the first failure of the current device; always false. */
static bool record(const char *file, int line, const char *call, const char *why) {
    cuda_state *st = current >= 0 ? &states[current] : NULL;
    if (!st)
        dc_fail("CUDA: %s:%d: %s: %s", file, line, call, why);
    else if (!st->failed)
        dc_fail("CUDA device %d: %s:%d: %s: %s", st->device, file, line, call, why);
    if (st)
        st->failed = true;
    return false;
}

bool cuda_check_rt(cudaError_t e, const char *call, const char *file, int line) {
    if (e == cudaSuccess)
        return true;
    /* The runtime keeps a failed call's error as its "last error" too; left
     * there, the next LAUNCH's cudaGetLastError() would blame a good kernel
     * for it (after cuda_clear_error, the first kernel of a healthy device).
     * A sticky error (a kernel fault) cannot be cleared and comes back anyway. */
    cudaGetLastError();
    char why[256];
    snprintf(why, sizeof why, "%s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
    return record(file, line, call, why);
}

bool cuda_check_dnn(cudnnStatus_t s, const char *call, const char *file, int line) {
    if (s == CUDNN_STATUS_SUCCESS)
        return true;
    char why[1200];
    char detail[1024] = "";
    cudnnGetLastErrorString(detail, sizeof detail);
    snprintf(why, sizeof why, "%s%s%s", cudnnGetErrorString(s), detail[0] ? ": " : "", detail);
    return record(file, line, call, why);
}

bool cuda_check_blas(cublasStatus_t s, const char *call, const char *file, int line) {
    if (s == CUBLAS_STATUS_SUCCESS)
        return true;
    char why[256];
    snprintf(why, sizeof why, "%s (%s)", cublasLtGetStatusString(s), cublasLtGetStatusName(s));
    return record(file, line, call, why);
}

bool cuda_fail_at(const char *file, int line, const char *what) {
    return record(file, line, "diffc", what);
}

cuda_state *cuda_st(void) { return &states[current >= 0 ? current : 0]; }

extern "C" int cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the "no device" error: not a failure of ours */
        return 0;
    }
    return n < MAX_DEVICES ? n : MAX_DEVICES;
}

/* One stream, the library handles bound to it, and the persistent buffers. */
static bool setup(cuda_state *st) {
    cudaDeviceProp prop;
    if (!CUDA_CHECK(cudaGetDeviceProperties(&prop, st->device)))
        return false;
    st->sms = prop.multiProcessorCount;
    st->math = DC_MATH_TF32;
    return CUDA_CHECK(cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking)) &&
           CUBLAS_CHECK(cublasLtCreate(&st->lt)) && CUDNN_CHECK(cudnnCreate(&st->dnn)) &&
           CUDNN_CHECK(cudnnSetStream(st->dnn, st->stream)) &&
           CUDA_CHECK(cudaMalloc(&st->lt_workspace, LT_WORKSPACE)) &&
           CUDA_CHECK(cudaMalloc((void **)&st->reduce, REDUCE_SLOTS * sizeof(double))) &&
           CUDA_CHECK(cudaMalloc((void **)&st->colsum, COL_PARTIALS * sizeof(double)));
}

extern "C" void cuda_select(int device) {
    if (device < 0 || device >= MAX_DEVICES) {
        dc_fail("CUDA: device ordinal %d out of range", device);
        return;
    }
    if (current != device) {
        current = device;
        states[device].device = device;
        if (!CUDA_CHECK(cudaSetDevice(device)))
            return;
    }
    cuda_state *st = &states[device];
    if (!st->ready && !st->failed)
        st->ready = setup(st);
}

extern "C" void *cuda_stream(int device) {
    cuda_select(device);
    return cuda_failed(device) ? NULL : (void *)cuda_st()->stream;
}

extern "C" int cuda_set_math(int device, int math) {
    if (math < DC_MATH_F32 || math > DC_MATH_BF16)
        return dc_fail("CUDA: unknown math setting %d", math);
    cuda_select(device);
    if (cuda_failed(device))
        return -1;
    cuda_st()->math = (dc_math)math;
    return 0;
}

extern "C" int cuda_synchronize(int device) {
    cuda_select(device);
    if (cuda_failed(device))
        return -1;
    return CUDA_CHECK(cudaStreamSynchronize(cuda_st()->stream)) ? 0 : -1;
}

extern "C" float cuda_time_ms(int device, void (*fn)(void *), void *arg) {
    cuda_select(device);
    cudaEvent_t start = NULL, stop = NULL;
    float ms = -1.0f;
    cudaStream_t s = cuda_st()->stream;
    if (CUDA_CHECK(cudaEventCreate(&start)) && CUDA_CHECK(cudaEventCreate(&stop)) &&
        CUDA_CHECK(cudaEventRecord(start, s))) {
        fn(arg);
        if (!(CUDA_CHECK(cudaEventRecord(stop, s)) && CUDA_CHECK(cudaEventSynchronize(stop)) &&
              CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop))))
            ms = -1.0f;
    }
    if (start)
        CUDA_CHECK(cudaEventDestroy(start));
    if (stop)
        CUDA_CHECK(cudaEventDestroy(stop));
    return cuda_failed(device) ? -1.0f : ms;
}

extern "C" bool cuda_failed(int device) {
    return device >= 0 && device < MAX_DEVICES && states[device].failed;
}

/* An error that corrupted the CUDA context (an illegal address in a kernel)
 * comes back at the next call anyway; clearing lets recoverable ones (an
 * unsupported shape) be retried. */
extern "C" void cuda_clear_error(int device) {
    if (device >= 0 && device < MAX_DEVICES)
        states[device].failed = false;
    cudaGetLastError(); /* nothing left over for the next launch check to find */
}

__global__ void reduce_pass2(const double *partial, int blocks, double div, float *out,
                             double *result) {
    double s = 0;
    for (int i = threadIdx.x; i < blocks; i += blockDim.x)
        s += partial[i];
    s = block_sum(s);
    if (threadIdx.x == 0) {
        if (out)
            out[0] = (float)(s / div);
        else
            result[0] = s;
    }
}
