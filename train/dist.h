/*
 * Data-parallel training: the one place that knows about ranks (DESIGN.md §7).
 *
 * An existing launcher starts one process per GPU (`mpirun -np 8 diffc
 * train ...`, Slurm's `srun`); dc_dist_init finds out from its environment
 * how many there are, and joins them with MPI. Every rank holds the whole
 * model and reads its own shard of each global batch; after the backward
 * pass the flat gradient buffer is averaged across ranks in buckets, so every
 * rank applies the same gradient with the same AdamW and the weights stay
 * identical, bit for bit, without being sent again.
 *
 * MPI is initialised only when the launcher started more than one process.
 * A plain `diffc train` (or `mpirun -np 1`) never touches MPI: it runs
 * exactly as a build without MPI does, with no start-up cost, no
 * network-interface probing and nothing for a sanitizer to report.
 *
 * Backends behind the same calls. Training on the CPU (or built without
 * CUDA) the buckets are MPI_Iallreduce'd in host memory, which is what CI
 * tests with `mpirun -np 2`. Training on GPUs (dc_dist_use_device; a build
 * with CUDA, MPI and NCCL) each rank joins an NCCL communicator on its GPU,
 * made from an ncclUniqueId that rank 0 broadcasts with dc_dist_broadcast;
 * a bucket's ncclAllReduce runs on a stream of its own, after the kernels
 * queued so far (an event), and the end of the average makes the compute
 * stream wait for that stream (an event) while the host watches the
 * communicator until the buckets have arrived. $DC_NCCL=1 takes that path
 * with a single process too (world 1: the average is the gradient itself),
 * to test it on one GPU.
 *
 * Overlap: the backward pass tells (dc_dist_average_ready) which ranges of
 * the flat gradient are final; a bucket whose every float is final starts
 * at once, while the pass computes the rest. Buckets start in one order on
 * every rank, last first (the order the backward pass completes them), a
 * bucket waiting for the one after it, so the ranks' collectives always
 * match even if their graphs differed.
 *
 * Failure: every collective is either answered by all ranks or the job is
 * torn down. A rank that hits an error prints it and calls dc_dist_abort
 * (MPI_Abort), which ends every rank at once; a rank that dies outright is
 * noticed by the launcher (mpirun, srun), which kills the others. Nobody
 * waits forever in a collective: an NCCL all-reduce that reports an error
 * or has not finished after $DC_NCCL_TIMEOUT seconds (DC_DIST_NCCL_TIMEOUT_S
 * by default) aborts its communicator and fails.
 */
#ifndef DC_TRAIN_DIST_H
#define DC_TRAIN_DIST_H

#include "autograd/device.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Buckets of the gradient all-reduce: PyTorch DDP's default size (25 MiB;
 * the environment's DC_BUCKET_MB, in MiB, overrides it), and at most this
 * many per buffer (larger buckets beyond that). */
#define DC_DIST_BUCKET_BYTES ((size_t)25 << 20)
#define DC_DIST_MAX_BUCKETS 64
#define DC_DIST_NCCL_TIMEOUT_S 600.0

typedef struct dc_dist {
    int rank, world;             /* 0, 1 for a single process */
    int local_rank, local_world; /* among the ranks of this node: picks the GPU */
    bool mpi;                    /* MPI was initialised (world > 1) */
    size_t bucket_floats;        /* gradient floats per bucket (the environment's) */
    /* the average in progress, between dc_dist_average_begin and _end */
    float *buf;
    size_t n, bucket;            /* floats of buf, and per bucket (the last has the rest) */
    int64_t divisor;             /* the mean's denominator: world x micro-batches */
    int buckets, next;           /* how many; the next to start (counting down), -1 when all have */
    int overlapped;              /* of them, started before the end (during the backward pass) */
    size_t left[DC_DIST_MAX_BUCKETS]; /* floats of each bucket not yet final */
    void *requests;              /* MPI_Request[DC_DIST_MAX_BUCKETS] of the CPU path */
    int device;                  /* where the gradient lives (dc_dist_use_device); DC_CPU at first */
    void *nccl;                  /* ncclComm_t on `device`; NULL: MPI on the host (or world 1) */
    void *stream;                /* cudaStream_t of the all-reduces */
    void *queued, *arrived;      /* cudaEvent_t: the gradient written; the buckets averaged */
    int nccl_op;                 /* ncclRedOp_t multiplying by 1 / nccl_op_divisor, then summing */
    int64_t nccl_op_divisor;     /* 0 when nccl_op has not been made */
} dc_dist;

/* The number of processes the launcher started, from its environment
 * (OMPI_COMM_WORLD_SIZE, PMI_SIZE, SLURM_STEP_NUM_TASKS, SLURM_NTASKS;
 * the first one set); 1 when none is. */
int dc_dist_launched_world(void);

/* The GPU (*gpu, an ordinal) of node-local rank local_rank of local_world
 * when `count` GPUs are visible to it: GPU 0 when there is one or none
 * (srun --gpus-per-task=1 shows each rank its own GPU as GPU 0; with none,
 * opening it reports the error), else local_rank % count. An error when
 * several are visible but fewer than the ranks of the node: some GPU would
 * carry two ranks, which the node's GPUs were evidently not meant to. */
int dc_dist_local_gpu(int count, int local_rank, int local_world, int *gpu);

