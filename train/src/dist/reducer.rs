//! `Reducer`: DDP's bucketed, backward-overlapping gradient all-reduce (c10d::Reducer).
use std::ffi::{c_char, c_int};
use std::ptr::{self, NonNull};

use tch::Tensor;

use super::error::{check, DistError, Op};
use super::ffi;
use super::group::ProcessGroup;

/// Options of [`Reducer`], DDP's defaults by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReducerOptions {
    /// Bucket size (DDP's `bucket_cap_mb`, 25 MiB).
    pub bucket_bytes_cap: usize,
    /// Size of the first bucket, the last gradients to be ready (DDP: 1 MiB).
    pub first_bucket_bytes_cap: usize,
    /// Tolerate parameters that get no gradient in an iteration (costs a traversal of the graph
    /// from the outputs given to `prepare_for_backward`).
    pub find_unused_parameters: bool,
    /// Make each `.grad` a view into its bucket: one copy and the memory of the gradients saved.
    pub gradient_as_bucket_view: bool,
}

impl Default for ReducerOptions {
    fn default() -> Self {
        ReducerOptions {
            bucket_bytes_cap: 25 * 1024 * 1024,
            first_bucket_bytes_cap: 1024 * 1024,
            find_unused_parameters: false,
            gradient_as_bucket_view: false,
        }
    }
}

/// PyTorch's `c10d::Reducer`, the engine of DistributedDataParallel: it hooks each parameter's
/// gradient accumulator so that, during backward, the gradients are averaged across ranks in
/// buckets as each bucket fills, overlapping the rest of the backward pass. When `backward`
/// returns, every parameter's `.grad` holds the average over ranks.
///
/// Per iteration: forward, then [`Reducer::prepare_for_backward`] with the outputs, then
/// [`Reducer::backward`] (or tch's `f_backward`, which returns a failed all-reduce, such as a
/// dead peer's, as a `TchError`; tch's `backward` panics with it). A backward without `prepare_for_backward` is not reduced
/// (gradient accumulation across micro-batches). Start all ranks from the same parameters:
/// [`ProcessGroup::broadcast`] them from rank 0 first.
///
/// The reducer keeps its own reference to the process group and to the parameters. Dropping
/// it removes the hooks.
pub struct Reducer {
    raw: NonNull<ffi::dist_reducer>,
    rank: usize,
}

// SAFETY: the reducer is driven by one thread at a time (not Sync); its hooks run inside
// backward on libtorch's autograd threads, as in PyTorch.
unsafe impl Send for Reducer {}

impl Reducer {
    /// Creates the reducer over `params` (leaf tensors that require grad, the same on every
    /// rank: checked with a collective, so every rank must call this).
    pub fn new(group: &ProcessGroup, params: &[Tensor], options: &ReducerOptions) -> Result<Reducer, DistError> {
        let rank = group.rank();
        let ptrs = ffi::tensor_ptrs(params);
        let mut out: *mut ffi::dist_reducer = ptr::null_mut();
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: a live group, `ptrs` pointing at tensors borrowed for the call (the reducer
        // takes its own references), out-pointers.
        let status = unsafe {
            ffi::dist_reducer_create(
                group.raw(),
                ptrs.as_ptr(),
                ptrs.len(),
                i64::try_from(options.bucket_bytes_cap).unwrap_or(i64::MAX),
                i64::try_from(options.first_bucket_bytes_cap).unwrap_or(i64::MAX),
                c_int::from(options.find_unused_parameters),
                c_int::from(options.gradient_as_bucket_view),
                &mut out,
                &mut err,
            )
        };
        check(status, err, rank, Op::ReducerInit)?;
        let raw = NonNull::new(out).ok_or_else(|| DistError::Internal {
            rank,
            op: Op::ReducerInit,
            message: "the shim returned no reducer".into(),
        })?;
        Ok(Reducer { raw, rank })
    }

    /// Arms the reducer for the next backward pass; `outputs` are the forward outputs (read
    /// only with `find_unused_parameters`). Before the second iteration it also re-buckets the
    /// parameters in the order their gradients became ready, as DDP does (a collective); returns
    /// whether it did.
    pub fn prepare_for_backward(&mut self, outputs: &[Tensor]) -> Result<bool, DistError> {
        let ptrs = ffi::tensor_ptrs(outputs);
        let mut rebuilt: c_int = 0;
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: a live reducer, tensors borrowed for the call, out-pointers.
        let status = unsafe {
            ffi::dist_reducer_prepare_for_backward(self.raw.as_ptr(), ptrs.as_ptr(), ptrs.len(), &mut rebuilt, &mut err)
        };
        check(status, err, self.rank, Op::PrepareForBackward)?;
        Ok(rebuilt != 0)
    }

    /// Runs `loss.backward()`; when it returns, the gradients are averaged over the ranks. A
    /// failed all-reduce (a peer gone or stalled past the group's timeout) is an error naming
    /// this rank, not a panic.
    pub fn backward(&mut self, loss: &Tensor) -> Result<(), DistError> {
        loss.f_backward().map_err(|e| {
            // libtorch's message, without the C++ backtrace tch appends.
            let text = e.to_string();
            let message = text.lines().next().unwrap_or_default().trim().to_owned();
            let lower = message.to_lowercase();
            if lower.contains("timed out") || lower.contains("timeout") {
                DistError::Timeout { rank: self.rank, op: Op::Backward, message }
            } else {
                DistError::Collective { rank: self.rank, op: Op::Backward, message }
            }
        })
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        // SAFETY: created by dist_reducer_create, destroyed once.
        unsafe { ffi::dist_reducer_destroy(self.raw.as_ptr()) }
    }
}

impl std::fmt::Debug for Reducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reducer").field("rank", &self.rank).finish()
    }
}
