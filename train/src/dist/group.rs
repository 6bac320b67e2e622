//! `ProcessGroup`: a c10d process group (TCPStore + ProcessGroupGloo or ProcessGroupNCCL).
use std::ffi::{c_char, c_int, c_void, CString};
use std::fmt;
use std::ptr::{self, NonNull};
use std::time::Duration;

use tch::Tensor;

use super::error::{check, DistError, Op};
use super::ffi;
use super::reducer::{Reducer, ReducerOptions};

/// Bucket size for [`ProcessGroup::all_reduce`] and [`ProcessGroup::broadcast`]: DDP's 25 MiB.
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// The c10d backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// ProcessGroupGloo: CPU tensors, over TCP.
    Gloo,
    /// ProcessGroupNCCL: CUDA tensors on the rank's GPU.
    Nccl,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }

    /// Whether this build has the backend compiled in (its headers were found by build.rs).
    /// NCCL also needs a GPU at run time, which this does not check.
    pub fn is_compiled_in(self) -> bool {
        let name = CString::new(self.name()).expect("no NUL");
        // SAFETY: a NUL-terminated string that outlives the call.
        unsafe { ffi::dist_backend_available(name.as_ptr()) != 0 }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            other => Err(format!("unknown backend {other:?} (gloo or nccl)")),
        }
    }
}

/// Whether this process hosts the TCPStore or connects to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreRole {
    /// Listen on the master port (rank 0 under `env://`).
    Host,
    /// Connect to MASTER_ADDR:MASTER_PORT (the other ranks; every rank under torchrun).
    Client,
}

/// How to join a process group; [`super::Env::group_config`] fills it from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    pub backend: Backend,
    pub rank: usize,
    pub world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
    pub store: StoreRole,
    /// Namespace of the group's keys in the store (torchrun's agent store: one per attempt).
    pub store_prefix: Option<String>,
    /// Bounds connecting, the rendezvous and every collective: a dead or stalled peer makes an
    /// operation fail after at most about this long.
    pub timeout: Duration,
    /// The CUDA device of this rank (NCCL; LOCAL_RANK), ignored by gloo.
    pub device_index: usize,
}

/// The reduction of [`ProcessGroup::all_reduce`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size (floating-point tensors only).
    Avg,
}

/// A member of a c10d process group. Dropping it leaves the group (the store's host, dropped,
/// takes the store down with it).
///
/// Every collective must be called by all ranks, in the same order, with tensors of the same
/// shapes and dtypes; tensors must be on the backend's device (CPU for gloo, the rank's GPU
/// for NCCL). Collectives that take `&[Tensor]` write into those tensors in place.
pub struct ProcessGroup {
    raw: NonNull<ffi::dist_pg>,
    rank: usize,
    world_size: usize,
    backend: Backend,
}