/* --device (auto, cpu, cuda, cuda:N) and --mixed-precision resolved for
 * this rank: with several ranks, auto (on a machine with GPUs) and cuda mean
 * the node-local rank's GPU (dc_dist_local_gpu). */
int dc_dist_resolve_device(const dc_dist *d, const char *name, const char *mixed_precision, int *device,
                           dc_math *math);

/* Join the other ranks. One process (world 1 per the environment): rank 0 of
 * 1, nothing initialised. More: MPI_Init_thread (only the calling thread
 * makes MPI calls), rank and world from MPI_COMM_WORLD, the node-local rank
 * from a shared-memory split. An error when the environment asks for
 * several ranks and this build has no MPI (it says how to rebuild), or when
 * MPI's world disagrees with the launcher's (an MPI of another make). */
int dc_dist_init(dc_dist *d);
/* Leave: MPI_Finalize when initialised. Safe on a zeroed or failed dc_dist. */
void dc_dist_free(dc_dist *d);
/* End every rank of the job with `status`, now (MPI_Abort); returns only
 * when there is no job to end (world 1). For the subcommand's error path. */
void dc_dist_abort(dc_dist *d, int status);
/* A training subcommand's failure: the line `diffc: error: ...` (after a
 * newline when a progress line is open; naming this rank when there are
 * several), the usage line when not NULL, then dc_dist_abort with `status`:
 * the one place a failing rank ends the job, so the others do not wait. */
void dc_dist_report_failure(dc_dist *d, bool progress_open, const char *usage, int status);

static inline bool dc_dist_is_root(const dc_dist *d) { return d->rank == 0; }

/* The gradients handed to the averaging calls live on `device` (DC_CPU or a
 * CUDA ordinal, the same kind on every rank). A GPU joins the ranks' NCCL
 * communicator there when world > 1 or $DC_NCCL is 1; several ranks on GPUs
 * in a build without NCCL are an error that says so. Call once, on every
 * rank, before the first average. */
int dc_dist_use_device(dc_dist *d, int device);
/* true when the gradient averages run through NCCL. */
static inline bool dc_dist_nccl(const dc_dist *d) { return d->nccl != NULL; }
/* true when the averages talk to other ranks (or to NCCL): else they only divide. */
static inline bool dc_dist_communicates(const dc_dist *d) { return d->mpi || d->nccl; }

/* Wait until every rank has arrived. */
int dc_dist_barrier(dc_dist *d);
/* Rank 0's `bytes` at buf, copied into buf on every other rank. */
int dc_dist_broadcast(dc_dist *d, void *buf, size_t bytes);
/* v[n] summed over the ranks, in place (losses and counts for the log). */
int dc_dist_sum(dc_dist *d, double *v, int n);
/* The largest *v over the ranks, in place (a signal one rank caught). */
int dc_dist_max(dc_dist *d, int *v);

/* Averaging the gradient, buf[n] on d->device, holding the sum of
 * `micro_batches` micro-batches' gradients: once dc_dist_average_end
 * returns, each of its floats is the mean over the micro-batches and the
 * ranks (on a GPU: for the kernels queued after it). In between, during
 * the backward pass of the last micro-batch, dc_dist_average_ready says
 * that floats [offset, offset + len) of buf are final, which starts the
 * buckets that are complete (overlap); _end starts the rest and waits.
 * With world 1 and no NCCL only the division by micro_batches is done. */
int dc_dist_average_begin(dc_dist *d, float *buf, size_t n, int64_t micro_batches);
int dc_dist_average_ready(dc_dist *d, size_t offset, size_t len);
int dc_dist_average_end(dc_dist *d);
/* true between begin and end. */
static inline bool dc_dist_averaging(const dc_dist *d) { return d->buf != NULL; }

/* ---- ZeRO-1: AdamW's state sharded over the ranks ----
 * Rank r keeps the moments of floats [r x shard, (r + 1) x shard) of the
 * flat buffers, reduce-scatters the gradient so that it holds the mean of
 * that shard, updates those weights, and all-gathers the weights. Buffers
 * handed to these calls hold world x shard floats (nn.h's `multiple`). */

/* The floats of each rank's shard of a buffer of n: n / world, rounded up
 * to 16 (64 bytes). */
size_t dc_dist_shard(const dc_dist *d, size_t n);
/* buf[world x shard] on d->device holding the sum of `micro_batches`
 * micro-batches' gradients: afterwards the rank's shard of buf holds the
 * mean over the micro-batches and the ranks; the rest of buf is undefined. */
int dc_dist_reduce_scatter(dc_dist *d, float *buf, size_t shard, int64_t micro_batches);
/* Every rank's shard of buf[world x shard] (on d->device) into every rank's buf. */
int dc_dist_all_gather(dc_dist *d, float *buf, size_t shard);
/* Host memory: every rank's mine[n] into rank 0's all[world x n] (`all` is
 * not used elsewhere). */
int dc_dist_gather(dc_dist *d, const float *mine, size_t n, float *all);

/* A fingerprint of `bytes` at buf (zlib's CRC-32) in
 * *hash, and an error unless every rank's is the same: proof that the ranks
 * hold identical weights, checked at every checkpoint. `what` names the
 * buffer in the message. */
int dc_dist_check_identical(dc_dist *d, const void *buf, size_t bytes, const char *what, uint64_t *hash);

#endif
