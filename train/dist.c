/*
 * Ranks (see dist.h): MPI when built with it and launched with several
 * processes, a world of one otherwise. Every function treats a world of one
 * (MPI not initialised) as the trivial case, so the trainer calls them
 * unconditionally and the single-process path has no branches of its own.
 * The gradient of GPU training goes through NCCL when the build has it
 * (DC_HAVE_NCCL: CUDA, MPI and NCCL found).
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep, clock_gettime */
#include "dist.h"

#include "autograd/clock.h"
#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/optim.h"
#include "autograd/tensor.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#ifdef DC_HAVE_MPI
#include <mpi.h>
#endif
#ifdef DC_HAVE_NCCL
#include "autograd/cuda/device.h"
#include <cuda_runtime.h>
#include <nccl.h>
#include <time.h>
#endif

/* Launchers' variables for the number of processes, in the order trusted:
 * OpenMPI's mpirun, MPICH/Intel MPI (and srun --mpi=pmi2), then Slurm's own
 * (the step's first: inside an allocation without srun SLURM_NTASKS is the
 * allocation's, not the number of processes started). */
static const char *const world_vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS",
                                         "SLURM_NTASKS"};

int dc_dist_launched_world(void) {
    for (size_t i = 0; i < sizeof world_vars / sizeof world_vars[0]; i++) {
        const char *v = getenv(world_vars[i]);
        char *end;
        long n = v ? strtol(v, &end, 10) : 0;
        if (v && *v && !*end && n >= 1 && n <= INT_MAX)
            return (int)n;
    }
    return 1;
}

void dc_dist_report_failure(dc_dist *d, bool progress_open, const char *usage, int status) {
    char rank[32] = "";
    if (d->world > 1)
        snprintf(rank, sizeof rank, "rank %d of %d: ", d->rank, d->world);
    fprintf(stderr, "%sdiffc: error: %s%s\n", progress_open ? "\n" : "", rank, dc_error());
    if (usage)
        fputs(usage, stderr);
    dc_dist_abort(d, status);
}

int dc_dist_local_gpu(int count, int local_rank, int local_world, int *gpu) {
    *gpu = 0;
    if (count <= 1)
        return 0;
    if (count < local_world)
        return dc_fail("%d ranks on this node but %d GPUs visible to each: give each rank one GPU "
                       "(srun --gpus-per-task=1) or all ranks at least as many GPUs as there are ranks",
                       local_world, count);
    *gpu = local_rank % count;
    return 0;
}

static uint64_t fingerprint(const void *buf, size_t bytes) { return crc32_z(0, buf, bytes); }

/* $DC_NCCL=1: the NCCL path with one process too. */
static bool nccl_forced(void) {
    const char *v = getenv("DC_NCCL");
    return v && !strcmp(v, "1");
}

#ifdef DC_HAVE_NCCL

#define CUDA_OK(call) cuda_ok((call), #call, __FILE__, __LINE__)
#define NCCL_OK(call) nccl_ok((call), #call, __FILE__, __LINE__)

/* 0, or -1 with "file:line: the call: the error" as the recorded error. */
static int cuda_ok(cudaError_t e, const char *call, const char *file, int line) {
    return e == cudaSuccess ? 0 : dc_fail("%s:%d: %s: %s", file, line, call, cudaGetErrorString(e));
}

static int nccl_ok(ncclResult_t r, const char *call, const char *file, int line) {
    return r == ncclSuccess ? 0 : dc_fail("%s:%d: %s: %s", file, line, call, ncclGetErrorString(r));
}

/* The engine's stream on d->device (selecting that device), NULL after a failure of it. */
static cudaStream_t compute_stream(const dc_dist *d) { return cuda_stream(d->device); }

/* $DC_NCCL_TIMEOUT seconds, or DC_DIST_NCCL_TIMEOUT_S. */
static double nccl_timeout(void) {
    const char *v = getenv("DC_NCCL_TIMEOUT");
    char *end;
    double t = v ? strtod(v, &end) : 0;
    return v && *v && !*end && t > 0 ? t : DC_DIST_NCCL_TIMEOUT_S;
}

