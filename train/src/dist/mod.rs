//! Data-parallel training on PyTorch's own distributed engine, c10d: a `TCPStore` for the
//! rendezvous and `ProcessGroupGloo` (CPU) or `ProcessGroupNCCL` (GPU) for the collectives,
//! plus DDP's `Reducer` for gradients. tch binds none of it: `csrc/dist.cpp`, compiled by
//! build.rs against the same libtorch, exposes it as a C API, and this module wraps that.
//!
//! Jobs are launched as PyTorch's are (`torchrun --no-python`, Kubeflow's PyTorchJob, `srun`):
//! [`Env::from_env`] reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT and
//! TORCHELASTIC_USE_AGENT_STORE, and [`Env::group_config`] turns them into a [`GroupConfig`].
//!
//! ```no_run
//! use std::time::Duration;
//! use train::dist::{Backend, Env, ProcessGroup, ReduceOp};
//!
//! # fn main() -> Result<(), train::dist::DistError> {
//! if let Some(env) = Env::from_env()? {
//!     let pg = ProcessGroup::new(&env.group_config(Backend::Gloo, Duration::from_secs(300)))?;
//!     let grads = vec![tch::Tensor::ones([3], (tch::Kind::Float, tch::Device::Cpu))];
//!     pg.all_reduce(&grads, ReduceOp::Avg)?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A backend whose headers were missing at build time is left out of the build (build.rs warns);
//! creating a group with it then fails with [`DistError::Unavailable`]
//! ([`Backend::is_compiled_in`] says so beforehand).

mod env;
mod error;
mod ffi;
mod group;
mod reducer;
mod sync_bn;

pub use env::Env;
pub use error::{DistError, Op};
pub use group::{Backend, GroupConfig, ProcessGroup, ReduceOp, StoreRole, DEFAULT_BUCKET_BYTES};
pub use reducer::{Reducer, ReducerOptions, ReducerTimings};
