//! Declarations of csrc/dist.h, the C shim over c10d that build.rs compiles into this crate.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};

/// `dist_status`: 0 is success.
pub type dist_status = c_int;
pub const DIST_OK: dist_status = 0;
pub const DIST_ERR_INVALID: dist_status = 1;
pub const DIST_ERR_UNAVAILABLE: dist_status = 2;
pub const DIST_ERR_TIMEOUT: dist_status = 3;
pub const DIST_ERR_STORE: dist_status = 4;
pub const DIST_ERR_COLLECTIVE: dist_status = 5;

pub const DIST_REDUCE_SUM: c_int = 0;
pub const DIST_REDUCE_AVG: c_int = 1;

pub const DIST_DTYPE_I64: c_int = 0;
pub const DIST_DTYPE_F64: c_int = 1;
pub const DIST_DTYPE_F32: c_int = 2;

/// tch's `C_tensor*`, a `torch::Tensor*`.
pub type dist_tensor = *mut c_void;

#[repr(C)]
pub struct dist_pg {
    _private: [u8; 0],
}

#[repr(C)]
pub struct dist_reducer {
    _private: [u8; 0],
}

extern "C" {
    pub fn dist_free_string(s: *mut c_char);
    pub fn dist_backend_available(backend: *const c_char) -> c_int;

    pub fn dist_pg_create(
        backend: *const c_char,
        rank: c_int,
        world_size: c_int,
        master_addr: *const c_char,
        port: c_int,
        host_store: c_int,
        store_prefix: *const c_char,
        timeout_ms: i64,
        device_index: c_int,
        out: *mut *mut dist_pg,
        err: *mut *mut c_char,
    ) -> dist_status;
    pub fn dist_pg_destroy(pg: *mut dist_pg);
    pub fn dist_pg_rank(pg: *const dist_pg) -> c_int;
    pub fn dist_pg_world_size(pg: *const dist_pg) -> c_int;
    pub fn dist_pg_sync_bn_seconds(pg: *const dist_pg) -> f64;

    pub fn dist_allreduce(
        pg: *mut dist_pg,
        tensors: *const dist_tensor,
        n: usize,
        op: c_int,
        bucket_bytes: i64,
        err: *mut *mut c_char,
    ) -> dist_status;
    pub fn dist_broadcast(
        pg: *mut dist_pg,
        tensors: *const dist_tensor,
        n: usize,
        root: c_int,
        bucket_bytes: i64,
        err: *mut *mut c_char,
    ) -> dist_status;
    pub fn dist_barrier(pg: *mut dist_pg, err: *mut *mut c_char) -> dist_status;
    pub fn dist_allgather(
        pg: *mut dist_pg,
        input: *const c_void,
        count: usize,
        dtype: c_int,
        out: *mut c_void,
        err: *mut *mut c_char,
    ) -> dist_status;

    pub fn dist_reducer_create(
        pg: *mut dist_pg,
        params: *const dist_tensor,
        n: usize,
        bucket_bytes_cap: i64,
        first_bucket_bytes_cap: i64,
        find_unused_parameters: c_int,
        gradient_as_bucket_view: c_int,
        out: *mut *mut dist_reducer,
        err: *mut *mut c_char,
    ) -> dist_status;
    pub fn dist_reducer_prepare_for_backward(
        r: *mut dist_reducer,
        outputs: *const dist_tensor,
        n: usize,
        rebuilt: *mut c_int,
        err: *mut *mut c_char,
    ) -> dist_status;
    pub fn dist_reducer_backward(r: *mut dist_reducer, loss: dist_tensor, err: *mut *mut c_char) -> dist_status;
    pub fn dist_reducer_timings_get(r: *const dist_reducer, out: *mut dist_reducer_timings);
    pub fn dist_reducer_destroy(r: *mut dist_reducer);

    pub fn dist_sync_batch_norm(
        pg: *mut dist_pg,
        input: dist_tensor,
        weight: dist_tensor,
        bias: dist_tensor,
        running_mean: dist_tensor,
        running_var: dist_tensor,
        momentum: f64,
        eps: f64,
        out: *mut dist_tensor,
        err: *mut *mut c_char,
    ) -> dist_status;
    pub fn dist_take_grads(
        params: *const dist_tensor,
        n: usize,
        out: *mut dist_tensor,
        err: *mut *mut c_char,
    ) -> dist_status;
}

/// `dist_reducer_timings`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct dist_reducer_timings {
    pub backward_passes: i64,
    pub allreduces: i64,
    pub backward_seconds: f64,
    pub allreduce_seconds: f64,
    pub exposed_seconds: f64,
}

/// The tensors as the array of `torch::Tensor*` the shim takes. The pointers borrow `tensors`.
pub fn tensor_ptrs(tensors: &[tch::Tensor]) -> Vec<dist_tensor> {
    tensors.iter().map(tensor_ptr).collect()
}

/// One tensor as the shim's `dist_tensor`, borrowing it.
pub fn tensor_ptr(tensor: &tch::Tensor) -> dist_tensor {
    tensor.as_ptr() as dist_tensor
}

/// Takes ownership of a tensor the shim allocated (`new at::Tensor`, freed by tch's `at_free`).
///
/// # Safety
/// `t` must come from the shim, non-null, and be taken once.
pub unsafe fn take_tensor(t: dist_tensor) -> tch::Tensor {
    // SAFETY: per the contract above; tch frees it with `delete`, as the shim allocated it.
    unsafe { tch::Tensor::from_ptr(t.cast()) }
}