/* Rank 0's ncclUniqueId, broadcast over MPI, makes the communicator on
 * every rank's GPU; then the stream and events of the all-reduces. */
static int nccl_init(dc_dist *d) {
    ncclUniqueId id;
    ncclComm_t comm;
    cudaStream_t s;
    cudaEvent_t queued, arrived;
    memset(&id, 0, sizeof id);
    if (!compute_stream(d) || (dc_dist_is_root(d) && NCCL_OK(ncclGetUniqueId(&id))) ||
        dc_dist_broadcast(d, &id, sizeof id) || NCCL_OK(ncclCommInitRank(&comm, d->world, id, d->rank)))
        return -1;
    d->nccl = comm;
    if (CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)))
        return -1;
    d->stream = s;
    if (CUDA_OK(cudaEventCreateWithFlags(&queued, cudaEventDisableTiming)))
        return -1;
    d->queued = queued;
    if (CUDA_OK(cudaEventCreateWithFlags(&arrived, cudaEventDisableTiming)))
        return -1;
    d->arrived = arrived;
    return 0;
}

/* After a failed collective the communicator cannot be trusted: abort it. */
static int nccl_abort(dc_dist *d) {
    ncclCommAbort(d->nccl);
    d->nccl = NULL;
    return -1;
}

static void nccl_free(dc_dist *d) {
    if (d->nccl && d->nccl_op_divisor)
        ncclRedOpDestroy((ncclRedOp_t)d->nccl_op, d->nccl);
    if (d->nccl)
        ncclCommDestroy(d->nccl);
    if (d->stream)
        cudaStreamDestroy(d->stream);
    if (d->queued)
        cudaEventDestroy(d->queued);
    if (d->arrived)
        cudaEventDestroy(d->arrived);
    d->nccl = d->stream = d->queued = d->arrived = NULL;
}

/* The reduction of the buckets: ncclAvg when the divisor is the world,
 * else each rank's floats times 1 / divisor, summed (made once per divisor). */
static int nccl_reduction(dc_dist *d, ncclRedOp_t *op) {
    if (d->divisor == d->world) {
        *op = ncclAvg;
        return 0;
    }
    if (d->nccl_op_divisor != d->divisor) {
        if (d->nccl_op_divisor)
            ncclRedOpDestroy((ncclRedOp_t)d->nccl_op, d->nccl);
        d->nccl_op_divisor = 0;
        float scale = 1.0f / (float)d->divisor;
        ncclRedOp_t made;
        if (NCCL_OK(ncclRedOpCreatePreMulSum(&made, &scale, ncclFloat, ncclScalarHostImmediate, d->nccl)))
            return -1;
        d->nccl_op = (int)made;
        d->nccl_op_divisor = d->divisor;
    }
    *op = (ncclRedOp_t)d->nccl_op;
    return 0;
}

/* The NCCL stream waits for the kernels queued so far on the compute
 * stream (those writing what the next collective reads). */
static int nccl_follow_compute(dc_dist *d) {
    cudaStream_t compute = compute_stream(d);
    return !compute || CUDA_OK(cudaEventRecord(d->queued, compute)) ||
                   CUDA_OK(cudaStreamWaitEvent(d->stream, d->queued, 0))
               ? -1
               : 0;
}

/* The bucket is averaged on the NCCL stream once it is written. */
static int nccl_start(dc_dist *d, float *buf, size_t n) {
    ncclRedOp_t op;
    if (nccl_reduction(d, &op) || nccl_follow_compute(d))
        return -1;
    return NCCL_OK(ncclAllReduce(buf, buf, n, ncclFloat, op, d->nccl, d->stream)) ? nccl_abort(d) : 0;
}

/* The compute stream waits for the buckets; meanwhile the host watches the
 * communicator for errors and for ranks that stopped answering. */
