//! Errors of `train::dist`: each names the rank and the operation, in one line.
use std::ffi::{c_char, CStr};
use std::fmt;

use super::ffi;

/// The operation that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Joining the group: connecting to (or hosting) the store, then the backend's rendezvous.
    Init,
    AllReduce,
    Broadcast,
    Barrier,
    AllGather,
    /// Creating DDP's Reducer (it checks the parameters across ranks with a collective).
    ReducerInit,
    /// `Reducer::prepare_for_backward` (re-bucketing is a collective).
    PrepareForBackward,
    /// The backward pass, during which the Reducer all-reduces the gradients.
    Backward,
    /// Synchronised batch norm's statistics (forward) or gradient sums (backward).
    SyncBatchNorm,
    /// Moving the gradients out of the parameters.
    TakeGrads,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Init => "init process group",
            Op::AllReduce => "all_reduce",
            Op::Broadcast => "broadcast",
            Op::Barrier => "barrier",
            Op::AllGather => "all_gather",
            Op::ReducerInit => "create reducer",
            Op::PrepareForBackward => "reducer prepare_for_backward",
            Op::Backward => "backward (gradient all-reduce)",
            Op::SyncBatchNorm => "sync batch norm",
            Op::TakeGrads => "take gradients",
        })
    }
}

/// A failure of `train::dist`.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launcher's environment is incomplete or malformed.
    #[error("distributed environment: {var}={value:?}: {reason}")]
    Env { var: &'static str, value: String, reason: String },
    /// A bad argument, caught before anything was sent.
    #[error("rank {rank}: {op}: invalid argument: {message}")]
    Invalid { rank: usize, op: Op, message: String },
    /// The backend is not in this build (its headers were missing), or cannot run here.
    #[error("rank {rank}: {op}: {message}")]
    Unavailable { rank: usize, op: Op, message: String },
    /// The operation ran past the group's timeout: a stalled peer, or a rendezvous that never
    /// completed.
    #[error("rank {rank}: {op} timed out: {message}")]
    Timeout { rank: usize, op: Op, message: String },
    /// The store (rendezvous) failed: could not connect, or the connection broke.
    #[error("rank {rank}: {op}: store failed: {message}")]
    Store { rank: usize, op: Op, message: String },
    /// A collective failed: a peer went away (closed its connection), the communicator was
    /// aborted...
    #[error("rank {rank}: {op} failed: {message}")]
    Collective { rank: usize, op: Op, message: String },
    /// Anything else libtorch reported.
    #[error("rank {rank}: {op}: {message}")]
    Internal { rank: usize, op: Op, message: String },
}

impl DistError {
    /// The rank that reported the error (None for environment errors).
    pub fn rank(&self) -> Option<usize> {
        match self {
            DistError::Env { .. } => None,
            DistError::Invalid { rank, .. }
            | DistError::Unavailable { rank, .. }
            | DistError::Timeout { rank, .. }
            | DistError::Store { rank, .. }
            | DistError::Collective { rank, .. }
            | DistError::Internal { rank, .. } => Some(*rank),
        }
    }

    /// The operation that failed (None for environment errors).
    pub fn op(&self) -> Option<Op> {
        match self {
            DistError::Env { .. } => None,
            DistError::Invalid { op, .. }
            | DistError::Unavailable { op, .. }
            | DistError::Timeout { op, .. }
            | DistError::Store { op, .. }
            | DistError::Collective { op, .. }
            | DistError::Internal { op, .. } => Some(*op),
        }
    }

    pub(crate) fn env(var: &'static str, value: &str, reason: impl Into<String>) -> Self {
        DistError::Env { var, value: value.to_owned(), reason: reason.into() }
    }
}

/// Turns a shim status and its message (which this takes and frees) into a result.
pub(crate) fn check(status: ffi::dist_status, err: *mut c_char, rank: usize, op: Op) -> Result<(), DistError> {
    let message = take_message(err);
    if status == ffi::DIST_OK {
        return Ok(());
    }
    let message = message.unwrap_or_else(|| format!("error {status} (no message)"));
    Err(match status {
        ffi::DIST_ERR_INVALID => DistError::Invalid { rank, op, message },
        ffi::DIST_ERR_UNAVAILABLE => DistError::Unavailable { rank, op, message },
        ffi::DIST_ERR_TIMEOUT => DistError::Timeout { rank, op, message },
        ffi::DIST_ERR_STORE => DistError::Store { rank, op, message },
        ffi::DIST_ERR_COLLECTIVE => DistError::Collective { rank, op, message },
        _ => DistError::Internal { rank, op, message },
    })
}

fn take_message(err: *mut c_char) -> Option<String> {
    if err.is_null() {
        return None;
    }
    // SAFETY: the shim hands over a NUL-terminated string from malloc, released here once.
    let text = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { ffi::dist_free_string(err) };
    Some(text)
}
