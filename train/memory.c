/* Whether a training step fits in memory (see memory.h). */
#include "memory.h"

#include "autograd/error.h"

#include <inttypes.h>
#include <stdio.h>

/* a * b + c, or SIZE_MAX when that overflows: a size past any machine. */
static size_t mul_add(size_t a, uint64_t b, size_t c) {
    size_t r;
    if (__builtin_mul_overflow(a, b, &r) || __builtin_add_overflow(r, c, &r))
        return SIZE_MAX;
    return r;
}

/* The most images b with per_image * b + fixed <= have. */
static int64_t images_that_fit(size_t per_image, size_t fixed, size_t have) {
    if (fixed > have)
        return 0;
    size_t b = per_image ? (have - fixed) / per_image : SIZE_MAX;
    return b > INT64_MAX ? INT64_MAX : (int64_t)b;
}

/* "1.5 GiB", "12 MiB", ... */
static const char *human(char *buf, size_t n, size_t bytes) {
    static const char *const units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 6)
        v /= 1024, u++;
    snprintf(buf, n, u ? "%.3g %s" : "%.0f %s", v, units[u]);
    return buf;
}

int dc_step_memory_check(const dc_step_memory *m) {
    uint64_t batch = (uint64_t)m->batch, ranks = (uint64_t)m->ranks_on_host;
    size_t act = mul_add(m->act_image, batch, m->act_scratch);
    /* the host holds every local rank's loader, and on the CPU its activations */
    size_t act_host = m->act_on_host ? m->act_image : 0;
    size_t host_image = mul_add(mul_add(act_host, 1, m->loader_image), ranks, 0);
    size_t host_fixed = mul_add(m->act_on_host ? m->act_scratch : 0, ranks, 0);
    size_t host = mul_add(host_image, batch, host_fixed);
    if (act <= m->act_capacity && host <= m->host_available)
        return 0;
    int64_t fit = images_that_fit(m->act_image, m->act_scratch, m->act_capacity);
    int64_t fit_host = images_that_fit(host_image, host_fixed, m->host_available);
    fit = fit < fit_host ? fit : fit_host;
    char advice[192], need[32], have[32], held[32], a[32], l[32];
    if (fit > 0)
        snprintf(advice, sizeof advice, "use --train-batch-size %" PRId64 " or less, with "
                 "--gradient-accumulation-steps to keep the batch size the optimizer sees", fit);
    else
        snprintf(advice, sizeof advice, "not even one image fits: lower --resolution or use a smaller model");
    human(held, sizeof held, m->held);
    if (act > m->act_capacity)
        return dc_fail("--train-batch-size %" PRId64 " at %" PRId64 "x%" PRId64 " needs about %s of activations "
                       "on %s, but %s is available for them (the weights, gradients and optimizer state "
                       "hold %s); %s", m->batch, m->resolution, m->resolution, human(need, sizeof need, act),
                       m->device, human(have, sizeof have, m->act_capacity), held, advice);
    char ranks_note[48] = "";
    if (ranks > 1)
        snprintf(ranks_note, sizeof ranks_note, " for the %d ranks on this host", m->ranks_on_host);
    return dc_fail("--train-batch-size %" PRId64 " at %" PRId64 "x%" PRId64 " needs about %s more of host "
                   "memory%s (per rank: activations %s, data loader %s; the weights, gradients and optimizer "
                   "state hold %s already), but %s is available; %s",
                   m->batch, m->resolution, m->resolution, human(need, sizeof need, host), ranks_note,
                   human(a, sizeof a, m->act_on_host ? act : 0),
                   human(l, sizeof l, mul_add(m->loader_image, batch, 0)), held,
                   human(have, sizeof have, m->host_available), advice);
}