static int nccl_finish(dc_dist *d) {
    cudaStream_t compute = compute_stream(d);
    if (!compute || CUDA_OK(cudaEventRecord(d->arrived, d->stream)) ||
        CUDA_OK(cudaStreamWaitEvent(compute, d->arrived, 0)))
        return -1;
    double limit = nccl_timeout(), start = dc_seconds();
    for (;;) {
        cudaError_t e = cudaEventQuery(d->arrived);
        if (e == cudaSuccess)
            return 0;
        if (e != cudaErrorNotReady)
            return CUDA_OK(e) ? nccl_abort(d) : 0;
        ncclResult_t async = ncclSuccess;
        if (NCCL_OK(ncclCommGetAsyncError(d->nccl, &async)))
            return nccl_abort(d);
        if (async != ncclSuccess && async != ncclInProgress) {
            dc_fail("gradient all-reduce (NCCL): %s", ncclGetErrorString(async));
            return nccl_abort(d);
        }
        if (dc_seconds() - start > limit) {
            dc_fail("gradient all-reduce (NCCL): not done after %g s: a rank stopped answering? "
                    "($DC_NCCL_TIMEOUT sets the limit)", limit);
            return nccl_abort(d);
        }
        nanosleep(&(struct timespec){.tv_nsec = 100000}, NULL);
    }
}


/* In place, as NCCL defines it: the rank's shard lies at buf + rank x shard. */
static int nccl_reduce_scatter(dc_dist *d, float *buf, size_t shard) {
    ncclRedOp_t op;
    if (nccl_reduction(d, &op) || nccl_follow_compute(d))
        return -1;
    if (NCCL_OK(ncclReduceScatter(buf, buf + (size_t)d->rank * shard, shard, ncclFloat, op, d->nccl, d->stream)))
        return nccl_abort(d);
    return nccl_finish(d);
}

static int nccl_all_gather(dc_dist *d, float *buf, size_t shard) {
    if (nccl_follow_compute(d))
        return -1;
    if (NCCL_OK(ncclAllGather(buf + (size_t)d->rank * shard, buf, shard, ncclFloat, d->nccl, d->stream)))
        return nccl_abort(d);
    return nccl_finish(d);
}

#endif

#ifdef DC_HAVE_MPI

/* 0, or the MPI error's text after `what` as the recorded error. */
static int check(int rc, const char *what) {
    if (rc == MPI_SUCCESS)
        return 0;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return dc_fail("%s: %.*s", what, len, text);
}

static int init_mpi(dc_dist *d, int launched) {
    int provided;
    if (check(MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread"))
        return -1;
    d->mpi = true;
    /* errors come back as codes, to be reported with the rank that saw them */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->world);
    if (d->world != launched)
        return dc_fail("the launcher started %d processes but MPI sees %d: diffc was built with "
                       "another MPI than the launcher's (with srun, try --mpi=pmix)", launched, d->world);
    MPI_Comm node;
    if (check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &node),
              "MPI_Comm_split_type"))
        return -1;
    MPI_Comm_rank(node, &d->local_rank);
    MPI_Comm_size(node, &d->local_world);
    MPI_Comm_free(&node);
    MPI_Request *r = malloc(DC_DIST_MAX_BUCKETS * sizeof *r);
    if (!(d->requests = r))
        return dc_fail("out of memory");
    for (int b = 0; b < DC_DIST_MAX_BUCKETS; b++)
        r[b] = MPI_REQUEST_NULL;
    return 0;
}

void dc_dist_free(dc_dist *d) {
#ifdef DC_HAVE_NCCL
    nccl_free(d);
#endif
    if (d->mpi)
        MPI_Finalize();
    d->mpi = false;
    free(d->requests);
    d->requests = NULL;
}

void dc_dist_abort(dc_dist *d, int status) {
    if (d->mpi) {
        fflush(stdout);
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, status);
    }
}

