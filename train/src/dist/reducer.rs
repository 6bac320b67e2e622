//! `Reducer`: DDP's bucketed, backward-overlapping gradient all-reduce (c10d::Reducer).
use std::ffi::{c_char, c_int};
use std::ptr::{self, NonNull};
use std::time::Duration;

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
/// [`Reducer::backward`] (which also times the all-reduces, [`Reducer::timings`]; tch's
/// `f_backward` works too, returning a failed all-reduce, such as a dead peer's, as a
/// `TchError`, while tch's `backward` panics with it), then [`Reducer::take_grads`]. A backward
/// without `prepare_for_backward` is not reduced (gradient accumulation across micro-batches).
/// Start all ranks from the same parameters: [`ProcessGroup::broadcast`] them from rank 0 first.
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
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: a live reducer and a tensor borrowed for the call.
        let status = unsafe { ffi::dist_reducer_backward(self.raw.as_ptr(), ffi::tensor_ptr(loss), &mut err) };
        check(status, err, self.rank, Op::Backward)
    }

    /// Each tensor's `.grad`, moved out (undefined where there was none), leaving `.grad` unset:
    /// PyTorch's `zero_grad(set_to_none=True)` after reading the gradients, so that the next
    /// backward starts from nothing and the returned tensors are not overwritten by it.
    pub fn take_grads(&self, params: &[Tensor]) -> Result<Vec<Tensor>, DistError> {
        let ptrs = ffi::tensor_ptrs(params);
        let mut out: Vec<ffi::dist_tensor> = vec![ptr::null_mut(); params.len()];
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: `ptrs` borrows the tensors for the call; `out` has room for one per parameter.
        let status = unsafe { ffi::dist_take_grads(ptrs.as_ptr(), ptrs.len(), out.as_mut_ptr(), &mut err) };
        // Take ownership of whatever was allocated before looking at the status.
        let grads: Vec<Tensor> = out
            .into_iter()
            .filter(|p| !p.is_null())
            // SAFETY: each non-null entry is a tensor the shim allocated for us, taken once.
            .map(|p| unsafe { ffi::take_tensor(p) })
            .collect();
        check(status, err, self.rank, Op::TakeGrads)?;
        Ok(grads)
    }

    /// Where the time of the backward passes run by [`Reducer::backward`] went, so far.
    pub fn timings(&self) -> ReducerTimings {
        let mut t = ffi::dist_reducer_timings::default();
        // SAFETY: a live reducer and an out-pointer.
        unsafe { ffi::dist_reducer_timings_get(self.raw.as_ptr(), &mut t) };
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
        ReducerTimings {
            backward_passes: t.backward_passes.max(0) as u64,
            allreduces: t.allreduces.max(0) as u64,
            backward: secs(t.backward_seconds),
            allreduce: secs(t.allreduce_seconds),
            exposed: secs(t.exposed_seconds),
        }
    }
}

/// The reducer's clock, summed over backward passes: how much of the gradient all-reduce the
/// computation hid. Launch-to-completion times are measured on the host: exact for gloo; with
/// NCCL they are the host's view of asynchronous GPU work.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReducerTimings {
    pub backward_passes: u64,
    /// All-reduces launched: one per bucket and pass.
    pub allreduces: u64,
    /// Wall time inside backward: computation plus the all-reduce time it did not hide.
    pub backward: Duration,
    /// Launch-to-completion time of the all-reduces, summed (mostly overlapping computation).
    pub allreduce: Duration,
    /// Time backward waited for all-reduces after its last gradient was computed: the part of
    /// the communication the computation did not hide.
    pub exposed: Duration,
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
