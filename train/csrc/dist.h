// C API over PyTorch's c10d: TCPStore, ProcessGroupGloo / ProcessGroupNCCL and DDP's Reducer,
// for the Rust crate `train` (src/dist/). Compiled by build.rs against the libtorch that tch
// links, so tensors cross as tch's `C_tensor*`, which is a `torch::Tensor*`.
//
// Conventions:
//   - Every function that can fail returns a dist_status (0 = DIST_OK). On failure, when `err`
//     is not NULL, *err receives a message allocated with malloc; free it with dist_free_string.
//     No C++ exception ever leaves these functions.
//   - Handles are opaque; each *_destroy accepts NULL.
//   - Tensor arrays are `const dist_tensor*` with a length; the tensors are borrowed for the call
//     (the Reducer keeps its own references to the parameters it is given).
#ifndef TRAIN_DIST_H
#define TRAIN_DIST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum dist_status {
    DIST_OK = 0,
    // A bad argument, caught before any communication (wrong rank, empty list, dtype...).
    DIST_ERR_INVALID = 1,
    // The backend was not compiled into this build (headers missing at build time), or the
    // machine cannot run it (NCCL without a GPU).
    DIST_ERR_UNAVAILABLE = 2,
    // An operation ran past its timeout (a stalled peer, or rendezvous that never completed).
    DIST_ERR_TIMEOUT = 3,
    // The store (rendezvous) failed: could not connect, or the connection broke.
    DIST_ERR_STORE = 4,
    // A collective failed: a peer closed its connection, the communicator was aborted...
    DIST_ERR_COLLECTIVE = 5,
    // Anything else libtorch threw.
    DIST_ERR_INTERNAL = 6,
} dist_status;

typedef enum dist_reduce_op {
    DIST_REDUCE_SUM = 0,
    DIST_REDUCE_AVG = 1,
} dist_reduce_op;

typedef enum dist_dtype {
    DIST_DTYPE_I64 = 0,
    DIST_DTYPE_F64 = 1,
    DIST_DTYPE_F32 = 2,
} dist_dtype;

// A tch tensor: `torch::Tensor*` (tch's C_tensor).
typedef void* dist_tensor;
typedef struct dist_pg dist_pg;
typedef struct dist_reducer dist_reducer;

// Releases a message returned through an `err` out-parameter.
void dist_free_string(char* s);

// 1 when this build can create process groups of `backend` ("gloo" or "nccl"), else 0.
int dist_backend_available(const char* backend);

// Creates a process group of `world_size` ranks.
//   backend       "gloo" (CPU tensors) or "nccl" (CUDA tensors on device `device_index`).
//   master_addr/port
//                 the TCPStore: hosted here when `host_store` is 1 (rank 0 under env://), or
//                 reached as a client when 0 (every rank under torchrun's agent store).
//   store_prefix  keys are namespaced under it (NULL or "" for none); torch.distributed uses
//                 "/worker/attempt_<restart count>" with torchrun's agent store.
//   timeout_ms    for connecting to the store, the rendezvous and every collective.
//   device_index  CUDA device for "nccl"; ignored for "gloo".
dist_status dist_pg_create(const char* backend, int rank, int world_size, const char* master_addr,
                           int port, int host_store, const char* store_prefix, int64_t timeout_ms,
                           int device_index, dist_pg** out, char** err);
void dist_pg_destroy(dist_pg* pg);
int dist_pg_rank(const dist_pg* pg);
int dist_pg_world_size(const dist_pg* pg);
// Seconds dist_sync_batch_norm has spent in its all-reduces on this group so far.
double dist_pg_sync_bn_seconds(const dist_pg* pg);

// All-reduces `tensors` in place: grouped by dtype into buckets of at most `bucket_bytes`
// (a tensor larger than that is its own bucket), each bucket flattened into one buffer and
// reduced by one collective; the buckets are in flight together. AVG divides the sum by the
// world size (floating-point tensors only). Every rank passes the same shapes in the same order.
dist_status dist_allreduce(dist_pg* pg, const dist_tensor* tensors, size_t n, dist_reduce_op op,
                           int64_t bucket_bytes, char** err);

// Overwrites `tensors` on every rank with root's, in buckets of at most `bucket_bytes`
// (c10d::broadcast_coalesced, what DDP uses to synchronise a model's initial state).
dist_status dist_broadcast(dist_pg* pg, const dist_tensor* tensors, size_t n, int root,
                           int64_t bucket_bytes, char** err);