int dc_dist_barrier(dc_dist *d) { return d->mpi ? check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier") : 0; }

int dc_dist_broadcast(dc_dist *d, void *buf, size_t bytes) {
    for (size_t off = 0; d->mpi && off < bytes; off += INT_MAX) { /* MPI counts are ints */
        size_t n = bytes - off < INT_MAX ? bytes - off : INT_MAX;
        if (check(MPI_Bcast((char *)buf + off, (int)n, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast"))
            return -1;
    }
    return 0;
}

int dc_dist_sum(dc_dist *d, double *v, int n) {
    if (!d->mpi)
        return 0;
    return check(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
}

int dc_dist_max(dc_dist *d, int *v) {
    if (!d->mpi)
        return 0;
    return check(MPI_Allreduce(MPI_IN_PLACE, v, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
}

/* On the CPU a bucket is summed in place by a non-blocking all-reduce.
 * MPI's non-blocking collectives progress only inside MPI calls, so every
 * dc_dist_average_ready tests them; the division waits for the end. */
static int mpi_start(dc_dist *d, float *buf, size_t n, int b) {
    if (n > INT_MAX) /* MPI counts are ints */
        return dc_fail("gradient all-reduce: a bucket of %zu floats (at most %d)", n, INT_MAX);
    MPI_Request *r = d->requests;
    return check(MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r[b]),
                 "gradient all-reduce");
}

static int mpi_progress(dc_dist *d) {
    int done;
    return check(MPI_Testall(DC_DIST_MAX_BUCKETS, d->requests, &done, MPI_STATUSES_IGNORE),
                 "gradient all-reduce");
}

static int mpi_finish(dc_dist *d) {
    if (check(MPI_Waitall(DC_DIST_MAX_BUCKETS, d->requests, MPI_STATUSES_IGNORE), "gradient all-reduce"))
        return -1;
    for (size_t i = 0; i < d->n; i++)
        d->buf[i] /= (float)d->divisor;
    return 0;
}

/* In place: MPI leaves the rank's mean at the start of buf, moved to its shard. */
static int mpi_reduce_scatter(dc_dist *d, float *buf, size_t shard) {
    if (shard > INT_MAX)
        return dc_fail("gradient reduce-scatter: a shard of %zu floats (at most %d)", shard, INT_MAX);
    if (check(MPI_Reduce_scatter_block(MPI_IN_PLACE, buf, (int)shard, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
              "gradient reduce-scatter"))
        return -1;
    float *mine = buf + (size_t)d->rank * shard;
    memmove(mine, buf, shard * sizeof *buf);
    for (size_t i = 0; i < shard; i++)
        mine[i] /= (float)d->divisor;
    return 0;
}

static int mpi_all_gather(dc_dist *d, float *buf, size_t shard) {
    if (shard > INT_MAX)
        return dc_fail("weight all-gather: a shard of %zu floats (at most %d)", shard, INT_MAX);
    return check(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, (int)shard, MPI_FLOAT, MPI_COMM_WORLD),
                 "weight all-gather");
}

int dc_dist_gather(dc_dist *d, const float *mine, size_t n, float *all) {
    if (!d->mpi) {
        memcpy(all, mine, n * sizeof *all);
        return 0;
    }
    if (n > INT_MAX)
        return dc_fail("gather: %zu floats (at most %d)", n, INT_MAX);
    return check(MPI_Gather(mine, (int)n, MPI_FLOAT, all, (int)n, MPI_FLOAT, 0, MPI_COMM_WORLD), "MPI_Gather");
}

static int gather_fingerprints(dc_dist *d, uint64_t mine, uint64_t *all) {
    return check(MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD), "MPI_Allgather");
}

#else /* built without MPI: a world of one, and a clear word when asked for more */

static int init_mpi(dc_dist *d, int launched) {
    return dc_fail("the launcher started %d processes, but this diffc was built without MPI: install "
                   "libopenmpi-dev (scripts/setup.sh does), then rebuild (cmake -S . -B build && cmake "
                   "--build build); CMake's log says 'diffc: MPI ON' when it is found", launched);
}

void dc_dist_free(dc_dist *d) {}
void dc_dist_abort(dc_dist *d, int status) {}
int dc_dist_barrier(dc_dist *d) { return 0; }
int dc_dist_broadcast(dc_dist *d, void *buf, size_t bytes) { return 0; }
int dc_dist_sum(dc_dist *d, double *v, int n) { return 0; }
int dc_dist_max(dc_dist *d, int *v) { return 0; }
static int mpi_start(dc_dist *d, float *buf, size_t n, int b) { return 0; }
static int mpi_progress(dc_dist *d) { return 0; }
static int mpi_finish(dc_dist *d) { return 0; }
static int mpi_reduce_scatter(dc_dist *d, float *buf, size_t shard) { return 0; }
static int mpi_all_gather(dc_dist *d, float *buf, size_t shard) { return 0; }
int dc_dist_gather(dc_dist *d, const float *mine, size_t n, float *all) {
    memcpy(all, mine, n * sizeof *all);
    return 0;
}
static int gather_fingerprints(dc_dist *d, uint64_t mine, uint64_t *all) {
    all[0] = mine;
    return 0;
}

#endif

/* DC_DIST_BUCKET_BYTES, or $DC_BUCKET_MB MiB (at least one float). */
static size_t bucket_floats(void) {
    const char *v = getenv("DC_BUCKET_MB");
    char *end;
    double mb = v ? strtod(v, &end) : 0;
    size_t bytes = v && *v && !*end && mb > 0 && mb < 1e6 ? (size_t)(mb * (1 << 20)) : DC_DIST_BUCKET_BYTES;
    return bytes < sizeof(float) ? 1 : bytes / sizeof(float);
}

int dc_dist_init(dc_dist *d) {
    memset(d, 0, sizeof *d);
    d->world = d->local_world = 1;
    d->device = DC_CPU;
    d->bucket_floats = bucket_floats();
    int launched = dc_dist_launched_world();
    return launched > 1 ? init_mpi(d, launched) : 0;
}

int dc_dist_use_device(dc_dist *d, int device) {
    d->device = device;
    if (device == DC_CPU || (d->world == 1 && !nccl_forced()))
        return 0;
#ifdef DC_HAVE_NCCL
    return nccl_init(d);
#else
    return dc_fail("%s: this diffc was built without NCCL, which training on GPUs needs for the gradient "
                   "all-reduce (CMake's log says 'diffc: NCCL ON' when it finds nccl.h and libnccl in the "
                   "CUDA toolkit, with MPI); or train with --device cpu",
                   d->world > 1 ? "several ranks on GPUs" : "DC_NCCL=1");
#endif
}

/* ---- the gradient average (dist.h) ---- */

int dc_dist_average_begin(dc_dist *d, float *buf, size_t n, int64_t micro_batches) {
    if (d->buf)
        return dc_fail("gradient average: begun twice");
    d->buf = buf;
    d->n = n;
    d->divisor = (int64_t)d->world * micro_batches;
    d->bucket = d->bucket_floats;
    if (n > d->bucket * DC_DIST_MAX_BUCKETS)
        d->bucket = (n + DC_DIST_MAX_BUCKETS - 1) / DC_DIST_MAX_BUCKETS;
    d->buckets = (int)((n + d->bucket - 1) / d->bucket);
    d->next = d->buckets - 1;
    d->overlapped = 0;
    for (int b = 0; b < d->buckets; b++)
        d->left[b] = b < d->buckets - 1 ? d->bucket : n - (size_t)b * d->bucket;
    return 0;
}

static int start(dc_dist *d, int b) {
    float *buf = d->buf + (size_t)b * d->bucket;
    size_t n = b < d->buckets - 1 ? d->bucket : d->n - (size_t)b * d->bucket;
#ifdef DC_HAVE_NCCL
    if (d->nccl)
        return nccl_start(d, buf, n);
#endif
    return mpi_start(d, buf, n, b);
}

/* Start the buckets in order, last first, while they are complete (all: whatever they hold). */
static int start_complete(dc_dist *d, bool all) {
    for (; d->next >= 0 && (all || d->left[d->next] == 0); d->overlapped += !all)
        if (start(d, d->next--))
            return -1;
    return 0;
}

int dc_dist_average_ready(dc_dist *d, size_t offset, size_t len) {
    if (!d->buf || !dc_dist_communicates(d) || offset >= d->n)
        return 0;
    size_t end = len < d->n - offset ? offset + len : d->n;
    for (size_t b = offset / d->bucket; b * d->bucket < end; b++) {
        size_t lo = b * d->bucket > offset ? b * d->bucket : offset;
        size_t hi = (b + 1) * d->bucket < end ? (b + 1) * d->bucket : end;
        d->left[b] -= hi - lo < d->left[b] ? hi - lo : d->left[b];
    }
    return start_complete(d, false) || (!d->nccl && mpi_progress(d)) ? -1 : 0;
}

/* World 1 without NCCL: the mean over the micro-batches of buf[n] (a
 * division on the CPU; on a GPU a multiplication by the inverse, needing no
 * host round trip). */
static int divide_local(dc_dist *d, float *buf, size_t n) {
    if (d->divisor == 1)
        return 0;
    if (d->device != DC_CPU)
        return dc_grad_scale_on(d->device, buf, n, 1.0f / (float)d->divisor);
    for (size_t i = 0; i < n; i++)
        buf[i] /= (float)d->divisor;
    return 0;
}

int dc_dist_average_end(dc_dist *d) {
    if (!d->buf)
        return dc_fail("gradient average: ended before it began");
    int rc;
    if (!dc_dist_communicates(d))
        rc = divide_local(d, d->buf, d->n);
#ifdef DC_HAVE_NCCL
    else if (d->nccl)
        rc = start_complete(d, true) || nccl_finish(d) ? -1 : 0;
#endif
    else
        rc = start_complete(d, true) || mpi_finish(d) ? -1 : 0;
    d->buf = NULL;
    return rc;
}

/* ---- ZeRO-1 (dist.h) ---- */

size_t dc_dist_shard(const dc_dist *d, size_t n) {
    size_t per = (n + (size_t)d->world - 1) / (size_t)d->world;
    return (per + 15) / 16 * 16;
}

int dc_dist_reduce_scatter(dc_dist *d, float *buf, size_t shard, int64_t micro_batches) {
    d->divisor = (int64_t)d->world * micro_batches;
    if (!dc_dist_communicates(d))
        return divide_local(d, buf, shard);
#ifdef DC_HAVE_NCCL
    if (d->nccl)
        return nccl_reduce_scatter(d, buf, shard);
#endif
    return mpi_reduce_scatter(d, buf, shard);
}

int dc_dist_all_gather(dc_dist *d, float *buf, size_t shard) {
#ifdef DC_HAVE_NCCL
    if (d->nccl)
        return nccl_all_gather(d, buf, shard);
#endif
    return d->mpi ? mpi_all_gather(d, buf, shard) : 0;
}

int dc_dist_check_identical(dc_dist *d, const void *buf, size_t bytes, const char *what, uint64_t *hash) {
    uint64_t mine = fingerprint(buf, bytes), stack[64], *all = stack;
    *hash = mine;
    if (d->world == 1)
        return 0;
    if (d->world > 64 && !(all = malloc((size_t)d->world * sizeof *all)))
        return dc_fail("out of memory");
    int rc = gather_fingerprints(d, mine, all), differs = 0;
    while (!rc && differs < d->world && all[differs] == all[0])
        differs++;
    if (!rc && differs < d->world)
        rc = dc_fail("the ranks hold different %s: rank %d's fingerprint %016llx, rank 0's %016llx",
                     what, differs, (unsigned long long)all[differs], (unsigned long long)all[0]);
    if (all != stack)
        free(all);
    return rc;
}

int dc_dist_resolve_device(const dc_dist *d, const char *name, const char *mixed_precision, int *device,
                           dc_math *math) {
    char local[32];
    bool cuda = !strcmp(name, "cuda"), any = !strcmp(name, "auto");
    int count = cuda || any ? dc_device_count() : 0, gpu; /* CUDA left alone for --device cpu */
    bool gpus = cuda || (any && count > 0);
    if (d->world > 1 && gpus) {
        if (dc_dist_local_gpu(count, d->local_rank, d->local_world, &gpu))
            return dc_fail_prefix("--device");
        snprintf(local, sizeof local, "cuda:%d", gpu);
        name = local;
    }
    if (dc_device_resolve(name, device))
        return name == local ? dc_fail_prefix("--device: this rank's GPU on its node") : -1;
    return dc_math_parse(mixed_precision, math) || dc_device_set_math(*device, *math);
}
