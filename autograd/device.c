/* Device selection, memory and copies (see device.h): the host side in plain
 * C, the CUDA side forwarded to autograd/cuda/ when the build has it. */
#include "device.h"

#include "cpu/isa.h"

#include "error.h"
#include "tensor.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef DC_HAVE_CUDA
#include "cuda/device.h"
#include "cuda/memory.h"
#define NO_CUDA(what) 0
#else
/* Every CUDA entry point of a build without CUDA ends here. */
#define NO_CUDA(what)                                                                              \
    dc_fail("%s: this build of diffc has no CUDA (rebuild with nvcc on the PATH)", what)
#endif

int dc_device_count(void) {
#ifdef DC_HAVE_CUDA
    return cuda_device_count();
#else
    return 0;
#endif
}

/* A CUDA ordinal that exists, or an error naming what there is. */
static int check_ordinal(const char *name, int ordinal) {
#ifndef DC_HAVE_CUDA
    return dc_fail("device '%s': this build of diffc has no CUDA (rebuild with nvcc on the PATH)", name);
#else
    int n = cuda_device_count();
    if (n == 0)
        return dc_fail("device '%s': no CUDA GPU found (no device, or no driver)", name);
    if (ordinal >= n)
        return dc_fail("device '%s': only %d CUDA GPU%s (cuda:0%s)", name, n, n == 1 ? "" : "s",
                       n == 1   ? ""
                       : n == 2 ? ", cuda:1"
                                : " .. cuda:N-1");
    return 0;
#endif
}

int dc_device_resolve(const char *name, int *device) {
    if (!strcmp(name, "auto")) {
        *device = dc_device_count() > 0 ? 0 : DC_CPU;
        return 0;
    }
    if (!strcmp(name, "cpu")) {
        *device = DC_CPU;
        return 0;
    }
    int ordinal = 0;
    if (strncmp(name, "cuda", 4) || (name[4] && name[4] != ':'))
        return dc_fail("device '%s': expected auto, cpu, cuda or cuda:N", name);
    if (name[4] == ':') {
        char *end;
        long v = strtol(name + 5, &end, 10);
        if (end == name + 5 || *end || v < 0 || v > 1024)
            return dc_fail("device '%s': expected cuda:N with N a GPU ordinal (0, 1, ...)", name);
        ordinal = (int)v;
    }
    if (check_ordinal(name, ordinal))
        return -1;
    *device = ordinal;
    return 0;
}

char *dc_device_name(char *buf, size_t n, int device) {
    if (device == DC_CPU)
        snprintf(buf, n, "cpu");
    else
        snprintf(buf, n, "cuda:%d", device);
    return buf;
}

const char *dc_device_cpu_kernels(void) { return cpu_isa_describe(); }

int dc_math_parse(const char *mixed_precision, dc_math *out) {
    if (!strcmp(mixed_precision, "no"))
        *out = DC_MATH_TF32;
    else if (!strcmp(mixed_precision, "bf16"))
        *out = DC_MATH_BF16;
    else
        return dc_fail("mixed precision '%s': expected no or bf16", mixed_precision);
    return 0;
}

int dc_device_set_math(int device, dc_math m) {
    if (device == DC_CPU)
        return 0;
#ifdef DC_HAVE_CUDA
    return cuda_set_math(device, (int)m);
#else
    (void)m;
    return NO_CUDA("set math");
#endif
}

void *dc_device_alloc(int device, size_t bytes, const char *what) {
#ifdef DC_HAVE_CUDA
    return cuda_alloc(device, bytes, what);
#else
    (void)device, (void)bytes;
    NO_CUDA(what);
    return NULL;
#endif
}

void dc_device_free(int device, void *p) {
#ifdef DC_HAVE_CUDA
    cuda_free(device, p);
#else
    (void)device, (void)p;
#endif
}

/* The host's MemAvailable in bytes, or the free pages where the kernel has
 * no such line (before Linux 3.14) or no /proc. */
static size_t host_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[128];
    unsigned long long kb = 0;
    bool found = false;
    while (f && !found && fgets(line, sizeof line, f))
        found = sscanf(line, "MemAvailable: %llu kB", &kb) == 1;
    if (f)
        fclose(f);
    if (found)
        return kb > SIZE_MAX / 1024 ? SIZE_MAX : (size_t)kb * 1024;
    long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (size_t)pages * (size_t)page : SIZE_MAX;
}

int dc_device_mem_available(int device, size_t *bytes) {
    if (device == DC_CPU) {
        *bytes = host_available();
        return 0;
    }
#ifdef DC_HAVE_CUDA
    size_t total = 0;
    return cuda_mem_info(device, bytes, &total) ? -1 : 0;
#else
    *bytes = 0;
    return NO_CUDA("memory size");
#endif
}

int dc_device_arena_bytes(int device, size_t cpu_bytes, size_t *bytes) {
    size_t available;
    if (dc_device_mem_available(device, &available))
        return -1;
    if (device == DC_CPU)
        *bytes = cpu_bytes < available ? cpu_bytes : available;
    else
        *bytes = (size_t)((double)available * DC_DEVICE_ARENA_SHARE) & ~(size_t)63;
    return 0;
}

int dc_memcpy(void *dst, int dst_device, const void *src, int src_device, size_t bytes) {
    if (bytes == 0)
        return 0;
    if (dst_device == DC_CPU && src_device == DC_CPU) {
        memmove(dst, src, bytes);
        return 0;
    }
#ifdef DC_HAVE_CUDA
    return cuda_memcpy(dst, dst_device, src, src_device, bytes);
#else
    return NO_CUDA("copy");
#endif
}

int dc_memset(void *p, int device, int byte, size_t bytes) {
    if (device == DC_CPU) {
        memset(p, byte, bytes);
        return 0;
    }
#ifdef DC_HAVE_CUDA
    return cuda_memset(p, device, byte, bytes);
#else
    return NO_CUDA("memset");
#endif
}

int dc_device_synchronize(int device) {
    if (device == DC_CPU)
        return 0;
#ifdef DC_HAVE_CUDA
    return cuda_synchronize(device);
#else
    return NO_CUDA("synchronize");
#endif
}

bool dc_device_failed(int device) {
#ifdef DC_HAVE_CUDA
    return device != DC_CPU && cuda_failed(device);
#else
    (void)device;
    return false;
#endif
}

void dc_device_clear_error(int device) {
#ifdef DC_HAVE_CUDA
    if (device != DC_CPU)
        cuda_clear_error(device);
#else
    (void)device;
#endif
}
