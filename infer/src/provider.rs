//! Choosing where inference runs and starting the ONNX Runtime session there.

use std::path::Path;

use ort::ep;
use ort::session::builder::SessionBuilder;
use ort::session::Session;

pub use crate::device::DeviceSpec;
use crate::error::{first_line, InferError};
use crate::runtime;

/// Where inference runs: the shared device grammar ([`DeviceSpec`]); `Auto` tries CUDA and
/// falls back to the CPU (the reason is kept in [`crate::Classifier::provider_note`]).
pub type ExecutionProvider = DeviceSpec;

/// A started session, the provider that runs it, and why CUDA was not used when `Auto` fell
/// back to the CPU.
pub(crate) struct Started {
    pub session: Session,
    pub provider: String,
    pub note: Option<String>,
}

/// A session builder on the shared environment with `threads` compute threads.
pub(crate) fn base_builder(threads: Option<usize>) -> Result<SessionBuilder, String> {
    let env = runtime::environment().map_err(|e| e.to_string())?;
    let b = Session::builder(env).map_err(first_line)?;
    match threads {
        Some(t) => b.with_intra_threads(t).map_err(first_line),
        None => Ok(b),
    }
}

/// A session builder with the CUDA provider registered on device `id`, or why not: the driver,
/// device, ONNX Runtime build and CUDA libraries are checked first, so the reason names the
/// missing piece.
fn cuda_builder(id: u32, threads: Option<usize>) -> Result<SessionBuilder, String> {
    if let Some(problem) = crate::cuda::problem() {
        return Err(problem);
    }
    let devices = crate::cuda::driver().map(|d| d.devices).unwrap_or_default();
    if id as usize >= devices.len() {
        return Err(format!("no CUDA device {id}: the driver sees {} ({})", devices.len(), devices.join(", ")));
    }
    let id = i32::try_from(id).map_err(|_| format!("no CUDA device {id}"))?;
    base_builder(threads)?
        .with_execution_providers([ep::CUDA::default().with_device_id(id).build().error_on_failure()])
        .map_err(first_line)
}

/// Whether `provider` can be created (and, given a model, load it): `doctor`'s test.
pub fn check(provider: ExecutionProvider, model: Option<&Path>) -> Result<(), String> {
    let mut builder = match provider {
        ExecutionProvider::Cuda(id) => cuda_builder(id, None)?,
        ExecutionProvider::Cpu => base_builder(None)?,
        ExecutionProvider::Auto => {
            return check(ExecutionProvider::Cuda(0), model).or_else(|_| check(ExecutionProvider::Cpu, model))
        }
    };
    match model {
        Some(m) => builder.commit_from_file(m).map(drop).map_err(first_line),
        None => Ok(()),
    }
}

/// Starts a session of the model at `path` on the requested provider.
pub(crate) fn start_session(
    path: &Path,
    provider: ExecutionProvider,
    threads: Option<usize>,
) -> Result<Started, InferError> {
    // Checked first so that a missing runtime is reported as such, not as a provider problem.
    runtime::environment()?;
    let load_err = |reason: String| InferError::ModelLoad { path: path.to_path_buf(), reason };
    let cpu = || -> Result<Session, InferError> {
        base_builder(threads).map_err(load_err)?.commit_from_file(path).map_err(|e| load_err(first_line(e)))
    };
    let cuda =
        |id: u32| -> Result<Session, String> { cuda_builder(id, threads)?.commit_from_file(path).map_err(first_line) };
    let on_cpu = |session, note| Started { session, provider: "CPUExecutionProvider".into(), note };
    match provider {
        ExecutionProvider::Cpu => Ok(on_cpu(cpu()?, None)),
        ExecutionProvider::Cuda(id) => match cuda(id) {
            Ok(session) => {
                Ok(Started { session, provider: format!("CUDAExecutionProvider (device {id})"), note: None })
            }
            Err(reason) => {
                // A model that loads nowhere is a model problem, not a provider one.
                cpu()?;
                Err(InferError::Provider { provider: format!("cuda:{id}"), reason })
            }
        },
        ExecutionProvider::Auto => match cuda(0) {
            Ok(session) => Ok(Started { session, provider: "CUDAExecutionProvider (device 0)".into(), note: None }),
            Err(reason) => Ok(on_cpu(cpu()?, Some(format!("CUDA not used: {reason}")))),
        },
    }
}
