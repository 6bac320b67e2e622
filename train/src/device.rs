//! `--device auto|cpu|cuda[:N]`: which libtorch device a choice means on this machine.

pub use infer::DeviceSpec;
use tch::{Cuda, Device};

use crate::error::DeviceError;

/// `--device`: the same grammar as `infer --ep` ([`DeviceSpec`]).
pub type DeviceChoice = DeviceSpec;

/// CUDA devices libtorch sees.
pub fn visible_gpus() -> usize {
    if Cuda::is_available() {
        Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

/// The device to train on, and a line describing it.
pub fn resolve(choice: DeviceChoice) -> Result<(Device, String), DeviceError> {
    let gpus = visible_gpus();
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, format!("cpu ({} threads)", tch::get_num_threads()))),
        DeviceChoice::Auto if gpus == 0 => {
            Ok((Device::Cpu, format!("cpu ({} threads; libtorch sees no CUDA GPU)", tch::get_num_threads())))
        }
        DeviceChoice::Auto => Ok((Device::Cuda(0), format!("cuda:0 (1 of {gpus} GPUs)"))),
        DeviceChoice::Cuda(_) if gpus == 0 => Err(DeviceError::NoCuda),
        DeviceChoice::Cuda(index) if index as usize >= gpus => Err(DeviceError::NoSuchGpu { index, visible: gpus }),
        DeviceChoice::Cuda(n) => Ok((Device::Cuda(n as usize), format!("cuda:{n} ({gpus} GPUs visible)"))),
    }
}

/// The device of the rank with `local_rank` in a data-parallel job: where GPUs are used
/// (`auto` with GPUs, `cuda`, `cuda:0`), `cuda:LOCAL_RANK`, as a DDP script's
/// `torch.cuda.set_device(LOCAL_RANK)`; or `cuda:0` when this rank sees a single GPU (a launcher
/// that binds one GPU to each task, as `srun --gpus-per-task=1` does). An explicit `cuda:N`
/// other than 0 is kept; `cpu` is the CPU.
pub fn resolve_for_rank(choice: DeviceChoice, local_rank: usize) -> Result<(Device, String), DeviceError> {
    let gpus = visible_gpus();
    match choice {
        DeviceChoice::Auto | DeviceChoice::Cuda(0) if gpus > 0 => {
            let index = if local_rank < gpus {
                local_rank
            } else if gpus == 1 {
                0
            } else {
                return Err(DeviceError::NoSuchGpu {
                    index: u32::try_from(local_rank).unwrap_or(u32::MAX),
                    visible: gpus,
                });
            };
            Ok((Device::Cuda(index), format!("cuda:{index} (LOCAL_RANK {local_rank}; {gpus} GPUs visible)")))
        }
        other => resolve(other),
    }
}