dist_status dist_barrier(dist_pg* pg, char** err);

// Gathers `count` values of `dtype` from every rank: `out` receives world_size * count values,
// rank r's at [r * count, (r + 1) * count).
dist_status dist_allgather(dist_pg* pg, const void* in, size_t count, dist_dtype dtype, void* out,
                           char** err);

// c10d::Reducer, DDP's engine: hooks the parameters' gradient accumulators so that, during
// backward, gradients are averaged across ranks in buckets as soon as each bucket is ready,
// overlapping the rest of the backward pass; when backward returns, every parameter's .grad holds
// the average. The parameters must be leaf tensors that require grad, identical in number, shape
// and dtype on all ranks (checked here with a collective).
//   bucket_bytes_cap        bucket size after the first iteration (DDP: 25 MiB);
//   first_bucket_bytes_cap  size of the first bucket (DDP: 1 MiB);
//   find_unused_parameters  tolerate parameters that get no gradient in an iteration;
//   gradient_as_bucket_view .grad becomes a view into the bucket (saves a copy and memory).
dist_status dist_reducer_create(dist_pg* pg, const dist_tensor* params, size_t n,
                                int64_t bucket_bytes_cap, int64_t first_bucket_bytes_cap,
                                int find_unused_parameters, int gradient_as_bucket_view,
                                dist_reducer** out, char** err);
// Call after each forward pass that will be followed by backward, with the forward outputs
// (used only with find_unused_parameters). Before the second iteration it also re-buckets the
// parameters in the order their gradients became ready (a collective, as DDP does); *rebuilt is
// set to 1 then, else 0 (rebuilt may be NULL).
dist_status dist_reducer_prepare_for_backward(dist_reducer* r, const dist_tensor* outputs,
                                              size_t n, int* rebuilt, char** err);
// Runs `loss.backward()`, during which the reducer averages the gradients (a failed all-reduce,
// such as a dead or stalled peer's, is returned as DIST_ERR_COLLECTIVE or DIST_ERR_TIMEOUT), and
// adds to the reducer's timings (dist_reducer_timings).
dist_status dist_reducer_backward(dist_reducer* r, dist_tensor loss, char** err);
// Removes the autograd hooks and frees the reducer.
void dist_reducer_destroy(dist_reducer* r);

// Where the reducer's time went, summed over the backward passes run by dist_reducer_backward.
// The gradient all-reduces are timed from launch to completion (CPU clock: exact for gloo; with
// NCCL the completion is the host's view of asynchronous GPU work).
typedef struct dist_reducer_timings {
    int64_t backward_passes;
    // All-reduces launched (one per bucket and pass).
    int64_t allreduces;
    // Wall time inside backward: computation plus the all-reduce time it did not hide.
    double backward_seconds;
    // Sum over the all-reduces of launch-to-completion time, mostly overlapping the computation.
    double allreduce_seconds;
    // From the launch of each pass's last bucket (the last gradient computed) to the end of the
    // pass: the time backward spent waiting for all-reduces that computation no longer hid.
    double exposed_seconds;
} dist_reducer_timings;
void dist_reducer_timings_get(const dist_reducer* r, dist_reducer_timings* out);

// torch.nn.SyncBatchNorm's training-mode forward over `pg`, as an autograd function: the batch
// statistics are those of every rank's batch (per-channel sum, sum of squares and count,
// all-reduced in double precision); running_mean/running_var (may be NULL) are updated with the
// global mean and unbiased variance; backward all-reduces the two per-channel gradient sums, so
// the input's gradient is that of the global batch's statistics (as torch.nn.SyncBatchNorm).
// `input` is [N, C, ...] on the group's device; `weight` and `bias` are [C]. Every rank must call
// it for the same layers in the same order. *out receives a new tensor (free it as tch does).
dist_status dist_sync_batch_norm(dist_pg* pg, dist_tensor input, dist_tensor weight, dist_tensor bias,
                                 dist_tensor running_mean, dist_tensor running_var, double momentum,
                                 double eps, dist_tensor* out, char** err);

// Moves each parameter's .grad into out[i] (a new tensor, undefined when the parameter had none),
// leaving .grad unset: PyTorch's zero_grad(set_to_none=True) after reading the gradients.
dist_status dist_take_grads(const dist_tensor* params, size_t n, dist_tensor* out, char** err);

#ifdef __cplusplus
}
#endif

#endif