// SAFETY: the c10d process group may be used from any thread, one call at a time (`&self`
// methods are not called concurrently since ProcessGroup is not Sync).
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group: connects to (or hosts) the store, then runs the backend's rendezvous with
    /// every other rank. Blocks until all `world_size` ranks have joined or the timeout passes.
    pub fn new(config: &GroupConfig) -> Result<ProcessGroup, DistError> {
        let rank = config.rank;
        let invalid = |message: String| DistError::Invalid { rank, op: Op::Init, message };
        let world = c_int::try_from(config.world_size).map_err(|_| invalid("world size too large".into()))?;
        let rank_c = c_int::try_from(rank).map_err(|_| invalid("rank too large".into()))?;
        let device = c_int::try_from(config.device_index).map_err(|_| invalid("device index too large".into()))?;
        let timeout_ms = i64::try_from(config.timeout.as_millis()).unwrap_or(i64::MAX).max(1);
        let backend = CString::new(config.backend.name()).expect("no NUL");
        let addr =
            CString::new(config.master_addr.as_str()).map_err(|_| invalid("master address contains NUL".into()))?;
        let prefix = CString::new(config.store_prefix.clone().unwrap_or_default())
            .map_err(|_| invalid("store prefix contains NUL".into()))?;
        let mut out: *mut ffi::dist_pg = ptr::null_mut();
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: valid NUL-terminated strings and out-pointers for the duration of the call.
        let status = unsafe {
            ffi::dist_pg_create(
                backend.as_ptr(),
                rank_c,
                world,
                addr.as_ptr(),
                c_int::from(config.master_port),
                c_int::from(config.store == StoreRole::Host),
                prefix.as_ptr(),
                timeout_ms,
                device,
                &mut out,
                &mut err,
            )
        };
        check(status, err, rank, Op::Init)?;
        let raw = NonNull::new(out).ok_or_else(|| DistError::Internal {
            rank,
            op: Op::Init,
            message: "the shim returned no process group".into(),
        })?;
        let group = ProcessGroup { raw, rank, world_size: config.world_size, backend: config.backend };
        // SAFETY: a live handle.
        let (got_rank, got_size) = unsafe { (ffi::dist_pg_rank(raw.as_ptr()), ffi::dist_pg_world_size(raw.as_ptr())) };
        if usize::try_from(got_rank) != Ok(rank) || usize::try_from(got_size) != Ok(config.world_size) {
            return Err(DistError::Internal {
                rank,
                op: Op::Init,
                message: format!("the group reports rank {got_rank} of {got_size}"),
            });
        }
        Ok(group)
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// All-reduces `tensors` in place, in buckets of [`DEFAULT_BUCKET_BYTES`].
    pub fn all_reduce(&self, tensors: &[Tensor], op: ReduceOp) -> Result<(), DistError> {
        self.all_reduce_bucketed(tensors, op, DEFAULT_BUCKET_BYTES)
    }

    /// All-reduces `tensors` in place: grouped by dtype into buckets of at most `bucket_bytes`
    /// (a larger tensor is a bucket of its own), each flattened and reduced by one collective,
    /// all buckets in flight together.
    pub fn all_reduce_bucketed(&self, tensors: &[Tensor], op: ReduceOp, bucket_bytes: usize) -> Result<(), DistError> {
        let ptrs = ffi::tensor_ptrs(tensors);
        let op_c = match op {
            ReduceOp::Sum => ffi::DIST_REDUCE_SUM,
            ReduceOp::Avg => ffi::DIST_REDUCE_AVG,
        };
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: `ptrs` points at tensors borrowed for the call.
        let status = unsafe {
            ffi::dist_allreduce(self.raw.as_ptr(), ptrs.as_ptr(), ptrs.len(), op_c, bytes(bucket_bytes), &mut err)
        };
        check(status, err, self.rank, Op::AllReduce)
    }

    /// Overwrites `tensors` on every rank with those of rank `root`, in buckets of
    /// [`DEFAULT_BUCKET_BYTES`] (what DDP does to start all replicas from the same state).
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<(), DistError> {
        self.broadcast_bucketed(tensors, root, DEFAULT_BUCKET_BYTES)
    }

    pub fn broadcast_bucketed(&self, tensors: &[Tensor], root: usize, bucket_bytes: usize) -> Result<(), DistError> {
        let root = c_int::try_from(root).unwrap_or(c_int::MAX);
        let ptrs = ffi::tensor_ptrs(tensors);
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: `ptrs` points at tensors borrowed for the call.
        let status = unsafe {
            ffi::dist_broadcast(self.raw.as_ptr(), ptrs.as_ptr(), ptrs.len(), root, bytes(bucket_bytes), &mut err)
        };
        check(status, err, self.rank, Op::Broadcast)
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<(), DistError> {
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: a live handle and an out-pointer.
        let status = unsafe { ffi::dist_barrier(self.raw.as_ptr(), &mut err) };
        check(status, err, self.rank, Op::Barrier)
    }

    /// Every rank's `values` (each rank passes as many), indexed by rank: for validation
    /// counts and sums.
    pub fn all_gather_i64(&self, values: &[i64]) -> Result<Vec<Vec<i64>>, DistError> {
        self.all_gather(values, ffi::DIST_DTYPE_I64)
    }

    pub fn all_gather_f64(&self, values: &[f64]) -> Result<Vec<Vec<f64>>, DistError> {
        self.all_gather(values, ffi::DIST_DTYPE_F64)
    }

    pub fn all_gather_f32(&self, values: &[f32]) -> Result<Vec<Vec<f32>>, DistError> {
        self.all_gather(values, ffi::DIST_DTYPE_F32)
    }

    fn all_gather<T: Copy + Default>(&self, values: &[T], dtype: c_int) -> Result<Vec<Vec<T>>, DistError> {
        let mut out = vec![T::default(); values.len() * self.world_size];
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: `values` holds count elements of the dtype, `out` world_size times as many.
        let status = unsafe {
            ffi::dist_allgather(
                self.raw.as_ptr(),
                values.as_ptr() as *const c_void,
                values.len(),
                dtype,
                out.as_mut_ptr() as *mut c_void,
                &mut err,
            )
        };
        check(status, err, self.rank, Op::AllGather)?;
        if values.is_empty() {
            return Ok(vec![Vec::new(); self.world_size]);
        }
        Ok(out.chunks(values.len()).map(<[T]>::to_vec).collect())
    }

    /// DDP's gradient reducer over `params` (see [`Reducer`]).
    pub fn reducer(&self, params: &[Tensor], options: &ReducerOptions) -> Result<Reducer, DistError> {
        Reducer::new(self, params, options)
    }

    pub(crate) fn raw(&self) -> *mut ffi::dist_pg {
        self.raw.as_ptr()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by dist_pg_create, destroyed once.
        unsafe { ffi::dist_pg_destroy(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("backend", &self.backend)
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish()
    }
}

fn bytes(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
